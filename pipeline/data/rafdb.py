"""RAF-DB basic loader, and the built-in synthetic set read through it.

Layout (RAF-DB basic, official file names, including the "patition" typo):
  EmoLabel/list_patition_label.txt        `train_00001.jpg 5`, codes 1..7 = constants.EMOTIONS
  EmoLabel/distribution_basic.txt         optional soft labels: `train_00001.jpg p1 .. p7`
  Image/aligned/train_00001_aligned.jpg   100x100 aligned crops (variant "aligned", the default)
  Image/original/train_00001.jpg          full frames (variant "original")
  Annotation/manual/train_00001_manu_attri.txt
                                          5 landmark lines `x y` (ORIGINAL-image coordinates),
                                          then gender, race, age codes (constants.GENDERS/RACES/AGE_GROUPS)

Rules:
- Official split from the name prefix (train_/test_); "val" is a seeded,
  stratified hold-out of train (`datasets_common.create_val_split`).
- 6-class mode drops Neutral images and renormalises soft labels over the six.
- A soft label whose most likely class is not the label file's class is a
  conflict: every one is listed in `FaceDataset.label_conflicts` (soft-label
  file:line, the two classes), and `label_source` says which wins: "hard"
  (default; the image trains on its hard label, as one-hot) or "soft" (its
  label becomes the soft label's most likely class).
- Landmarks are in the coordinates of the image at `record.path`: the manual
  ones for variant "original"; none for real aligned crops (downstream uses a
  canonical template); the synthetic set's own aligned landmark file for
  synthetic aligned crops.
- A missing attribute file leaves that image's demographics None and is
  counted in `FaceDataset.skipped`; every other inconsistency (bad line, code
  out of range, image listed but missing, duplicate id, empty split) is a
  `DatasetError` naming the file and line.
- The fingerprint hashes the label file, the soft-label file and every manual
  attribute file, never the loading options, so 6/7-class and aligned/original
  loads of one dataset share it (and their demographics).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.constants import AGE_GROUPS, ALIGNED_SIZE, EMOTIONS, GENDERS, RACES, emotions_for
from pipeline.data.common import (
    check_options, check_root, check_splits_present, compute_fingerprint, create_val_split,
    read_lines,
)
from pipeline.errors import DatasetError, UserError
from pipeline.data.records import FaceDataset, ImageRecord

LABEL_FILE = Path("EmoLabel/list_patition_label.txt")
SOFT_LABEL_FILE = Path("EmoLabel/distribution_basic.txt")
MANUAL_DIR = Path("Annotation/manual")
IMAGE_DIRS = {"aligned": Path("Image/aligned"), "original": Path("Image/original")}
SYNTHETIC_DIR = Path("Synthetic")
SYNTHETIC_MANIFEST = SYNTHETIC_DIR / "manifest.json"
SYNTHETIC_LANDMARKS = SYNTHETIC_DIR / "aligned_landmarks.txt"
SYNTHETIC_OCCLUDERS = SYNTHETIC_DIR / "occluders.txt"

DEMOGRAPHICS_SOURCE = "annotations"
SOFT_LABEL_TOLERANCE = 0.01  # a distribution line must sum to 1 within this


@dataclass(frozen=True)
class _Entry:
    name: str       # as in the label file, e.g. "train_00001.jpg"
    image_id: str   # "train_00001"
    split: str      # "train" | "test"
    code: int       # 1..7
    line: int


@dataclass(frozen=True)
class _Attributes:
    landmarks: tuple[tuple[float, float], ...]
    gender: int
    race: int
    age: int


def _parse_label_file(path: Path) -> list[_Entry]:
    if not path.is_file():
        raise DatasetError(
            f"RAF-DB label file not found: {path}; expected the RAF-DB basic layout "
            f"(EmoLabel/list_patition_label.txt, Image/aligned/...) under the dataset root")
    entries: list[_Entry] = []
    seen: dict[str, int] = {}
    for number, fields in read_lines(path):
        where = f"{path}:{number}"
        if len(fields) != 2:
            raise DatasetError(f"{where}: expected `<image name> <label 1-7>`, got {' '.join(fields)!r}")
        name, code_text = fields
        try:
            code = int(code_text)
        except ValueError:
            raise DatasetError(f"{where}: label {code_text!r} is not an integer 1-7") from None
        if not 1 <= code <= len(EMOTIONS):
            raise DatasetError(f"{where}: label {code} out of range; RAF-DB basic labels are 1-7 "
                               f"({', '.join(f'{i + 1}={e}' for i, e in enumerate(EMOTIONS))})")
        image_id = Path(name).stem
        if image_id.startswith("train_"):
            split = "train"
        elif image_id.startswith("test_"):
            split = "test"
        else:
            raise DatasetError(f"{where}: image name {name!r} must start with 'train_' or 'test_' "
                               "(RAF-DB's official split is read from the name)")
        if image_id in seen:
            raise DatasetError(f"{where}: duplicate image {name!r} (first listed on line {seen[image_id]})")
        seen[image_id] = number
        entries.append(_Entry(name, image_id, split, code, number))
    if not entries:
        raise DatasetError(f"RAF-DB label file {path} lists no images")
    return entries


LABEL_SOURCES: tuple[str, ...] = ("hard", "soft")


def _parse_soft_labels(path: Path) -> dict[str, tuple[tuple[float, ...], int]]:
    """image id -> (distribution over the seven RAF codes normalised to sum to 1, line number)."""
    out: dict[str, tuple[tuple[float, ...], int]] = {}
    for number, fields in read_lines(path):
        where = f"{path}:{number}"
        if len(fields) != 1 + len(EMOTIONS):
            raise DatasetError(f"{where}: expected an image name and {len(EMOTIONS)} probabilities, "
                               f"got {len(fields)} fields")
        try:
            probs = [float(x) for x in fields[1:]]
        except ValueError:
            raise DatasetError(f"{where}: probabilities must be numbers, got {' '.join(fields[1:])!r}") from None
        total = sum(probs)
        if any(not math.isfinite(p) or p < 0 for p in probs) or abs(total - 1) > SOFT_LABEL_TOLERANCE:
            raise DatasetError(f"{where}: probabilities must be non-negative and sum to 1, "
                               f"got {probs} (sum {total:.4f})")
        image_id = Path(fields[0]).stem
        if image_id in out:
            raise DatasetError(f"{where}: duplicate image {fields[0]!r}")
        out[image_id] = (tuple(p / total for p in probs), number)
    return out


def _parse_attributes(path: Path, text: str) -> _Attributes:
    rows = [(i, line.split()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if len(rows) < 8:
        raise DatasetError(f"{path}: expected 5 landmark lines then gender, race and age codes "
                           f"(8 lines), found {len(rows)}")
    points = []
    for number, fields in rows[:5]:
        try:
            if len(fields) != 2:
                raise ValueError
            points.append((float(fields[0]), float(fields[1])))
        except ValueError:
            raise DatasetError(f"{path}:{number}: expected a landmark `x y`, got {' '.join(fields)!r}") from None
    codes = []
    for (number, fields), (what, vocabulary) in zip(
            rows[5:8], (("gender", GENDERS), ("race", RACES), ("age", AGE_GROUPS))):
        try:
            if len(fields) != 1:
                raise ValueError
            code = int(fields[0])
        except ValueError:
            raise DatasetError(f"{path}:{number}: expected the {what} code, got {' '.join(fields)!r}") from None
        if code not in vocabulary:
            raise DatasetError(f"{path}:{number}: {what} code {code} out of range; expected one of "
                               f"{', '.join(f'{k}={v}' for k, v in vocabulary.items())}")
        codes.append(code)
    return _Attributes(tuple(points), *codes)


def _list_dir(path: Path) -> set[str]:
    try:
        return set(os.listdir(path))
    except FileNotFoundError:
        return set()


def _image_name(entry: _Entry, variant: str) -> str:
    if variant == "aligned":
        return f"{entry.image_id}_aligned.jpg"
    return entry.name


@dataclass(frozen=True)
class _Layout:
    """One RAF-DB layout's files, parsed and cross-checked (independent of the loading options)."""
    entries: list[_Entry]
    soft: dict | None
    image_dir: Path
    attributes: dict[str, _Attributes]
    fingerprint: str
    skipped: tuple[tuple[str, str], ...]


