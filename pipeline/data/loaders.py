"""Dataset loaders: one entry point from a dataset name and a folder to a `FaceDataset`.

`load_dataset(name, root, **dataset_kwargs)` dispatches to the loader of each
format (RAF-DB basic, FER2013, folder-per-class, the built-in synthetic set);
`dataset_kwargs` are plain JSON values, stored in run configs and passed back
unchanged to reload the same data. Every loader returns labels indexing
`FaceDataset.classes` (names from `constants.EMOTIONS`, in its order), raises
`DatasetError` naming the file (and line) on bad input, and lists the few
things it deliberately skipped in `FaceDataset.skipped`.

`compute_dataset_summary` is the pure description `inspect` prints.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline.constants import AGE_GROUPS, GENDERS, RACES, SPLITS
from pipeline.data.fer2013 import load_fer2013
from pipeline.data.folder import load_folder
from pipeline.data.rafdb import load_rafdb, load_synthetic
from pipeline.errors import UserError
from pipeline.data.records import FaceDataset

LOADERS = {
    "rafdb": load_rafdb,
    "fer2013": load_fer2013,
    "folder": load_folder,
    "synthetic": load_synthetic,
}
DATASET_NAMES: tuple[str, ...] = tuple(LOADERS)

__all__ = ["DATASET_NAMES", "load_dataset", "load_rafdb", "load_fer2013", "load_folder",
           "load_synthetic", "compute_dataset_summary"]


# Loaders of layouts with soft labels, which take `label_source` (which label wins when they disagree).
SOFT_LABEL_LOADERS = frozenset({"rafdb", "synthetic"})


def load_dataset(name: str, root: str | Path, num_classes: int = 7, variant: str = "aligned",
                 val_fraction: float = 0.1, seed: int = 0, verify_images: bool = False,
                 label_source: str = "hard") -> FaceDataset:
    """Load dataset `name` ("rafdb" | "fer2013" | "folder" | "synthetic") from `root`.

    num_classes: 7, or 6 without Neutral. variant: RAF-DB/synthetic "aligned"
    crops or "original" frames (ignored by other formats). val_fraction, seed:
    the stratified hold-out of train that becomes "val" where the dataset has no
    official validation split (FER2013 and folders with a val folder have one).
    verify_images: fully decode every image file now rather than at first use.
    label_source: "hard" or "soft", which wins where a soft label's most likely
    class is not the hard label (RAF-DB layouts; see `FaceDataset.label_conflicts`).
    """
    if name not in LOADERS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    extra = {"label_source": label_source} if name in SOFT_LABEL_LOADERS else {}
    return LOADERS[name](Path(root), num_classes=num_classes, variant=variant,
                         val_fraction=val_fraction, seed=seed, verify_images=verify_images, **extra)


def compute_dataset_summary(dataset: FaceDataset) -> dict:
    """Counts describing a dataset: per split and class, demographics, occluders, skips."""
    splits = [s for s in SPLITS if any(r.split == s for r in dataset.records)]
    class_counts = {s: dataset.class_counts(s) for s in splits}
    demographics: dict[str, dict[str, int]] = {}
    for attr, vocabulary in (("gender", GENDERS), ("race", RACES), ("age", AGE_GROUPS)):
        counts = Counter(getattr(r, attr) for r in dataset.records)
        demographics[attr] = {vocabulary[k]: counts[k] for k in vocabulary if counts[k]}
        if counts[None]:
            demographics[attr]["unknown"] = counts[None]
    sources = Counter(r.demographics_source or "none" for r in dataset.records)
    occluders = Counter(r.occluder for r in dataset.records if r.occluder is not None)
    skip_reasons = Counter(reason.split(":")[0] for _, reason in dataset.skipped)
    return {
        "name": dataset.name,
        "root": str(dataset.root),
        "fingerprint": dataset.fingerprint,
        "is_synthetic": dataset.is_synthetic,
        "image_size": dataset.image_size,
        "classes": list(dataset.classes),
        "n_images": len(dataset.records),
        "split_sizes": {s: sum(class_counts[s].values()) for s in splits},
        "class_counts": class_counts,
        "soft_labels": sum(r.soft_label is not None for r in dataset.records),
        "landmarks": sum(r.landmarks is not None for r in dataset.records),
        "demographics_sources": dict(sources),
        "demographics": demographics,
        "occluders": dict(occluders),
        "n_skipped": len(dataset.skipped),
        "skip_reasons": dict(skip_reasons),
    }
