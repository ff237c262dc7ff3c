"""Pages on runs that came from outside: imported predictions (no heatmaps, and the pages say why)
and carded models whose weights cannot be re-initialised (no randomisation check, and why)."""
from __future__ import annotations

import json
import shutil

import duckdb
import pytest

from pipeline.store.db import refresh_explorer
from tests.dashboard.conftest import open_page, read_tables

RUN = "20260101-000000-lightcnn-softlabel-aaaa"


def _copy_as(fake_store, db, *, kind: str, config: dict, delete: tuple[tuple[str, str], ...]):
    """The fake store with run RUN turned into `kind` (config replaced) and some of its rows deleted."""
    shutil.copy(fake_store, db)
    con = duckdb.connect(str(db))
    con.execute("UPDATE runs SET kind = ?, config = ? WHERE run_id = ?", [kind, json.dumps(config), RUN])
    for table, where in delete:
        con.execute(f"DELETE FROM {table} WHERE run_id = ? {where}", [RUN])
    refresh_explorer(con)  # writes past the store's own functions: derive the explorer rows as they would
    con.close()
    return db


@pytest.fixture
def predictions_store(fake_store, tmp_path):
    return _copy_as(fake_store, tmp_path / "predictions.duckdb", kind="predictions",
                    config={"source_file": "/data/their_predictions.csv"},
                    delete=tuple((t, "") for t in ("heatmaps", "heatmap_summary", "explanation_metrics",
                                                   "failure_tags")))


@pytest.fixture
def onnx_store(fake_store, tmp_path):
    return _copy_as(fake_store, tmp_path / "onnx.duckdb", kind="external", config={"card": {"format": "onnx"}},
                    delete=(("explanation_metrics", "AND metric LIKE 'sanity%'"),))


@pytest.mark.parametrize("page", ["views/explanations.py", "views/errors.py"])
def test_predictions_runs_say_why_there_are_no_heatmaps(make_app, predictions_store, page):
    at = open_page(make_app, predictions_store, page, run=RUN)
    texts = [i.value for i in at.info] + [c.value for c in at.caption]
    assert any("imported from /data/their_predictions.csv: there is no model to explain" in t for t in texts), texts


def test_external_runs_say_which_checks_do_not_apply(make_app, onnx_store):
    at = open_page(make_app, onnx_store, "views/explanations.py", run=RUN)
    captions = [c.value for c in at.caption]
    assert any("No randomisation sanity check for" in c and "onnx file" in c for c in captions), captions


def test_performance_and_fairness_work_on_predictions_runs(make_app, predictions_store):
    for page in ("views/performance.py", "views/fairness.py", "views/compare.py", "views/export.py"):
        open_page(make_app, predictions_store, page, run=RUN)


def test_compare_counts_the_images_runs_share(make_app, predictions_store):
    from dashboard import queries

    ref = queries.create_store_ref(predictions_store)
    runs = queries.load_runs(ref)
    complete = tuple(runs["run_id"][:2])
    shared = queries.load_compare_shared_images(ref, complete, "test")
    con = duckdb.connect(str(predictions_store), read_only=True)
    expected = con.execute("""
        SELECT count(*) FROM (SELECT r.dataset_fingerprint, p.image_id FROM predictions p JOIN runs r USING (run_id)
        WHERE p.split = 'test' AND p.run_id IN (?, ?) GROUP BY 1, 2 HAVING count(*) = 2)""", list(complete)).fetchone()[0]
    con.close()
    assert set(shared["n_shared"]) == {expected}
    assert (shared["n_shared"] <= shared["n"]).all()
    at = open_page(make_app, predictions_store, "views/compare.py", run=complete[0])
    tables = [d for d in read_tables(at) if "n_shared" in d.columns]
    assert tables and list(tables[0]["n_shared"]) == list(shared["n_shared"])