# Parsed layouts of this process, keyed on (root, variant) and valid while `_layout_signature`
# is unchanged: the demo loads its 7,000 faces in three stages, and parsing took 1.9 s each.
# As git does with its index, a layout with a file modified within one timestamp tick of its
# read is not kept: a same-size edit in that tick would not change the signature. The tick is
# at most a scheduler tick (10 ms) on file systems with sub-second times, up to 2 s on those
# without (FAT); the windows below cover both.
_LAYOUTS: dict[tuple[str, str], tuple[tuple, _Layout]] = {}
_LAYOUT_CACHE_SIZE = 4
_RACY_NS_FINE, _RACY_NS_COARSE = 100_000_000, 2_000_000_000


def _layout_signature(root: Path, variant: str) -> tuple:
    """Size, mtime and inode of every file the layout is read from, and of the image folder
    (its mtime changes when an image is added or removed); any edit changes it."""
    def stat_of(path: Path) -> tuple | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns, st.st_ino

    manual = []
    try:
        with os.scandir(root / MANUAL_DIR) as it:
            for entry in it:
                st = entry.stat()
                manual.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ino))
    except OSError:
        pass
    return (stat_of(root / LABEL_FILE), stat_of(root / SOFT_LABEL_FILE), stat_of(root / IMAGE_DIRS[variant]),
            stat_of(root / MANUAL_DIR), tuple(sorted(manual)))


