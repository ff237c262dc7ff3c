"""Tests of pipeline.store.db on real temporary DuckDB files (no mocks)."""
from __future__ import annotations

import datetime as dt
import os
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from pipeline.store import db as store
from pipeline.errors import UserError
from tests.store_versions import make_version_5, make_version_7

PROJECT_ROOT = Path(__file__).resolve().parents[3]
CLASSES = ["Surprise", "Fear", "Happiness"]


def make_run(run_id: str, started: dt.datetime | None = None, **overrides) -> dict:
    run = dict(
        run_id=run_id, kind="train", dataset="synthetic", dataset_root="/data/synthetic",
        dataset_fingerprint="fp-1", is_synthetic=np.bool_(True), recipe="lightcnn-softlabel",
        model="lightcnn", classes=np.array(CLASSES), config={"lr": np.float32(0.1), "epochs": np.int64(2),
                                                              "root": Path("/data"), "aug": ["flip"]},
        code_version="abc123", seed=np.int64(7), device="cpu",
        started_at=started or dt.datetime(2026, 11, 22, 3, 0, 0), train_seconds=np.float64(1.5),
        test_accuracy=np.float64(0.625), test_macro_f1=0.5, n_test=np.int32(2),
    )
    run.update(overrides)
    return run


def make_tables(n: int = 3, seed: int = 0) -> dict[str, pd.DataFrame]:
    """One frame per run table, covering lists, blobs, NULLs and every scalar type."""
    rng = np.random.default_rng(seed)
    ids = [f"img{i:03d}" for i in range(n)]
    probs = rng.random((n, len(CLASSES))).astype(np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    pred = [CLASSES[i] for i in probs.argmax(axis=1)]
    true = [CLASSES[i % len(CLASSES)] for i in range(n)]
    return {
        "epochs": pd.DataFrame({"epoch": [1, 2], "train_loss": [1.2, 0.8], "train_acc": [0.4, 0.6],
                                "val_loss": [1.1, np.nan], "val_acc": [0.5, 0.55], "lr": [0.1, 0.01],
                                "seconds": [2.0, 2.1]}),
        "images": pd.DataFrame({"image_id": ids, "split": "test", "path": [f"/data/{i}.jpg" for i in ids],
                                "true_label": true,
                                "soft_label": [probs[0]] + [None] * (n - 1)}),
        "predictions": pd.DataFrame({"image_id": ids, "split": "test", "true_label": true, "pred_label": pred,
                                     "confidence": probs.max(axis=1), "correct": [t == p for t, p in zip(true, pred)],
                                     "probs": list(probs)}),
        "class_metrics": pd.DataFrame({"split": "test", "label": CLASSES + ["accuracy"],
                                       "precision": [0.5, 1.0, np.nan, 0.6], "recall": [0.5, 0.25, 0.0, 0.6],
                                       "f1": [0.5, 0.4, 0.0, 0.6], "support": [1, 1, 1, 3]}),
        "confusion": pd.DataFrame({"split": "test", "true_label": CLASSES, "pred_label": CLASSES, "n": [1, 0, 2]}),
        "heatmaps": pd.DataFrame({"image_id": ids, "method": "gradcam", "target": "pred", "target_label": pred,
                                  "target_layer": "features.3", "cam_size": 4,
                                  "cam": [rng.integers(0, 256, 16, dtype=np.uint8).tobytes() for _ in ids],
                                  "e_brows": rng.random(n).astype(np.float32), "peak_region": "eyes",
                                  "gt_hit": [True, False, None][:n] + [None] * max(0, n - 3)}),
        "heatmap_summary": pd.DataFrame({"method": "gradcam", "split": "test", "emotion": ["Fear", "Fear"],
                                         "correct": [True, False], "n": [2, 1], "e_brows": [0.25, np.nan],
                                         "e_mouth": np.float32([0.5, 0.125]), "cam_size": 4,
                                         "mean_cam": [rng.random(16).astype("<f4").tobytes() for _ in range(2)]}),
        "failure_tags": pd.DataFrame({"image_id": ids[:1], "method": ["gradcam"], "tag": ["background"]}),
        "audits": pd.DataFrame({"source": ["annotations"], "split": ["test"], "config": ['{"alpha": 0.05}'],
                                "n_predictions": [3], "n_labelled": [2],
                                "created_at": [pd.Timestamp("2026-01-01 12:00:00")]}),
        "explanation_metrics": pd.DataFrame({"method": "gradcam", "metric": ["road_morf", "sanity_similarity"],
                                             "emotion": "all", "value": [0.3, 0.1], "n": [3, 3],
                                             "passed": [None, True]}),
    }


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "sub" / "results.duckdb"


def table_counts(path: Path) -> dict[str, int]:
    with store.open_store(path, read_only=True) as con:
        return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in store.TABLES}


# ---------------------------------------------------------------- schema


def test_ensure_schema_is_idempotent_and_records_version(db):
    with store.open_store(db) as con:  # creates the parent dir and the schema
        store.ensure_schema(con)
        store.ensure_schema(con)
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        assert tables == set(store.TABLES)
        assert con.execute("SELECT key, value FROM meta").fetchall() == [("schema_version", str(store.SCHEMA_VERSION))]
        assert store.schema_version(con) == store.SCHEMA_VERSION == 8
        indexes = {r[0] for r in con.execute("SELECT index_name FROM duckdb_indexes()").fetchall()}
        assert indexes == set(store.ADDED_INDEXES) and len(store.INDEX_STATEMENTS) == len(store.ADDED_INDEXES)
        assert store.missing_added_tables(con) == []
        store.check_schema(con)
    with store.open_store(db) as con:  # reopening changes nothing
        assert con.execute("SELECT count(*) FROM meta").fetchone()[0] == 1
    assert set(store.RUN_TABLES) == set(store.TABLES) - {"meta", "runs", "demographics", "proxy_agreement", "image_keys",
                                                        "demographic_sources"}


