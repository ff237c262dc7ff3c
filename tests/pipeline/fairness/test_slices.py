"""Slice discovery on synthetic prediction arrays with a known answer (no training)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.contingency_tables import StratifiedTable

from pipeline.constants import EMOTIONS
from pipeline.fairness import slices
from pipeline.fairness.slices import SliceConfig, compute_slices

CLASSES = EMOTIONS[:6]
DIFFICULTY = dict(zip(CLASSES, [0.10, 0.30, 0.20, 0.05, 0.15, 0.25]))   # error rate per true emotion


def make_errors(n: int, seed: int, lift: float = 0.0) -> pd.DataFrame:
    """Balanced features; errors at each emotion's rate, plus `lift` for female × 40-69."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "gender": rng.choice(["male", "female"], n),
        "race": rng.choice(["Caucasian", "African-American", "Asian"], n),
        "age": rng.choice(["4-19", "20-39", "40-69", "70+"], n),
        "emotion": rng.choice(CLASSES, n),
        "occluder": rng.choice(["none", "hand", "hat"], n, p=[0.9, 0.05, 0.05]),
    })
    rate = frame["emotion"].map(DIFFICULTY).to_numpy() + lift * ((frame["gender"] == "female")
                                                                 & (frame["age"] == "40-69")).to_numpy()
    frame["error"] = rng.random(n) < rate
    return frame


def test_mantel_haenszel_matches_statsmodels():
    rng = np.random.default_rng(0)
    n_total = rng.integers(40, 200, 5)
    o_total = (n_total * rng.uniform(0.1, 0.5, 5)).astype(int)
    n_slice = (n_total * rng.uniform(0.1, 0.6, (3, 5))).astype(int)
    o_slice = np.minimum((n_slice * rng.uniform(0.2, 0.7, (3, 5))).astype(int), o_total)
    z, p, rest = slices.compute_mantel_haenszel(o_slice, n_slice, o_total, n_total)
    for s in range(3):
        tables = [np.array([[o_slice[s, k], n_slice[s, k] - o_slice[s, k]],
                            [o_total[k] - o_slice[s, k], n_total[k] - n_slice[s, k] - o_total[k] + o_slice[s, k]]])
                  for k in range(5)]
        ref = StratifiedTable(tables).test_null_odds(correction=False)
        assert z[s] ** 2 == pytest.approx(ref.statistic, rel=1e-10)
        assert p[s] == pytest.approx(ref.pvalue / 2 if z[s] > 0 else 1 - ref.pvalue / 2, rel=1e-8)
        weights = n_slice[s] / n_slice[s].sum()
        assert rest[s] == pytest.approx(np.sum(weights * (o_total - o_slice[s]) / (n_total - n_slice[s])))


def test_injected_cohort_is_found_first():
    found = compute_slices(make_errors(6000, seed=1, lift=0.15), SliceConfig(seed=1))
    top = found.iloc[0]
    assert set(slices.load_slice_conditions(top["conditions"])) >= {("gender", "female"), ("age", "40-69")}
    assert bool(top["significant"]) and top["ci_low"] > top["rest_error_rate"] - 0.05
    assert top["error_rate"] > top["rest_error_rate"] + 0.08
    assert list(found["rank"]) == list(range(1, len(found) + 1))
    assert (found["n"] < found["n_all"]).all()              # figures from the held-out part only
    assert json.loads(top["conditions"])[0].keys() == {"feature", "value"}


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_no_bias_no_slice_survives(seed):
    # Emotions differ a lot in difficulty; that is not a cohort.
    found = compute_slices(make_errors(6000, seed=seed), SliceConfig(seed=seed))
    assert len(found) > 0 and not found["significant"].any(), found.head()
    assert not any(c == [{"feature": "emotion", "value": e}] for c in found["conditions"].map(json.loads)
                   for e in CLASSES)


def test_features_absent_from_the_data_are_skipped_and_bad_input_says_what():
    frame = make_errors(800, seed=5).drop(columns=["occluder"])
    found = compute_slices(frame, SliceConfig(features=("gender", "occluder", "emotion"), max_conditions=2))
    assert all(f["feature"] in ("gender", "emotion") for c in found["conditions"] for f in json.loads(c))
    with pytest.raises(ValueError, match="error"):
        compute_slices(frame.drop(columns=["error"]))
    with pytest.raises(ValueError, match="unknown slice features"):
        SliceConfig(features=("shoe_size",))


def test_confidence_bins():
    bins = slices.compute_confidence_bins(pd.Series([0.2, 0.5, 0.51, 0.95, 1.0]))
    assert list(bins) == ["0-0.5", "0-0.5", "0.5-0.7", "0.9-1", "0.9-1"]