def _is_racy(signature: tuple, read_at_ns: int) -> bool:
    """Whether a file of the layout was modified so shortly before `read_at_ns` that a later
    same-size edit could keep its timestamp (the window depends on the times' resolution)."""
    *files, manual = signature
    mtimes = [f[1] for f in files if f is not None] + [m[2] for m in manual]
    if not mtimes:
        return False
    coarse = all(t % 1_000_000_000 == 0 for t in mtimes)
    return read_at_ns - max(mtimes) < (_RACY_NS_COARSE if coarse else _RACY_NS_FINE)


def _now_ns() -> int:
    return time.time_ns()


def _read_layout(root: Path, variant: str) -> _Layout:
    """`_parse_layout`, from this process's cache when no file of the layout changed since."""
    key = (str(root.resolve()), variant)
    read_at = _now_ns()
    signature = _layout_signature(root, variant)
    cached = _LAYOUTS.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    layout = _parse_layout(root, variant)
    _LAYOUTS.pop(key, None)
    if _is_racy(signature, read_at):
        return layout
    while len(_LAYOUTS) >= _LAYOUT_CACHE_SIZE:
        _LAYOUTS.pop(next(iter(_LAYOUTS)))
    _LAYOUTS[key] = (signature, layout)
    return layout


def _parse_layout(root: Path, variant: str) -> _Layout:
    # Long on purpose: reads the label, soft-label and attribute files of one RAF-DB layout and cross-checks
    # them line by line (file:line in every message); the checks share the parsed state.
    label_path = root / LABEL_FILE
    entries = _parse_label_file(label_path)

    soft_path = root / SOFT_LABEL_FILE
    soft = _parse_soft_labels(soft_path) if soft_path.is_file() else None
    if soft is not None:
        missing = [e for e in entries if e.image_id not in soft]
        if missing:
            raise DatasetError(f"{soft_path} has no line for {missing[0].name} ({len(missing)} images of "
                               f"{label_path} missing); complete it, or remove it to use hard labels")

    image_dir = root / IMAGE_DIRS[variant]
    if not image_dir.is_dir():
        other = "original" if variant == "aligned" else "aligned"
        raise DatasetError(f"image folder not found: {image_dir}; check the dataset root, "
                           f"or load variant={other!r}")
    present = _list_dir(image_dir)
    for e in entries:
        if _image_name(e, variant) not in present:
            raise DatasetError(f"image listed in {label_path}:{e.line} is missing: "
                               f"{image_dir / _image_name(e, variant)}; restore it or remove its line")

    # Manual attributes: read for every listed image (whatever the mode) so the
    # fingerprint does not depend on the loading options.
    manual_dir = root / MANUAL_DIR
    attr_files = _list_dir(manual_dir)
    skipped: list[tuple[str, str]] = []
    attributes: dict[str, _Attributes] = {}
    fingerprint_parts = [label_path.read_bytes(), soft_path.read_bytes() if soft is not None else b""]
    if not attr_files:
        skipped.append((str(manual_dir), "no manual attribute files: demographics unknown for every image"))
    for e in entries:
        attr_name = f"{e.image_id}_manu_attri.txt"
        fingerprint_parts.append(attr_name.encode())
        if attr_name not in attr_files:
            fingerprint_parts.append(b"<missing>")
            if attr_files:
                skipped.append((str(manual_dir / attr_name),
                                f"missing manual attribute file: demographics unknown for {e.image_id}"))
            continue
        attr_path = manual_dir / attr_name
        data = attr_path.read_bytes()
        fingerprint_parts.append(data)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"cannot read {attr_path}: {exc}") from None
        attributes[e.image_id] = _parse_attributes(attr_path, text)
    return _Layout(entries=entries, soft=soft, image_dir=image_dir, attributes=attributes,
                   fingerprint=compute_fingerprint("rafdb", fingerprint_parts), skipped=tuple(skipped))