def test_schema_version_of_empty_database_is_none():
    con = duckdb.connect(":memory:")
    assert store.schema_version(con) is None
    with pytest.raises(store.SchemaMismatchError):
        store.check_schema(con)
    store.ensure_schema(con)
    assert store.schema_version(con) == store.SCHEMA_VERSION
    assert store.table_columns(con, "confusion") == ["run_id", "split", "true_label", "pred_label", "n"]


@pytest.mark.parametrize("version", [store.UPGRADABLE_FROM - 1, store.SCHEMA_VERSION + 1])
@pytest.mark.parametrize("read_only", [True, False])
def test_other_schema_version_raises_schema_mismatch(db, version, read_only):
    with store.open_store(db) as con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(version)])
    with pytest.raises(store.SchemaMismatchError, match=rf"version {version}") as info:
        store.connect(db, read_only=read_only)
    assert str(db) in str(info.value)
    assert isinstance(info.value, UserError)
    # nothing was changed by the refused writable open
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT value FROM meta").fetchall() == [(str(version),)]
    con.close()


def test_older_store_is_read_as_is_and_upgraded_in_place(db):
    store.save_run(db, make_run("run-old"), {k: v for k, v in make_tables().items() if k not in store.ADDED_TABLES})
    with store.open_store(db) as con:  # make it a store written by version 1
        for table in store.ADDED_TABLES:
            con.execute(f'DROP TABLE "{table}"')
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(store.UPGRADABLE_FROM)])
    with store.open_store(db, read_only=True) as con:  # readable as it is
        assert store.schema_version(con) == store.UPGRADABLE_FROM
        assert store.missing_added_tables(con) == list(store.ADDED_TABLES)
        assert {"heatmap_summary", "audits", "slices", "slice_images", "calibration", "calibration_bins"} <= set(store.ADDED_TABLES)
        assert store.get_run(con, "run-old")["status"] == "complete"
    with store.open_store(db) as con:  # a writable open upgrades it, keeping every row
        assert store.schema_version(con) == store.SCHEMA_VERSION
        assert store.missing_added_tables(con) == []
        for table in store.ADDED_TABLES:
            assert store.load_frame(con, table).empty or table in store.DERIVED_TABLES
        assert len(store.load_frame(con, "predictions", run_id="run-old")) == 3
        assert len(store.load_frame(con, "image_keys")) == 3 and store.has_image_keys(con)  # every row keyed
        assert con.execute("SELECT count(*) FROM meta").fetchone()[0] == 1


def test_store_without_added_indexes_is_read_and_upgraded_in_place(db):
    store.save_run(db, make_run("run-v4"), make_tables())
    with store.open_store(db) as con:  # make it a store written by version 4 (before ADDED_INDEXES)
        for index in store.ADDED_INDEXES:
            con.execute(f'DROP INDEX "{index}"')
        con.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
        before = store.load_frame(con, "predictions", run_id="run-v4")
    with store.open_store(db, read_only=True) as con:  # readable as it is
        assert con.execute("SELECT count(*) FROM duckdb_indexes()").fetchone()[0] == 0
        assert len(store.load_frame(con, "predictions", run_id="run-v4")) == len(before)
    with store.open_store(db) as con:  # a writable open builds them
        assert store.schema_version(con) == store.SCHEMA_VERSION
        indexes = {r[0] for r in con.execute("SELECT index_name FROM duckdb_indexes()").fetchall()}
        assert indexes == set(store.ADDED_INDEXES)


def _keys_of(con) -> dict[str, list[tuple]]:
    """{table: [(image_id, image_key)]} of every IMAGE_KEY_TABLES row, and image_keys itself."""
    out = {t: con.execute(f'SELECT image_id, image_key FROM "{t}" ORDER BY ALL').fetchall()
           for t in store.IMAGE_KEY_TABLES}
    out["image_keys"] = con.execute("SELECT image_id, image_key FROM image_keys ORDER BY ALL").fetchall()
    return out


def _assert_rows_keyed(con) -> None:
    """Every keyed row carries its id's key, and the keys are one per id."""
    keys = dict(con.execute("SELECT image_id, image_key FROM image_keys").fetchall())
    assert len(set(keys.values())) == len(keys)
    for table in store.IMAGE_KEY_TABLES:
        rows = con.execute(f'SELECT image_id, image_key FROM "{table}"').fetchall()
        assert all(key is not None and keys[image_id] == key for image_id, key in rows), table


def _demographics(ids) -> pd.DataFrame:
    return pd.DataFrame({"image_id": ids, "inferred": False, "gender": "female"})


def test_every_write_keys_its_images_one_key_per_id(db):
    store.save_run(db, make_run("run-a"), make_tables(n=3))
    store.save_run(db, make_run("run-b"), make_tables(n=5))  # img000-img002 again, and two new ids
    with store.open_store(db) as con:
        store.replace_rows(con, "demographics", _demographics(["img004", "img009"]),
                           dataset_fingerprint="fp-1", source="annotations")
        _assert_rows_keyed(con)
        keys = dict(con.execute("SELECT image_id, image_key FROM image_keys").fetchall())
        assert sorted(keys) == [f"img{i:03d}" for i in (0, 1, 2, 3, 4, 9)]
        assert [keys[f"img{i:03d}"] for i in range(5)] == [1, 2, 3, 4, 5]  # new ids: the next keys, in id order
        # the key is the store's own: a frame bringing another store's keys is keyed anew
        frame = store.load_frame(con, "predictions", run_id="run-a")
        assert "image_key" not in frame.columns  # load_frame leaves the join key out
        store.replace_rows(con, "predictions", frame.assign(image_key=99), run_id="run-a")
        _assert_rows_keyed(con)
        assert con.execute("SELECT max(image_key) FROM predictions").fetchone()[0] == 5


