"""Dataset loaders on tiny hand-made fixtures: RAF-DB, FER2013, folder-per-class, synthetic."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.commands import inspect as inspect_command
from pipeline.constants import EMOTIONS, FER2013_CODE_TO_EMOTION
from pipeline.data.loaders import compute_dataset_summary, load_dataset
from pipeline.errors import DatasetError, UserError
from pipeline.data.images import load_image

# --------------------------------------------------------------------------- fixture builders

ORIGINAL_OFFSET = 10.0  # our fixture's original frames = aligned crop pasted at (10, 10)


def _face(seed: int, size: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def rafdb_entries(n_train_per_class: int = 10, n_test_per_class: int = 2) -> list[tuple[str, int]]:
    """(name, code) pairs in RAF-DB naming, every code 1..7 in both splits."""
    entries, t, s = [], 0, 0
    for code in range(1, 8):
        for _ in range(n_train_per_class):
            t += 1
            entries.append((f"train_{t:05d}.jpg", code))
    for code in range(1, 8):
        for _ in range(n_test_per_class):
            s += 1
            entries.append((f"test_{s:04d}.jpg", code))
    return entries


def soft_for(code: int, index: int) -> list[float]:
    """A valid distribution whose argmax is `code` and with some mass on Neutral."""
    p = [0.05] * 7
    p[code - 1] = 0.6
    p[6] += 0.1 if code != 7 else 0.0
    total = sum(p)
    return [round(x / total, 4) for x in p]


def make_rafdb(root: Path, entries=None, soft: bool = True, attributes: bool = True,
               variants=("aligned", "original"), image_size: int = 100) -> Path:
    """Write a tiny RAF-DB basic layout under root; returns root."""
    entries = rafdb_entries() if entries is None else entries
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel/list_patition_label.txt").write_text(
        "".join(f"{name} {code}\n" for name, code in entries))
    if soft:
        (root / "EmoLabel/distribution_basic.txt").write_text("".join(
            f"{name} " + " ".join(f"{p:.4f}" for p in soft_for(code, i)) + "\n"
            for i, (name, code) in enumerate(entries)))
    for variant in variants:
        (root / "Image" / variant).mkdir(parents=True, exist_ok=True)
    if attributes:
        (root / "Annotation/manual").mkdir(parents=True, exist_ok=True)
    for i, (name, code) in enumerate(entries):
        stem = Path(name).stem
        face = _face(i, image_size)
        if "aligned" in variants:
            face.save(root / "Image/aligned" / f"{stem}_aligned.jpg", quality=90)
        if "original" in variants:
            frame = Image.new("RGB", (image_size + 40, image_size + 40), (90, 90, 90))
            frame.paste(face, (int(ORIGINAL_OFFSET), int(ORIGINAL_OFFSET)))
            frame.save(root / "Image/original" / name, quality=90)
        if attributes:
            pts = [(30, 40), (70, 40), (50, 60), (35, 80), (65, 80)]
            lines = [f"{x + ORIGINAL_OFFSET:.2f} {y + ORIGINAL_OFFSET:.2f}" for x, y in pts]
            lines += [str(i % 3), str((i // 3) % 3), str(i % 5)]
            (root / "Annotation/manual" / f"{stem}_manu_attri.txt").write_text("\n".join(lines) + "\n")
    return root


def make_synthetic_layout(root: Path, entries=None) -> Path:
    """RAF-DB layout plus the Synthetic/ extras, as pipeline/synthetic.py writes them."""
    entries = rafdb_entries(6, 2) if entries is None else entries
    make_rafdb(root, entries)
    syn = root / "Synthetic"
    syn.mkdir()
    (syn / "manifest.json").write_text(json.dumps({"generator": "fer-trust-synthetic", "seed": 0}))
    occ = ["none", "sunglasses", "hand", "hat"]
    (syn / "occluders.txt").write_text("".join(
        f"{Path(n).stem} {occ[i % 4]}\n" for i, (n, _) in enumerate(entries)))
    (syn / "aligned_landmarks.txt").write_text("".join(
        f"{Path(n).stem} " + " ".join(f"{v + i * 0.01:.2f}" for v in (30, 40, 70, 40, 50, 60, 35, 80, 65, 80))
        + "\n" for i, (n, _) in enumerate(entries)))
    return root


def fer_pixels(seed: int) -> str:
    return " ".join(str(v) for v in np.random.default_rng(seed).integers(0, 256, 48 * 48))


def make_fer2013(root: Path, rows=None, header: str = "emotion,pixels,Usage") -> Path:
    """Write root/fer2013.csv; rows = (code, usage, pixels-string or None for random)."""
    if rows is None:
        rows = [(code, usage, None) for usage in ("Training", "Training", "PublicTest", "PrivateTest")
                for code in range(7)]
    root.mkdir(parents=True, exist_ok=True)
    lines = [header]
    for i, (code, usage, pixels) in enumerate(rows):
        lines.append(f'{code},"{fer_pixels(i) if pixels is None else pixels}",{usage}')
    (root / "fer2013.csv").write_text("\n".join(lines) + "\n")
    return root


def make_folder(root: Path, layout: dict[str, int], splits=("train", "val", "test")) -> Path:
    """Write root/<split>/<class>/<k>.jpg (splits=None: root/<class>/...)."""
    for split in (splits or [None]):
        for folder, n in layout.items():
            d = root / folder if split is None else root / split / folder
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                _face(k, 24).save(d / f"{k:03d}.jpg")
    return root


@pytest.fixture(scope="module")
def rafdb_root(tmp_path_factory):
    return make_rafdb(tmp_path_factory.mktemp("rafdb"))


@pytest.fixture()
def fresh_rafdb(tmp_path):
    """A small RAF-DB copy a test may damage."""
    return make_rafdb(tmp_path / "raf", rafdb_entries(3, 1), variants=("aligned",))


# --------------------------------------------------------------------------- RAF-DB

def test_rafdb_seven_classes(rafdb_root):
    ds = load_dataset("rafdb", rafdb_root, val_fraction=0)
    assert ds.name == "rafdb" and not ds.is_synthetic
    assert ds.classes == EMOTIONS and ds.image_size == 100
    assert len(ds.records) == 7 * 12
    assert ds.class_counts("train") == {e: 10 for e in EMOTIONS}
    assert ds.class_counts("test") == {e: 2 for e in EMOTIONS}
    r = next(r for r in ds.records if r.image_id == "train_00011")   # 11th train line: code 2
    assert ds.classes[r.label] == "Fear"
    assert r.path == rafdb_root / "Image/aligned/train_00011_aligned.jpg" and r.path.is_file()
    assert r.landmarks is None                       # aligned real RAF-DB: no landmarks
    assert (r.gender, r.race, r.age) == (10 % 3, (10 // 3) % 3, 10 % 5)
    assert r.demographics_source == "annotations"
    assert r.soft_label is not None and abs(sum(r.soft_label) - 1) < 1e-9
    assert int(np.argmax(r.soft_label)) == r.label
    assert ds.skipped == []
    assert load_image(r).size == (100, 100)


def test_rafdb_original_variant_has_landmarks_in_original_coordinates(rafdb_root):
    ds = load_dataset("rafdb", rafdb_root, variant="original")
    r = ds.records[0]
    assert r.path == rafdb_root / "Image/original/train_00001.jpg"
    assert ds.image_size is None
    assert r.landmarks == ((40.0, 50.0), (80.0, 50.0), (60.0, 70.0), (45.0, 90.0), (75.0, 90.0))
    assert load_image(r).size == (140, 140)


def test_rafdb_six_classes_drops_neutral_and_renormalises(rafdb_root):
    ds7 = load_dataset("rafdb", rafdb_root, num_classes=7)
    ds6 = load_dataset("rafdb", rafdb_root, num_classes=6)
    assert ds6.classes == EMOTIONS[:6]
    assert len(ds6.records) == 6 * 12
    assert all(ds6.classes[r.label] != "Neutral" for r in ds6.records)
    by_id7 = {r.image_id: r for r in ds7.records}
    for r in ds6.records:
        assert len(r.soft_label) == 6
        assert abs(sum(r.soft_label) - 1) < 1e-9
        seven = by_id7[r.image_id].soft_label
        expected = np.array(seven[:6]) / sum(seven[:6])
        assert np.allclose(r.soft_label, expected)
        assert r.label == by_id7[r.image_id].label        # same index means same emotion
    # The fixture puts visible mass on Neutral, so renormalisation really changes values.
    r = ds6.records[0]
    assert r.soft_label[r.label] > by_id7[r.image_id].soft_label[r.label]


def test_rafdb_without_soft_label_file_has_hard_labels(tmp_path):
    root = make_rafdb(tmp_path, rafdb_entries(2, 1), soft=False, variants=("aligned",))
    ds = load_dataset("rafdb", root, val_fraction=0)
    assert all(r.soft_label is None for r in ds.records)


def test_val_split_is_stratified_seeded_and_deterministic(rafdb_root):
    a = load_dataset("rafdb", rafdb_root, val_fraction=0.2, seed=3)
    b = load_dataset("rafdb", rafdb_root, val_fraction=0.2, seed=3)
    c = load_dataset("rafdb", rafdb_root, val_fraction=0.2, seed=4)
    val_a = [r.image_id for r in a.split("val")]
    assert val_a == [r.image_id for r in b.split("val")]
    assert set(val_a) != {r.image_id for r in c.split("val")}
    assert a.class_counts("val") == {e: 2 for e in EMOTIONS}    # 20% of 10 per class
    assert a.class_counts("train") == {e: 8 for e in EMOTIONS}
    assert all(r.image_id.startswith("train_") for r in a.split("val"))
    assert a.class_counts("test") == {e: 2 for e in EMOTIONS}   # test untouched
    # The six shared classes hold out the same images in 6- and 7-class mode.
    six = load_dataset("rafdb", rafdb_root, num_classes=6, val_fraction=0.2, seed=3)
    seven_non_neutral = {r.image_id for r in a.split("val") if a.classes[r.label] != "Neutral"}
    assert {r.image_id for r in six.split("val")} == seven_non_neutral
    # No val at val_fraction 0.
    assert load_dataset("rafdb", rafdb_root, val_fraction=0).split("val") == []


def test_val_split_ignores_label_file_order(tmp_path):
    entries = rafdb_entries(5, 1)
    a = make_rafdb(tmp_path / "a", entries, variants=("aligned",))
    b = make_rafdb(tmp_path / "b", list(reversed(entries)), variants=("aligned",))
    val_a = {r.image_id for r in load_dataset("rafdb", a, val_fraction=0.2).split("val")}
    val_b = {r.image_id for r in load_dataset("rafdb", b, val_fraction=0.2).split("val")}
    assert val_a == val_b and len(val_a) == 7


def test_fingerprint_ignores_options_but_tracks_the_data(rafdb_root, tmp_path):
    prints = {load_dataset("rafdb", rafdb_root, num_classes=n, variant=v, val_fraction=f, seed=s).fingerprint
              for n in (6, 7) for v in ("aligned", "original") for f in (0, 0.1) for s in (0, 1)}
    assert len(prints) == 1
    root = make_rafdb(tmp_path / "x", rafdb_entries(2, 1), variants=("aligned",))
    before = load_dataset("rafdb", root, val_fraction=0).fingerprint
    assert before == load_dataset("rafdb", root, val_fraction=0).fingerprint
    label_file = root / "EmoLabel/list_patition_label.txt"
    label_file.write_text(label_file.read_text().replace("train_00001.jpg 1", "train_00001.jpg 2"))
    changed_label = load_dataset("rafdb", root, val_fraction=0).fingerprint
    assert changed_label != before
    attr = root / "Annotation/manual/train_00002_manu_attri.txt"
    attr.write_text(attr.read_text().rsplit("\n", 2)[0] + "\n4\n")
    assert load_dataset("rafdb", root, val_fraction=0).fingerprint != changed_label


def test_parsed_layout_is_reused_only_while_no_file_changed(tmp_path, monkeypatch):
    """A second load of an unchanged layout reuses the parse; a same-size edit is seen, whether
    it comes after the cache was filled or within the racy window of a fresh write."""
    import os

    from pipeline.data import rafdb

    root = make_rafdb(tmp_path / "raf", variants=("aligned",), image_size=8)
    attr = root / "Annotation/manual/train_00001_manu_attri.txt"
    parsed = []
    original = rafdb._parse_layout
    monkeypatch.setattr(rafdb, "_parse_layout", lambda *a: parsed.append(a) or original(*a))

    def gender_of_first():
        return next(r.gender for r in load_dataset("rafdb", root).records if r.image_id == "train_00001")

    def set_mtimes(ns):
        for path in [*root.rglob("*"), root]:
            os.utime(path, ns=(ns, ns))

    text = attr.read_text()
    lines = text.splitlines()
    edited = "\n".join(lines[:5] + ["1" if lines[5] == "0" else "0"] + lines[6:]) + "\n"  # line 6: gender
    # within a tick (a 10 ms scheduler tick with ns times; FAT's 2 s without) -> racy
    for resolution, within_tick, racy_after in ((1, 10**7, rafdb._RACY_NS_FINE),
                                                (10**9, 19 * 10**8, rafdb._RACY_NS_COARSE)):
        parsed.clear()
        written = 1_700_000_000 * 10**9 + (0 if resolution > 1 else 123_456_789)
        set_mtimes(written)
        attr.write_text(text)
        os.utime(attr, ns=(written, written))
        # read within the racy window: not kept, so an edit that keeps size and mtime is seen
        monkeypatch.setattr(rafdb, "_now_ns", lambda: written + within_tick)
        first = gender_of_first()
        attr.write_text(edited)
        os.utime(attr, ns=(written, written))
        assert gender_of_first() != first and len(parsed) == 2
        # read after the window: kept for every loading option, until a file changes
        monkeypatch.setattr(rafdb, "_now_ns", lambda: written + racy_after)
        a, b = load_dataset("rafdb", root), load_dataset("rafdb", root, num_classes=6)
        assert len(parsed) == 3 and a.fingerprint == b.fingerprint
        attr.write_text(text)                               # back to the first gender, same size
        later = written + 5 * resolution * 10**(0 if resolution > 1 else 6)
        os.utime(attr, ns=(later, later))
        monkeypatch.setattr(rafdb, "_now_ns", lambda: later + racy_after)
        assert gender_of_first() == first and len(parsed) == 4
        assert load_dataset("rafdb", root).fingerprint != a.fingerprint and len(parsed) == 4


def test_missing_attribute_file_leaves_demographics_none_and_is_counted(fresh_rafdb):
    (fresh_rafdb / "Annotation/manual/train_00002_manu_attri.txt").unlink()
    ds = load_dataset("rafdb", fresh_rafdb, val_fraction=0)
    r = next(r for r in ds.records if r.image_id == "train_00002")
    assert (r.gender, r.race, r.age, r.demographics_source) == (None, None, None, None)
    assert len(ds.skipped) == 1 and "train_00002_manu_attri.txt" in ds.skipped[0][0]
    others = [r for r in ds.records if r.image_id != "train_00002"]
    assert all(r.demographics_source == "annotations" for r in others)
    summary = compute_dataset_summary(ds)
    assert summary["demographics"]["gender"]["unknown"] == 1
    assert summary["n_skipped"] == 1


def _replace_line(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _damage_label_out_of_range(root):
    _replace_line(root / "EmoLabel/list_patition_label.txt", "train_00004.jpg 2", "train_00004.jpg 9")
    return "list_patition_label.txt:4"


def _damage_label_not_integer(root):
    _replace_line(root / "EmoLabel/list_patition_label.txt", "train_00002.jpg 1", "train_00002.jpg happy")
    return "list_patition_label.txt:2"


def _damage_missing_label_file(root):
    (root / "EmoLabel/list_patition_label.txt").unlink()
    return "list_patition_label.txt"


def _damage_missing_image(root):
    (root / "Image/aligned/train_00005_aligned.jpg").unlink()
    return "train_00005_aligned.jpg"


def _damage_duplicate_id(root):
    with open(root / "EmoLabel/list_patition_label.txt", "a") as fh:
        fh.write("train_00003.jpg 4\n")
    return "duplicate image 'train_00003.jpg'"


def _damage_empty_test_split(root):
    path = root / "EmoLabel/list_patition_label.txt"
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines() if line.startswith("train")))
    (root / "EmoLabel/distribution_basic.txt").unlink()
    return "'test' split is empty"


def _damage_bad_attribute_code(root):
    path = root / "Annotation/manual/train_00003_manu_attri.txt"
    lines = path.read_text().splitlines()
    lines[6] = "7"          # race code
    path.write_text("\n".join(lines) + "\n")
    return "train_00003_manu_attri.txt:7"


def _damage_short_attribute_file(root):
    path = root / "Annotation/manual/train_00003_manu_attri.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:5]) + "\n")
    return "train_00003_manu_attri.txt"


def _damage_soft_label_missing_line(root):
    path = root / "EmoLabel/distribution_basic.txt"
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[1:]))
    return "distribution_basic.txt has no line for train_00001.jpg"


def _damage_soft_label_bad_sum(root):
    path = root / "EmoLabel/distribution_basic.txt"
    lines = path.read_text().splitlines()
    lines[2] = "train_00003.jpg 0.5 0.5 0.5 0 0 0 0"
    path.write_text("\n".join(lines) + "\n")
    return "distribution_basic.txt:3"


def _damage_bad_name(root):
    with open(root / "EmoLabel/list_patition_label.txt", "a") as fh:
        fh.write("val_0001.jpg 4\n")
    return "list_patition_label.txt:29"


@pytest.mark.parametrize("damage", [
    _damage_label_out_of_range, _damage_label_not_integer, _damage_missing_label_file,
    _damage_missing_image, _damage_duplicate_id, _damage_empty_test_split, _damage_bad_attribute_code,
    _damage_short_attribute_file, _damage_soft_label_missing_line, _damage_soft_label_bad_sum,
    _damage_bad_name,
], ids=lambda f: f.__name__.removeprefix("_damage_"))
def test_rafdb_bad_input_names_the_file(fresh_rafdb, damage):
    expected = damage(fresh_rafdb)
    with pytest.raises(DatasetError) as info:
        load_dataset("rafdb", fresh_rafdb)
    assert expected in str(info.value)


def test_rafdb_corrupt_image_found_with_verify_images(fresh_rafdb):
    (fresh_rafdb / "Image/aligned/test_0002_aligned.jpg").write_bytes(b"\xff\xd8 not really")
    ds = load_dataset("rafdb", fresh_rafdb, val_fraction=0)   # listing only: found at decode time
    with pytest.raises(DatasetError, match="test_0002_aligned.jpg"):
        load_image(next(r for r in ds.records if r.image_id == "test_0002"))
    with pytest.raises(DatasetError, match="test_0002_aligned.jpg"):
        load_dataset("rafdb", fresh_rafdb, val_fraction=0, verify_images=True)


def test_rafdb_missing_variant_folder(fresh_rafdb):
    with pytest.raises(DatasetError, match=r"Image/original.*variant='aligned'"):
        load_dataset("rafdb", fresh_rafdb, variant="original")


def test_bad_options_are_user_errors(rafdb_root):
    for kwargs in ({"num_classes": 5}, {"variant": "crop"}, {"val_fraction": 1.0}, {"val_fraction": -0.1}):
        with pytest.raises(UserError):
            load_dataset("rafdb", rafdb_root, **kwargs)
    with pytest.raises(UserError, match="unknown dataset 'affectnet'"):
        load_dataset("affectnet", rafdb_root)
    with pytest.raises(DatasetError, match="root not found"):
        load_dataset("rafdb", rafdb_root / "nope")


def test_val_fraction_too_small_for_tiny_train_is_an_error(tmp_path):
    root = make_rafdb(tmp_path, rafdb_entries(1, 1), variants=("aligned",))
    with pytest.raises(DatasetError, match="holds out no image"):
        load_dataset("rafdb", root, val_fraction=0.1)


# --------------------------------------------------------------------------- FER2013

def test_fer2013_label_mapping_splits_and_pixels(tmp_path):
    root = make_fer2013(tmp_path)
    ds = load_dataset("fer2013", root)
    assert ds.classes == EMOTIONS and ds.image_size == 48 and ds.name == "fer2013"
    assert len(ds.records) == 28 and ds.skipped == []
    assert Counter(r.split for r in ds.records) == {"train": 14, "val": 7, "test": 7}
    for row, r in enumerate(ds.records):
        code = row % 7
        assert r.image_id == f"fer_{row:06d}"
        assert ds.classes[r.label] == FER2013_CODE_TO_EMOTION[code]
        assert r.path is None and r.pixels.shape == (48, 48) and r.pixels.dtype == np.uint8
    assert ds.classes[ds.records[0].label] == "Anger"       # FER code 0
    assert ds.classes[ds.records[5].label] == "Surprise"    # FER code 5
    first = np.array(fer_pixels(0).split(), dtype=np.uint8).reshape(48, 48)
    assert np.array_equal(ds.records[0].pixels, first)
    assert np.asarray(load_image(ds.records[0])).shape == (48, 48, 3)


def test_fer2013_six_classes_root_as_file_and_icml_headers(tmp_path):
    root = make_fer2013(tmp_path, header="emotion, Usage, pixels".replace(", Usage, pixels", ", pixels, Usage"))
    six = load_dataset("fer2013", root / "fer2013.csv", num_classes=6)
    assert six.classes == EMOTIONS[:6] and len(six.records) == 24
    assert all(six.classes[r.label] != "Neutral" for r in six.records)
    assert six.fingerprint == load_dataset("fer2013", root).fingerprint


def test_fer2013_malformed_pixel_row_is_skipped_and_counted(tmp_path):
    rows = [(c, u, None) for u in ("Training", "PublicTest", "PrivateTest") for c in range(7)]
    good = " ".join(["9"] * (48 * 48 - 1))
    rows[3] = (3, "Training", "1 2 3")              # too few values
    rows[4] = (4, "Training", "300 " + good)        # out of range
    rows[6] = (6, "Training", good + " x")          # not a number
    ds = load_dataset("fer2013", make_fer2013(tmp_path, rows))
    assert len(ds.records) == 18
    assert [s[0].rsplit(":", 1)[1] for s in ds.skipped] == ["5", "6", "8"]   # CSV line numbers
    assert all("fer2013.csv" in s[0] and "malformed pixels" in s[1] for s in ds.skipped)
    assert "fer_000003" not in {r.image_id for r in ds.records}
    assert "fer_000005" in {r.image_id for r in ds.records}              # ids keep row numbers


@pytest.mark.parametrize("rows, header, expected", [
    ([(7, "Training", None)], "emotion,pixels,Usage", "fer2013.csv:2: emotion code 7 out of range"),
    ([(1, "Training", None), (2, "Validation", None)], "emotion,pixels,Usage", "fer2013.csv:3: Usage 'Validation'"),
    ([(1, "Training", None)], "label,pixels,Usage", "missing column(s) emotion"),
    ([(1, "Training", None), (2, "PrivateTest", None)], "emotion,pixels,Usage", "'val' split is empty"),
])
def test_fer2013_bad_input_names_the_file_and_line(tmp_path, rows, header, expected):
    root = make_fer2013(tmp_path, rows, header=header)
    with pytest.raises(DatasetError) as info:
        load_dataset("fer2013", root)
    assert expected in str(info.value)


def test_fer2013_missing_csv(tmp_path):
    with pytest.raises(DatasetError, match="fer2013.csv"):
        load_dataset("fer2013", tmp_path)


# --------------------------------------------------------------------------- folder-per-class

def test_folder_split_layout_with_synonyms(tmp_path):
    root = make_folder(tmp_path, {"HAPPY": 3, "sad": 2, "Surprised": 2, "neutral": 1})
    (root / "train/sad/notes.txt").write_text("x")
    (root / "train/sad/.DS_Store").write_text("x")
    ds = load_dataset("folder", root)
    assert ds.classes == ("Surprise", "Happiness", "Sadness", "Neutral")    # EMOTIONS order
    assert ds.class_counts("train") == {"Surprise": 2, "Happiness": 3, "Sadness": 2, "Neutral": 1}
    assert ds.class_counts("val") == ds.class_counts("train")              # the val folder, as is
    r = next(r for r in ds.records if r.image_id == "test/HAPPY/000.jpg")
    assert r.split == "test" and ds.classes[r.label] == "Happiness" and r.path.is_file()
    assert [Path(s[0]).name for s in ds.skipped] == ["notes.txt"]
    six = load_dataset("folder", root, num_classes=6)
    assert six.classes == ("Surprise", "Happiness", "Sadness")
    assert six.fingerprint == ds.fingerprint


def test_folder_flat_layout_is_all_test(tmp_path):
    root = make_folder(tmp_path, {"anger": 2, "Fear": 1}, splits=None)
    ds = load_dataset("folder", root)
    assert ds.classes == ("Fear", "Anger")
    assert {r.split for r in ds.records} == {"test"} and len(ds.records) == 3


def test_folder_train_without_val_gets_a_holdout(tmp_path):
    root = make_folder(tmp_path, {"happy": 10, "angry": 10}, splits=("train", "test"))
    ds = load_dataset("folder", root, val_fraction=0.2, seed=1)
    assert ds.class_counts("val") == {"Happiness": 2, "Anger": 2}
    assert ds.class_counts("train") == {"Happiness": 8, "Anger": 8}


def test_folder_unknown_class_lists_accepted_names(tmp_path):
    root = make_folder(tmp_path, {"happy": 1, "contempt": 1}, splits=("train", "test"))
    with pytest.raises(DatasetError) as info:
        load_dataset("folder", root)
    message = str(info.value)
    assert "contempt" in message and str(root) in message
    assert "happiness" in message and "surprised" in message


@pytest.mark.parametrize("setup, expected", [
    (lambda r: (r / "test/happy/000.jpg").unlink(), "no images found in"),
    (lambda r: (r / "train/Happiness").mkdir() or _face(0, 8).save(r / "train/Happiness/a.jpg"),
     "both mean Happiness"),
    (lambda r: (r / "extras").mkdir(), "unexpected folder"),
])
def test_folder_bad_layouts(tmp_path, setup, expected):
    root = make_folder(tmp_path, {"happy": 1}, splits=("train", "test"))
    setup(root)
    with pytest.raises(DatasetError, match=expected):
        load_dataset("folder", root, val_fraction=0)


def test_folder_corrupt_image_with_verify(tmp_path):
    root = make_folder(tmp_path, {"happy": 2}, splits=None)
    (root / "happy/bad.png").write_bytes(b"\x89PNG broken")
    assert len(load_dataset("folder", root).records) == 3
    with pytest.raises(DatasetError, match="bad.png"):
        load_dataset("folder", root, verify_images=True)


# --------------------------------------------------------------------------- synthetic layout

def test_synthetic_layout_by_hand(tmp_path):
    root = make_synthetic_layout(tmp_path)
    syn = load_dataset("synthetic", root, val_fraction=0)
    raf = load_dataset("rafdb", root, val_fraction=0)
    assert syn.is_synthetic and syn.name == "synthetic" and not raf.is_synthetic
    assert syn.fingerprint == raf.fingerprint           # same data, same demographics key
    assert [r.image_id for r in syn.records] == [r.image_id for r in raf.records]
    r = syn.records[1]
    assert r.landmarks == ((30.01, 40.01), (70.01, 40.01), (50.01, 60.01), (35.01, 80.01), (65.01, 80.01))
    assert r.occluder == "sunglasses" and syn.records[0].occluder is None
    assert raf.records[1].landmarks is None and raf.records[1].occluder is None
    original = load_dataset("synthetic", root, variant="original", val_fraction=0)
    assert original.records[1].landmarks[0] == (40.0, 50.0)      # manual, original coordinates
    summary = compute_dataset_summary(syn)
    assert summary["occluders"] == {"sunglasses": 14, "hand": 14, "hat": 14}


@pytest.mark.parametrize("damage, expected", [
    (lambda r: (r / "Synthetic/manifest.json").unlink(), "not a synthetic dataset"),
    (lambda r: (r / "Synthetic/occluders.txt").write_text("train_00001 none\n"), "occluders.txt has no line"),
    (lambda r: (r / "Synthetic/aligned_landmarks.txt").write_text("train_00001 1 2 3\n"),
     "aligned_landmarks.txt:1"),
])
def test_synthetic_bad_extras(tmp_path, damage, expected):
    root = make_synthetic_layout(tmp_path, rafdb_entries(2, 1))
    damage(root)
    with pytest.raises(DatasetError, match=expected):
        load_dataset("synthetic", root, val_fraction=0)


# --------------------------------------------------------------------------- inspect command

def _run_inspect(argv: list[str]) -> int:
    # The command module on its own (cli.main needs every registered command to exist).
    from pipeline.cli import create_command_parser

    return inspect_command.run(create_command_parser(inspect_command).parse_args(argv))


def test_inspect_command_prints_counts(rafdb_root, capsys):
    assert _run_inspect(["--dataset", "rafdb", "--root", str(rafdb_root), "--classes", "6"]) == 0
    out = capsys.readouterr().out
    assert "classes      6: Surprise, Fear, Disgust, Happiness, Sadness, Anger" in out
    assert "Neutral" not in out
    assert "val" in out and "annotations 72" in out and "skipped      0" in out


def test_inspect_command_reports_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="list_patition_label.txt"):
        _run_inspect(["--dataset", "rafdb", "--root", str(tmp_path)])


def test_inspect_shows_skips_and_occluders(tmp_path, capsys):
    root = make_synthetic_layout(tmp_path)
    (root / "Annotation/manual/train_00003_manu_attri.txt").unlink()
    assert _run_inspect(["--dataset", "synthetic", "--root", str(root), "--val-fraction", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "(synthetic)" in out and "occluders    hand 14, hat 14, sunglasses 14" in out
    assert "skipped      1" in out and "train_00003_manu_attri.txt" in out
    assert "gender  male 19, female 19, unsure 17, unknown 1" in out


# --------------------------------------------------------------------------- the real generator

@pytest.fixture(scope="module")
def generated_synthetic(tmp_path_factory):
    synthetic = pytest.importorskip("pipeline.synth.faces")
    root = tmp_path_factory.mktemp("generated") / "syn"
    synthetic.generate_dataset(root, synthetic.SynthConfig(n=60, seed=5, workers=1), progress=False)
    return root


def test_generated_synthetic_set_loads_as_rafdb_and_synthetic(generated_synthetic):
    from pipeline.synth.faces import load_synthetic_attributes
    root = generated_synthetic
    raf = load_dataset("rafdb", root, val_fraction=0)
    syn = load_dataset("synthetic", root, val_fraction=0)
    assert len(raf.records) == len(syn.records) == 60
    assert raf.fingerprint == syn.fingerprint and syn.is_synthetic and not raf.is_synthetic
    assert raf.skipped == [] and syn.skipped == []
    truth = load_synthetic_attributes(root).set_index("image_id")
    for r in syn.records:
        row = truth.loc[r.image_id]
        assert r.split == row["split"] and syn.classes[r.label] == row["label"]
        assert (r.gender, r.race, r.age) == (row["gender"], row["race"], row["age"])
        assert r.occluder == (None if row["occluder"] == "none" else row["occluder"])
        assert r.soft_label is not None and int(np.argmax(r.soft_label)) == r.label
        assert len(r.landmarks) == 5 and all(0 <= v <= 100 for p in r.landmarks for v in p)
    assert all(r.landmarks is None for r in raf.records)       # aligned RAF-DB: template
    assert load_image(syn.records[0]).size == (100, 100)
    original = load_dataset("synthetic", root, variant="original", val_fraction=0)
    w, h = load_image(original.records[0]).size
    assert (w, h) != (100, 100)
    assert all(0 <= x <= w and 0 <= y <= h for x, y in original.records[0].landmarks)
    # 6-class with the default hold-out works on a 60-image set.
    six = load_dataset("synthetic", root, num_classes=6)
    assert six.classes == EMOTIONS[:6] and six.split("val")
    assert all(abs(sum(r.soft_label) - 1) < 1e-9 for r in six.records)


# --------------------------------------------------------------------------- invariants of every loader

@pytest.fixture(scope="module")
def every_dataset(tmp_path_factory):
    base = tmp_path_factory.mktemp("every")
    return {
        "rafdb": make_rafdb(base / "rafdb", rafdb_entries(4, 1), variants=("aligned",)),
        "fer2013": make_fer2013(base / "fer"),
        "folder": make_folder(base / "folder", {"happy": 3, "fear": 2}),
        "synthetic": make_synthetic_layout(base / "syn", rafdb_entries(4, 1)),
    }


@pytest.mark.parametrize("name", ["rafdb", "fer2013", "folder", "synthetic"])
@pytest.mark.parametrize("num_classes", [6, 7])
def test_every_loader_keeps_the_record_contract(every_dataset, name, num_classes, monkeypatch):
    root = every_dataset[name]
    monkeypatch.chdir(root.parent)
    kwargs = {"num_classes": num_classes, "variant": "aligned", "val_fraction": 0.25, "seed": 1,
              "verify_images": True}
    ds = load_dataset(name, Path(root.name), **json.loads(json.dumps(kwargs)))   # relative root
    assert ds.name == name and ds.root.is_absolute()
    assert ds.records and len({r.image_id for r in ds.records}) == len(ds.records)
    assert set(ds.classes) <= set(EMOTIONS[:num_classes])
    assert list(ds.classes) == [e for e in EMOTIONS if e in ds.classes]   # EMOTIONS order
    for r in ds.records:
        assert r.split in ("train", "val", "test") and 0 <= r.label < len(ds.classes)
        assert (r.path is None) != (r.pixels is None)
        assert r.path is None or (r.path.is_absolute() and r.path.is_file())
        assert r.soft_label is None or len(r.soft_label) == len(ds.classes)
    assert {r.split for r in ds.records} == {"train", "val", "test"}
    other = load_dataset(name, root, num_classes=13 - num_classes, val_fraction=0)
    assert other.fingerprint == ds.fingerprint
