"""Calibration by group on synthetic probabilities with a known answer."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.constants import EMOTIONS
from pipeline.fairness import calibration
from pipeline.fairness.calibration import CalibrationConfig, compute_calibration

CLASSES = EMOTIONS[:6]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def calibrated(n: int, rng: np.random.Generator, sharpen: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z) (calibrated), returned probabilities softmax(z · sharpen)."""
    z = rng.normal(0, 1.5, (n, len(CLASSES)))
    p = softmax(z)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return softmax(z * sharpen), y


def make_frame(n: int, seed: int, overconfident: bool) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"gender": rng.choice(["male", "female"], n),
                          "race": rng.choice(["Caucasian", "African-American", "Asian"], n),
                          "age": rng.choice(["20-39", "40-69"], n)})
    probs, y = calibrated(n, rng)
    if overconfident:
        female = (frame["gender"] == "female").to_numpy()
        sharp, y_f = calibrated(int(female.sum()), rng, sharpen=2.5)
        probs[female], y[female] = sharp, y_f
    frame["true_label"] = np.array(CLASSES)[y]
    return frame, probs


def test_fit_temperature_recovers_a_known_temperature():
    probs, y = calibrated(4000, np.random.default_rng(0), sharpen=2.0)
    assert calibration.fit_temperature(probs, y) == pytest.approx(2.0, rel=0.1)
    rescaled = calibration.apply_temperature(probs, 2.0)
    np.testing.assert_array_equal(rescaled.argmax(axis=1), probs.argmax(axis=1))


def test_ece_against_a_direct_loop():
    rng = np.random.default_rng(1)
    conf = rng.random(500)
    correct = rng.random(500) < conf
    ref = 0.0
    for j in range(10):
        inside = (conf > j / 10) & (conf <= (j + 1) / 10) if j else conf <= 0.1
        if inside.any():
            ref += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    assert calibration.compute_ece(conf, correct, n_bins=10) == pytest.approx(ref, abs=1e-12)


def test_overconfident_group_found_and_temperature_reported():
    frame, probs = make_frame(3000, seed=2, overconfident=True)
    val, y_val = calibrated(800, np.random.default_rng(3), sharpen=1.5)
    result = compute_calibration(frame, probs, CLASSES, CalibrationConfig(n_boot=200),
                                 val_probs=val, val_labels=np.array(CLASSES)[y_val])
    groups = result.groups.set_index(["scaling", "attribute", "grp"])
    female = groups.loc[("none", "gender", "female")]
    assert female["gap"] > 0.05 and female["gap_vs_rest"] > 0.05 and bool(female["significant"])
    assert female["correction"] == "holm (primary)"
    assert groups.loc[("none", "gender×race", "female | Asian"), "correction"] == "fdr_bh (exploratory)"
    assert result.temperature == pytest.approx(1.5, rel=0.15)
    assert set(result.groups["scaling"]) == {"none", "temperature"}
    tested = result.groups.dropna(subset=["p_value"])
    excludes = (tested["gap_low"] > 0) | (tested["gap_high"] < 0)
    assert (excludes == (tested["p_value"] < 0.05)).all()     # one resampling: never disagree
    overall = groups.loc[("none", "all", "all")]
    assert overall["ece_low"] <= overall["ece"] <= overall["ece_high"]
    bins = result.bins[(result.bins["scaling"] == "none") & (result.bins["attribute"] == "all")]
    assert bins["n"].sum() == len(frame)


@pytest.mark.parametrize("seed", [4, 5])
def test_calibrated_groups_flag_nothing(seed):
    frame, probs = make_frame(2000, seed=seed, overconfident=False)
    result = compute_calibration(frame, probs, CLASSES, CalibrationConfig(n_boot=200, seed=seed))
    assert set(result.groups["scaling"]) == {"none"} and result.temperature is None
    assert not result.groups["significant"].any()