def test_store_before_image_keys_is_read_as_is_and_keyed_on_upgrade(db):
    store.save_run(db, make_run("run-v5"), make_tables(n=4))
    with store.open_store(db) as con:
        store.replace_rows(con, "demographics", _demographics(["img001", "img007"]),
                           dataset_fingerprint="fp-1", source="annotations")
        store.replace_rows(con, "slice_images", pd.DataFrame({"image_id": ["img002"]}),
                           run_id="run-v5", source="annotations", split="test", rank=1)
        keyed = _keys_of(con)
        make_version_5(con)  # a store written by version 5: no image_keys table or columns, no explorer rows
    with store.open_store(db, read_only=True) as con:  # readable as it is
        assert not store.has_image_keys(con) and "image_keys" in store.missing_added_tables(con)
        assert len(store.load_frame(con, "predictions", run_id="run-v5")) == 4
    with store.open_store(db) as con:  # a writable open keys every row already there
        assert store.schema_version(con) == store.SCHEMA_VERSION and store.has_image_keys(con)
        _assert_rows_keyed(con)
        assert _keys_of(con) == keyed  # the keys a version-6 writer gave the same rows
    store.save_run(db, make_run("run-v6"), make_tables(n=6))  # later writes reuse and extend them
    with store.open_store(db, read_only=True) as con:
        _assert_rows_keyed(con)
        assert con.execute("SELECT count(*) FROM image_keys").fetchone()[0] == 7  # img000-img005, img007


def test_salvage_keys_the_copy_anew(db, tmp_path):
    store.save_run(db, make_run("run-a"), make_tables(n=3))
    with store.open_store(db) as con:
        store.replace_rows(con, "demographics", _demographics(["img002"]), dataset_fingerprint="fp-1",
                           source="annotations")
        con.execute("UPDATE image_keys SET image_key = image_key + 100")  # keys the copy cannot reuse
        con.execute("UPDATE predictions SET image_key = image_key + 100")
    store.salvage_store(db, tmp_path / "copy.duckdb")
    with store.open_store(tmp_path / "copy.duckdb", read_only=True) as con:
        _assert_rows_keyed(con)
        assert con.execute("SELECT count(*) FROM image_keys").fetchone()[0] == 3


def _explorer_decoded(con, run_id: str) -> list[tuple]:
    """The run's explorer rows with codes and mask bits read back as values, sorted."""
    codes: dict[str, dict[int, str]] = {}
    for kind, value, code in con.execute("SELECT kind, value, code FROM explorer_codes WHERE run_id = ?",
                                         [run_id]).fetchall():
        codes.setdefault(kind, {})[code] = value
    rows = con.execute("""SELECT e.split, e.source, e.pos, e.id_pos, k.image_id, e.true_code, e.pred_code,
                                 e.confidence, e.correct, e.tag_mask, e.method_mask, e.gender_code, e.race_code,
                                 e.age_code, e.path
                          FROM explorer_rows e JOIN image_keys k ON k.image_key = e.image_key
                                                                AND k.image_id = e.image_id
                          WHERE e.run_id = ?""", [run_id]).fetchall()
    assert len(rows) == con.execute("SELECT count(*) FROM explorer_rows WHERE run_id = ?", [run_id]).fetchone()[0]

    def bits(mask, kind):
        return frozenset(v for c, v in codes.get(kind, {}).items() if mask >> c & 1)

    def value(kind, code):
        return None if code is None else codes[kind][code]

    return sorted((split, source, pos, id_pos, image_id, codes["label"][t], codes["label"][p], conf, ok,
                   bits(tags, "tag"), bits(methods, "method"), value("gender", g), value("race", r),
                   value("age_group", a), path)
                  for split, source, pos, id_pos, image_id, t, p, conf, ok, tags, methods, g, r, a, path in rows)


def _explorer_expected(con, run_id: str) -> list[tuple]:
    """What explorer_rows must hold for the run, from the tables they derive from (their definition)."""
    preds = store.load_frame(con, "predictions", run_id=run_id)
    fingerprint = store.get_run(con, run_id)["dataset_fingerprint"]
    demo = store.load_frame(con, "demographics", dataset_fingerprint=fingerprint)
    tags = store.load_frame(con, "failure_tags", run_id=run_id).groupby("image_id")["tag"].agg(frozenset)
    heat = store.load_frame(con, "heatmaps", run_id=run_id)
    methods = heat[heat["target"] == "pred"].groupby("image_id")["method"].agg(frozenset)
    paths = store.load_frame(con, "images", run_id=run_id).set_index("image_id")["path"]
    out = []
    for source in sorted(demo["source"].unique()) or [""]:
        labels = demo[demo["source"] == source].set_index("image_id")
        for split, part in preds.groupby("split"):
            by_conf = part.sort_values(["confidence", "image_id"], ascending=[False, True])["image_id"].tolist()
            by_id = sorted(part["image_id"])
            for r in part.itertuples():
                found = labels.loc[r.image_id] if r.image_id in labels.index else None
                out.append((split, source, by_conf.index(r.image_id), by_id.index(r.image_id), r.image_id,
                            r.true_label, r.pred_label, r.confidence, r.correct,
                            tags.get(r.image_id, frozenset()), methods.get(r.image_id, frozenset()),
                            *(None if found is None or pd.isna(found[c]) else found[c]
                              for c in ("gender", "race", "age_group")), paths.get(r.image_id)))
    return sorted(out)


