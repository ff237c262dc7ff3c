"""Paired comparison of two runs: McNemar's test and paired bootstrap intervals of gap changes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from statsmodels.stats.contingency_tables import mcnemar

from pipeline.fairness.paired import PairedConfig, compute_gap_changes, compute_mcnemar

FAST = PairedConfig(n_boot=400, min_support=20)


def _frame(n=600, seed=0, closed=True):
    """Run A does worse on race 'B'; run B does not (closed) or is run A again."""
    rng = np.random.default_rng(seed)
    race = rng.choice(["A", "B", "C"], n)
    gender = rng.choice(["female", "male"], n)
    correct_a = rng.random(n) < np.where(race == "B", 0.6, 0.9)
    correct_b = rng.random(n) < 0.88 if closed else correct_a.copy()
    return pd.DataFrame({"correct_a": correct_a, "correct_b": correct_b, "race": race, "gender": gender,
                         "age": None})


@pytest.mark.parametrize("n,seed", [(1000, 0), (40, 1)])    # chi-square and exact branches
def test_mcnemar_equals_statsmodels(n, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random(n) < 0.8, rng.random(n) < 0.85
    got = compute_mcnemar(a, b)
    table = pd.crosstab(pd.Series(a, name="a"), pd.Series(b, name="b")).reindex(
        index=[True, False], columns=[True, False], fill_value=0).to_numpy()
    exact = table[0, 1] + table[1, 0] < 25
    want = mcnemar(table, exact=exact, correction=True)
    assert got["p_value"] == pytest.approx(want.pvalue) and got["only_a"] == table[0, 1]
    assert got["both_correct"] + got["only_a"] + got["only_b"] + got["both_wrong"] == n
    if exact:
        assert got["p_value"] == pytest.approx(binomtest(got["only_a"], got["only_a"] + got["only_b"]).pvalue)


def test_mcnemar_of_identical_runs_is_one():
    a = np.array([True, False, True])
    assert compute_mcnemar(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        compute_mcnemar(a, a[:2])


def test_gap_changes_point_estimates_and_a_closed_gap():
    frame = _frame()
    out = compute_gap_changes(frame, FAST).set_index(["attribute", "comparison", "grp"])
    row = out.loc[("race", "vs-rest", "B")]
    in_b = frame["race"] == "B"
    for run in ("a", "b"):
        c = frame[f"correct_{run}"]
        assert row[f"gap_{run}"] == pytest.approx(c[~in_b].mean() - c[in_b].mean())
    assert row["change"] < 0 and row["ci_high"] < 0 and row["resolved"]      # run B closed it
    assert row["ci_low"] <= row["change"] <= row["ci_high"]
    spread = out.xs("best-worst", level="comparison").loc["race"]
    assert spread.index[0].endswith("/ B") and spread["gap_a"].iloc[0] > 0
    assert ("gender×race", "vs-rest", "female | B") in out.index             # intersections
    assert "age" not in set(out.index.get_level_values("attribute"))         # unlabelled attribute skipped


def test_gap_changes_are_paired():
    """The same run twice: every change and both bounds are exactly 0, which only a
    resampling that keeps each image's two predictions together gives."""
    out = compute_gap_changes(_frame(closed=False), FAST)
    assert len(out) and (out["change"] == 0).all() and (out["ci_low"] == 0).all() and (out["ci_high"] == 0).all()
    assert not out["resolved"].any()


def test_groups_below_support_are_not_compared():
    frame = _frame(n=200)
    out = compute_gap_changes(frame, PairedConfig(n_boot=200, min_support=150))
    assert out.empty and list(out.columns)[:3] == ["attribute", "comparison", "grp"]
