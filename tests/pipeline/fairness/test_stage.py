"""The fairness stages end to end on a store made by the real demo: what run_audit stores."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.cohort import inject_cohort_errors

from pipeline.fairness.calibration import CalibrationConfig, compute_ece
from pipeline.fairness.slices import SliceConfig, load_slice_conditions
from pipeline.fairness.stage import AuditRunConfig, run_audit
from pipeline.fairness.audit import AuditConfig


@pytest.fixture(scope="module")
def audited(demo_store, tmp_path_factory):
    db = tmp_path_factory.mktemp("stage") / "results.duckdb"
    shutil.copy(demo_store, db)
    assert inject_cohort_errors(db) >= 10      # a known slice: the one-epoch model's own errors may have none
    config = AuditRunConfig(db=str(db), sources=("annotations",),
                            audit=AuditConfig(n_boot=50, n_perm=50, min_support=5),
                            slices=SliceConfig(min_support=5, max_conditions=2, n_candidates=8),
                            calibration=CalibrationConfig(n_boot=50, n_bins=5, min_support=5))
    return db, run_audit(config)


def _load(db, table, **keys):
    from pipeline.store.db import load_frame, open_store

    with open_store(db, read_only=True) as con:
        return load_frame(con, table, **keys)


def test_slices_stored_with_their_images(audited):
    db, summary = audited
    run_id = summary["run_id"]
    found = _load(db, "slices", run_id=run_id, source="annotations", split="test")
    images = _load(db, "slice_images", run_id=run_id, source="annotations", split="test")
    assert len(found) > 0 and list(found["rank"]) == list(range(1, len(found) + 1))
    labels = _load(db, "demographics", source="annotations").rename(columns={"age_group": "age"})
    preds = _load(db, "predictions", run_id=run_id, split="test").merge(labels, on="image_id", how="left")
    preds["emotion"] = preds["true_label"]
    for row in found.itertuples(index=False):
        members = set(images.loc[images["rank"] == row.rank, "image_id"])
        assert len(members) == row.n_all and row.n <= row.n_all
        inside = np.ones(len(preds), dtype=bool)
        for feature, value in load_slice_conditions(row.conditions):
            if feature in preds.columns:
                inside &= (preds[feature].astype(str) == value).to_numpy()
        assert members <= set(preds.loc[inside, "image_id"])   # every member meets the stored conditions


def test_calibration_stored_before_and_after_scaling(audited):
    db, summary = audited
    run_id = summary["run_id"]
    cal = _load(db, "calibration", run_id=run_id, source="annotations", split="test")
    bins = _load(db, "calibration_bins", run_id=run_id, source="annotations", split="test")
    preds = _load(db, "predictions", run_id=run_id, split="test")
    assert set(cal["scaling"]) == {"none", "temperature"}      # the demo stores val predictions
    overall = cal[(cal["attribute"] == "all") & (cal["scaling"] == "none")].iloc[0]
    assert overall["n"] == len(preds)
    assert overall["ece"] == pytest.approx(compute_ece(preds["confidence"].to_numpy(float),
                                                       preds["correct"].to_numpy(), n_bins=5), abs=1e-6)
    assert overall["accuracy"] == pytest.approx(preds["correct"].mean())
    assert (cal["temperature"] > 0).all()
    per_group = bins.groupby(["scaling", "attribute", "grp"])["n"].sum()
    assert (per_group.loc[("none", "gender")] == cal[(cal["scaling"] == "none") & (cal["attribute"] == "gender")]
            .set_index("grp")["n"]).all()
    settings = _load(db, "audits", run_id=run_id, source="annotations")["config"].iloc[0]
    settings = json.loads(settings) if isinstance(settings, str) else settings
    assert settings["slices"]["n_candidates"] == 8 and settings["calibration"]["n_bins"] == 5
