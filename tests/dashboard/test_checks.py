"""Explanation checks: the table and verdicts the Explanations page shows, against what `explain` stored."""
from __future__ import annotations

import pytest

from dashboard import checks, queries


@pytest.fixture(scope="module")
def metrics(pipeline_store):
    ref = queries.create_store_ref(pipeline_store)
    run = queries.load_runs(ref)["run_id"].iloc[0]
    return queries.load_explanation_metrics(ref, run)


def test_the_stated_rules_reproduce_every_stored_flag(metrics):
    by_key = metrics.set_index(["method", "metric", "emotion"])["value"]
    judged = 0
    for r in metrics[metrics["passed"].notna()].itertuples():
        check = next(c for c in checks.CHECKS if c.metric == r.metric)
        base = by_key[(r.method, check.baseline, r.emotion)] if check.baseline else None
        assert check.passes(r.value, base) == bool(r.passed), (r.method, r.metric, r.emotion, r.value, base)
        judged += 1
    assert judged >= 3 * 2  # three checks, two methods in the demo


def test_table_names_the_emotion_rule_baseline_and_small_n(metrics):
    overall = checks.compute_check_table(metrics)
    assert set(overall["emotion"]) == {"all"}
    assert len(overall) == 3 * metrics["method"].nunique()
    assert overall["rule"].str.startswith("passes").all()
    energy = overall[overall["check"].str.startswith("energy")]
    assert energy["baseline"].notna().all()
    full = checks.compute_check_table(metrics, per_emotion=True)
    assert len(full) > len(overall) and (set(full["emotion"]) - {"all"})
    small = full[full["n"] < checks.SMALL_N]
    assert small["result"].str.contains("small n").all()
    assert not full[full["n"] >= checks.SMALL_N]["result"].str.contains("small n").any()


def test_one_verdict_per_method(metrics):
    verdicts = checks.compute_verdicts(metrics)
    assert set(verdicts) == set(metrics["method"])
    table = checks.compute_check_table(metrics)
    for method, line in verdicts.items():
        n_passed = int(table[table["method"] == method]["result"].str.startswith("passed").sum())
        assert line.startswith(f"passes {n_passed} of 3 checks")
