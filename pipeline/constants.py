"""Names, codes and constants shared by every stage: the one source of truth.

Emotion indices follow RAF-DB basic's label order (label code = index + 1), so
the 6-class mode (Neutral dropped) is simply the first six emotions and a label
index means the same emotion in both modes.
"""
from __future__ import annotations

EMOTIONS: tuple[str, ...] = (
    "Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral",
)
EMOTIONS_6: tuple[str, ...] = EMOTIONS[:6]  # RAF-DB without Neutral


def emotions_for(num_classes: int) -> tuple[str, ...]:
    """The class list of the 7-class or 6-class (no Neutral) mode."""
    if num_classes == 7:
        return EMOTIONS
    if num_classes == 6:
        return EMOTIONS_6
    raise ValueError(f"num_classes must be 6 or 7, got {num_classes}")


# FER2013's `emotion` column: 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad,
# 5 Surprise, 6 Neutral.
FER2013_CODE_TO_EMOTION: dict[int, str] = {
    0: "Anger", 1: "Disgust", 2: "Fear", 3: "Happiness", 4: "Sadness",
    5: "Surprise", 6: "Neutral",
}

# Folder names (lower-cased) accepted for each emotion in folder-per-class sets.
EMOTION_SYNONYMS: dict[str, str] = {
    **{e.lower(): e for e in EMOTIONS},
    "surprised": "Surprise", "surprise": "Surprise",
    "fear": "Fear", "fearful": "Fear", "afraid": "Fear", "scared": "Fear",
    "disgust": "Disgust", "disgusted": "Disgust", "contempt_disgust": "Disgust",
    "happy": "Happiness", "happiness": "Happiness", "joy": "Happiness",
    "sad": "Sadness", "sadness": "Sadness",
    "angry": "Anger", "anger": "Anger",
    "neutral": "Neutral", "calm": "Neutral",
}

# RAF-DB manual attribute codes (Annotation/manual/*_manu_attri.txt).
GENDERS: dict[int, str] = {0: "male", 1: "female", 2: "unsure"}
RACES: dict[int, str] = {0: "Caucasian", 1: "African-American", 2: "Asian"}
AGE_GROUPS: dict[int, str] = {0: "0-3", 1: "4-19", 2: "20-39", 3: "40-69", 4: "70+"}
DEMOGRAPHIC_ATTRIBUTES: tuple[str, ...] = ("gender", "race", "age")

# Normalisation.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# The light CNN takes input in [-1, 1].
SYMMETRIC_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
SYMMETRIC_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

# Facial regions for CAM energy attribution, in storage order.
FACE_REGIONS: tuple[str, ...] = (
    "brows", "eyes", "nose", "mouth", "cheeks", "face_rest", "background",
)

# Size of RAF-DB's aligned crops (and of the synthetic set's).
ALIGNED_SIZE = 100

SPLITS: tuple[str, ...] = ("train", "val", "test")
# The heatmaps table's energy columns, one per region (the dashboard reads the same list).
ENERGY_COLUMNS: tuple[str, ...] = tuple(f"e_{r}" for r in FACE_REGIONS)

# Natural order of every attribute's values: code order for demographics, class
# order for emotions. Charts, tables and exported files sort with these, never as text.
ATTRIBUTE_ORDER: dict[str, tuple[str, ...]] = {
    "gender": tuple(GENDERS.values()),
    "race": tuple(RACES.values()),
    "age": tuple(AGE_GROUPS.values()),
    "emotion": EMOTIONS,
}


def value_rank(attribute: str, value: object) -> tuple[int, str]:
    """Sort key of one value of `attribute`: its position in ATTRIBUTE_ORDER, unknown values after, by text."""
    order = ATTRIBUTE_ORDER.get(attribute, ())
    text = "" if value is None else str(value)
    return (order.index(text), "") if text in order else (len(order), text)


def sort_values(attribute: str, values) -> list:
    """`values` (any iterable) sorted in the attribute's natural order, duplicates kept."""
    return sorted(values, key=lambda v: value_rank(attribute, v))


# How the audit joins an intersection's values in a group label: 'female | Asian | Anger'.
GROUP_SEPARATOR = " | "
METRIC_ORDER: tuple[str, ...] = ("accuracy", "macro_f1")  # then recall:<emotion> in class order


def attribute_rank(attribute: str) -> tuple:
    """Sort key of an attribute set: single attributes first, then pairs, then triples; within each,
    by the order of their parts in ATTRIBUTE_ORDER ('gender×emotion' before 'race×emotion')."""
    parts = str(attribute).split("×")
    order = tuple(ATTRIBUTE_ORDER)
    return (len(parts), tuple(order.index(p) if p in order else len(order) for p in parts), str(attribute))


def group_rank(attribute: str, grp: str) -> tuple:
    """Sort key of a group of `attribute`: each part's value in its natural order, part by part."""
    parts, values = str(attribute).split("×"), str(grp).split(GROUP_SEPARATOR)
    if len(parts) != len(values):  # a value that itself holds the separator: keep it whole, after the rest
        return ((len(ATTRIBUTE_ORDER.get(parts[0], ())), str(grp)),)
    return tuple(value_rank(p, v) for p, v in zip(parts, values))


def metric_rank(metric: str) -> tuple:
    """Sort key of a metric: accuracy, macro-F1, per-emotion recalls in class order, then others by name."""
    metric = str(metric)
    if metric in METRIC_ORDER:
        return (METRIC_ORDER.index(metric), (0, ""))
    if metric.startswith("recall:"):
        return (len(METRIC_ORDER), value_rank("emotion", metric.split(":", 1)[1]))
    return (len(METRIC_ORDER) + 1, (0, metric))