def _load_raf_layout(root: Path, num_classes: int, variant: str, val_fraction: float, seed: int,
                     verify_images: bool, name: str, label_source: str = "hard") -> FaceDataset:
    # Long on purpose: one pass over the layout's entries builds every record (class mapping, soft label
    # and its conflicts with the hard label, attributes), then the split checks and the val hold-out.
    check_options(num_classes, variant, val_fraction)
    if label_source not in LABEL_SOURCES:
        raise UserError(f"label_source must be one of {', '.join(LABEL_SOURCES)}, got {label_source!r}")
    root = check_root(root, "RAF-DB")
    layout = _read_layout(root, variant)
    entries, soft, image_dir, attributes = layout.entries, layout.soft, layout.image_dir, layout.attributes
    label_path, soft_path = root / LABEL_FILE, root / SOFT_LABEL_FILE
    skipped = list(layout.skipped)
    fingerprint = layout.fingerprint

    classes = emotions_for(num_classes)
    records: list[ImageRecord] = []
    conflicts: list[tuple[str, str]] = []
    for e in entries:
        emotion = EMOTIONS[e.code - 1]
        if emotion not in classes:
            continue
        label = classes.index(emotion)
        soft_label = None
        if soft is not None:
            distribution, line = soft[e.image_id]
            probs = distribution[:len(classes)]
            total = sum(probs)
            one_hot = tuple(float(i == label) for i in range(len(classes)))
            # All mass on Neutral in 6-class mode: fall back to the hard label.
            soft_label = tuple(p / total for p in probs) if total > 0 else one_hot
            top = max(range(len(soft_label)), key=soft_label.__getitem__)
            if soft_label[label] < soft_label[top]:
                conflicts.append((f"{soft_path}:{line}", f"{e.name}: label file {emotion} "
                                  f"({label_path.name}:{e.line}), soft label {classes[top]} "
                                  f"({soft_label[top]:.2f} vs {soft_label[label]:.2f}); {label_source} wins"))
                if label_source == "hard":
                    soft_label = one_hot
                else:
                    label = top
        attr = attributes.get(e.image_id)
        records.append(ImageRecord(
            image_id=e.image_id,
            split=e.split,
            label=label,
            path=image_dir / _image_name(e, variant),
            soft_label=soft_label,
            gender=attr.gender if attr else None,
            race=attr.race if attr else None,
            age=attr.age if attr else None,
            demographics_source=DEMOGRAPHICS_SOURCE if attr else None,
            landmarks=attr.landmarks if (attr and variant == "original") else None,
        ))

    check_splits_present(records, ("train", "test"), label_path,
                         hint="RAF-DB needs train_ and test_ images" +
                              (" (6-class mode drops Neutral)" if num_classes == 6 else ""))
    records = create_val_split(records, classes, val_fraction, seed, label_path)
    if verify_images:
        from pipeline.data.images import verify_images as _verify
        _verify(records)
    return FaceDataset(
        name=name, root=root, classes=classes, records=records, fingerprint=fingerprint,
        skipped=skipped, image_size=ALIGNED_SIZE if variant == "aligned" else None,
        label_conflicts=conflicts,
    )


