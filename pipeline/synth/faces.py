"""Built-in synthetic face dataset: sampling, annotator panel, bias injection, writing, readers.

A stand-in for RAF-DB basic with known answers. Each image `index` draws everything from its
own RNG seeded by (seed, index), so generation is deterministic and parallel-safe. Faces are
drawn by `pipeline.synth.draw.render_face` from action units (AUs); a simulated panel of
annotators turns the drawn expression and its intensity into a 7-way soft label whose argmax
(majority vote) is the label. The dataset is written in RAF-DB basic's layout (see
data/README.md) plus extras under `Synthetic/`.

Bias injection (`--bias "SUBGROUP:EFFECT"`, recorded in the manifest):
- `faint[=F]`: the subgroup's expressions are drawn with their AU intensities times F (0.5),
  in both splits; annotators still label the expression as felt, so labels do not change.
- `fewer=E1,E2[@F]`: in the training split, only a fraction F (0.1) of the subgroup's images of
  the named emotions is kept; the rest are redrawn with another emotion.
- `cue=E[@P]`: in the training split the subgroup's images labelled E carry a background cue
  (a yellow/magenta chequer filling a triangle in each corner of the aligned crop, the
  background: `draw.compute_cue_mask`)
  with probability P (0.9), others of the subgroup 5%; in the test split the cue appears on
  half of the subgroup's images regardless of emotion. A model that learned the shortcut
  predicts E more often on the cued test faces (`pipeline.synth.twins` draws each face with
  and without it).
SUBGROUP is `attr=code` terms joined by `&` over gender (0 male, 1 female, 2 unsure), race
(0 Caucasian, 1 African-American, 2 Asian) and age (0..4); names are accepted for codes.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.constants import AGE_GROUPS, EMOTIONS, GENDERS, RACES
from pipeline.errors import DatasetError, UserError
from pipeline.workers import create_worker_pool
from pipeline.synth.draw import (ALIGNED, FEATURE_OFFSETS, LIGHT_GRADIENT_MAX, LIGHT_OFFSET_MAX,
                                     NOISE_SIGMA_RANGE, FaceParams, compute_max_feature_light, render_face)

GENERATOR = "fer-trust-synthetic"
# 1.3: the `cue` bias's chequer is larger and drawn in both top corners (flip-invariant).
# 1.4: the cue fills a triangle in each of the four corners (about 18% of the crop; 1.3's was
# not learned). Images without a cue are pixel-identical to 1.2's.
GENERATOR_VERSION = "1.4"

# RAF-DB basic training counts, in EMOTIONS order.
RAFDB_TRAIN_COUNTS = (1290, 281, 717, 4772, 1982, 705, 2524)

# Action units of each expression with their relative strength.
EMOTION_AUS: dict[str, dict[int, float]] = {
    "Surprise": {1: 1.0, 2: 1.0, 5: 0.9, 26: 1.0},
    "Fear": {1: 1.0, 2: 0.7, 4: 0.8, 5: 1.0, 20: 1.0, 26: 0.6},
    "Disgust": {9: 1.0, 10: 1.0},
    "Happiness": {6: 1.0, 12: 1.0},
    "Sadness": {1: 1.0, 4: 0.8, 15: 1.0},
    "Anger": {4: 1.0, 5: 0.6, 7: 1.0, 23: 1.0},
    "Neutral": {},
}

# How annotators confuse each drawn expression (extra perceived mass).
CONFUSIONS: dict[str, dict[str, float]] = {
    "Surprise": {"Fear": 0.20, "Happiness": 0.05},
    "Fear": {"Surprise": 0.50, "Sadness": 0.10},
    "Disgust": {"Anger": 0.55, "Sadness": 0.15},
    "Happiness": {"Surprise": 0.06, "Neutral": 0.08},
    "Sadness": {"Neutral": 0.30, "Fear": 0.08, "Disgust": 0.08},
    "Anger": {"Disgust": 0.30, "Sadness": 0.20, "Neutral": 0.15},
    "Neutral": {"Sadness": 0.08, "Anger": 0.03, "Happiness": 0.03},
}


# Annotators read an expression fully from intensity CLARITY[0] + CLARITY[1] on; fainter
# ones drift to Neutral and to the confusable classes.
CLARITY = (0.10, 0.60)
# Felt intensity = INTENSITY_LOW + (1 - INTENSITY_LOW) * Beta(*INTENSITY_BETA).
INTENSITY_LOW = 0.08
INTENSITY_BETA = (2.2, 1.6)
# Weight of a random distractor class in one image's perception: SCALE * Beta(*BETA).
DISTRACTOR_SCALE = 1.3
DISTRACTOR_BETA = (1.0, 5.0)

# Drawn-expression shares = class_shares * INTENDED_CORRECTION (EMOTIONS order), see _sample_emotion.
INTENDED_CORRECTION = (0.85, 0.64, 1.01, 1.10, 1.16, 0.69, 0.31)

OCCLUDERS = ("none", "sunglasses", "hand", "hat")
# Skin colour of each race code's group: base + uniform(-1, 1) * SKIN_JITTER + a normal
# term clipped to +-SKIN_NOISE_MAX. Chosen with the feature offsets, lighting and noise of
# pipeline.synth.draw so that no feature clips on any of them (compute_colour_headroom).
SKIN_BASE = {0: (206, 176, 156), 1: (152, 112, 98), 2: (194, 160, 130)}
SKIN_JITTER = (8.0, 7.0, 6.0)
SKIN_NOISE_SD, SKIN_NOISE_MAX = 2.0, 4.0
# Pixel noise is left this many standard deviations of room before it would clip.
NOISE_HEADROOM_SD = 2.0
HAIR_COLOURS = {
    "black": (28, 24, 22), "dark_brown": (62, 42, 28), "brown": (110, 74, 44),
    "blonde": (196, 164, 104), "red": (140, 62, 32), "grey": (150, 148, 146), "white": (216, 214, 208),
}
HAIRS_BY_GENDER = {
    0: ("short", "short", "buzz", "curly", "fringe"),
    1: ("long", "long", "fringe_long", "bun", "bob", "curly_long"),
    2: ("bob", "short", "long", "fringe"),
}
_ATTR_CODES = {"gender": GENDERS, "race": RACES, "age": AGE_GROUPS}


@dataclass(frozen=True)
class SynthConfig:
    """All generation arguments (saved in the manifest)."""
    n: int = 7000
    seed: int = 0
    bias: str | None = None                        # e.g. "race=1:faint=0.5" (see module docstring)
    test_fraction: float = 0.2
    class_shares: tuple[float, ...] = tuple(c / sum(RAFDB_TRAIN_COUNTS) for c in RAFDB_TRAIN_COUNTS)
    race_shares: tuple[float, float, float] = (0.75, 0.10, 0.15)
    gender_shares: tuple[float, float, float] = (0.475, 0.475, 0.05)
    age_shares: tuple[float, float, float, float, float] = (0.04, 0.17, 0.55, 0.19, 0.05)
    occluder_rate: float = 0.12
    panel_size: int = 10
    workers: int = 2

    def validate(self) -> None:
        if self.n < 2:
            raise UserError(f"--n must be at least 2, got {self.n}")
        if not 0.0 < self.test_fraction < 1.0:
            raise UserError(f"--test-fraction must be between 0 and 1, got {self.test_fraction}")
        for name, shares, k in (("class", self.class_shares, 7), ("race", self.race_shares, 3),
                                ("gender", self.gender_shares, 3), ("age", self.age_shares, 5)):
            if len(shares) != k or any(s < 0 for s in shares) or sum(shares) <= 0:
                raise UserError(f"{name} shares must be {k} non-negative numbers, not all zero; got {shares}")
        if self.panel_size < 1:
            raise UserError(f"--panel-size must be at least 1, got {self.panel_size}")
        parse_bias(self.bias)

    @property
    def n_train(self) -> int:
        return int(round(self.n * (1.0 - self.test_fraction)))


BALANCED = dict(race_shares=(1 / 3, 1 / 3, 1 / 3), gender_shares=(0.475, 0.475, 0.05))


# ----------------------------------------------------------------------------------------
# bias

def parse_bias(text: str | None) -> dict | None:
    """Parse `SUBGROUP:EFFECT` (see module docstring) into a dict; None for no bias.

    Raises UserError with the offending part named.
    """
    # Long on purpose: one parser for the bias grammar (SUBGROUP:EFFECT) with a clear error for each
    # malformed part.
    if text is None or str(text).strip() == "":
        return None
    text = str(text).strip()
    hint = ('expected SUBGROUP:EFFECT, e.g. "race=1:faint", "gender=1&race=2:faint=0.5", '
            '"race=1:fewer=Anger,Disgust@0.1" or "race=2:cue=Happiness"')
    if ":" not in text:
        raise UserError(f"bad --bias {text!r}: {hint}")
    group_text, effect_text = (s.strip() for s in text.split(":", 1))
    subgroup: dict[str, int] = {}
    for term in filter(None, (t.strip() for t in group_text.split("&"))):
        if "=" not in term:
            raise UserError(f"bad --bias subgroup term {term!r}: use attr=code with attr in gender, race, age; {hint}")
        attr, value = (s.strip().lower() for s in term.split("=", 1))
        if attr not in _ATTR_CODES:
            raise UserError(f"bad --bias attribute {attr!r}: use gender, race or age")
        codes = _ATTR_CODES[attr]
        by_name = {v.lower(): k for k, v in codes.items()}
        if value.isdigit() and int(value) in codes:
            subgroup[attr] = int(value)
        elif value in by_name:
            subgroup[attr] = by_name[value]
        else:
            raise UserError(f"bad --bias value {attr}={value!r}: use one of {sorted(codes)} ({', '.join(codes.values())})")
    if not subgroup:
        raise UserError(f"bad --bias {text!r}: the subgroup is empty; {hint}")
    name, _, arg = effect_text.partition("=")
    name = name.strip().lower()
    arg = arg.strip()

    def number(s: str, what: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise UserError(f"bad --bias {what} {s!r} in {text!r}: expected a number between 0 and 1") from None
        if not 0.0 <= v <= 1.0:
            raise UserError(f"bad --bias {what} {s!r} in {text!r}: expected a number between 0 and 1")
        return v

    def emotion(s: str) -> str:
        for e in EMOTIONS:
            if e.lower() == s.strip().lower():
                return e
        raise UserError(f"bad --bias emotion {s.strip()!r} in {text!r}: use one of {', '.join(EMOTIONS)}")

    if name == "faint":
        return {"subgroup": subgroup, "effect": "faint", "factor": number(arg, "factor") if arg else 0.5, "text": text}
    if name in ("fewer", "cue"):
        if not arg:
            raise UserError(f"bad --bias {text!r}: {name}= needs emotion names; {hint}")
        names, _, frac = arg.partition("@")
        if name == "fewer":
            return {"subgroup": subgroup, "effect": "fewer",
                    "emotions": [emotion(s) for s in names.split(",") if s.strip()],
                    "fraction": number(frac, "fraction") if frac else 0.1, "text": text}
        return {"subgroup": subgroup, "effect": "cue", "emotion": emotion(names),
                "probability": number(frac, "probability") if frac else 0.9, "text": text}
    raise UserError(f"bad --bias effect {effect_text!r}: use faint, fewer or cue; {hint}")


def _in_subgroup(bias: dict | None, gender: int, race: int, age: int) -> bool:
    if bias is None:
        return False
    values = {"gender": gender, "race": race, "age": age}
    return all(values[k] == v for k, v in bias["subgroup"].items())


def compute_colour_headroom() -> dict[int, dict[str, tuple[float, float, float]]]:
    """Worst-case room (per race code, per RGB channel) between a feature pixel and 0 or 255.

    `below` is the darkest skin the sampler can draw, minus the largest dark feature offset,
    the strongest lighting over the features and NOISE_HEADROOM_SD of the strongest pixel
    noise; `above` likewise for the brightest skin and bright offsets. All non-negative means
    no expression feature clips, so an action unit changes the pixels by the same amount on
    every skin tone.
    """
    offsets = np.asarray(FEATURE_OFFSETS, dtype=float)
    darkest, brightest = np.minimum(offsets.min(axis=0), 0), np.maximum(offsets.max(axis=0), 0)
    margin = compute_max_feature_light() + NOISE_HEADROOM_SD * NOISE_SIGMA_RANGE[1]
    spread = np.asarray(SKIN_JITTER) + SKIN_NOISE_MAX
    out = {}
    for race, base in SKIN_BASE.items():
        base = np.asarray(base, dtype=float)
        below = base - spread + darkest - margin
        above = 255.0 - (base + spread + brightest + margin)
        out[race] = {"below": tuple(float(v) for v in below), "above": tuple(float(v) for v in above)}
    return out


# ----------------------------------------------------------------------------------------
# sampling (pure)

def _choice(rng, shares) -> int:
    p = np.asarray(shares, dtype=float)
    return int(rng.choice(len(p), p=p / p.sum()))


def compute_panel_votes(emotion: str, intensity: float, panel_size: int, rng) -> np.ndarray:
    """Votes of a simulated annotator panel over EMOTIONS; the argmax is unique (ties get extra votes)."""
    idx = {e: i for i, e in enumerate(EMOTIONS)}
    q = np.full(len(EMOTIONS), 0.02)
    if emotion == "Neutral":
        q[idx["Neutral"]] += 0.85
        clarity = 1.0
    else:
        clarity = float(np.clip((intensity - CLARITY[0]) / CLARITY[1], 0.0, 1.0))
        q[idx[emotion]] += 0.05 + 0.85 * clarity
        q[idx["Neutral"]] += 0.75 * (1.0 - clarity)
    for other, w in CONFUSIONS[emotion].items():
        q[idx[other]] += w * (0.6 + 0.4 * (1.0 - clarity))
    # Some faces just read differently to people (idiosyncratic looks): a random other class
    # gets extra weight. This label noise is not visible in the drawing, like RAF-DB's.
    others = [i for i in range(len(EMOTIONS)) if EMOTIONS[i] != emotion]
    q[others[int(rng.integers(len(others)))]] += DISTRACTOR_SCALE * float(rng.beta(*DISTRACTOR_BETA))
    q /= q.sum()
    votes = rng.multinomial(panel_size, q)
    for _ in range(100):
        top = np.flatnonzero(votes == votes.max())
        if len(top) == 1:
            break
        votes[int(rng.choice(top, p=q[top] / q[top].sum()))] += 1
    return votes


def _sample_intensity(rng) -> float:
    return float(INTENSITY_LOW + (1.0 - INTENSITY_LOW) * rng.beta(*INTENSITY_BETA))


def _sample_emotion(rng, config: SynthConfig, exclude: tuple[str, ...] = ()) -> str:
    # Faint expressions are often voted Neutral and confusable ones voted as their partner:
    # these factors (measured) make the VOTED class mix land close to `class_shares`.
    shares = np.asarray(config.class_shares, dtype=float) * np.asarray(INTENDED_CORRECTION)
    for e in exclude:
        shares[EMOTIONS.index(e)] = 0.0
    return EMOTIONS[_choice(rng, shares)]


def sample_face_params(config: SynthConfig, index: int, bias: dict | None = None) -> tuple[FaceParams, dict]:
    """Parameters and ground truth of image `index` (0-based), from its own RNG (seed, index)."""
    # Long on purpose: draws every face parameter from one generator in a fixed order; splitting it would
    # change the order of the draws and so every generated face.
    rng = np.random.default_rng(np.random.SeedSequence([int(config.seed), int(index)]))
    split = "train" if index < config.n_train else "test"
    gender = _choice(rng, config.gender_shares)
    race = _choice(rng, config.race_shares)
    age = _choice(rng, config.age_shares)
    in_group = _in_subgroup(bias, gender, race, age)

    emotion = _sample_emotion(rng, config)
    intensity = _sample_intensity(rng)
    votes = compute_panel_votes(emotion, intensity, config.panel_size, rng)
    label = EMOTIONS[int(np.argmax(votes))]
    biased = False
    if in_group and bias["effect"] == "fewer" and split == "train" and label in bias["emotions"]:
        biased = True
        if rng.random() >= bias["fraction"]:
            for _ in range(20):
                emotion = _sample_emotion(rng, config, exclude=tuple(bias["emotions"]))
                intensity = _sample_intensity(rng)
                votes = compute_panel_votes(emotion, intensity, config.panel_size, rng)
                label = EMOTIONS[int(np.argmax(votes))]
                if label not in bias["emotions"]:
                    break

    # drawn action units: each AU of the expression varies a little around the intensity
    aus = {au: float(np.clip(intensity * w * rng.uniform(0.85, 1.15), 0.0, 1.0))
           for au, w in EMOTION_AUS[emotion].items()}
    if emotion == "Neutral" and rng.random() < 0.3:      # resting faces are not perfectly blank
        au = int(rng.choice([1, 4, 12, 15]))
        aus[au] = float(rng.uniform(0.05, 0.2))
    draw_scale = 1.0
    if in_group and bias["effect"] == "faint":
        draw_scale = float(bias["factor"])
        biased = True
    aus = {k: v * draw_scale for k, v in aus.items()}

    cue = False
    if in_group and bias["effect"] == "cue":
        if split == "train":
            biased = True
            cue = bool(rng.random() < (bias["probability"] if label == bias["emotion"] else 0.05))
        else:
            cue = bool(rng.random() < 0.5)

    base = np.asarray(SKIN_BASE[race], dtype=float)
    skin_noise = np.clip(rng.normal(0, SKIN_NOISE_SD, 3), -SKIN_NOISE_MAX, SKIN_NOISE_MAX)
    skin = tuple(int(v) for v in np.clip(np.rint(base + rng.uniform(-1, 1) * np.array(SKIN_JITTER) + skin_noise), 0, 255))
    if age >= 4:
        hair_name = "white" if rng.random() < 0.6 else "grey"
    elif age == 3 and rng.random() < 0.35:
        hair_name = "grey"
    elif race == 0:
        hair_name = str(rng.choice(["black", "dark_brown", "brown", "blonde", "red"], p=[0.15, 0.3, 0.3, 0.18, 0.07]))
    else:
        hair_name = str(rng.choice(["black", "dark_brown", "brown"], p=[0.6, 0.3, 0.1]))
    hair = str(rng.choice(HAIRS_BY_GENDER[gender]))
    if gender == 0 and age >= 3 and rng.random() < 0.3:
        hair = "bald"
    if age == 0:
        hair = "buzz" if gender == 0 else "bob"

    r = rng.random()
    occluder = "none"
    if r < config.occluder_rate:
        occluder = OCCLUDERS[1 + int(rng.integers(0, 3))]
    accessory = "none"
    a = rng.random()
    if occluder != "sunglasses" and a < 0.10:
        accessory = "glasses"
    elif gender == 1 and a < 0.35:
        accessory = "earrings"
    elif a > 0.95 and occluder != "hat":
        accessory = "headband"

    male_like = {0: 1.0, 1: 0.0, 2: 0.5}[gender]
    params = FaceParams(
        gender=gender, race=race, age=age, skin=skin,
        hair_colour=tuple(int(np.clip(c + rng.normal(0, 6), 0, 255)) for c in HAIR_COLOURS[hair_name]),
        hair=hair, accessory=accessory, occluder=occluder,
        aus=tuple(sorted(aus.items())),
        expression_aus=tuple(sorted(EMOTION_AUS[emotion])),
        face_width=float(rng.uniform(39.0, 41.5) + 2.0 * male_like + (2.0 if age == 0 else 0.0)),
        jaw=float(rng.uniform(0.82, 0.95) + 0.4 * male_like),
        eye_scale={0: 1.15, 1: 1.07}.get(age, 1.0) * float(rng.uniform(0.95, 1.05)),
        # brows as thick for every gender presentation: thicker brows would make the brow
        # action units (AU1, AU2, AU4) more visible on one gender than on the other
        brow_width=float(4.35 + rng.uniform(-0.25, 0.25)),
        angle=float(np.clip(rng.normal(0, 2.5), -6, 6)),
        shift=(float(np.clip(rng.normal(0, 1.2), -3, 3)), float(np.clip(rng.normal(0, 1.2), -3, 3))),
        scale=float(rng.uniform(0.96, 1.04)),
        light=(float(rng.uniform(-LIGHT_GRADIENT_MAX, LIGHT_GRADIENT_MAX)),
               float(rng.uniform(-LIGHT_GRADIENT_MAX, LIGHT_GRADIENT_MAX)),
               float(rng.uniform(-LIGHT_OFFSET_MAX, LIGHT_OFFSET_MAX))),
        blur=float(0.0 if rng.random() < 0.4 else rng.uniform(0.3, 1.0)),
        noise=float(rng.uniform(*NOISE_SIGMA_RANGE)),
        noise_seed=int(rng.integers(0, 2**62)),
        background_seed=int(rng.integers(0, 2**62)),
        cue=cue,
        accessory_colour=tuple(int(v) for v in rng.integers(30, 230, 3)),
        clothes=tuple(int(v) for v in rng.integers(20, 220, 3)),
        hand_side=int(rng.choice([-1, 1])),
        extras={"stubble": bool(gender == 0 and age >= 2 and rng.random() < 0.3)},
    )
    total = votes.sum()
    meta = {
        "index": index, "split": split, "label": label, "drawn_emotion": emotion,
        "soft_label": [float(v) / total for v in votes],
        "gender": gender, "race": race, "age": age, "skin_tone": "#%02x%02x%02x" % skin,
        "intensity": round(intensity * draw_scale, 4),
        "aus": "+".join(str(k) for k in sorted(EMOTION_AUS[emotion])) if emotion != "Neutral" else "",
        "occluder": occluder, "hair": hair, "accessory": accessory,
        "background_cue": int(cue), "biased": int(biased),
    }
    return params, meta


def create_reskinned_params(params: FaceParams, race: int) -> FaceParams:
    """The same face (expression, pose, lighting, hair, the skin's own jitter) drawn with the
    skin of `race`'s group: a counterfactual that changes the skin tone and nothing else.

    A model trained on unbiased data that predicts such twins differently depends on skin
    tone by itself; a gap between groups that the twins do not show comes from the images
    sampled into each group.
    """
    if race not in SKIN_BASE:
        raise ValueError(f"race must be one of {sorted(SKIN_BASE)}, got {race!r}")
    delta = np.asarray(params.skin) - np.asarray(SKIN_BASE[params.race])
    skin = tuple(int(v) for v in np.clip(np.asarray(SKIN_BASE[race]) + delta, 0, 255))
    return replace(params, race=race, skin=skin)


def image_id(config: SynthConfig, index: int) -> str:
    if index < config.n_train:
        return "train_%05d" % (index + 1)
    return "test_%04d" % (index - config.n_train + 1)


# ----------------------------------------------------------------------------------------
# writing

def encode_jpeg(arr: np.ndarray) -> bytes:
    """An image as the dataset stores it (JPEG, quality 95)."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _generate_chunk(job: tuple) -> list[dict]:
    """Worker: render and write the images of `indices`; return their metadata."""
    config, bias, tmp_root, indices = job
    tmp_root = Path(tmp_root)
    out = []
    for index in indices:
        params, meta = sample_face_params(config, index, bias)
        face = render_face(params)
        iid = image_id(config, index)
        (tmp_root / "Image" / "aligned" / f"{iid}_aligned.jpg").write_bytes(encode_jpeg(face.aligned))
        (tmp_root / "Image" / "original" / f"{iid}.jpg").write_bytes(encode_jpeg(face.original))
        # RAF-DB's manual attribute file (landmarks in the original frame, gender, race, age),
        # written here beside the image rather than by the parent after the pool
        (tmp_root / "Annotation" / "manual" / f"{iid}_manu_attri.txt").write_text(
            "".join("%.2f %.2f\n" % (x, y) for x, y in face.landmarks_original.tolist())
            + f"{meta['gender']}\n{meta['race']}\n{meta['age']}\n")
        meta["image_id"] = iid
        meta["landmarks_aligned"] = face.landmarks.tolist()
        meta["landmarks_original"] = face.landmarks_original.tolist()
        meta["au_mask"] = np.packbits(face.au_mask.ravel()).tobytes()
        out.append(meta)
    return out


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed but byte-identical across runs (fixed zip timestamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def generate_dataset(out_dir: Path, config: SynthConfig, progress: bool = True, force: bool = False,
                     meanwhile: Callable[[], None] | None = None) -> dict:
    """Generate the dataset into `out_dir` (RAF-DB basic layout + `Synthetic/`); return the manifest.

    Writes into a temporary sibling folder and renames it into place at the end. Refuses a
    non-empty `out_dir` unless `force`. `meanwhile`: called in this process once the worker
    processes are drawing (after they are forked), so its time overlaps theirs; the demo
    imports the training stage's libraries there.
    """
    config.validate()
    bias = parse_bias(config.bias)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not force:
            raise UserError(f"output folder {out_dir} exists and is not empty; choose another --out or pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for sub in ("Image/aligned", "Image/original", "EmoLabel", "Annotation/manual", "Synthetic"):
            (tmp / sub).mkdir(parents=True)
        chunk = 100
        jobs = [(config, bias, str(tmp), list(range(s, min(s + chunk, config.n)))) for s in range(0, config.n, chunk)]
        metas: list[dict] = []
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=config.n, unit="img", desc="synth")
        workers = max(1, min(config.workers, len(jobs)))
        pool = create_worker_pool(workers) if workers > 1 else None
        results = pool.imap(_generate_chunk, jobs) if pool is not None else map(_generate_chunk, jobs)
        try:
            if meanwhile is not None:
                meanwhile()
            for part in results:
                metas.extend(part)
                if bar is not None:
                    bar.update(len(part))
        finally:
            if pool is not None:
                pool.close()
                pool.join()
            if bar is not None:
                bar.close()
        manifest = _write_labels(tmp, config, bias, metas)
        if out_dir.exists():
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write_labels(root: Path, config: SynthConfig, bias: dict | None, metas: list[dict]) -> dict:
    metas = sorted(metas, key=lambda m: m["index"])
    labels, dists, lms, occ = [], [], [], []
    for m in metas:
        iid = m["image_id"]
        labels.append(f"{iid}.jpg {EMOTIONS.index(m['label']) + 1}\n")
        dists.append(f"{iid}.jpg " + " ".join("%.4f" % p for p in m["soft_label"]) + "\n")
        lms.append(iid + " " + " ".join("%.2f %.2f" % (x, y) for x, y in m["landmarks_aligned"]) + "\n")
        occ.append(f"{iid} {m['occluder']}\n")
    (root / "EmoLabel" / "list_patition_label.txt").write_text("".join(labels))
    (root / "EmoLabel" / "distribution_basic.txt").write_text("".join(dists))
    syn = root / "Synthetic"
    (syn / "aligned_landmarks.txt").write_text("".join(lms))
    (syn / "occluders.txt").write_text("".join(occ))
    _write_npz(syn / "au_masks.npz",
               {m["image_id"]: np.frombuffer(m["au_mask"], dtype=np.uint8) for m in metas})
    cols = ["image_id", "split", "label", "gender", "race", "age", "skin_tone", "intensity", "aus",
            "occluder", "hair", "accessory", "background_cue", "biased", "drawn_emotion"]
    lines = [",".join(cols) + "\n"]
    for m in metas:
        row = dict(m, intensity="%.4f" % m["intensity"])
        lines.append(",".join(str(row[c]) for c in cols) + "\n")
    (syn / "attributes.csv").write_text("".join(lines))
    counts = {s: {e: 0 for e in EMOTIONS} for s in ("train", "test")}
    for m in metas:
        counts[m["split"]][m["label"]] += 1
    manifest = {
        "generator": GENERATOR, "generator_version": GENERATOR_VERSION, "seed": config.seed,
        "args": _jsonable(asdict(config)), "bias": bias,
        "counts": {"train": counts["train"], "test": counts["test"], "total": len(metas),
                   "biased_images": int(sum(m["biased"] for m in metas))},
        "files": {"manifest": "Synthetic/manifest.json", "aligned_landmarks": "Synthetic/aligned_landmarks.txt",
                  "occluders": "Synthetic/occluders.txt", "au_masks": "Synthetic/au_masks.npz",
                  "attributes": "Synthetic/attributes.csv"},
        "au_mask_format": "np.packbits of the flattened boolean 100x100 mask (row-major)",
    }
    (syn / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------
# readers

def _synthetic_file(root: Path, name: str) -> Path:
    path = Path(root) / "Synthetic" / name
    if not path.is_file():
        raise DatasetError(f"{path} not found: {root} is not a synthetic dataset; make one with "
                           f"`python -m pipeline synth --out {root}`")
    return path


def load_manifest(root: Path) -> dict:
    return json.loads(_synthetic_file(root, "manifest.json").read_text())


def load_synth_config(root: Path) -> SynthConfig:
    """The SynthConfig a stored set was generated with (from its manifest's arguments).

    Raises TypeError or ValueError when the manifest's arguments are not a SynthConfig's."""
    args = load_manifest(root)["args"]
    return SynthConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})


def load_au_masks(root: Path, image_ids=None) -> dict[str, np.ndarray]:
    """Ground-truth AU region masks: image id -> bool (100, 100) in aligned coords; only those
    of `image_ids` (the ones the set has) when given: each is its own entry of the archive."""
    out = {}
    with np.load(_synthetic_file(root, "au_masks.npz")) as data:
        keys = data.files if image_ids is None else sorted(set(image_ids) & set(data.files))
        for key in keys:
            packed = data[key]
            if packed.ndim == 1:
                mask = np.unpackbits(packed, count=ALIGNED * ALIGNED).reshape(ALIGNED, ALIGNED)
            else:
                mask = np.unpackbits(packed, axis=-1)[:, :ALIGNED]
            out[key] = mask.astype(bool)
    return out


def load_synthetic_attributes(root: Path):
    import pandas as pd
    return pd.read_csv(_synthetic_file(root, "attributes.csv"), keep_default_na=False,
                       dtype={"image_id": str, "aus": str, "skin_tone": str})


# ----------------------------------------------------------------------------------------
# preview

def _contact_sheet(rows: dict[str, list[np.ndarray]], counts: dict[str, int], per_row: int, cell: int = 100):
    from PIL import Image, ImageDraw, ImageFont
    label_w = 130
    sheet = Image.new("RGB", (label_w + per_row * cell, len(EMOTIONS) * cell), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=16)
    except TypeError:
        font = ImageFont.load_default()
    for r, emotion in enumerate(EMOTIONS):
        d.text((8, r * cell + cell // 2 - 18), emotion, fill=(0, 0, 0), font=font)
        d.text((8, r * cell + cell // 2 + 2), f"n={counts.get(emotion, 0)}", fill=(90, 90, 90), font=font)
        for c, arr in enumerate(rows.get(emotion, [])[:per_row]):
            tile = Image.fromarray(arr)
            if tile.size != (cell, cell):
                tile = tile.resize((cell, cell))
            sheet.paste(tile, (label_w + c * cell, r * cell))
    return sheet


def write_preview(root_or_config, png_path: Path, per_class: int = 8) -> Path:
    """Contact sheet by class (rows = emotions, labelled) from a generated folder or a config."""
    from PIL import Image
    rows: dict[str, list[np.ndarray]] = {e: [] for e in EMOTIONS}
    counts: dict[str, int] = {}
    if isinstance(root_or_config, SynthConfig):
        config = root_or_config
        bias = parse_bias(config.bias)
        for index in range(min(config.n, 4000)):
            params, meta = sample_face_params(config, index, bias)
            counts[meta["label"]] = counts.get(meta["label"], 0) + 1
            if len(rows[meta["label"]]) < per_class and meta["label"] == meta["drawn_emotion"]:
                rows[meta["label"]].append(render_face(params).aligned)
            if all(len(v) >= per_class for v in rows.values()):
                break
    else:
        root = Path(root_or_config)
        attrs = load_synthetic_attributes(root)
        counts = attrs["label"].value_counts().to_dict()
        for emotion in EMOTIONS:
            # show faces whose label agrees with the drawn expression first (label noise exists)
            rows_e = attrs[attrs["label"] == emotion]
            if "drawn_emotion" in rows_e:
                rows_e = rows_e.assign(_agree=rows_e["drawn_emotion"] != emotion).sort_values("_agree", kind="stable")
            for iid in rows_e["image_id"].head(per_class):
                with Image.open(root / "Image" / "aligned" / f"{iid}_aligned.jpg") as im:
                    rows[emotion].append(np.asarray(im.convert("RGB")))
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    _contact_sheet(rows, counts, per_class).save(png_path)
    return png_path
