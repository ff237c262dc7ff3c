"""Pieces every dataset loader shares: the validation hold-out, fingerprints, checks.

The validation hold-out is stratified and seeded per class: each class's train
images are sorted by id and shuffled with a generator seeded by (seed, emotion
index), and the first round(val_fraction * n_class) go to "val". Because label
indices mean the same emotion in the 6- and 7-class modes, a 6-class and a
7-class load of the same data hold out the same images of the six shared
classes, and the result never depends on the order of lines in a label file.
"""
from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.constants import EMOTIONS
from pipeline.errors import DatasetError, UserError
from pipeline.data.records import ImageRecord

VARIANTS: tuple[str, ...] = ("aligned", "original")


def check_options(num_classes: int, variant: str, val_fraction: float) -> None:
    """Raise `UserError` on loading options outside their range."""
    if num_classes not in (6, 7):
        raise UserError(f"num_classes must be 6 or 7, got {num_classes!r}")
    if variant not in VARIANTS:
        raise UserError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction!r}")


def check_root(root: Path, what: str) -> Path:
    # Absolute, so record paths stay valid from any working directory (the store keeps them).
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise DatasetError(f"{what} root not found: {root}; point --root at the dataset folder")
    return root


def read_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, whitespace-split fields) of every non-blank line of a text file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if fields:
            out.append((number, fields))
    return out


def compute_val_ids(ids: Sequence[str], labels: Sequence[int], val_fraction: float,
                    seed: int) -> set[str]:
    """The ids held out for validation: stratified by label, seeded, order-independent.

    Each class keeps at least one image in train; round-half-up per class.
    """
    if val_fraction <= 0:
        return set()
    by_class: dict[int, list[str]] = defaultdict(list)
    for image_id, label in zip(ids, labels, strict=True):
        by_class[int(label)].append(image_id)
    held: set[str] = set()
    for label, members in by_class.items():
        members = sorted(members)
        quota = min(math.floor(val_fraction * len(members) + 0.5), len(members) - 1)
        if quota <= 0:
            continue
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, label])
        order = rng.permutation(len(members))
        held.update(members[i] for i in order[:quota])
    return held


def create_val_split(records: list[ImageRecord], classes: Sequence[str], val_fraction: float,
                     seed: int, source: Path) -> list[ImageRecord]:
    """Move a stratified, seeded `val_fraction` of the train records to split "val"."""
    if val_fraction <= 0:
        return records
    train = [r for r in records if r.split == "train"]
    # Stratify on the emotion index (not the class index) so 6/7-class loads agree.
    emotion_index = [EMOTIONS.index(classes[r.label]) for r in train]
    held = compute_val_ids([r.image_id for r in train], emotion_index, val_fraction, seed)
    if not held:
        raise DatasetError(
            f"val_fraction={val_fraction} holds out no image of the {len(train)} train images "
            f"of {source}; use a larger val_fraction, or 0 for no validation split")
    return [replace(r, split="val") if r.image_id in held else r for r in records]


def check_unique_ids(records: Iterable[ImageRecord], source: Path) -> None:
    seen: set[str] = set()
    for r in records:
        if r.image_id in seen:
            raise DatasetError(f"duplicate image id {r.image_id!r} in {source}; each image may appear once")
        seen.add(r.image_id)


def check_splits_present(records: Sequence[ImageRecord], required: Iterable[str], source: Path,
                         hint: str = "") -> None:
    present = {r.split for r in records}
    for split in required:
        if split not in present:
            extra = f"; {hint}" if hint else ""
            raise DatasetError(f"{source}: the {split!r} split is empty{extra}")


def compute_fingerprint(kind: str, parts: Iterable[bytes]) -> str:
    """A stable short hash of a dataset's identity on disk: `<kind>-<16 hex digits>`."""
    h = hashlib.sha256(kind.encode())
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return f"{kind}-{h.hexdigest()[:16]}"


def hash_file(path: Path, chunk: int = 1 << 20) -> bytes:
    """SHA-256 digest of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.digest()
