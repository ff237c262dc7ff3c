"""`python -m pipeline evaluate`: evaluate a trained run on (another) dataset.

Cross-dataset validation: the model's classes are matched with the dataset's.
Probabilities are restricted to the shared classes and renormalised; images of
a class the model lacks are reported as unmappable and excluded. The result is
stored as its own run (kind 'evaluate', parent_run_id = the trained run).

Example:
  python -m pipeline evaluate --run latest --dataset fer2013 --root ~/data/fer2013
"""
from __future__ import annotations

import argparse

DATASETS = ("rafdb", "fer2013", "folder", "synthetic")


SHARED_OPTIONS = ('db', 'run', 'seed', 'device', 'quiet')  # added by pipeline.cli from pipeline.commands.options
SHARED_HELP = {'run': "trained run: id, unique prefix or 'latest' (default {default})", 'seed': "seed of the dataset's val hold-out (default {default})"}


def configure(parser: argparse.ArgumentParser) -> None:

    parser.epilog = __doc__.split("\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--classes", type=int, choices=(6, 7), default=7,
                        help="load the dataset with 7 emotions or 6 without Neutral (default 7)")
    parser.add_argument("--variant", choices=("aligned", "original"), default="aligned")
    parser.add_argument("--split", choices=("test", "val", "train", "all"), default="test",
                        help="which split(s) to evaluate (default test)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=256)


def run(args: argparse.Namespace) -> int:
    from pipeline.train.runner import DatasetSpec, EvaluateRunConfig, run_evaluate

    spec = DatasetSpec(name=args.dataset, root=args.root, num_classes=args.classes, variant=args.variant,
                       val_fraction=args.val_fraction, seed=args.seed)
    splits = ("train", "val", "test") if args.split == "all" else (args.split,)
    outcome = run_evaluate(EvaluateRunConfig(run=args.run, dataset=spec, splits=splits, device=args.device,
                                             db=args.db, batch_size=args.batch_size, quiet=args.quiet))
    s = outcome.summary
    print(f"evaluated run {s['parent_run_id']} on {args.dataset} ({s['split']}, classes {', '.join(s['classes'])}): "
          f"accuracy {s['accuracy']:.4f}, macro-F1 {s['macro_f1']:.4f} (n={s['n']})")
    if s["unmappable"]:
        detail = ", ".join(f"{k} {v}" for k, v in s["unmappable_by_class"].items())
        print(f"{s['unmappable']} images excluded as unmappable (classes the model lacks: {detail})")
    print(f"stored as run {outcome.run_id} in {args.db}")
    return 0
