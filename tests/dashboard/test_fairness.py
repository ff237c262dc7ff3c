"""Fairness page: group metrics with CI and n, intersections, gaps, proxy agreement."""
from __future__ import annotations

from tests.dashboard.conftest import open_page

RUN = "20260101-000000-lightcnn-softlabel-aaaa"


def _open(make_app, store, **params):
    return open_page(make_app, store, "views/fairness.py", **params)


def test_groups_gaps_and_proxy_tables(make_app, fake_store):
    at = _open(make_app, fake_store, run=RUN)
    tables = [d.value for d in at.dataframe]
    groups = tables[0]
    assert set(groups["attribute"]) == {"gender", "race", "age"}
    assert {"n", "value", "ci_low", "ci_high", "low_support"} <= set(groups.columns)
    assert (groups["ci_low"] <= groups["value"]).all() and (groups["value"] <= groups["ci_high"]).all()
    assert any({"p_adjusted", "significant", "correction"} <= set(t.columns) for t in tables)
    assert any({"annotated", "inferred", "n"} <= set(t.columns) for t in tables)
    assert any("agreement" in t.columns for t in tables)


def test_intersection_and_source_selection(make_app, fake_store):
    at = _open(make_app, fake_store, run=RUN)
    at.radio(key="inter").set_value("gender×race×emotion").run()
    inter = next(d.value for d in at.dataframe if (d.value["attribute"] == "gender×race×emotion").any())
    assert inter["grp"].str.count(r" \| ").eq(2).all()
    assert inter["low_support"].any()
    assert any("low support" in c.value for c in at.caption)
    before = at.dataframe[0].value
    at.selectbox(key="source").set_value("deepface").run()
    assert not at.exception
    after = at.dataframe[0].value
    assert not before.equals(after)
    assert any("inferred, perceived labels" in c.value for c in at.caption)


def test_metric_selection(make_app, fake_store):
    at = _open(make_app, fake_store, run=RUN)
    at.selectbox(key="metric").set_value("macro_f1").run()
    assert set(at.dataframe[0].value["metric"]) == {"macro_f1"}


def test_audit_settings_shown_when_recorded(make_app, pipeline_store, fake_store):
    # The real pipeline records each audit's settings; the fake store predates them.
    at = _open(make_app, pipeline_store, source="annotations")
    recorded = [c.value for c in at.caption if c.value.startswith("Audit settings:")]
    assert len(recorded) == 1 and "alpha 0.05, holm correction" in recorded[0]
    assert "minimum support 30" in recorded[0]
    at = _open(make_app, fake_store, run=RUN)
    assert any("settings were not recorded" in c.value for c in at.caption)
