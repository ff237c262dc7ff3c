"""Fairness page: group metrics with CI and n, intersections, gaps, proxy agreement."""
from __future__ import annotations

import shutil

import pytest

from tests.dashboard.conftest import open_page

RUN = "20260101-000000-lightcnn-softlabel-aaaa"


TABLES = ("groups", "intersection", "gaps", "slices", "calibration", "proxy")  # expanders drawn when opened


def _open(make_app, store, **params):
    at = open_page(make_app, store, "views/fairness.py", **params)
    assert not at.dataframe  # every table waits in a closed expander
    for table in TABLES:
        at.session_state[f"fairness-{table}-table"] = True
    return at.run()


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


@pytest.fixture(scope="module")
def sliced_store(pipeline_store, tmp_path_factory):
    """The pipeline's store, its test predictions wrong for annotated women and right for everyone
    else, re-audited with settings small enough for its ~60 test images to yield slices (the
    demo's minimum support of 30 needs larger sets)."""
    from pipeline.fairness.audit import AuditConfig
    from pipeline.fairness.calibration import CalibrationConfig
    from pipeline.fairness.slices import SliceConfig
    from pipeline.fairness.stage import AuditRunConfig, run_audit

    db = tmp_path_factory.mktemp("sliced") / "results.duckdb"
    shutil.copy(pipeline_store, db)
    from tests.cohort import inject_cohort_errors

    assert inject_cohort_errors(db) >= 10      # a known slice: the one-epoch model's own errors may have none
    run_audit(AuditRunConfig(db=str(db), sources=("annotations",), audit=AuditConfig(n_boot=50, n_perm=50),
                             slices=SliceConfig(min_support=5, max_conditions=2, n_candidates=6),
                             calibration=CalibrationConfig(n_boot=50, n_bins=5, min_support=5)))
    return db


def test_slices_and_calibration_sections(make_app, sliced_store):
    at = _open(make_app, sliced_store, source="annotations")
    headers = [h.value for h in at.subheader]
    assert "Discovered slices" in headers and "Calibration by group" in headers
    tables = [d.value for d in at.dataframe]
    found = next(t for t in tables if {"definition", "rest_error_rate", "p_adjusted"} <= set(t.columns))
    assert len(found) > 0 and list(found["rank"]) == list(range(1, len(found) + 1))
    cal = next(t for t in tables if {"ece", "gap_vs_rest", "scaling"} <= set(t.columns))
    assert set(cal["scaling"]) == {"none", "temperature"} and cal["attribute"].nunique() == 1
    assert any("after temperature scaling" in c.value for c in at.caption)
    at.selectbox(key="cal_attr").set_value("race").run()
    assert not at.exception
    assert set(next(d.value for d in at.dataframe if "ece" in d.value.columns)["attribute"]) == {"race"}


def test_error_explorer_filtered_to_a_slice(make_app, sliced_store):
    # The page link of a slice opens the Error explorer with these URL parameters.
    from pipeline.store.db import get_run, load_frame, open_store

    with open_store(sliced_store, read_only=True) as con:
        run_id = get_run(con, "latest")["run_id"]
        first = load_frame(con, "slices", run_id=run_id, source="annotations", split="test").sort_values("rank").iloc[0]
    at = open_page(make_app, sliced_store, "views/errors.py", run=run_id, source="annotations", split="test",
                   slice=str(int(first["rank"])), outcome="all")
    assert at.selectbox(key="slice").value == int(first["rank"])
    assert any(f"{int(first['n_all']):,} images match" in s.value for s in at.subheader)