def load_rafdb(root: Path, num_classes: int = 7, variant: str = "aligned", val_fraction: float = 0.1,
               seed: int = 0, verify_images: bool = False, label_source: str = "hard") -> FaceDataset:
    """Load RAF-DB basic (see the module docstring for the layout and rules)."""
    return _load_raf_layout(Path(root), num_classes, variant, val_fraction, seed, verify_images, "rafdb",
                            label_source)


def _parse_synthetic_landmarks(path: Path) -> dict[str, tuple[tuple[float, float], ...]]:
    if not path.is_file():
        raise DatasetError(f"synthetic landmark file not found: {path}; regenerate the synthetic set")
    out = {}
    for number, fields in read_lines(path):
        try:
            if len(fields) != 11:
                raise ValueError
            xy = [float(x) for x in fields[1:]]
        except ValueError:
            raise DatasetError(f"{path}:{number}: expected `<image id> x1 y1 ... x5 y5`, "
                               f"got {' '.join(fields)!r}") from None
        out[fields[0]] = tuple((xy[i], xy[i + 1]) for i in range(0, 10, 2))
    return out


def _parse_occluders(path: Path) -> dict[str, str | None]:
    if not path.is_file():
        raise DatasetError(f"synthetic occluder file not found: {path}; regenerate the synthetic set")
    out = {}
    for number, fields in read_lines(path):
        if len(fields) != 2:
            raise DatasetError(f"{path}:{number}: expected `<image id> <occluder or none>`, "
                               f"got {' '.join(fields)!r}")
        out[fields[0]] = None if fields[1] == "none" else fields[1]
    return out


def load_synthetic_manifest(root: Path) -> dict:
    """The synthetic set's `Synthetic/manifest.json`."""
    path = Path(root) / SYNTHETIC_MANIFEST
    if not path.is_file():
        raise DatasetError(f"not a synthetic dataset: {path} not found; generate one with "
                           "`python -m pipeline synth`, or load this folder as 'rafdb'")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}; regenerate the synthetic set") from None


def load_synthetic(root: Path, num_classes: int = 7, variant: str = "aligned", val_fraction: float = 0.1,
                   seed: int = 0, verify_images: bool = False, label_source: str = "hard") -> FaceDataset:
    """Load the built-in synthetic set: the RAF-DB loader plus its ground-truth extras.

    Adds is_synthetic=True, occluders (Synthetic/occluders.txt) and, for the
    aligned variant, aligned-coordinate landmarks (Synthetic/aligned_landmarks.txt).
    """
    root = Path(root)
    check_options(num_classes, variant, val_fraction)
    check_root(root, "synthetic dataset")
    load_synthetic_manifest(root)
    dataset = _load_raf_layout(root, num_classes, variant, val_fraction, seed, verify_images, "synthetic",
                               label_source)
    occluders_path = root / SYNTHETIC_OCCLUDERS
    occluders = _parse_occluders(occluders_path)
    landmarks_path = root / SYNTHETIC_LANDMARKS
    landmarks = _parse_synthetic_landmarks(landmarks_path) if variant == "aligned" else None
    records = []
    for r in dataset.records:
        if r.image_id not in occluders:
            raise DatasetError(f"{occluders_path} has no line for {r.image_id}; regenerate the synthetic set")
        changes: dict = {"occluder": occluders[r.image_id]}
        if landmarks is not None:
            if r.image_id not in landmarks:
                raise DatasetError(f"{landmarks_path} has no line for {r.image_id}; regenerate the synthetic set")
            changes["landmarks"] = landmarks[r.image_id]
        records.append(replace(r, **changes))
    dataset.records = records
    dataset.is_synthetic = True
    return dataset