def _assert_facets_match_their_definition(con) -> None:
    """heatmap_layers and demographic_sources hold exactly what they derive from the heatmaps and demographics."""
    def rows(sql):
        return sorted(con.execute(sql).fetchall())

    assert rows("SELECT run_id, method, target_layer, n FROM heatmap_layers") == rows(
        "SELECT run_id, method, target_layer, count(*) FROM heatmaps GROUP BY ALL")
    assert rows("SELECT dataset_fingerprint, source, inferred, n FROM demographic_sources") == rows(
        "SELECT dataset_fingerprint, source, bool_or(inferred), count(*) FROM demographics GROUP BY ALL")


def test_explorer_rows_follow_every_write_and_match_their_definition(db):
    tables = make_tables(n=6)
    tables["failure_tags"] = pd.DataFrame({"image_id": ["img000", "img000", "img003"], "method": ["gradcam", "", ""],
                                           "tag": ["background", "occlusion", "background"]})
    store.save_run(db, make_run("run-a"), tables)
    store.save_run(db, make_run("run-b", dataset_fingerprint="fp-2"), make_tables(n=4, seed=2))
    with store.open_store(db) as con:
        assert _explorer_decoded(con, "run-a") == _explorer_expected(con, "run-a")
        assert {r[1] for r in _explorer_decoded(con, "run-a")} == {""}  # no demographics yet: one block
        _assert_facets_match_their_definition(con)
        assert con.execute("SELECT count(*) FROM heatmap_layers").fetchone()[0] == 2  # one layer of each run
        assert _explorer_decoded(con, "run-a")[0][9] == frozenset({"background", "occlusion"})
        # demographics of run-a's dataset: run-a's rows gain a block per source; run-b's stay as they were
        b_before = _explorer_decoded(con, "run-b")
        store.replace_rows(con, "demographics", pd.DataFrame({"image_id": ["img001", "img004", "img009"],
                                                              "inferred": False, "gender": "female",
                                                              "race": ["Asian", None, "Asian"]}),
                           dataset_fingerprint="fp-1", source="annotations")
        store.replace_rows(con, "demographics", pd.DataFrame({"image_id": ["img002"], "inferred": True,
                                                              "age_group": ["20-39"]}),
                           dataset_fingerprint="fp-1", source="deepface")
        assert {r[1] for r in _explorer_decoded(con, "run-a")} == {"annotations", "deepface"}
        assert _explorer_decoded(con, "run-a") == _explorer_expected(con, "run-a")
        assert _explorer_decoded(con, "run-b") == b_before
        _assert_facets_match_their_definition(con)
        assert con.execute("SELECT count(*) FROM demographic_sources").fetchone()[0] == 2
        # new heatmaps and tags (explain's replace_rows, in one transaction)
        heat = make_tables(n=6)["heatmaps"].iloc[:3].assign(method="gradcam++",
                                                              target_layer=["features.3", "features.2", "features.2"])
        with store.transaction(con):
            store.replace_rows(con, "heatmaps", heat, run_id="run-a", method="gradcam++")
            store.replace_rows(con, "failure_tags", pd.DataFrame({"image_id": ["img005"], "tag": ["occlusion"]}),
                               run_id="run-a", method="")
        assert _explorer_decoded(con, "run-a") == _explorer_expected(con, "run-a")
        assert dict(con.execute("SELECT value, n FROM explorer_codes WHERE run_id = 'run-a' AND kind = 'tag'"
                                ).fetchall()) == {"background": 1, "occlusion": 1}
        _assert_facets_match_their_definition(con)
        assert con.execute("SELECT n FROM heatmap_layers WHERE run_id = 'run-a' AND method = 'gradcam++' "
                           "AND target_layer = 'features.2'").fetchall() == [(2,)]
        store.replace_rows(con, "demographics", _demographics(["img003"]), dataset_fingerprint="fp-3",
                           source="annotations")  # a dataset no run uses yet: its own row, fp-1's stay
        _assert_facets_match_their_definition(con)
        with store.transaction(con):  # and beside a run's write
            store.replace_rows(con, "demographics", _demographics(["img004"]), dataset_fingerprint="fp-3",
                               source="deepface")
            store.replace_rows(con, "failure_tags", pd.DataFrame({"image_id": ["img004"], "tag": ["occlusion"]}),
                               run_id="run-b", method="")
        _assert_facets_match_their_definition(con)
        # a write that fails leaves the explorer rows of the rows it did not write
        before = _explorer_decoded(con, "run-a")
        with pytest.raises(RuntimeError):
            with store.transaction(con):
                store.replace_rows(con, "failure_tags", pd.DataFrame(columns=["image_id", "tag"]),
                                   run_id="run-a", method="")
                raise RuntimeError("crash")
        assert _explorer_decoded(con, "run-a") == before
        store.delete_run(con, "run-a")
        assert con.execute("SELECT count(*) FROM explorer_rows WHERE run_id = 'run-a'").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM explorer_codes WHERE run_id = 'run-a'").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM heatmap_layers WHERE run_id = 'run-a'").fetchone()[0] == 0
        _assert_facets_match_their_definition(con)


