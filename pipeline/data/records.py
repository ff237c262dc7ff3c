"""The one record structure every dataset loader returns.

A loader turns a dataset on disk into a `FaceDataset`: a class list and a list
of `ImageRecord`s. Labels are indices into `FaceDataset.classes`, whose names
come from `pipeline.constants.EMOTIONS` and keep its order. Demographic codes
use RAF-DB's manual-attribute vocabulary (`constants.GENDERS`, `RACES`,
`AGE_GROUPS`) and always say where they came from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ImageRecord:
    image_id: str                      # unique within the dataset, e.g. "train_00001"
    split: str                         # "train" | "val" | "test"
    label: int                         # index into FaceDataset.classes
    path: Path | None = None           # image file, or None when pixels are held
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)  # HxW or HxWx3 uint8
    soft_label: tuple[float, ...] | None = None   # distribution over FaceDataset.classes, sums to 1
    gender: int | None = None          # constants.GENDERS code
    race: int | None = None            # constants.RACES code
    age: int | None = None             # constants.AGE_GROUPS code
    demographics_source: str | None = None  # "annotations" when the dataset ships them
    landmarks: tuple[tuple[float, float], ...] | None = None  # 5 points (eyes, nose, mouth corners) in image pixels
    occluder: str | None = None        # e.g. "sunglasses", "hand", "hat" where the dataset marks it


@dataclass
class FaceDataset:
    name: str                          # "rafdb" | "fer2013" | "folder" | "synthetic"
    root: Path
    classes: tuple[str, ...]
    records: list[ImageRecord]
    fingerprint: str                   # stable hash of the data's identity on disk (never the loading options)
    is_synthetic: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): dropped items and annotation gaps, reported at the end
    image_size: int | None = None      # native size where known (100 for aligned RAF-DB)
    label_conflicts: list[tuple[str, str]] = field(default_factory=list)  # (file:line, what): soft vs hard label disagreements

    def split(self, name: str) -> list[ImageRecord]:
        return [r for r in self.records if r.split == name]

    def class_counts(self, split: str | None = None) -> dict[str, int]:
        counts = {c: 0 for c in self.classes}
        for r in self.records:
            if split is None or r.split == split:
                counts[self.classes[r.label]] += 1
        return counts
