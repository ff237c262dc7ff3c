"""Benchmark: do the group mitigations close an injected gap, and what do they cost? Prints figures.

For each bias scenario (`fewer`: the Asian group's Anger and Disgust training images cut
to 10%; `faint`: the African-American group's expressions drawn at 30% intensity), one
synthetic set with balanced demographics is generated and the demo preset of the light
CNN is trained on it once as it is (the baseline: class-balanced sampling) and once per
mitigation over race x emotion cells (`--group-balance sample`, `--group-balance
reweight`, `--group-dro`). Each mitigated run is compared with the baseline on the same
test images (pipeline.fairness.paired): overall accuracy and McNemar's p, and the target
gap (the injected group's accuracy, or its recall of the cut emotions, against the rest)
before and after with the paired-bootstrap interval of its change. "closes" = the
interval of the change lies below 0; "cost" = the change of overall accuracy.

Sizing (defaults): 6,000 images, half of them test (about 1,000 per race group), 8
epochs of the demo preset: 1-3 minutes per training run on 2 shared cores, so the
default (2 scenarios x 4 runs) takes 10-25 minutes.

  python bench/bench_mitigation.py
  python bench/bench_mitigation.py --scenario fewer --epochs 6 --n 4000
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# name -> (--bias text, target attribute value (race name), emotions whose recall is the gap or None = accuracy)
SCENARIOS = {
    "fewer": ("race=2:fewer=Anger,Disgust@0.1", "Asian", ("Anger", "Disgust")),
    "faint": ("race=1:faint=0.3", "African-American", None),
}
MITIGATIONS = {
    "baseline": {},
    "group-sample": {"group_balance": "sample"},
    "group-reweight": {"group_balance": "reweight"},
    "group-dro": {"group_dro": True},
}


def train_run(data: Path, db: Path, seed: int, epochs: int | None, changes: dict, image_size: int | None) -> dict:
    from pipeline.train.recipes import get_recipe, with_image_size
    from pipeline.train.runner import DatasetSpec, TrainRunConfig, run_train

    recipe = get_recipe("lightcnn-softlabel", "demo")
    if image_size:
        recipe, note = with_image_size(recipe, image_size)
        if note:
            print(note)
    recipe = replace(recipe, train=replace(recipe.train, seed=seed, group_attributes=("race",), **changes,
                                           **({"epochs": epochs} if epochs else {})))
    spec = DatasetSpec(name="synthetic", root=str(data), num_classes=recipe.num_classes, seed=seed)
    t0 = time.perf_counter()
    outcome = run_train(TrainRunConfig(dataset=spec, recipe=recipe, weights="none", db=str(db), quiet=True),
                        log=lambda msg: None)
    return {"run_id": outcome.run_id, "seconds": time.perf_counter() - t0, **outcome.summary}


def load_test_correctness(db: Path, run_id: str) -> pd.Series:
    from pipeline.store import db as store

    with store.open_store(db, read_only=True) as con:
        preds = store.load_frame(con, "predictions", run_id=run_id)
    return preds[preds["split"] == "test"].set_index("image_id")["correct"]


def compare(name: str, data: Path, db: Path, runs: dict[str, dict], seed: int) -> list[str]:
    """One line per mitigated run in `runs` against runs['baseline'] on the same test images."""
    from pipeline.constants import RACES
    from pipeline.fairness.paired import PairedConfig, compute_gap_changes, compute_mcnemar
    from pipeline.synth.faces import load_synthetic_attributes

    _, target, emotions = SCENARIOS[name]
    attrs = load_synthetic_attributes(data).set_index("image_id")
    base = load_test_correctness(db, runs["baseline"]["run_id"])
    lines = []
    for mitigation, run in runs.items():
        if mitigation == "baseline":
            continue
        other = load_test_correctness(db, run["run_id"]).reindex(base.index)
        frame = pd.DataFrame({"correct_a": base, "correct_b": other,
                              "race": attrs.loc[base.index, "race"].map(RACES),
                              "label": attrs.loc[base.index, "label"]})
        test = compute_mcnemar(frame["correct_a"], frame["correct_b"])
        scope = frame[frame["label"].isin(emotions)] if emotions else frame
        changes = compute_gap_changes(scope, PairedConfig(attributes=("race",), intersections=False, n_boot=2000,
                                                          seed=seed, min_support=20))
        what = f"recall of {'+'.join(emotions)}" if emotions else "accuracy"
        hit = changes[(changes["comparison"] == "vs-rest") & (changes["grp"] == target)]
        if hit.empty:
            lines.append(f"   {mitigation:15s} too few test images of {target} for the {what} gap; use a larger --n")
            continue
        row = hit.iloc[0]
        lines.append(
            f"   {mitigation:15s} accuracy {test['accuracy_a']:.4f} -> {test['accuracy_b']:.4f} "
            f"(cost {test['accuracy_a'] - test['accuracy_b']:+.4f}, McNemar p {test['p_value']:.3g}); "
            f"{target} {what} gap vs rest {row['gap_a']:+.3f} -> {row['gap_b']:+.3f}, change {row['change']:+.3f} "
            f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}] closes: {'YES' if row['ci_high'] < 0 else 'NO'}; "
            f"train {run['seconds']:.0f}s")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=tuple(SCENARIOS), default=None,
                        help="scenario to run; repeat for several (default: all)")
    parser.add_argument("--mitigation", action="append", choices=tuple(MITIGATIONS)[1:], default=None,
                        help="mitigations to compare with the baseline (default: all)")
    parser.add_argument("--n", type=int, default=6000, help="images per dataset (default 6000)")
    parser.add_argument("--test-fraction", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the demo preset (default 8; its own 12)")
    parser.add_argument("--image-size", type=int, default=None, help="model input size (default: the preset's 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    args = parser.parse_args()

    from pipeline.synth.faces import BALANCED, SynthConfig, generate_dataset

    mitigations = ["baseline"] + (args.mitigation or list(MITIGATIONS)[1:])
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in args.scenario or list(SCENARIOS):
            bias = SCENARIOS[name][0]
            tag = f"{name}-n{args.n}-test{args.test_fraction}-seed{args.seed}"
            data, db = work / tag, work / f"{tag}.duckdb"
            if not (data / "Synthetic" / "manifest.json").is_file():
                generate_dataset(data, SynthConfig(n=args.n, seed=args.seed, bias=bias,
                                                   test_fraction=args.test_fraction, **BALANCED), progress=False)
            base = train_run(data, db, args.seed, args.epochs, {}, args.image_size)
            print(f"== {name} (bias {bias}, {args.n} images, test {args.test_fraction:.0%}, seed {args.seed}, "
                  f"{args.epochs or 12} epochs, input {args.image_size or 64} px): each mitigation against the "
                  f"baseline ({base['run_id']}, train {base['seconds']:.0f}s) on the same test images", flush=True)
            for m in mitigations[1:]:
                run = train_run(data, db, args.seed, args.epochs, MITIGATIONS[m], args.image_size)
                for line in compare(name, data, db, {"baseline": base, m: run}, args.seed):
                    print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