def test_store_before_explorer_rows_gets_them_at_its_first_writable_open(db):
    store.save_run(db, make_run("run-v6"), make_tables(n=5))
    with store.open_store(db) as con:
        store.replace_rows(con, "demographics", _demographics(["img001", "img003"]), dataset_fingerprint="fp-1",
                           source="annotations")
        built = _explorer_decoded(con, "run-v6")
        con.execute("DROP TABLE explorer_rows")
        con.execute("DROP TABLE explorer_codes")
        con.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
    with store.open_store(db, read_only=True) as con:  # readable as it is, without them
        assert not store.has_explorer_rows(con) and store.has_image_keys(con)
    with store.open_store(db) as con:
        assert store.has_explorer_rows(con)
        assert _explorer_decoded(con, "run-v6") == built == _explorer_expected(con, "run-v6")


def test_store_before_facets_gets_them_at_its_first_writable_open(db):
    """A version-7 store (no heatmap_layers or demographic_sources) is read as it is, and a writable
    open builds both from its heatmaps and demographics without rebuilding its explorer rows."""
    store.save_run(db, make_run("run-v7"), make_tables(n=5))
    with store.open_store(db) as con:
        store.replace_rows(con, "demographics", _demographics(["img001", "img003"]), dataset_fingerprint="fp-1",
                           source="annotations")
        explorer = _explorer_decoded(con, "run-v7")
        make_version_7(con)
    with store.open_store(db, read_only=True) as con:
        assert set(store.missing_added_tables(con)) == {"heatmap_layers", "demographic_sources"}
    with store.open_store(db) as con:
        assert store.schema_version(con) == store.SCHEMA_VERSION and store.missing_added_tables(con) == []
        _assert_facets_match_their_definition(con)
        assert con.execute("SELECT count(*) FROM heatmap_layers").fetchone()[0] == 1
        assert con.execute("SELECT count(*) FROM demographic_sources").fetchone()[0] == 1
        assert _explorer_decoded(con, "run-v7") == explorer


def test_predictions_are_stored_in_the_explorers_order(db):
    tables = make_tables()
    shuffled = tables["predictions"].sample(frac=1.0, random_state=1)
    store.save_run(db, make_run("run-order"), {**tables, "predictions": shuffled})
    with store.open_store(db, read_only=True) as con:
        stored = con.execute("SELECT split, confidence, image_id FROM predictions WHERE run_id = 'run-order' "
                             "ORDER BY rowid").fetchall()
    assert stored == sorted(stored, key=lambda r: (r[0], -r[1], r[2]))


def test_store_without_added_columns_is_read_and_upgraded_in_place(db):
    store.save_run(db, make_run("run-v3"), {"epochs": make_tables()["epochs"]})
    with store.open_store(db) as con:  # make it a store written by version 3 (before ADDED_COLUMNS and indexes)
        for index in store.ADDED_INDEXES:
            con.execute(f'DROP INDEX "{index}"')
        for table, columns in store.ADDED_COLUMNS.items():
            for column in columns:
                con.execute(f'ALTER TABLE "{table}" DROP COLUMN "{column}"')
        con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    with store.open_store(db, read_only=True) as con:  # readable as it is
        assert store.missing_added_columns(con) == [("runs", "checkpoint_sha256"), ("runs", "pid"), ("runs", "host"),
                                                    *((t, "image_key") for t in store.ADDED_COLUMNS if t != "runs")]
        assert "checkpoint_sha256" not in store.get_run(con, "run-v3")
    with store.open_store(db) as con:  # a writable open adds them, NULL in the rows already there
        assert store.missing_added_columns(con) == [] and store.schema_version(con) == store.SCHEMA_VERSION
        run = store.get_run(con, "run-v3")
        assert run["checkpoint_sha256"] is None and run["pid"] is None and run["host"] is None
        assert len(store.load_frame(con, "epochs", run_id="run-v3")) == len(make_tables()["epochs"])
    store.save_run(db, make_run("run-v4", checkpoint_sha256="ab" * 32, pid=1, host="h"), {})
    with store.open_store(db, read_only=True) as con:
        assert store.get_run(con, "run-v4")["checkpoint_sha256"] == "ab" * 32


