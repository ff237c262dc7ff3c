"""`python -m pipeline inspect`: load a dataset and print its splits, classes,
demographics and what the loader skipped — a check before training on it."""
from __future__ import annotations

import argparse
from pathlib import Path

DATASETS = ("rafdb", "fer2013", "folder", "synthetic")  # keep in step with datasets.DATASET_NAMES
MAX_SKIPS_SHOWN = 10


SHARED_OPTIONS = ('seed',)  # added by pipeline.cli from pipeline.commands.options
SHARED_HELP = {'seed': 'seed of the validation hold-out (default {default})'}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="dataset format")
    parser.add_argument("--root", type=Path, default=None,
                        help="dataset folder (default for synthetic: data/synthetic)")
    parser.add_argument("--classes", type=int, choices=(6, 7), default=7,
                        help="7 emotions, or 6 without Neutral")
    parser.add_argument("--variant", choices=("aligned", "original"), default="aligned",
                        help="RAF-DB/synthetic image variant")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of train held out as val where there is no official val split")
    parser.add_argument("--verify-images", action="store_true",
                        help="decode every image file to find corrupt ones")


def render_summary(summary: dict, skipped: list[tuple[str, str]]) -> str:
    """The text `inspect` prints for a `compute_dataset_summary` result."""
    lines = [
        f"dataset      {summary['name']}" + ("  (synthetic)" if summary["is_synthetic"] else ""),
        f"root         {summary['root']}",
        f"fingerprint  {summary['fingerprint']}",
        f"image size   {summary['image_size'] or 'varies'}",
        f"classes      {len(summary['classes'])}: {', '.join(summary['classes'])}",
        f"images       {summary['n_images']}  "
        f"(soft labels {summary['soft_labels']}, landmarks {summary['landmarks']})",
        "",
    ]
    splits = list(summary["split_sizes"])
    width = max([len(c) for c in summary["classes"]] + [5])
    lines.append(f"{'class':<{width}}  " + "  ".join(f"{s:>7}" for s in splits) + f"  {'total':>7}")
    for c in summary["classes"]:
        row = [summary["class_counts"][s][c] for s in splits]
        lines.append(f"{c:<{width}}  " + "  ".join(f"{n:>7}" for n in row) + f"  {sum(row):>7}")
    sizes = [summary["split_sizes"][s] for s in splits]
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{n:>7}" for n in sizes) + f"  {sum(sizes):>7}")
    lines.append("")
    sources = ", ".join(f"{k} {v}" for k, v in summary["demographics_sources"].items())
    lines.append(f"demographics (source: {sources})")
    for attr, counts in summary["demographics"].items():
        lines.append(f"  {attr:<7} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if summary["occluders"]:
        lines.append("occluders    " + ", ".join(f"{k} {v}" for k, v in sorted(summary["occluders"].items())))
    lines.append("")
    lines.append(f"skipped      {summary['n_skipped']}")
    for reason, n in summary["skip_reasons"].items():
        lines.append(f"  {n:>6}  {reason}")
    for path, reason in skipped[:MAX_SKIPS_SHOWN]:
        lines.append(f"  {path}: {reason}")
    if len(skipped) > MAX_SKIPS_SHOWN:
        lines.append(f"  ... and {len(skipped) - MAX_SKIPS_SHOWN} more")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from pipeline.data.loaders import compute_dataset_summary, load_dataset
    from pipeline.errors import UserError
    from pipeline.paths import DEFAULT_SYNTHETIC_DIR

    root = args.root
    if root is None:
        if args.dataset != "synthetic":
            raise UserError(f"--root is required for dataset {args.dataset!r}")
        root = DEFAULT_SYNTHETIC_DIR
    dataset = load_dataset(args.dataset, root, num_classes=args.classes, variant=args.variant,
                           val_fraction=args.val_fraction, seed=args.seed,
                           verify_images=args.verify_images)
    print(render_summary(compute_dataset_summary(dataset), dataset.skipped))
    return 0
