"""Benchmark: does the audit recover a bias injected on purpose? Prints figures; not a test.

For each scenario: generate a synthetic set with balanced demographics (race
1/3 each) and the scenario's bias, train the demo preset of the light CNN on
it (with square-root class weights instead of its class-balanced sampler
unless --balance sampler: see BALANCING), store the dataset's ground-truth demographics ('annotations'), audit the
run and report whether the audit names the injected subgroup as the worst, with
the gap's interval and its corrected p-value. A scenario without bias checks
that nothing is flagged significant after correction.

Sizing: the training split stays at the demo's size (~5,600 images) while the
test split is made large (60% of the images) so that a gap of ~5 points is
resolvable: about 2,200 test images per race group (Neutral is dropped by the
6-class demo preset). Several minutes per scenario on 2 cores.

  python bench/bench_audit.py                                   # the default four scenarios
  python bench/bench_audit.py --scenario fewer --balance sampler # does balanced sampling undo it?
  python bench/bench_audit.py --scenario none --seed 1 --seed 2 # more no-bias seeds
  python bench/bench_audit.py --scenario faint --keep /tmp/bench_audit
  python bench/bench_audit.py --scenario none --counterfactual 3000  # is a gap the model's own?
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# name -> (--bias text, attribute where the audit should find it, expected worst group, metrics to report)
SCENARIOS: dict[str, tuple[str | None, str | None, str | None, tuple[str, ...]]] = {
    "faint": ("race=1:faint=0.5", "race", "African-American", ("accuracy", "macro_f1")),
    "faint-strong": ("race=1:faint=0.3", "race", "African-American", ("accuracy", "macro_f1")),
    "fewer": ("race=2:fewer=Anger,Disgust@0.1", "race", "Asian", ("recall:Anger", "recall:Disgust")),
    "faint-female": ("gender=1:faint=0.3", "gender", "female", ("accuracy", "macro_f1")),
    "faint-female-40-69": ("gender=female&age=40-69:faint=0.3", "gender×age", "female | 40-69", ("accuracy",)),
    "none": (None, None, None, ("accuracy",)),
}


# How the demo preset is rebalanced for the audit benchmark (--balance): square-root
# class weights by default. The demo's own class-balanced sampler oversamples the
# subgroup's few images under a `fewer` bias and so partly undoes the bias being tested.
BALANCING = {"sqrt": {"class_weights": "sqrt", "sampler": "shuffle"},
             "sampler": {"class_weights": "none", "sampler": "balanced"}}


def compute_counterfactual_recall(data: Path, db: Path, run_id: str, n_images: int, seed: int) -> pd.DataFrame:
    """Recall per emotion of the trained model on `n_images` test faces drawn with each
    skin group's tone (the same faces otherwise; pipeline.synth.twins): a model-level skin
    dependence, separated from the luck of which images each group drew. Columns: skin
    group names, n."""
    from pipeline.synth.faces import load_synth_config
    from pipeline.synth.twins import compute_twin_recall, create_twin_images, select_test_faces
    from pipeline.fairness.twins import create_twin_frame
    from pipeline.train.loop import predict_probabilities
    from pipeline.train.models import load_model_from_checkpoint
    from pipeline.train.runner import CHECKPOINT_BEST, find_run_dir

    model, meta = load_model_from_checkpoint(find_run_dir(db, run_id) / CHECKPOINT_BEST)
    classes = list(meta["classes"])
    faces = select_test_faces(load_synth_config(data), classes=classes, kind="skin", n_images=n_images, seed=seed)
    twins, images = create_twin_images(faces, "skin", size=min(int(meta["image_size"]), 100))
    return compute_twin_recall(create_twin_frame(twins, predict_probabilities(model, images, meta), classes))


def run_scenario(name: str, work: Path, n: int, test_fraction: float, seed: int, epochs: int | None,
                 n_boot: int, n_perm: int, balance: str = "sqrt", colour_shift: float | None = None,
                 counterfactual: int = 0) -> dict:
    from dataclasses import replace

    from pipeline.fairness.audit import AuditConfig
    from pipeline.data.loaders import load_dataset
    from pipeline.fairness.demographics import DemographicsConfig
    from pipeline.fairness.stage import AuditRunConfig, DemographicsRunConfig, run_audit, run_demographics
    from pipeline.train.recipes import get_recipe
    from pipeline.train.runner import DatasetSpec, TrainRunConfig, run_train
    from pipeline.synth.faces import BALANCED, SynthConfig, generate_dataset

    bias = SCENARIOS[name][0]
    data, db = work / f"{name}-seed{seed}", work / "results.duckdb"  # data is shared by both balancings
    times = {}
    t0 = time.perf_counter()
    if not (data / "Synthetic" / "manifest.json").is_file():
        generate_dataset(data, SynthConfig(n=n, seed=seed, bias=bias, test_fraction=test_fraction, **BALANCED),
                         progress=False)
    times["generate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    recipe = get_recipe("lightcnn-softlabel", "demo")
    augment = recipe.train.augment if colour_shift is None else replace(recipe.train.augment, colour_shift=colour_shift)
    recipe = replace(recipe, train=replace(recipe.train, seed=seed, augment=augment, **BALANCING[balance],
                                           **({"epochs": epochs} if epochs else {})))
    spec = DatasetSpec(name="synthetic", root=str(data), num_classes=recipe.num_classes, seed=seed)
    outcome = run_train(TrainRunConfig(dataset=spec, recipe=recipe, weights="none", db=str(db), quiet=True),
                        log=lambda msg: None)
    times["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    dataset = load_dataset("synthetic", data, num_classes=7)
    run_demographics(DemographicsRunConfig(db=str(db), demographics=DemographicsConfig(backend="annotations"),
                                           quiet=True), dataset)
    summary = run_audit(AuditRunConfig(db=str(db), run=outcome.run_id, sources=("annotations",),
                                       audit=AuditConfig(n_boot=n_boot, n_perm=n_perm, seed=seed)))
    times["audit"] = time.perf_counter() - t0
    twins = None
    if counterfactual:
        t0 = time.perf_counter()
        twins = compute_counterfactual_recall(data, db, outcome.run_id, counterfactual, seed)
        times["counterfactual"] = time.perf_counter() - t0
    return {"name": name, "seed": seed, "bias": bias, "balance": balance, "colour_shift": augment.colour_shift,
            "run_id": outcome.run_id, "summary": summary, "counterfactual": twins,
            "outcome": outcome.summary, "times": times}


def render(result: dict) -> str:
    from pipeline.export.tables import format_estimate, format_p_value

    name, gaps = result["name"], result["summary"]["results"]["annotations"].gaps
    cells = result["summary"]["results"]["annotations"].cells
    _, attribute, expected, metrics = SCENARIOS[name]
    o = result["outcome"]
    lines = [f"== scenario {name} (bias {result['bias']}, seed {result['seed']}, balance {result['balance']}, "
             f"colour shift {result['colour_shift']}), "
             f"run {result['run_id']}",
             f"   test accuracy {o.get('test_accuracy', float('nan')):.4f}, n_test {o.get('n_test')}; "
             + ", ".join(f"{k} {v:.0f}s" for k, v in result["times"].items())]
    if attribute:
        for metric in metrics:
            row = gaps[(gaps["attribute"] == attribute) & (gaps["metric"] == metric)
                       & (gaps["comparison"] == "best-worst")]
            groups = cells[(cells["attribute"] == attribute) & (cells["metric"] == metric)]
            per_group = "; ".join(f"{r.grp} {format_estimate(r.value, r.ci_low, r.ci_high, r.n)}"
                                  for r in groups.itertuples(index=False))
            lines.append(f"   {attribute} {metric}: {per_group}")
            if row.empty:
                lines.append("   no best-worst row (fewer than two groups with enough support)")
                continue
            r = row.iloc[0]
            named = r["grp"] == expected
            lines.append(f"   worst {r['grp']!r} (expected {expected!r}: {'YES' if named else 'NO'}), gap "
                         f"{format_estimate(r['gap'], r['ci_low'], r['ci_high'])}, CI excludes 0: "
                         f"{'YES' if r['ci_low'] > 0 else 'NO'}, p {format_p_value(r['p_value'])}, "
                         f"p_adj {format_p_value(r['p_adjusted'])}, significant: {'YES' if r['significant'] else 'NO'}")
    n_sig = int(gaps["significant"].sum())
    bw = gaps[gaps["comparison"] == "best-worst"]
    lines.append(f"   {len(gaps)} gaps tested, {n_sig} significant after {gaps['correction'].iloc[0]}; "
                 f"smallest p {format_p_value(gaps['p_value'].min())}; best-worst CIs excluding 0: "
                 f"{int((bw['ci_low'] > 0).sum())} of {len(bw)}")
    for r in gaps[gaps["significant"]].sort_values("p_adjusted").head(8).itertuples(index=False):
        lines.append(f"     significant: {r.attribute} {r.metric} {r.comparison} {r.grp!r} gap "
                     f"{format_estimate(r.gap, r.ci_low, r.ci_high)} p_adj {format_p_value(r.p_adjusted)}")
    twins = result.get("counterfactual")
    if twins is not None:
        lines.append(f"   counterfactual twins ({int(twins.loc['(accuracy)', 'n'])} test faces, each drawn with every "
                     "skin group's tone): recall by skin tone")
        lines.extend("     " + line for line in twins.round(3).to_string().splitlines())
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=tuple(SCENARIOS), default=None,
                        help="scenario to run; repeat for several (default: faint-strong, faint-female, fewer, none)")
    parser.add_argument("--seed", action="append", type=int, default=None, help="seeds (default 0); repeat")
    parser.add_argument("--n", type=int, default=14000, help="images per dataset (default 14000)")
    parser.add_argument("--test-fraction", type=float, default=0.6, help="share in the test split (default 0.6)")
    parser.add_argument("--epochs", type=int, default=None, help="override the demo preset's epochs")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--n-perm", type=int, default=1000)
    parser.add_argument("--balance", choices=tuple(BALANCING), default="sqrt",
                        help="sqrt: the demo preset with square-root class weights (default); sampler: the demo "
                             "preset as it is, class-balanced sampling")
    parser.add_argument("--colour-shift", type=float, default=None,
                        help="override the preset's additive colour-shift augmentation (0 = off)")
    parser.add_argument("--counterfactual", type=int, default=0, metavar="N",
                        help="also predict N test faces drawn with each skin group's tone (0 = off)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    args = parser.parse_args()

    scenarios = args.scenario or ["faint-strong", "faint-female", "fewer", "none"]
    seeds = args.seed or [0]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in scenarios:
            for seed in seeds:
                result = run_scenario(name, work, args.n, args.test_fraction, seed, args.epochs,
                                      args.n_boot, args.n_perm, args.balance, args.colour_shift,
                                      args.counterfactual)
                print(render(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