def test_a_damaged_store_is_refused_before_a_write(db):
    store.save_run(db, make_run("run-a"), make_tables())
    size = db.stat().st_size
    os.truncate(db, size // 2)
    with pytest.raises(UserError, match="damaged.*--salvage"):  # StoreDamagedError, or unreadable at open
        store.connect(db)
    assert db.stat().st_size == size // 2


def test_delete_run_on_an_older_store_connection_skips_absent_tables(db):
    store.save_run(db, make_run("run-old"), {"epochs": make_tables()["epochs"]})
    con = duckdb.connect(str(db))  # a raw connection to a version-1 store, as no writable open leaves it
    try:
        con.execute("DROP TABLE heatmap_summary")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        assert store.delete_run(con, "run-old") == 3  # two epochs and the run
    finally:
        con.close()


def test_foreign_duckdb_file_is_refused_untouched(db):
    db.parent.mkdir(parents=True)
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE other (x INTEGER)")
    con.close()
    with pytest.raises(store.SchemaMismatchError, match="not a results store"):
        store.connect(db)
    con = duckdb.connect(str(db), read_only=True)
    assert [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()] == ["other"]
    con.close()


def test_read_only_connect_on_missing_file_says_what_to_run(tmp_path):
    missing = tmp_path / "nope.duckdb"
    with pytest.raises(UserError, match="python -m pipeline demo") as info:
        store.connect(missing, read_only=True)
    assert str(missing) in str(info.value)
    assert not missing.exists()


# ---------------------------------------------------------------- writing and reading runs


def test_save_run_round_trips_every_table_type(db):
    run_id = store.new_run_id("lightcnn-softlabel")
    tables = make_tables()
    originals = {t: df.copy(deep=True) for t, df in tables.items()}
    assert store.save_run(db, make_run(run_id), tables) == run_id
    for t, df in tables.items():  # inputs not mutated
        pd.testing.assert_frame_equal(df, originals[t])

    with store.open_store(db, read_only=True) as con:
        run = store.get_run(con, run_id)
        assert run["status"] == "complete"
        assert run["classes"] == CLASSES
        assert run["config"] == {"lr": 0.1, "epochs": 2, "root": "/data", "aug": ["flip"]}
        assert run["seed"] == 7 and run["is_synthetic"] is True and run["n_test"] == 2
        assert run["started_at"] == dt.datetime(2026, 11, 22, 3, 0, 0)
        assert run["finished_at"] is not None and run["test_accuracy"] == 0.625

        for table, sent in tables.items():
            got = store.load_frame(con, table, run_id=run_id)
            assert (got["run_id"] == run_id).all()
            assert len(got) == len(sent)
            pk = [c for c in store._primary_key(con, table) if c != "run_id"]
            sent = sent.sort_values(pk).reset_index(drop=True)
            for col in sent.columns:
                for a, b in zip(got[col], sent[col]):
                    if isinstance(b, np.ndarray) or isinstance(a, (list, np.ndarray)):
                        if b is None:
                            assert a is None or (np.isscalar(a) and pd.isna(a))
                        else:
                            np.testing.assert_allclose(np.asarray(a, dtype=np.float32), b, rtol=1e-6)
                    elif b is None or (isinstance(b, float) and np.isnan(b)):
                        assert a is None or pd.isna(a), (table, col, a)
                    elif isinstance(b, (float, np.floating)):
                        assert a == pytest.approx(float(b), rel=1e-6), (table, col)
                    else:
                        assert a == b, (table, col, a, b)

        blobs = store.load_frame(con, "heatmaps", ["image_id", "cam"], run_id=run_id, image_id="img001")
        assert isinstance(blobs["cam"][0], bytes)
        assert blobs["cam"][0] == tables["heatmaps"]["cam"][1]
        assert len(store.load_frame(con, "predictions", image_id=["img000", "img002"])) == 2


def test_json_and_non_run_tables_via_replace_rows(db):
    scores = {"gender": {"Woman": 0.9, "Man": 0.1}}
    demo = pd.DataFrame({"image_id": ["a", "b"], "inferred": True, "gender": ["female", None],
                         "gender_conf": np.float32([0.9, np.nan]),
                         "scores": [json.dumps(scores), scores]})  # text or a dict: both stored as JSON
    with store.open_store(db) as con:
        assert store.replace_rows(con, "demographics", demo, dataset_fingerprint="fp", source="deepface") == 2
        # re-running replaces exactly the rows of those keys
        other = demo.assign(source="annotations", inferred=False)
        store.replace_rows(con, "demographics", other, dataset_fingerprint="fp")
        store.replace_rows(con, "demographics", demo.iloc[:1], dataset_fingerprint="fp", source="deepface")
        got = store.load_frame(con, "demographics", dataset_fingerprint="fp")
    assert sorted(zip(got["image_id"], got["source"])) == [("a", "annotations"), ("a", "deepface"), ("b", "annotations")]
    assert [json.loads(s) for s in got["scores"]] == [scores, scores, scores]
    assert got.loc[got.image_id == "b", "gender"].isna().all()


def test_replace_tables_is_one_transaction(db):
    cells = pd.DataFrame({"split": ["test"], "attribute": ["gender"], "grp": ["female"], "metric": ["accuracy"],
                          "n": [3], "value": [0.5], "low_support": [True]})
    gaps = pd.DataFrame({"split": ["test"], "attribute": ["gender"], "metric": ["accuracy"],
                         "comparison": ["best-worst"], "grp": ["female"], "gap": [0.1]})
    store.save_run(db, make_run("r"), {})
    assert store.replace_tables(db, {"audit_cells": cells, "audit_gaps": gaps},
                                run_id="r", source="deepface") == {"audit_cells": 1, "audit_gaps": 1}
    # a re-run whose second table fails leaves the first run's rows in place
    with pytest.raises(Exception):
        store.replace_tables(db, {"audit_cells": cells.assign(value=0.9), "audit_gaps": gaps.assign(grp=None)},
                             run_id="r", source="deepface")
    with store.open_store(db, read_only=True) as con:
        assert store.load_frame(con, "audit_cells", ["value"], run_id="r")["value"].tolist() == [0.5]
        assert len(store.load_frame(con, "audit_gaps", run_id="r")) == 1


def test_replace_rows_rejects_frame_rows_outside_the_keys(db):
    with store.open_store(db) as con:
        frame = pd.DataFrame({"run_id": ["r2"], "method": ["m"], "metric": ["x"], "emotion": ["all"]})
        with pytest.raises(ValueError, match="run_id"):
            store.replace_rows(con, "explanation_metrics", frame, run_id="r1")
        with pytest.raises(ValueError, match="at least one key"):
            store.replace_rows(con, "explanation_metrics", frame)


@pytest.mark.parametrize("table, frame, error", [
    ("nope", pd.DataFrame({"run_id": ["r"]}), "Unknown table"),
    ("runs; DROP TABLE runs", pd.DataFrame({"run_id": ["r"]}), "Unknown table"),
    ("confusion", pd.DataFrame({"run_id": ["r"], "split": ["t"], "true_label": ["a"], "pred_label": ["a"],
                                "n": [1], "bogus": [1]}), "bogus"),
    ("confusion", pd.DataFrame({"run_id": ["r"], "split": ["t"], "true_label": ["a"]}), "NOT NULL"),
])
def test_insert_frame_rejects_unknown_tables_and_columns(db, table, frame, error):
    with store.open_store(db) as con:
        with pytest.raises(ValueError, match=error):
            store.insert_frame(con, table, frame)
        assert con.execute("SELECT count(*) FROM confusion").fetchone()[0] == 0
        assert "runs" in {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def test_insert_frame_bulk_list_column(db):
    n = 20_000
    probs = np.random.default_rng(1).random((n, 7)).astype(np.float32)
    frame = pd.DataFrame({"run_id": "r", "image_id": [f"i{i:06d}" for i in range(n)], "split": "test",
                          "true_label": "a", "pred_label": "b", "confidence": probs.max(axis=1),
                          "correct": False, "probs": list(probs)})
    with store.open_store(db) as con:
        assert store.insert_frame(con, "predictions", frame) == n
        got = store.load_frame(con, "predictions", ["probs"], run_id="r")
        assert con.execute("SELECT typeof(probs) FROM predictions LIMIT 1").fetchone()[0] == "FLOAT[]"
    np.testing.assert_array_equal(np.stack(got["probs"].to_numpy()).astype(np.float32), probs)


def _null_in_not_null(tables):
    tables["explanation_metrics"] = tables["explanation_metrics"].assign(metric=[None, "x"])


def _unconvertible_blob(tables):
    tables["heatmaps"] = tables["heatmaps"].assign(cam=[b"ok", 1.5, b"ok"])


def _duplicate_key(tables):
    tables["confusion"] = pd.concat([tables["confusion"], tables["confusion"].iloc[:1]])


@pytest.mark.parametrize("break_tables", [_null_in_not_null, _unconvertible_blob, _duplicate_key])
def test_crash_mid_save_leaves_earlier_runs_and_no_trace(db, break_tables):
    store.save_run(db, make_run("run-a"), make_tables())
    before = table_counts(db)
    tables = make_tables(seed=3)
    break_tables(tables)
    ordered = {t: tables[t] for t in [*[t for t in tables if t != "explanation_metrics"], "explanation_metrics"]}
    with pytest.raises(Exception):
        store.save_run(db, make_run("run-b"), ordered)
    assert table_counts(db) == before
    with store.open_store(db, read_only=True) as con:
        for table in (*store.RUN_TABLES, "runs"):
            assert con.execute(f'SELECT count(*) FROM "{table}" WHERE run_id = ?', ["run-b"]).fetchone()[0] == 0
        assert store.get_run(con, "latest")["run_id"] == "run-a"


def test_save_run_validates_run_fields(db):
    with pytest.raises(ValueError, match="colour"):
        store.save_run(db, make_run("r", colour="red"), {})
    run = make_run("r")
    del run["model"]
    with pytest.raises(ValueError, match="model"):
        store.save_run(db, run, {})
    with pytest.raises(ValueError, match="demographics"):
        store.save_run(db, make_run("r"), {"demographics": pd.DataFrame()})
    store.save_run(db, make_run("r"), {})
    with pytest.raises(UserError, match="already exists"):
        store.save_run(db, make_run("r"), {})


def test_start_run_then_save_or_fail(db):
    store.start_run(db, make_run("run-long"))
    with store.open_store(db, read_only=True) as con:
        assert store.list_runs(con).empty
        assert store.list_runs(con, include_incomplete=True)["status"].tolist() == ["running"]
        with pytest.raises(UserError, match="running"):
            store.get_run(con, "run-long")
    store.save_run(db, make_run("run-long"), make_tables())
    store.start_run(db, make_run("run-crash", started=dt.datetime(2026, 11, 22, 4)))
    store.mark_failed(db, "run-crash", "RuntimeError: out of memory")
    with store.open_store(db, read_only=True) as con:
        runs = store.list_runs(con, include_incomplete=True)
        assert runs["run_id"].tolist() == ["run-crash", "run-long"]  # newest first
        assert runs["status"].tolist() == ["failed", "complete"]
        assert store.list_runs(con)["run_id"].tolist() == ["run-long"]


def test_get_run_by_prefix_latest_and_errors(db):
    for i, run_id in enumerate(["20261122-010000-a-1111", "20261122-020000-b-2222", "20261122-020000-b-3333"]):
        store.save_run(db, make_run(run_id, started=dt.datetime(2026, 11, 22, 1 + i)), {})
    store.start_run(db, make_run("20261122-090000-c-4444", started=dt.datetime(2026, 11, 22, 9)))
    with store.open_store(db, read_only=True) as con:
        assert store.get_run(con, "20261122-01")["run_id"] == "20261122-010000-a-1111"
        assert store.get_run(con, "20261122-020000-b-3333")["run_id"] == "20261122-020000-b-3333"
        assert store.get_run(con, "latest")["run_id"] == "20261122-020000-b-3333"  # running one skipped
        with pytest.raises(UserError, match="ambiguous"):
            store.get_run(con, "20261122-020000-b")
        with pytest.raises(UserError, match="No run"):
            store.get_run(con, "1999")
        with pytest.raises(UserError, match="not complete"):
            store.get_run(con, "20261122-09")


def test_get_run_latest_on_empty_store(db):
    with store.open_store(db) as con:
        with pytest.raises(UserError, match="No complete run"):
            store.get_run(con, "latest")


def test_delete_run_removes_all_its_rows_only(db):
    store.save_run(db, make_run("run-a"), make_tables())
    store.save_run(db, make_run("run-b"), make_tables(seed=1))
    with store.open_store(db) as con:
        store.replace_rows(con, "audit_cells", pd.DataFrame({"source": ["deepface"], "split": ["test"],
                           "attribute": ["gender"], "grp": ["female"], "metric": ["accuracy"], "n": [3],
                           "value": [0.5], "low_support": [True]}), run_id="run-b")
        b_rows = sum(con.execute(f'SELECT count(*) FROM "{t}" WHERE run_id = ?', ["run-b"]).fetchone()[0]
                     for t in (*store.RUN_TABLES, "runs"))
        a_before = {t: con.execute(f'SELECT count(*) FROM "{t}" WHERE run_id = ?', ["run-a"]).fetchone()[0]
                    for t in (*store.RUN_TABLES, "runs")}
        assert store.delete_run(con, "run-b") == b_rows
        for t in (*store.RUN_TABLES, "runs"):
            assert con.execute(f'SELECT count(*) FROM "{t}" WHERE run_id = ?', ["run-b"]).fetchone()[0] == 0
            assert con.execute(f'SELECT count(*) FROM "{t}" WHERE run_id = ?', ["run-a"]).fetchone()[0] == a_before[t]
        with pytest.raises(UserError, match="No run"):
            store.delete_run(con, "run-b")


def test_transaction_rolls_back_on_exception_and_nests(db):
    with store.open_store(db) as con:
        with pytest.raises(RuntimeError):
            with store.transaction(con):
                con.execute("INSERT INTO meta VALUES ('k', 'v')")
                with store.transaction(con):  # joins the outer one
                    con.execute("INSERT INTO meta VALUES ('k2', 'v')")
                raise RuntimeError("boom")
        assert con.execute("SELECT count(*) FROM meta").fetchone()[0] == 1
        with store.transaction(con):
            con.execute("INSERT INTO meta VALUES ('k', 'v')")
        assert con.execute("SELECT count(*) FROM meta").fetchone()[0] == 2


def test_new_run_id_is_readable_sortable_unique():
    t = dt.datetime(2026, 11, 22, 3, 15, 2)
    run_id = store.new_run_id("LightCNN / Soft label", now=t)
    assert run_id.startswith("20261122-031502-lightcnn-soft-label-")
    ids = {store.new_run_id("x", now=t) for _ in range(50)}
    assert len(ids) > 40  # random suffix
    assert store.new_run_id("x", now=t) < store.new_run_id("x", now=t + dt.timedelta(seconds=1))


# ---------------------------------------------------------------- concurrency


HOLDER = ("import duckdb, sys, time; con = duckdb.connect(sys.argv[1], read_only=True); "
          "print('open', flush=True); {wait}; con.close()")


def _hold(path: Path, wait: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(wait=wait), str(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


def test_writer_waits_for_a_reader_in_another_process(db):
    store.connect(db).close()
    holder = _hold(db, "time.sleep(2)")
    try:
        with store.open_store(db, timeout_s=10) as con:  # retries until the holder exits
            assert holder.poll() is not None
            store.ensure_schema(con)
    finally:
        holder.kill()
        holder.wait()


def test_writer_gives_up_with_user_error_naming_the_file(db):
    store.connect(db).close()
    holder = _hold(db, "sys.stdin.readline()")
    try:
        with pytest.raises(UserError, match="another process") as info:
            store.connect(db, timeout_s=0.3)
        assert str(db) in str(info.value)
        assert holder.poll() is None
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    store.save_run(db, make_run("after"), {}, timeout_s=10)  # works once the reader is gone


# ---------------------------------------------------------------- command line


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "runs", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_runs_command_lists_and_deletes(db):
    store.save_run(db, make_run("20261122-010000-old-aaaa", started=dt.datetime(2026, 11, 22, 1)), make_tables())
    store.save_run(db, make_run("20261122-020000-new-bbbb", started=dt.datetime(2026, 11, 22, 2),
                                test_accuracy=0.75, recipe="resnet-focal"), {})
    store.start_run(db, make_run("20261122-030000-wip-cccc", started=dt.datetime(2026, 11, 22, 3)))

    out = _cli("--db", str(db))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].split() == ["run_id", "status", "kind", "dataset", "recipe", "accuracy", "started"]
    assert [l.split()[0] for l in lines[1:]] == ["20261122-020000-new-bbbb", "20261122-010000-old-aaaa"]
    assert lines[1].split()[1:6] == ["complete", "train", "synthetic", "resnet-focal", "0.7500"]
    assert "2026-11-22 02:00:00" in lines[1]

    out = _cli("--db", str(db), "--all")
    assert [l.split()[:2] for l in out.stdout.strip().splitlines()[1:2]] == [["20261122-030000-wip-cccc", "running"]]

    out = _cli("--db", str(db), "--delete", "20261122-01")
    assert out.returncode == 0, out.stderr
    assert "deleted run 20261122-010000-old-aaaa" in out.stdout
    assert "old-aaaa" not in _cli("--db", str(db), "--all").stdout
    assert table_counts(db)["predictions"] == 0
    assert table_counts(db)["heatmap_summary"] == 0  # the summary rows went with the run

    out = _cli("--db", str(db.parent / "missing.duckdb"))
    assert out.returncode == 2 and "python -m pipeline demo" in out.stderr and "Traceback" not in out.stderr
