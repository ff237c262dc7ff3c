"""`python -m pipeline import-predictions`: another tool's predictions stored as a run of kind 'predictions'.

The file (CSV or Parquet) has an `image_id` (or `path`, relative to the dataset
root) column and either one probability column per class, named by the class,
or a `pred_label` column. Rows whose image is not in the dataset are counted
and reported. `audit`, `export` and the dashboard then work on the run; there
are no heatmaps (no model to explain).

Examples:
  python -m pipeline import-predictions deepface_emotions.csv --dataset rafdb --root data/rafdb
  python -m pipeline import-predictions preds.parquet --dataset folder --root ~/data/expw --name my-tool
"""
from __future__ import annotations

import argparse

from pipeline.commands.evaluate import DATASETS

SHARED_OPTIONS = ("db", "seed")  # added by pipeline.cli from pipeline.commands.options
SHARED_HELP = {"seed": "seed of the dataset's val hold-out (default {default})"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = __doc__.split("\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("file", help="predictions file: .csv or .parquet")
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--classes", type=int, choices=(6, 7), default=7,
                        help="load the dataset with 7 emotions or 6 without Neutral (default 7)")
    parser.add_argument("--variant", choices=("aligned", "original"), default="aligned")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--name", default=None, help="the run's model name (default: the file's stem)")


def run(args: argparse.Namespace) -> int:
    from pipeline.external.predictions import ImportConfig, run_import_predictions
    from pipeline.train.runner import DatasetSpec

    spec = DatasetSpec(name=args.dataset, root=args.root, num_classes=args.classes, variant=args.variant,
                       val_fraction=args.val_fraction, seed=args.seed)
    outcome = run_import_predictions(ImportConfig(file=args.file, dataset=spec, db=args.db, name=args.name))
    s = outcome.summary
    splits = ", ".join(f"{n} {k}" for k, n in s["splits"].items())
    print(f"imported {s['matched']} of {s['rows']} rows ({s['mode']}; {splits}): accuracy {s['accuracy']:.4f}, "
          f"macro-F1 {s['macro_f1']:.4f} on {s['split']} (n={s['n']}, classes {', '.join(s['classes'])})")
    if s["unmatched"]:
        print(f"{s['unmatched']} rows name images that are not in the dataset (e.g. "
              f"{', '.join(s['unmatched_examples'])}); they were skipped")
    if s["unknown_labels"]:
        detail = ", ".join(f"{k} {v}" for k, v in s["unknown_labels"].items())
        print(f"rows with a pred_label outside the dataset's classes were skipped: {detail}")
    if s["renormalised"]:
        print(f"{s['renormalised']} rows' probabilities did not sum to 1 and were renormalised")
    if s["unmappable"]:
        detail = ", ".join(f"{k} {v}" for k, v in s["unmappable_by_class"].items())
        print(f"{s['unmappable']} images excluded: their class has no prediction column ({detail})")
    print(f"stored as run {outcome.run_id} in {args.db}")
    return 0
