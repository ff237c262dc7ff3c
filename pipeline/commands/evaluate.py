"""`python -m pipeline evaluate`: evaluate a trained run, or any model with a model card, on a dataset.

Cross-dataset validation: the model's classes are matched with the dataset's.
Probabilities are restricted to the shared classes and renormalised; images of
a class the model lacks are reported as unmappable and excluded. The result is
stored as its own run: kind 'evaluate' (parent_run_id = the trained run) for
--run, kind 'external' (the card recorded in its config) for --model.

Examples:
  python -m pipeline evaluate --run latest --dataset fer2013 --root ~/data/fer2013
  python -m pipeline evaluate --model models/resnet18.toml --dataset rafdb --root data/rafdb
  torchrun --nproc_per_node=2 -m pipeline -- evaluate --run latest --dataset rafdb --root data/rafdb
  python -m pipeline evaluate --run latest --dataset rafdb --root data/rafdb --shard 2/4   # one job of four
  python -m pipeline evaluate --run latest --dataset rafdb --root data/rafdb --merge-shards
"""
from __future__ import annotations

import argparse

DATASETS = ("rafdb", "fer2013", "folder", "synthetic")


SHARED_OPTIONS = ('db', 'run', 'seed', 'device', 'quiet')  # added by pipeline.cli from pipeline.commands.options
SHARED_HELP = {'run': "trained run: id, unique prefix or 'latest' (default {default})", 'seed': "seed of the dataset's val hold-out (default {default})"}


def configure(parser: argparse.ArgumentParser) -> None:
    from pipeline.commands.options import add_shard_options

    parser.epilog = __doc__.split("\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--model", default=None, metavar="CARD",
                        help="instead of --run: a model card (.toml) describing a TorchScript, PyTorch or ONNX "
                             "model (see README, 'Bring your own model')")
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--classes", type=int, choices=(6, 7), default=7,
                        help="load the dataset with 7 emotions or 6 without Neutral (default 7)")
    parser.add_argument("--variant", choices=("aligned", "original"), default="aligned")
    parser.add_argument("--split", choices=("test", "val", "train", "all"), default="test",
                        help="which split(s) to evaluate (default test)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="a checkpoint file you trust, instead of the run's own runs/<id>/best.pt "
                             "(loaded weights-only; its SHA-256 is stored with the new run)")
    add_shard_options(parser, "evaluate")


def run(args: argparse.Namespace) -> int:
    from pipeline.train.runner import DatasetSpec, EvaluateRunConfig, run_evaluate

    spec = DatasetSpec(name=args.dataset, root=args.root, num_classes=args.classes, variant=args.variant,
                       val_fraction=args.val_fraction, seed=args.seed)
    splits = ("train", "val", "test") if args.split == "all" else (args.split,)
    if args.model:
        from pipeline.errors import UserError
        from pipeline.external.evaluate import ExternalEvaluateConfig, run_evaluate_model
        from pipeline.train.distributed import launched_world

        if args.shard or args.merge_shards or launched_world().size > 1:
            raise UserError(f"--model {args.model} is evaluated in one process: drop --shard/--merge-shards "
                            f"and run it without torchrun")
        if args.run != "latest":
            raise UserError(f"give --run {args.run} (a trained run) or --model {args.model} (a model card), not both")
        outcome = run_evaluate_model(ExternalEvaluateConfig(card=args.model, dataset=spec, splits=splits,
                                                            db=args.db, batch_size=args.batch_size, quiet=args.quiet))
        s = outcome.summary
        what = f"model {s['model']} ({s['format']})"
    else:
        from pipeline.commands.options import parse_shard_options
        from pipeline.train.distributed import launched_group

        shard, merge = parse_shard_options(args)
        with launched_group(args.device) as (world, device):
            outcome = run_evaluate(EvaluateRunConfig(run=args.run, dataset=spec, splits=splits, device=device,
                                                     db=args.db, batch_size=args.batch_size, quiet=args.quiet,
                                                     checkpoint=args.checkpoint, shard=shard, merge_shards=merge),
                                   log=print if world.is_main or shard else _silent)
        if outcome.status == "shard":
            if world.is_main:
                print(f"shard {outcome.summary['shard']} written; once every shard is, store the run with "
                      f"the same command and --merge-shards instead of --shard")
            return 0
        s = outcome.summary
        what = f"run {s['parent_run_id']}"
    print(f"evaluated {what} on {args.dataset} ({s['split']}, classes {', '.join(s['classes'])}): "
          f"accuracy {s['accuracy']:.4f}, macro-F1 {s['macro_f1']:.4f} (n={s['n']})")
    if s.get("model_only_classes"):
        print(f"the model's classes {', '.join(s['model_only_classes'])} are not in the dataset: their "
              "probabilities are dropped and the rest renormalised")
    if s["unmappable"]:
        detail = ", ".join(f"{k} {v}" for k, v in s["unmappable_by_class"].items())
        print(f"{s['unmappable']} images excluded as unmappable (classes the model lacks: {detail})")
    print(f"stored as run {outcome.run_id} in {args.db}")
    return 0


def _silent(message: str) -> None:
    """The log of a torchrun rank other than 0: rank 0 speaks for the group."""
