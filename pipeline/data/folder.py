"""Folder-per-class loader, the layout AffectNet, ExpW and others are often exported in.

Layouts:
  ROOT/<split>/<class>/<image>   split folders train/val/test (also training,
                                 validation/valid, testing), any letter case
  ROOT/<class>/<image>           no split folders: every image is "test"
                                 (a cross-dataset evaluation set)

Rules:
- Class folders are matched case-insensitively to emotion names and their
  common synonyms (`constants.EMOTION_SYNONYMS`); an unknown class folder (e.g.
  AffectNet's "contempt") is a `DatasetError` naming it and listing the accepted
  names: move it out of ROOT to leave that class out. Two folders meaning the
  same emotion in one split are an error too.
- The class list is the emotions found, in `constants.EMOTIONS` order (Neutral
  dropped in 6-class mode).
- With a train folder and no val folder, "val" is a seeded, stratified
  `val_fraction` hold-out of train; an existing val folder is used as is.
- Images are found recursively inside class folders by extension
  (`images.IMAGE_EXTENSIONS`); other files are skipped and counted, hidden
  files (.DS_Store, ...) ignored. image_id is the path relative to ROOT.
- A split folder without images is a `DatasetError`; an empty class folder
  is a counted skip.
- The fingerprint hashes the sorted list of relative image paths (all
  classes, whatever the mode).
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.constants import EMOTION_SYNONYMS, emotions_for
from pipeline.data.common import (
    check_options, check_root, check_splits_present, check_unique_ids, compute_fingerprint, create_val_split,
)
from pipeline.errors import DatasetError
from pipeline.data.images import IMAGE_EXTENSIONS
from pipeline.data.records import FaceDataset, ImageRecord

SPLIT_SYNONYMS: dict[str, str] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _visible_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))


def _accepted_names() -> str:
    return ", ".join(sorted(EMOTION_SYNONYMS))


def _walk_images(folder: Path, skipped: list[tuple[str, str]]) -> list[Path]:
    images = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(path)
            else:
                skipped.append((str(path), "not an image file (by extension)"))
    return images


def _class_folders(split_dir: Path, root: Path, skipped: list[tuple[str, str]]) -> dict[str, Path]:
    """emotion -> class folder inside one split folder (or ROOT)."""
    found: dict[str, Path] = {}
    for folder in _visible_dirs(split_dir):
        emotion = EMOTION_SYNONYMS.get(folder.name.lower())
        if emotion is None:
            raise DatasetError(
                f"unknown class folder {folder}: {folder.name!r} is not an emotion this tool knows; "
                f"accepted names (any case): {_accepted_names()}. Rename it, or move it out of "
                f"{root} to leave that class out")
        if emotion in found:
            raise DatasetError(f"class folders {found[emotion]} and {folder} both mean {emotion}; "
                               "merge them into one folder")
        found[emotion] = folder
    for path in _visible_files(split_dir):
        skipped.append((str(path), "file outside a class folder"))
    return found


def load_folder(root: Path, num_classes: int = 7, variant: str = "aligned", val_fraction: float = 0.1,
                seed: int = 0, verify_images: bool = False) -> FaceDataset:
    """Load a folder-per-class dataset (see the module docstring). `variant` is not used."""
    # Long on purpose: one walk of the folder tree that maps class folders, counts skips and assigns splits
    # together, so every skip is reported once.
    check_options(num_classes, variant, val_fraction)
    root = check_root(Path(root), "folder dataset")
    if not root.is_dir():
        raise DatasetError(f"folder dataset root is not a folder: {root}")
    skipped: list[tuple[str, str]] = []
    top = _visible_dirs(root)
    split_dirs = {d: SPLIT_SYNONYMS[d.name.lower()] for d in top if d.name.lower() in SPLIT_SYNONYMS}
    if split_dirs:
        others = [d for d in top if d not in split_dirs]
        if others:
            raise DatasetError(f"unexpected folder {others[0]} beside split folders "
                               f"{', '.join(d.name for d in split_dirs)}; expected only train/val/test "
                               "folders, each holding one folder per class")
        seen: dict[str, Path] = {}
        for d, split in split_dirs.items():
            if split in seen:
                raise DatasetError(f"split folders {seen[split]} and {d} both mean {split!r}; keep one")
            seen[split] = d
        for path in _visible_files(root):
            skipped.append((str(path), "file outside a split folder"))
        layout = [(split, d) for d, split in split_dirs.items()]
    else:
        layout = [("test", root)]

    classes_7 = emotions_for(7)
    keep = emotions_for(num_classes)
    entries: list[tuple[str, str, Path]] = []   # (split, emotion, path)
    for split, split_dir in layout:
        folders = _class_folders(split_dir, root, skipped)
        n_before = len(entries)
        for emotion, folder in folders.items():
            images = _walk_images(folder, skipped)
            if not images:
                skipped.append((str(folder), "class folder holds no images"))
            entries.extend((split, emotion, p) for p in images)
        if len(entries) == n_before:
            raise DatasetError(f"no images found in {split_dir} (the {split!r} split); expected "
                               "one folder per emotion holding image files")

    relative = sorted(p.relative_to(root).as_posix() for _, _, p in entries)
    fingerprint = compute_fingerprint("folder", ["\n".join(relative).encode()])

    found = {emotion for _, emotion, _ in entries if emotion in keep}
    classes = tuple(e for e in classes_7 if e in found)
    if not classes:
        raise DatasetError(f"{root} holds no images of the {num_classes}-class emotions "
                           f"({', '.join(keep)})")
    records = [
        ImageRecord(image_id=path.relative_to(root).as_posix(), split=split,
                    label=classes.index(emotion), path=path)
        for split, emotion, path in entries if emotion in found
    ]
    check_unique_ids(records, root)
    check_splits_present(records, sorted({split for split, _ in layout}), root,
                         hint=f"its images are all of classes outside the {num_classes}-class mode")
    splits = {split for split, _ in layout}
    if "train" in splits and "val" not in splits:
        records = create_val_split(records, classes, val_fraction, seed, root)
    if verify_images:
        from pipeline.data.images import verify_images as _verify
        _verify(records)
    return FaceDataset(name="folder", root=root, classes=classes, records=records,
                       fingerprint=fingerprint, skipped=skipped, image_size=None)
