"""Benchmark: does the demo model learn the `cue` bias, and do Grad-CAM and the failure tags see it?

Prints figures; not a test. Generates the synthetic set with a background-cue bias
(default `race=2:cue=Happiness@0.9`: in training, 90% of the Asian group's Happiness
images carry the cue, 5% of its other images; in test, half of the group's images,
whatever their emotion), trains the demo preset on it, then reports:

1. cue twins (pipeline.synth.twins): the same test faces of the group drawn with and
   without the cue; the share predicted as the cued emotion and its mean probability,
   over faces not labelled with it (the shortcut's pull) and over all;
2. Grad-CAM (`explain`, predicted class) on the test split: mean background energy and the
   share of images tagged `background`, for the group's cued images, its uncued images
   and everyone else; and the same for cued images the model called the cued emotion
   wrongly.

  python bench/bench_cue.py                         # 7,000 images, the demo preset (about 10 min)
  python bench/bench_cue.py --n 4000 --epochs 8 --keep /tmp/bench_cue
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    # Long on purpose: a benchmark script: generate, train, measure and print, in order.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bias", default="race=2:cue=Happiness@0.9")
    parser.add_argument("--n", type=int, default=7000)
    parser.add_argument("--epochs", type=int, default=None, help="override the demo preset's 12 epochs")
    parser.add_argument("--image-size", type=int, default=None, help="model input size (default: the preset's 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    args = parser.parse_args()

    from pipeline.explain.stage import ExplainConfig, run_explain
    from pipeline.fairness.twins import TwinsConfig, create_stored_twins
    from pipeline.store import db as store
    from pipeline.synth.faces import SynthConfig, _in_subgroup, generate_dataset, load_synthetic_attributes, parse_bias
    from pipeline.synth.twins import compute_cue_shift
    from pipeline.train.recipes import get_recipe
    from pipeline.train.runner import DatasetSpec, TrainRunConfig, run_train

    bias = parse_bias(args.bias)
    if bias is None or bias["effect"] != "cue":
        raise SystemExit(f"--bias must be a cue bias, e.g. race=2:cue=Happiness@0.9; got {args.bias!r}")
    emotion = bias["emotion"]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data, db = work / f"cue-n{args.n}-seed{args.seed}", work / "results.duckdb"
        t0 = time.perf_counter()
        if not (data / "Synthetic" / "manifest.json").is_file():
            generate_dataset(data, SynthConfig(n=args.n, seed=args.seed, bias=args.bias), progress=False)
        times = {"generate": time.perf_counter() - t0}

        t0 = time.perf_counter()
        recipe = get_recipe("lightcnn-softlabel", "demo")
        recipe = replace(recipe, train=replace(recipe.train, seed=args.seed,
                                               **({"epochs": args.epochs} if args.epochs else {})),
                         **({"image_size": args.image_size} if args.image_size else {}))
        spec = DatasetSpec(name="synthetic", root=str(data), num_classes=recipe.num_classes, seed=args.seed)
        outcome = run_train(TrainRunConfig(dataset=spec, recipe=recipe, weights="none", db=str(db), quiet=True),
                            log=lambda msg: None)
        times["train"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        twins = create_stored_twins(db, outcome.run_id, TwinsConfig(kinds=("cue",), seed=args.seed),
                                    log=lambda msg: None)
        cue = twins["frames"]["cue"]
        cue = cue.assign(prob_cued=[float(p[twins["classes"].index(emotion)]) for p in cue["probs"]])
        shift = compute_cue_shift(cue, emotion)
        times["twins"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        run_explain(ExplainConfig(db=str(db), run=outcome.run_id, methods=("gradcam",), faithfulness_samples=50,
                                  sanity_samples=20, quiet=True, seed=args.seed))
        times["explain"] = time.perf_counter() - t0
        with store.open_store(db, read_only=True) as con:
            maps = store.load_frame(con, "heatmaps", run_id=outcome.run_id, method="gradcam", target="pred")
            tags = store.load_frame(con, "failure_tags", run_id=outcome.run_id, method="gradcam")
            preds = store.load_frame(con, "predictions", run_id=outcome.run_id).query("split == 'test'")
        attrs = load_synthetic_attributes(data).set_index("image_id")
        frame = preds.set_index("image_id")[["true_label", "pred_label", "correct"]].join(
            maps.set_index("image_id")["e_background"]).join(attrs[["gender", "race", "age", "background_cue"]])
        frame["tag_background"] = frame.index.isin(tags.loc[tags["tag"] == "background", "image_id"])
        in_group = np.array([_in_subgroup(bias, g, r, a) for g, r, a in
                             frame[["gender", "race", "age"]].itertuples(index=False)])
        frame["who"] = np.where(in_group & (frame["background_cue"] == 1), "group, cued",
                                np.where(in_group, "group, no cue", "everyone else"))
        wrong_cued = frame[(frame["who"] == "group, cued") & (frame["pred_label"] == emotion)
                           & (frame["true_label"] != emotion)].assign(who=f"group, cued, wrongly called {emotion}")
        cam = pd.concat([frame, wrong_cued]).groupby("who").agg(
            n=("correct", "size"), accuracy=("correct", "mean"), predicted_cued=("pred_label", lambda s: (s == emotion).mean()),
            background_energy=("e_background", "mean"), tagged_background=("tag_background", "mean"))

        o = outcome.summary
        print(f"== cue bias {args.bias}: {args.n} images, seed {args.seed}, run {outcome.run_id}; test accuracy "
              f"{o['test_accuracy']:.4f}, macro-F1 {o['test_macro_f1']:.4f} (n={o['n_test']}); "
              + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
        print(f"   1. cue twins ({cue['image_id'].nunique()} test faces of the group, each with and without the cue): "
              f"predictions of {emotion}")
        print("      " + shift.round(3).to_string().replace("\n", "\n      "))
        print("   2. Grad-CAM (predicted class) on the test split, by who carries the cue")
        print("      " + cam.round(3).to_string().replace("\n", "\n      "))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
