"""`python -m pipeline train`: train a recipe on a dataset, evaluate it and store the run.

Examples:
  python -m pipeline train --dataset synthetic --root data/synthetic --recipe lightcnn-softlabel
  python -m pipeline train --dataset rafdb --root ~/data/RAF-DB --recipe resnet50-transfer --weights imagenet
  python -m pipeline train --resume 20261122-0315   # continue an interrupted run from its last checkpoint
  torchrun --nproc_per_node=2 -m pipeline -- train --dataset rafdb --root ~/data/RAF-DB   # DDP; --batch-size is global
"""
from __future__ import annotations

import argparse

DATASETS = ("rafdb", "fer2013", "folder", "synthetic")
RECIPE_NAMES = ("resnet50-transfer", "lightcnn-softlabel")
ARCHS = ("lightcnn", "lightcnn-half", "lightcnn-lite", "resnet18", "resnet50")


SHARED_OPTIONS = ('db', 'seed', 'device', 'quiet')  # added by pipeline.cli from pipeline.commands.options


def configure(parser: argparse.ArgumentParser) -> None:

    parser.epilog = __doc__.split("\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, help="dataset format (required unless --resume)")
    data.add_argument("--root", help="dataset folder (or fer2013.csv's folder)")
    data.add_argument("--classes", type=int, choices=(6, 7), default=None,
                      help="7 emotions, or 6 without Neutral (default: the recipe's: resnet50-transfer 7, "
                           "lightcnn-softlabel 6)")
    data.add_argument("--variant", choices=("aligned", "original"), default="aligned",
                      help="RAF-DB/synthetic image variant (default aligned)")
    data.add_argument("--val-fraction", type=float, default=0.1,
                      help="share of train held out for validation where the dataset has no val split (default 0.1)")
    data.add_argument("--label-source", choices=("hard", "soft"), default="hard",
                      help="where a soft label's most likely class is not the label file's (RAF-DB layouts): "
                           "hard = the label file wins, the image trains on it; soft = the soft label's class "
                           "becomes the image's label (default hard; every disagreement is listed)")
    model = parser.add_argument_group("model and training (defaults: the recipe's)")
    model.add_argument("--recipe", choices=RECIPE_NAMES, default="lightcnn-softlabel")
    model.add_argument("--preset", default=None, help="a named variant of the recipe, e.g. 'demo' of lightcnn-softlabel")
    model.add_argument("--arch", choices=ARCHS, default=None, help="override the recipe's architecture")
    model.add_argument("--weights", default=None,
                       help="imagenet | none | PATH of a state dict or checkpoint (default: the recipe's)")
    model.add_argument("--epochs", type=int)
    model.add_argument("--batch-size", type=int)
    model.add_argument("--lr", type=float, help="learning rate (the peak for --scheduler onecycle)")
    model.add_argument("--image-size", type=int, help="model input size in pixels")
    model.add_argument("--scheduler", choices=("none", "plateau", "onecycle"))
    model.add_argument("--loss", choices=("ce", "soft-ce", "focal"))
    model.add_argument("--class-weights", choices=("none", "sqrt", "balanced"))
    model.add_argument("--sampler", choices=("shuffle", "balanced"), help="balanced = class-balanced sampling")
    mitigation = parser.add_argument_group(
        "group mitigations (over demographic group x emotion cells of the train split)")
    mitigation.add_argument("--group-balance", choices=("none", "sample", "reweight"),
                            help="sample: draw every group x emotion cell equally often; reweight: weight each "
                                 "image's loss by 1/(its cell's count), within its emotion when the sampler "
                                 "already balances the emotions (see pipeline/train/loop.py)")
    mitigation.add_argument("--group-dro", action="store_true", default=None,
                            help="group DRO: minimise the loss of the worst group x emotion cell")
    mitigation.add_argument("--dro-step-size", type=float, help="group DRO's weight step (default 0.01)")
    mitigation.add_argument("--groups", metavar="ATTRS",
                            help="comma-separated attributes defining the groups: gender, race, age (default race)")
    model.add_argument("--colour-shift", type=float, metavar="S",
                       help="additive colour-shift augmentation up to ±S of the 0..1 range (e.g. 0.15; 0 = off): "
                            "skin tone and white balance vary while feature contrast stays")
    model.add_argument("--early-stopping", type=int, metavar="PATIENCE", help="epochs without improvement; 0 = off")
    model.add_argument("--progressive", metavar="SIZE:FRACTION",
                       help="progressive resizing: train the first FRACTION of the epochs on SIZE-pixel inputs "
                            "(e.g. 40:0.5, the demo preset's; about (SIZE/image size)^2 of an epoch's cost), "
                            "the rest at the model's size; 'off' = every epoch at the model's size")
    run = parser.add_argument_group("run")
    run.add_argument("--resume", metavar="RUN_OR_DIR",
                     help="continue an interrupted run (id, id prefix or runs/<id> folder) from its last.pt")
    run.add_argument("--stop-after", type=int, metavar="EPOCH",
                     help="stop after this epoch, resumable later with --resume (time-boxed sessions)")


# Command-line options that override one field of the recipe, or of its TrainConfig: (option dest, field).
RECIPE_OVERRIDES = (("classes", "num_classes"), ("arch", "arch"), ("image_size", "image_size"), ("weights", "weights"))
TRAIN_OVERRIDES = (("epochs", "epochs"), ("batch_size", "batch_size"), ("scheduler", "scheduler"), ("loss", "loss"),
                   ("class_weights", "class_weights"), ("sampler", "sampler"), ("group_balance", "group_balance"),
                   ("group_dro", "group_dro"), ("dro_step_size", "dro_step_size"))


def build_recipe(args: argparse.Namespace):
    """The recipe with the command line's overrides applied."""
    from dataclasses import replace

    from pipeline.errors import UserError
    from pipeline.train.recipes import get_recipe, with_image_size

    recipe = get_recipe(args.recipe, args.preset)
    top = {field: getattr(args, arg) for arg, field in RECIPE_OVERRIDES if getattr(args, arg) is not None}
    train = {field: getattr(args, arg) for arg, field in TRAIN_OVERRIDES if getattr(args, arg) is not None}
    train["seed"] = args.seed
    if args.lr is not None:
        scheduler = train.get("scheduler", recipe.train.scheduler)
        train["onecycle_max_lr" if scheduler == "onecycle" else "lr"] = args.lr
    if args.early_stopping is not None:
        train["early_stopping_patience"] = args.early_stopping or None
    if args.colour_shift is not None:
        if not 0.0 <= args.colour_shift <= 0.5:
            raise UserError(f"--colour-shift must be between 0 and 0.5, got {args.colour_shift}")
        train["augment"] = replace(recipe.train.augment, colour_shift=args.colour_shift)
    if args.progressive is not None:
        train["progressive_size"], train["progressive_fraction"] = parse_progressive(args.progressive)
    if args.groups is not None:
        train["group_attributes"] = tuple(a.strip() for a in args.groups.split(",") if a.strip())
    if args.dro_step_size is not None and args.dro_step_size <= 0:
        raise UserError(f"--dro-step-size must be positive, got {args.dro_step_size}")
    if recipe.arch.startswith("resnet") and top.get("arch", recipe.arch).startswith("lightcnn"):
        train["frozen_modules"] = ()
    if "image_size" in top and args.progressive is None:
        recipe, note = with_image_size(recipe, top["image_size"])
        if note:
            print(note)
    return replace(recipe, **top, train=replace(recipe.train, **train))


def parse_progressive(text: str) -> tuple[int | None, float]:
    """`--progressive SIZE:FRACTION` (or 'off') -> (progressive_size, progressive_fraction)."""
    from pipeline.errors import UserError

    if text.strip().lower() in ("off", "none", "0"):
        return None, 0.0
    size, sep, fraction = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(size), float(fraction)
    except ValueError:
        raise UserError(f"--progressive takes SIZE:FRACTION (e.g. 40:0.5) or 'off', got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import UserError
    from pipeline.train.distributed import launched_group
    from pipeline.train.runner import DatasetSpec, TrainRunConfig, resolve_device, run_train

    if args.resume is None and (args.dataset is None or args.root is None):
        raise UserError("train needs --dataset and --root (or --resume RUN to continue a run)")
    recipe = build_recipe(args)
    spec = DatasetSpec(name=args.dataset or "", root=args.root or "", num_classes=recipe.num_classes,
                       variant=args.variant, val_fraction=args.val_fraction, seed=args.seed,
                       label_source=args.label_source)
    with launched_group(args.device) as (world, device):
        config = TrainRunConfig(dataset=spec, recipe=recipe, weights=recipe.weights, device=resolve_device(device),
                                db=args.db, resume=args.resume, stop_after=args.stop_after, quiet=args.quiet)
        outcome = run_train(config)
    if outcome.status == "worker":
        return 0
    s = outcome.summary
    if outcome.status == "stopped":
        print(f"run {outcome.run_id} stopped after {s['epochs']} epochs; "
              f"continue with: python -m pipeline train --resume {outcome.run_id} --db {args.db}")
        return 0
    print(f"run {outcome.run_id} complete: test accuracy {s['test_accuracy']:.4f}, macro-F1 {s['test_macro_f1']:.4f} "
          f"(n={s['n_test']}), best epoch {s['best_epoch']}/{s['epochs']}")
    print(f"checkpoints in {s['run_dir']}; results in {args.db}")
    return 0
