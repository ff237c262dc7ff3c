"""Pages on runs that came from outside: imported predictions (no heatmaps, and the pages say why)
and carded models whose weights cannot be re-initialised (no randomisation check, and why)."""
from __future__ import annotations

import json
import shutil

import duckdb
import numpy as np
import pytest

from pipeline.store.db import refresh_explorer
from tests.dashboard.conftest import open_page, read_tables

RUN = "20260101-000000-lightcnn-softlabel-aaaa"

# The definition load_compare_shared_images answers (the query it replaced, which grouped every
# prediction of the chosen runs by image: 3.5-5 s with a 10M-prediction run).
SHARED_DEFINITION = """
    WITH p AS (
        SELECT p.run_id, r.kind, r.dataset_fingerprint, p.image_id, p.correct
        FROM predictions p JOIN runs r ON r.run_id = p.run_id
        WHERE p.split = ? AND p.run_id IN ({marks})),
    shared AS (
        SELECT dataset_fingerprint, image_id FROM p
        GROUP BY dataset_fingerprint, image_id HAVING count(DISTINCT run_id) = ?)
    SELECT p.run_id, any_value(p.kind) AS kind, count(*) AS n, count(s.image_id) AS n_shared,
           avg(CASE WHEN s.image_id IS NOT NULL THEN CAST(p.correct AS DOUBLE) END) AS accuracy_shared
    FROM p LEFT JOIN shared s ON s.dataset_fingerprint = p.dataset_fingerprint AND s.image_id = p.image_id
    GROUP BY p.run_id ORDER BY p.run_id"""


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
    expected = con.execute(SHARED_DEFINITION.format(marks="?, ?"), ["test", *complete, 2]).df()
    con.close()
    assert list(shared["n_shared"]) == list(expected["n_shared"]) and len(set(shared["n_shared"])) == 1
    assert (shared["n_shared"] <= shared["n"]).all()
    at = open_page(make_app, predictions_store, "views/compare.py", run=complete[0])
    tables = [d for d in read_tables(at) if "n_shared" in d.columns]
    assert tables and list(tables[0]["n_shared"]) == list(shared["n_shared"])


@pytest.fixture(scope="module")
def runs_store(fake_store, tmp_path_factory):
    """The fake store plus runs that share some, all or none of the main run's images: C (same dataset,
    every other test image, some outcomes flipped), D (another dataset, the same image ids), E (no
    predictions) and F (same dataset, a third of C's images)."""
    db = tmp_path_factory.mktemp("runs") / "runs.duckdb"
    shutil.copy(fake_store, db)
    con = duckdb.connect(str(db))
    for new, fingerprint in (("C", None), ("D", "fp-other"), ("E", None), ("F", None)):
        con.execute("CREATE TEMP TABLE r AS SELECT * FROM runs WHERE run_id = ?", [RUN])
        con.execute("UPDATE r SET run_id = ?, started_at = started_at + INTERVAL 1 DAY", [RUN + new])
        if fingerprint:
            con.execute("UPDATE r SET dataset_fingerprint = ?", [fingerprint])
        con.execute("INSERT INTO runs SELECT * FROM r")
        con.execute("DROP TABLE r")
    numbered = "SELECT *, row_number() OVER (ORDER BY image_id) AS i FROM predictions WHERE run_id = ?"
    for new, keep in (("C", "i % 2 = 0"), ("D", "i % 2 = 0"), ("F", "i % 6 = 0")):
        con.execute(f"CREATE TEMP TABLE c AS SELECT * EXCLUDE (i) FROM ({numbered}) WHERE {keep}", [RUN])
        con.execute("UPDATE c SET run_id = ?", [RUN + new])
        if new == "C":
            con.execute("UPDATE c SET correct = NOT correct WHERE hash(image_id) % 5 = 0")
        con.execute("INSERT INTO predictions SELECT * FROM c")
        con.execute("DROP TABLE c")
    con.close()
    return db


@pytest.mark.parametrize("chosen", [("",), ("", "C"), ("C", ""), ("", "C", "F"), ("", "D"), ("C", "D"),
                                    ("", "E"), ("E",), ("", "C", "F", "D")])
@pytest.mark.parametrize("split", ["test", "val"])
def test_compare_shared_images_equal_their_definition(runs_store, chosen, split):
    from dashboard import queries

    run_ids = tuple(RUN + c for c in chosen)
    got = queries.load_compare_shared_images(queries.create_store_ref(runs_store), run_ids, split)
    con = duckdb.connect(str(runs_store), read_only=True)
    marks = ", ".join("?" for _ in run_ids)
    expected = con.execute(SHARED_DEFINITION.format(marks=marks), [split, *run_ids, len(run_ids)]).df()
    con.close()
    assert list(got.columns) == list(expected.columns)
    assert got[["run_id", "kind", "n", "n_shared"]].astype(str).values.tolist() == \
        expected[["run_id", "kind", "n", "n_shared"]].astype(str).values.tolist()
    assert np.allclose(got["accuracy_shared"].astype(float), expected["accuracy_shared"].astype(float), equal_nan=True)
    if split == "test" and set(chosen) <= {"", "C", "F"} and len(chosen) > 1:
        assert len(got) == len(chosen) and (got["n_shared"] > 0).all()  # these runs do share test images


def test_compare_shared_images_on_a_version_5_store_join_on_image_ids(runs_store, tmp_path):
    from dashboard import queries
    from tests.store_versions import make_version_5

    old = tmp_path / "v5.duckdb"
    shutil.copy(runs_store, old)
    con = duckdb.connect(str(old))
    make_version_5(con)
    con.close()
    run_ids = (RUN, RUN + "C", RUN + "F")
    got = queries.load_compare_shared_images(queries.create_store_ref(old), run_ids, "test")
    new = queries.load_compare_shared_images(queries.create_store_ref(runs_store), run_ids, "test")
    assert queries.load_join_column(queries.create_store_ref(old)) == "image_id"
    assert got.equals(new) and (got["n_shared"] > 0).all()
