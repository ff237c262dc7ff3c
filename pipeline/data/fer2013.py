"""FER2013 loader: `fer2013.csv` with columns emotion, pixels, Usage.

Rules:
- `root` is the folder holding fer2013.csv (also found one level down, in
  `fer2013/`, as Kaggle's archive unpacks), or the CSV file itself. Column
  names are matched ignoring case and surrounding spaces (the ICML copy of the
  file writes " Usage" and " pixels").
- Emotion codes 0..6 map through `constants.FER2013_CODE_TO_EMOTION` to the
  project's emotion names; labels index `FaceDataset.classes` (EMOTIONS order).
- Usage: Training -> "train", PublicTest -> "val", PrivateTest -> "test" (the
  official split; `val_fraction` is not used). All three must be non-empty.
- Records hold the pixels (48x48 uint8), path None, image_id `fer_<row>` with
  the 0-based data row number (header excluded), zero-padded to 6 digits.
- A malformed pixel row (wrong count, non-numbers, values outside 0..255) is
  skipped and counted in `FaceDataset.skipped` with its line number: one bad
  row in 35,887 should not block a run, and the count is reported. A bad
  emotion code or Usage value is a `DatasetError` naming the line, since it
  would put an image in the wrong class or split.
- The fingerprint hashes the CSV's bytes.
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np

from pipeline.constants import FER2013_CODE_TO_EMOTION, emotions_for
from pipeline.data.common import (
    check_options, check_root, check_splits_present, compute_fingerprint, hash_file,
)
from pipeline.errors import DatasetError
from pipeline.data.records import FaceDataset, ImageRecord

CSV_NAME = "fer2013.csv"
FER_SIZE = 48
USAGE_TO_SPLIT: dict[str, str] = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
REQUIRED_COLUMNS: tuple[str, ...] = ("emotion", "pixels", "usage")


def find_fer2013_csv(root: Path) -> Path:
    root = check_root(root, "FER2013")
    if root.is_file():
        return root
    for candidate in (root / CSV_NAME, root / "fer2013" / CSV_NAME):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"FER2013 file not found: {root / CSV_NAME}; put fer2013.csv (columns emotion, "
                       "pixels, Usage) in the dataset root, or pass the CSV itself as the root")


def _parse_pixels(text: str) -> np.ndarray | None:
    """48x48 uint8 from a space-separated pixel string, or None when malformed."""
    try:
        # fromstring(sep=" ") is ~5x faster than split(); with warnings as errors it
        # rejects any token that is not an integer instead of stopping early.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            values = np.fromstring(text, dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning):
        return None
    if values.size != FER_SIZE * FER_SIZE or values.min() < 0 or values.max() > 255:
        return None
    return values.astype(np.uint8).reshape(FER_SIZE, FER_SIZE)


def load_fer2013(root: Path, num_classes: int = 7, variant: str = "aligned", val_fraction: float = 0.1,
                 seed: int = 0, verify_images: bool = False) -> FaceDataset:
    """Load FER2013 from its CSV (see the module docstring). variant, val_fraction, seed
    and verify_images are accepted for a uniform signature and do not change the result
    (pixel rows are always validated)."""
    # Long on purpose: one pass over the CSV that validates, counts and reports each bad row with its line
    # number; split helpers would each re-walk the rows.
    check_options(num_classes, variant, val_fraction)
    path = find_fer2013_csv(Path(root))
    classes = emotions_for(num_classes)
    records: list[ImageRecord] = []
    skipped: list[tuple[str, str]] = []
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetError(f"{path} is empty; expected a header `emotion,pixels,Usage` and one row "
                               "per image") from None
        except csv.Error as exc:
            raise DatasetError(f"{path}:1: {exc}") from None
        columns = [c.strip().lower() for c in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; found {header}. "
                               "FER2013 needs emotion, pixels and Usage")
        i_emotion, i_pixels, i_usage = (columns.index(c) for c in REQUIRED_COLUMNS)
        width = max(i_emotion, i_pixels, i_usage) + 1
        row_number = -1
        try:
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                row_number += 1
                where = f"{path}:{line}"
                if len(row) < width:
                    skipped.append((where, f"malformed row: {len(row)} fields, expected {len(header)}"))
                    continue
                code_text, usage = row[i_emotion].strip(), row[i_usage].strip()
                try:
                    code = int(code_text)
                except ValueError:
                    raise DatasetError(f"{where}: emotion {code_text!r} is not an integer 0-6") from None
                if code not in FER2013_CODE_TO_EMOTION:
                    raise DatasetError(f"{where}: emotion code {code} out of range; FER2013 codes are 0-6 "
                                       f"({', '.join(f'{k}={v}' for k, v in FER2013_CODE_TO_EMOTION.items())})")
                if usage not in USAGE_TO_SPLIT:
                    raise DatasetError(f"{where}: Usage {usage!r} unknown; expected one of "
                                       f"{', '.join(USAGE_TO_SPLIT)}")
                pixels = _parse_pixels(row[i_pixels])
                if pixels is None:
                    skipped.append((where, f"malformed pixels: expected {FER_SIZE * FER_SIZE} integers 0-255"))
                    continue
                emotion = FER2013_CODE_TO_EMOTION[code]
                if emotion not in classes:
                    continue
                records.append(ImageRecord(
                    image_id=f"fer_{row_number:06d}", split=USAGE_TO_SPLIT[usage],
                    label=classes.index(emotion), pixels=pixels,
                ))
        except csv.Error as exc:
            raise DatasetError(f"{path}:{reader.line_num}: {exc}") from None
    check_splits_present(records, ("train", "val", "test"), path,
                         hint="FER2013 needs Training, PublicTest and PrivateTest rows")
    return FaceDataset(
        name="fer2013", root=Path(root).expanduser().resolve(), classes=classes, records=records,
        fingerprint=compute_fingerprint("fer2013", [hash_file(path)]),
        skipped=skipped, image_size=FER_SIZE,
    )
