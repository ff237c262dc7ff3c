"""Every query the dashboard runs: named functions, parameterised, cached, read-only.

Concurrency rule: the pipeline must be able to write the store while the
dashboard is open, and DuckDB refuses a writer while any other process holds
the file open (even read-only). So no connection outlives a query batch: the
entry script wraps each script run in `read_batch`, whose read-only
connection is opened by the first cache miss and closed when the run ends
(outside a batch, each query opens and closes its own). The pipeline's
writer retries on the lock (pipeline.store.db.connect), so it waits out a
dashboard run rather than failing; the dashboard opens the store through the
same `connect` (read-only, its lock retry bounded to BUSY_TIMEOUT_S) and checks
it with the store's own `check_schema` and `missing_columns`, so schema.sql is
read in one place. Results are cached with `st.cache_data` keyed on a `StoreRef` (path,
modification time and size of the file and its WAL), so a new run changes the
key and invalidates every cached result; no TTL is needed. When the writer
holds the lock past that time, `_read` raises `StoreBusyError`,
which the entry script turns into a friendly message.

Values always travel as `?` parameters; the only text spliced into SQL comes
from fixed tables in this module (column names, region names), never from the
user or the data.

Explorer rule (10M predictions: bench/bench_dashboard.py, docs/design-notes.md): on a
store of schema version 7 the Error explorer counts and pages the run's explorer_rows
(schema.sql), integers only: every filter is a predicate on a code, a mask bit or the
confidence of the one block of rows (run, split, demographics source) it reads, so a count
is a scan of a few small columns and a page is the top N by an integer rank (`pos`, or
`id_pos` for image order), LIMIT/OFFSET, whose image ids are then read for those N keys
alone. The OFFSET query over the predictions (`load_prediction_page_by_offset`) is the
reference the tests compare every page with.

On an older store read as it is, the paging rule before explorer rows holds: pages are
read by key, never by joining or sorting every row.
The store keeps a run's predictions in the explorer's default order
(store.STORAGE_ORDER: most confident first, then image id), so a page is a
keyset query (`WHERE key >= page's first key ORDER BY key LIMIT n`) whose
row groups DuckDB's zone maps narrow to the few that hold it. Any page number
works (st.pagination jumps): its first key comes from `load_page_start`, a
narrow `LIMIT 1 OFFSET` query on the key columns alone. The page's image paths,
demographics and CAMs are then looked up by its image ids through the image_id
indexes (schema.sql): each lookup is an `image_id IN (...)` list alone in a
MATERIALIZED CTE, filtered by run or source after it, because DuckDB answers
an IN list from an index only when no other predicate shares the scan. On a
store written before schema version 5 the same queries give the same rows,
only slower.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pandas as pd
import streamlit as st

from pipeline.constants import ENERGY_COLUMNS, attribute_rank, group_rank, metric_rank, value_rank
from pipeline.errors import UserError
from pipeline.store import db as store

BUSY_TIMEOUT_S = 1.5  # how long a page waits for the pipeline's write lock before saying "refresh"


class StoreBusyError(Exception):
    """The pipeline holds the store's write lock; the user should refresh in a moment."""


@dataclass(frozen=True)
class StoreRef:
    """Identifies one state of the store file: the cache key of every query."""
    path: str
    mtime_ns: int = 0
    size: int = -1
    wal_mtime_ns: int = 0
    wal_size: int = -1

    @property
    def exists(self) -> bool:
        return self.size >= 0


@dataclass(frozen=True)
class StoreStatus:
    state: str          # 'ok' | 'missing' | 'empty' | 'old-schema' | 'unreadable'
    message: str = ""


@dataclass(frozen=True)
class ErrorFilters:
    """The error explorer's filters; every field maps to one parameterised predicate."""
    split: str = "test"
    true_labels: tuple[str, ...] = ()
    pred_labels: tuple[str, ...] = ()
    correct: str = "wrong"                  # 'all' | 'correct' | 'wrong'
    genders: tuple[str, ...] = ()
    races: tuple[str, ...] = ()
    ages: tuple[str, ...] = ()
    conf_min: float = 0.0
    conf_max: float = 1.0
    tag: str = ""                           # '' = any
    method: str = ""                        # '' = any; else images with a CAM of this method
    source: str = ""                        # demographic source the subgroup filters use
    fingerprint: str = ""                   # the run's dataset fingerprint (demographics key)
    order: str = "confidence"               # 'confidence' (most confident first) | 'image'
    slice_rank: int = 0                     # 0 = any; else the images of this stored slice of `source`

    def describe(self) -> str:
        """The filters that differ from the defaults, as short words for file names ('test-wrong-true-Anger')."""
        words = [self.split, self.correct]
        for name, values in (("true", self.true_labels), ("pred", self.pred_labels), ("gender", self.genders),
                             ("race", self.races), ("age", self.ages)):
            if values:
                words += [name, *values]
        if self.conf_min > 0.0 or self.conf_max < 1.0:
            words += ["conf", f"{self.conf_min:g}-{self.conf_max:g}"]
        if self.tag:
            words += ["tag", self.tag]
        if self.method:
            words += ["cam", self.method]
        return "-".join(words)


# ---------------------------------------------------------------- natural order

SPLIT_ORDER = ("test", "val", "train")
def _value_key(kind: str, value) -> tuple:
    if kind == "attribute":
        return attribute_rank(value)
    if kind == "metric":
        return metric_rank(value)
    if kind == "split":
        return (SPLIT_ORDER.index(value), "") if value in SPLIT_ORDER else (len(SPLIT_ORDER), str(value))
    if kind == "emotion" and value == "all":
        return (-1, "")
    if kind == "flag":  # True (correct) before False
        return (0 if bool(value) else 1,)
    return value_rank(kind, value)


def natural_values(kind: str, values) -> list:
    """The distinct `values` in natural order (`kind` as in `sort_natural`, not 'group')."""
    return sorted(dict.fromkeys(values), key=lambda v: _value_key(kind, v))


def sort_natural(df: pd.DataFrame, keys: dict[str, str]) -> pd.DataFrame:
    """Rows sorted by `keys` ({column: kind}, first column first) in natural order, never as text.

    kind: an attribute of constants.ATTRIBUTE_ORDER ('gender', 'race', 'age', 'emotion'; 'all' first),
    'attribute' (gender, race, age, intersections), 'group' (a group label read by the row's `attribute`),
    'metric', 'split' or 'flag' (True first).
    """
    if df.empty:
        return df.reset_index(drop=True)
    def row_key(row) -> tuple:
        return tuple(group_rank(row["attribute"], row[col]) if kind == "group" else _value_key(kind, row[col])
                     for col, kind in keys.items())
    order = sorted(range(len(df)), key=lambda i: row_key(df.iloc[i]))
    return df.iloc[order].reset_index(drop=True)


# ---------------------------------------------------------------- store location


def resolve_db_path(argv: list[str] | None = None) -> Path:
    """`--db PATH` after `streamlit run dashboard/app.py --`, else $FER_RESULTS_DB, else paths.DEFAULT_DB."""
    argv = sys.argv[1:] if argv is None else argv
    for i, a in enumerate(argv):
        if a == "--db" and i + 1 < len(argv):
            return Path(argv[i + 1]).expanduser()
        if a.startswith("--db="):
            return Path(a.split("=", 1)[1]).expanduser()
    env = os.environ.get("FER_RESULTS_DB")
    if env:
        return Path(env).expanduser()
    from pipeline.paths import DEFAULT_DB
    return Path(DEFAULT_DB)


def create_store_ref(path: str | Path) -> StoreRef:
    """Stat the store file (and its WAL) now: cheap, done on every rerun."""
    path = Path(path)
    try:
        st_main = path.stat()
    except OSError:
        return StoreRef(str(path))
    try:
        st_wal = Path(str(path) + ".wal").stat()
        wal = (st_wal.st_mtime_ns, st_wal.st_size)
    except OSError:
        wal = (0, -1)
    return StoreRef(str(path), st_main.st_mtime_ns, st_main.st_size, *wal)


# ---------------------------------------------------------------- connection


def _connect(ref: StoreRef) -> duckdb.DuckDBPyConnection:
    """The store's own read-only `connect` (its lock retry, bounded to BUSY_TIMEOUT_S); schema checked apart."""
    try:
        return store.connect(ref.path, read_only=True, timeout_s=BUSY_TIMEOUT_S, check=False)
    except store.StoreBusyError as exc:
        raise StoreBusyError(f"The pipeline is writing to {ref.path}; refresh in a moment.") from exc


_local = threading.local()


@contextmanager
def read_batch(ref: StoreRef) -> Iterator[None]:
    """Let the cache misses of one script run share one read-only connection, closed on exit.

    The entry script wraps each run in it: the connection is opened lazily by
    the first query that misses the cache (so a fully cached rerun opens
    nothing) and closed when the run ends, so none is held across reruns.
    """
    previous = getattr(_local, "batch", None)
    _local.batch = {"ref": ref, "con": None}
    try:
        yield
    finally:
        con = _local.batch["con"]
        _local.batch = previous
        if con is not None:
            con.close()


@contextmanager
def _connection(ref: StoreRef) -> Iterator[duckdb.DuckDBPyConnection]:
    batch = getattr(_local, "batch", None)
    if batch is not None and batch["ref"] == ref:
        if batch["con"] is None:
            batch["con"] = _connect(ref)
        yield batch["con"]
        return
    con = _connect(ref)
    try:
        yield con
    finally:
        con.close()


def _read(ref: StoreRef, sql: str, params: list | tuple = ()) -> pd.DataFrame:
    """One statement on the batch's connection, or on its own connection closed at once."""
    with _connection(ref) as con:
        return con.execute(sql, list(params)).df()


def _read_many(ref: StoreRef, statements: list[tuple[str, list]]) -> list[pd.DataFrame]:
    with _connection(ref) as con:
        return [con.execute(sql, list(params)).df() for sql, params in statements]


# ---------------------------------------------------------------- status


@st.cache_data(show_spinner=False)
def load_store_status(ref: StoreRef) -> StoreStatus:
    """Whether the store can be shown, and if not, what the user should do."""
    if not ref.exists:
        return StoreStatus("missing", f"No results store at {ref.path}.")
    try:
        with _connection(ref) as con:
            return _check_store(ref, con)
    except StoreBusyError:
        raise
    except (duckdb.Error, UserError) as exc:
        return StoreStatus("unreadable", f"{ref.path} could not be opened as a DuckDB file: {exc}")


@st.cache_data(persist="disk", show_spinner="Checking that every table of the store reads back "
                                            "(once per version of the file) …")
def load_damaged_tables(ref: StoreRef, _con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """store.find_damaged_tables, kept on disk per state of the file (path, size, mtime, WAL).

    The check reads every block of every table: 5 s of CPU on a 10M-prediction store
    (7.8 GB, bench/bench_dashboard.py), where every other query of a page takes well under
    one. Kept on disk, it is paid once per version of the file, not per server start.
    `_con` (not part of the cache key): the caller's open connection to that file."""
    return store.find_damaged_tables(_con)


def _check_store(ref: StoreRef, con: duckdb.DuckDBPyConnection) -> StoreStatus:
    if not store.schema_version(con) and not con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'main'").fetchone()[0]:
        return StoreStatus("empty", f"{ref.path} exists but holds no results tables yet.")
    try:
        store.check_schema(con)  # the recorded schema version
    except store.SchemaMismatchError as exc:
        return StoreStatus("old-schema", str(exc))
    # and the columns themselves, should a store claim the version without them; an older store
    # lacks the tables added since (pages that read them say to re-run the stage that writes them)
    damaged = load_damaged_tables(ref, con)
    if damaged:
        return StoreStatus(
            "damaged",
            f"{ref.path} is damaged: {len(damaged)} table(s) no longer read back ({', '.join(damaged)}; "
            f"{next(iter(damaged.values()))}). Copy what still reads into a new store with "
            f"`python -m pipeline runs --db {ref.path} --salvage NEW.duckdb` and open that one.")
    missing = store.missing_columns(con)
    if missing:
        return StoreStatus(
            "old-schema",
            f"{ref.path} lacks columns this dashboard reads ({', '.join(missing[:6])}"
            f"{' …' if len(missing) > 6 else ''}): it was written by another version of the pipeline.")
    n = con.execute("SELECT count(*) FROM runs WHERE status = 'complete'").fetchone()[0]
    if n == 0:
        return StoreStatus("empty", f"{ref.path} holds no complete run yet.")
    return StoreStatus("ok")


# ---------------------------------------------------------------- runs


@st.cache_data(show_spinner=False)
def load_runs(ref: StoreRef) -> pd.DataFrame:
    """Complete runs, newest first."""
    return _read(ref, """
        SELECT run_id, kind, parent_run_id, dataset, dataset_root, dataset_fingerprint, is_synthetic,
               recipe, model, classes, seed, device, code_version, started_at, finished_at,
               train_seconds, eval_seconds, test_accuracy, test_macro_f1, n_test, CAST(config AS VARCHAR) AS config
        FROM runs WHERE status = 'complete' ORDER BY started_at DESC, run_id DESC""")


@st.cache_data(show_spinner=False)
def load_seed_spread(ref: StoreRef) -> pd.DataFrame:
    """Per recipe trained with two or more seeds on one dataset: test accuracy and macro-F1 across the seeds
    (pipeline.train.seeds.compute_seed_spread over the complete runs)."""
    from pipeline.train.seeds import compute_seed_spread

    return compute_seed_spread(load_runs(ref))


@st.cache_data(show_spinner=False)
def load_demographic_sources(ref: StoreRef, fingerprint: str) -> pd.DataFrame:
    """The demographic sources stored for a dataset: source, inferred, n (annotations first); from the
    store's demographic_sources (schema version 8), else, on an older store read as it is, its demographics."""
    if "demographic_sources" not in load_missing_tables(ref):
        return _read(ref, """
            SELECT source, inferred, n FROM demographic_sources WHERE dataset_fingerprint = ?
            ORDER BY inferred, source""", [fingerprint])
    return _read(ref, """
        SELECT source, bool_or(inferred) AS inferred, count(*) AS n
        FROM demographics WHERE dataset_fingerprint = ?
        GROUP BY source ORDER BY bool_or(inferred), source""", [fingerprint])


@st.cache_data(show_spinner=False)
def load_run_splits(ref: StoreRef, run_id: str) -> list[str]:
    df = _read(ref, "SELECT DISTINCT split FROM confusion WHERE run_id = ?", [run_id])
    order = {"test": 0, "val": 1, "train": 2}
    return sorted(df["split"].tolist(), key=lambda s: (order.get(s, 9), s))


# ---------------------------------------------------------------- performance


@st.cache_data(show_spinner=False)
def load_class_metrics(ref: StoreRef, run_id: str, split: str) -> pd.DataFrame:
    return sort_natural(_read(ref, """
        SELECT label, precision, recall, f1, support FROM class_metrics
        WHERE run_id = ? AND split = ?""", [run_id, split]), {"label": "emotion"})


@st.cache_data(show_spinner=False)
def load_confusion(ref: StoreRef, run_id: str, split: str) -> pd.DataFrame:
    return _read(ref, "SELECT true_label, pred_label, n FROM confusion WHERE run_id = ? AND split = ?",
                 [run_id, split])


@st.cache_data(show_spinner=False)
def load_epochs(ref: StoreRef, run_id: str) -> pd.DataFrame:
    return _read(ref, "SELECT * EXCLUDE (run_id) FROM epochs WHERE run_id = ? ORDER BY epoch", [run_id])


@st.cache_data(show_spinner=False)
def load_class_distribution(ref: StoreRef, run_id: str) -> pd.DataFrame:
    """Images per split and true label (train/val/test as stored in `images`)."""
    return sort_natural(_read(ref, """
        SELECT split, true_label AS label, count(*) AS n FROM images
        WHERE run_id = ? GROUP BY split, true_label""", [run_id]), {"split": "split", "label": "emotion"})


# ---------------------------------------------------------------- error explorer


@st.cache_data(show_spinner=False)
def load_explainer_methods(ref: StoreRef, run_id: str) -> list[str]:
    """Methods with explanation metrics or heatmaps in the run, sorted.

    The heatmaps' methods come from the run's explorer codes (schema version 7); on an older
    store the heatmaps are asked only for methods the metrics do not name: a filter on the
    method column that usually matches nothing, instead of DISTINCT over every map."""
    codes = load_explorer_codes(ref, run_id)
    if codes is not None:
        metrics = _read(ref, "SELECT DISTINCT method FROM explanation_metrics WHERE run_id = ?", [run_id])
        return sorted({*metrics["method"], *codes["method"]})
    with _connection(ref) as con:
        known = [r[0] for r in con.execute(
            "SELECT DISTINCT method FROM explanation_metrics WHERE run_id = ?", [run_id]).fetchall()]
        not_known = f" AND method NOT IN ({', '.join('?' for _ in known)})" if known else ""
        others = [r[0] for r in con.execute(
            f"SELECT DISTINCT method FROM heatmaps WHERE run_id = ?{not_known}", [run_id, *known]).fetchall()]
    return sorted({*known, *others})


@st.cache_data(show_spinner=False)
def load_heatmap_layers(ref: StoreRef, run_id: str) -> dict[str, str]:
    """{method: the layer its maps were read at} of a run's heatmaps ('input' for gradient-free methods);
    from the store's heatmap_layers (schema version 8), else, on an older store read as it is, its heatmaps."""
    table = "heatmaps" if "heatmap_layers" in load_missing_tables(ref) else "heatmap_layers"
    df = _read(ref, f"""
        SELECT method, min(target_layer) AS target_layer FROM {table} WHERE run_id = ?
        GROUP BY method ORDER BY method""", [run_id])
    return dict(zip(df["method"], df["target_layer"]))


@st.cache_data(show_spinner=False)
def load_failure_tag_counts(ref: StoreRef, run_id: str) -> pd.DataFrame:
    """Failure-mode tags with their number of (image, method) rows (count(*): count(DISTINCT) costs 20x),
    most frequent first: the run's explorer codes hold them (schema version 7), else failure_tags."""
    if load_explorer_codes(ref, run_id) is not None:
        return _read(ref, """SELECT value AS tag, n FROM explorer_codes WHERE run_id = ? AND kind = 'tag'
                             ORDER BY n DESC, tag""", [run_id])
    return _read(ref, """
        SELECT tag, count(*) AS n FROM failure_tags WHERE run_id = ?
        GROUP BY tag ORDER BY n DESC, tag""", [run_id])


@st.cache_data(show_spinner=False)
def load_join_column(ref: StoreRef) -> str:
    """The column the explorer's filters join per-image tables on: 'image_key' (schema version 6:
    integers, store.IMAGE_KEY_TABLES) or, on an older store read as it is, 'image_id' (same rows)."""
    with _connection(ref) as con:
        return "image_key" if store.has_image_keys(con) else "image_id"


@st.cache_data(show_spinner=False)
def load_explorer_codes(ref: StoreRef, run_id: str) -> dict[str, dict[str, int]] | None:
    """{kind: {value: code}} of the run's explorer rows (store.refresh_explorer), or None on a store
    before schema version 7 (read as it is: the explorer then filters the predictions themselves)."""
    with _connection(ref) as con:
        if not store.has_explorer_rows(con):
            return None
        rows = con.execute("SELECT kind, value, code FROM explorer_codes WHERE run_id = ? ORDER BY kind, code",
                           [run_id]).fetchall()
    codes: dict[str, dict[str, int]] = {k: {} for k in ("label", "tag", "method", "source", "gender", "race",
                                                        "age_group")}
    for kind, value, code in rows:
        codes.setdefault(kind, {})[value] = int(code)
    return codes


def _explorer_sql(run_id: str, f: ErrorFilters, codes: dict[str, dict[str, int]]) -> tuple[str, list]:
    """(WHERE clause, parameters) over explorer_rows `e` selecting the rows `_filter_sql` selects
    from predictions: the same filters, as integer codes and mask bits (schema.sql, explorer_rows).

    The rows of one block (run, split, source) hold every prediction once; the filters' source picks
    the block, or any block without demographic filters. A value the run has no code for matches nothing."""
    demographic = [(c, codes.get(k, {}), v) for c, k, v in (("gender_code", "gender", f.genders),
                                                            ("race_code", "race", f.races),
                                                            ("age_code", "age_group", f.ages)) if v]
    sources = codes.get("source", {})
    source = f.source if f.source in sources else min(sources, key=sources.get, default="")
    where, params = ["e.run_id = ?", "e.split = ?", "e.source = ?"], [run_id, f.split, source]
    if demographic and f.source not in sources:
        where.append("FALSE")

    def codes_in(column: str, known: dict[str, int], values) -> None:
        found = sorted({known[v] for v in values if v in known})
        where.append(f"{column} IN ({', '.join('?' for _ in found)})" if found else "FALSE")
        params.extend(found)

    if f.true_labels:
        codes_in("e.true_code", codes.get("label", {}), f.true_labels)
    if f.pred_labels:
        codes_in("e.pred_code", codes.get("label", {}), f.pred_labels)
    _add_outcome_sql("e", f, where, params)
    for column, known, values in demographic:
        codes_in(f"e.{column}", known, values)
    for value, kind, mask, table, extra in ((f.tag, "tag", "tag_mask", "failure_tags", "tag = ?"),
                                            (f.method, "method", "method_mask", "heatmaps",
                                             "method = ? AND target = 'pred'")):
        if not value:
            continue
        code = codes.get(kind, {}).get(value)
        if code is None:  # the run has none
            where.append("FALSE")
        elif code < store.EXPLORER_MASK_BITS:
            where.append(f"(e.{mask} & ?) <> 0")
            params.append(1 << code)
        else:  # a rare tag of a run with more tags than mask bits
            where.append(f"e.image_key IN (SELECT image_key FROM {table} WHERE run_id = ? AND {extra})")
            params += [run_id, value]
    if f.slice_rank:
        where.append("e.image_key IN (SELECT image_key FROM slice_images WHERE run_id = ? AND source = ? "
                     "AND split = ? AND rank = ?)")
        params += [run_id, f.source, f.split, int(f.slice_rank)]
    return " AND ".join(where), params


def _add_outcome_sql(alias: str, f: ErrorFilters, where: list[str], params: list) -> None:
    """Append the conditions on outcome (correct / wrong) and confidence range of `f`, on the
    columns of table `alias`, with their parameters."""
    if f.correct == "wrong":
        where.append(f"NOT {alias}.correct")
    elif f.correct == "correct":
        where.append(f"{alias}.correct")
    if f.conf_min > 0.0:
        where.append(f"{alias}.confidence >= ?")
        params.append(float(f.conf_min))
    if f.conf_max < 1.0:
        where.append(f"{alias}.confidence <= ?")
        params.append(float(f.conf_max))


def _filter_sql(run_id: str, f: ErrorFilters, key: str = "image_id") -> tuple[str, str, list]:
    """(FROM clause, WHERE clause, parameters) of the predictions `f` selects.

    The filters on other tables (demographics, tag, method, slice) are semi-joins on `key`
    ('image_key' or 'image_id', `load_join_column`): each picks the images of its table first, and
    a prediction matches when its image is among them. The demographics of one fingerprint and
    source have one row per image (their primary key), so this is the rows an inner join gives."""
    params: list = [run_id, f.split]
    where = ["p.run_id = ?", "p.split = ?"]
    for column, values in (("p.true_label", f.true_labels), ("p.pred_label", f.pred_labels)):
        if values:
            where.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params += list(values)
    _add_outcome_sql("p", f, where, params)
    demographic = [(c, v) for c, v in (("gender", f.genders), ("race", f.races), ("age_group", f.ages)) if v]
    if demographic:
        where.append(f"p.{key} IN (SELECT {key} FROM demographics WHERE dataset_fingerprint = ? AND source = ? "
                     + "".join(f"AND {c} IN ({', '.join('?' for _ in v)}) " for c, v in demographic) + ")")
        params += [f.fingerprint, f.source, *(x for _, v in demographic for x in v)]
    if f.tag:
        where.append(f"p.{key} IN (SELECT {key} FROM failure_tags WHERE run_id = ? AND tag = ?)")
        params += [run_id, f.tag]
    if f.method:
        where.append(f"p.{key} IN (SELECT {key} FROM heatmaps WHERE run_id = ? AND method = ? "
                     "AND target = 'pred')")
        params += [run_id, f.method]
    if f.slice_rank:
        where.append(f"p.{key} IN (SELECT {key} FROM slice_images WHERE run_id = ? AND source = ? "
                     "AND split = ? AND rank = ?)")
        params += [run_id, f.source, f.split, int(f.slice_rank)]
    return "predictions p", " AND ".join(where), params


@st.cache_data(show_spinner=False)
def count_predictions(ref: StoreRef, run_id: str, filters: ErrorFilters) -> int:
    codes = load_explorer_codes(ref, run_id)
    if codes is not None:  # a filtered scan of the run's explorer rows (integer columns)
        where, params = _explorer_sql(run_id, filters, codes)
        return int(_read(ref, f"SELECT count(*) AS n FROM explorer_rows e WHERE {where}", params)["n"].iloc[0])
    frm, where, params = _filter_sql(run_id, filters, load_join_column(ref))
    return int(_read(ref, f"SELECT count(*) AS n FROM {frm} WHERE {where}", params)["n"].iloc[0])


# The explorer's orders: (column, direction) pairs, a unique key within a run (image ids are).
ORDER_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "confidence": (("confidence", "DESC"), ("image_id", "ASC")),  # store.STORAGE_ORDER within run and split
    "image": (("image_id", "ASC"),),
}


def _order_sql(order: str) -> str:
    return ", ".join(f"p.{c} {d}" for c, d in ORDER_KEYS[order])


def _from_key_sql(order: str, key: tuple) -> tuple[str, list]:
    """The predicate 'at or after `key` in `order`', with its parameters.

    For (confidence DESC, image_id): confidence below the key's, or equal with the image id
    not before it; the leading `confidence <= ?` is the part zone maps can prune row groups by."""
    if order == "confidence":
        conf, image_id = key
        return ("p.confidence <= ? AND (p.confidence < ? OR p.image_id >= ?)",
                [float(conf), float(conf), str(image_id)])
    return "p.image_id >= ?", [str(key[0])]


@st.cache_data(show_spinner=False)
def load_page_start(ref: StoreRef, run_id: str, filters: ErrorFilters, offset: int) -> tuple | None:
    """The sort key (ORDER_KEYS[filters.order] values) of the filtered prediction at `offset`, or None past the end.

    A narrow query (the key columns and the filters' own) so that jumping to any page costs a
    scan of those columns only, up to the page; the page itself is then read from that key."""
    frm, where, params = _filter_sql(run_id, filters, load_join_column(ref))
    columns = ", ".join(f"p.{c}" for c, _ in ORDER_KEYS[filters.order])
    df = _read(ref, f"SELECT {columns} FROM {frm} WHERE {where} ORDER BY {_order_sql(filters.order)} "
                    "LIMIT 1 OFFSET ?", [*params, int(offset)])
    if not len(df):
        return None
    return tuple(v.item() if hasattr(v, "item") else v for v in df.iloc[0].tolist())


def _page_details(ref: StoreRef, run_id: str, filters: ErrorFilters, page: pd.DataFrame) -> pd.DataFrame:
    """`page` (in its order) with each image's path and its demographics of the filters' source
    (NULL where absent), looked up by the page's image ids through the image_id indexes."""
    ids = page["image_id"].tolist()
    marks = ", ".join("?" for _ in ids) or "NULL"
    view = f"_page_{threading.get_ident()}"
    with _connection(ref) as con:
        con.register(view, page.assign(_pos=range(len(page))))
        try:
            return con.execute(f"""
                WITH i AS MATERIALIZED (SELECT run_id, image_id, path FROM images WHERE image_id IN ({marks})),
                     dd AS MATERIALIZED (SELECT dataset_fingerprint, source, image_id, gender, race, age_group
                                         FROM demographics WHERE image_id IN ({marks}))
                SELECT page.image_id, page.true_label, page.pred_label, page.confidence, page.correct,
                       i.path, dd.gender, dd.race, dd.age_group
                FROM "{view}" page
                LEFT JOIN i ON i.run_id = ? AND i.image_id = page.image_id
                LEFT JOIN dd ON dd.dataset_fingerprint = ? AND dd.source = ? AND dd.image_id = page.image_id
                ORDER BY page._pos""", [*ids, *ids, run_id, filters.fingerprint, filters.source]).df()
        finally:
            con.unregister(view)


@st.cache_data(show_spinner=False)
def load_prediction_page(ref: StoreRef, run_id: str, filters: ErrorFilters, limit: int | None,
                         offset: int = 0) -> pd.DataFrame:
    """One page of filtered predictions with image path and demographics of the filter's source
    (`limit=None`: every filtered prediction from `offset` on, for the table download).

    From the run's explorer rows when the store has them (`_explorer_page`); on an older store
    a page is read by key (module docstring): the key at `offset` from `load_page_start`,
    then the `limit` predictions from it, then their paths and demographics by image id.
    With a filter that joins (demographics, tag, method, slice) a key query would pay the
    join twice, so such a page is one narrow LIMIT/OFFSET query, then the same lookups.
    The rows and their order are those of `load_prediction_page_by_offset`."""
    if limit is None:
        return load_prediction_page_by_offset(ref, run_id, filters, None, offset)
    codes = load_explorer_codes(ref, run_id)
    if codes is not None:
        return _explorer_page(ref, run_id, filters, codes, limit, offset)
    frm, where, params = _filter_sql(run_id, filters, load_join_column(ref))
    joins = bool(filters.genders or filters.races or filters.ages or filters.tag or filters.method
                 or filters.slice_rank)
    if offset > 0 and joins:  # a key query would pay the joins twice: one narrow OFFSET query instead
        page = _read(ref, f"""
            SELECT p.image_id, p.true_label, p.pred_label, p.confidence, p.correct
            FROM {frm} WHERE {where} ORDER BY {_order_sql(filters.order)} LIMIT ? OFFSET ?""",
                     [*params, int(limit), int(offset)])
        return _page_details(ref, run_id, filters, page)
    if offset > 0:
        key = load_page_start(ref, run_id, filters, int(offset))
        if key is None:
            return load_prediction_page_by_offset(ref, run_id, filters, 0, 0)  # past the end: no rows, same columns
        from_key, key_params = _from_key_sql(filters.order, key)
        where, params = f"{where} AND {from_key}", [*params, *key_params]
    page = _read(ref, f"""
        SELECT p.image_id, p.true_label, p.pred_label, p.confidence, p.correct
        FROM {frm} WHERE {where} ORDER BY {_order_sql(filters.order)} LIMIT ?""", [*params, int(limit)])
    return _page_details(ref, run_id, filters, page)


def _explorer_page(ref: StoreRef, run_id: str, filters: ErrorFilters, codes: dict[str, dict[str, int]],
                   limit: int, offset: int) -> pd.DataFrame:
    """The page from explorer_rows: the top `limit` after `offset` by an integer rank, whose image
    ids and paths DuckDB then reads for those rows alone (by row id); labels, and the demographics
    of the filters' source (the rows' block carries them; NULL for a source not stored), decoded
    from the run's codes. Filters naming another dataset than the run's look its demographics up."""
    where, params = _explorer_sql(run_id, filters, codes)
    rank = "e.pos" if filters.order == "confidence" else "e.id_pos"
    own = filters.fingerprint in codes.get("fingerprint", {})
    stored = own and filters.source in codes.get("source", {})
    page = _read(ref, f"""
        WITH top AS MATERIALIZED (
                 SELECT e.image_id, e.true_code, e.pred_code, e.confidence, e.correct, e.path, e.gender_code,
                        e.race_code, e.age_code, {rank} AS _rank
                 FROM explorer_rows e WHERE {where} ORDER BY {rank} LIMIT ? OFFSET ?),
             c AS MATERIALIZED (SELECT kind, code, value FROM explorer_codes WHERE run_id = ?)
        SELECT top.image_id, lt.value AS true_label, lp.value AS pred_label, top.confidence, top.correct, top.path,
               g.value AS gender, r.value AS race, a.value AS age_group
        FROM top
        JOIN c lt ON lt.kind = 'label' AND lt.code = top.true_code
        JOIN c lp ON lp.kind = 'label' AND lp.code = top.pred_code
        LEFT JOIN c g ON ? AND g.kind = 'gender' AND g.code = top.gender_code
        LEFT JOIN c r ON ? AND r.kind = 'race' AND r.code = top.race_code
        LEFT JOIN c a ON ? AND a.kind = 'age_group' AND a.code = top.age_code
        ORDER BY top._rank""", [*params, int(limit), int(offset), run_id, stored, stored, stored])
    if own:
        return page
    return _page_details(ref, run_id, filters, page[["image_id", "true_label", "pred_label", "confidence",
                                                      "correct"]])


def load_prediction_page_by_offset(ref: StoreRef, run_id: str, filters: ErrorFilters, limit: int | None,
                                   offset: int = 0) -> pd.DataFrame:
    """The same rows as `load_prediction_page` by ORDER BY ... LIMIT/OFFSET and joins over every row:
    the download of every filtered row uses it (hash joins suit many rows), and the tests compare the two."""
    frm, where, params = _filter_sql(run_id, filters, load_join_column(ref))
    order = _order_sql(filters.order)
    limit_sql = "LIMIT ? OFFSET ?" if limit is not None else "OFFSET ?"
    sql = f"""
        WITH page AS (
            SELECT p.image_id, p.true_label, p.pred_label, p.confidence, p.correct
            FROM {frm} WHERE {where} ORDER BY {order} {limit_sql})
        SELECT page.*, i.path, dd.gender, dd.race, dd.age_group
        FROM page
        LEFT JOIN images i ON i.run_id = ? AND i.image_id = page.image_id
        LEFT JOIN demographics dd ON dd.dataset_fingerprint = ? AND dd.source = ? AND dd.image_id = page.image_id
        ORDER BY {order.replace('p.', 'page.')}"""
    params = params + [*([int(limit)] if limit is not None else []), int(offset), run_id, filters.fingerprint,
                       filters.source]
    return _read(ref, sql, params)


@st.cache_data(show_spinner=False)
def load_cams(ref: StoreRef, run_id: str, image_ids: tuple[str, ...], method: str) -> pd.DataFrame:
    """CAM blobs (pred and true targets) of a few images: image_id, target, target_label, cam_size, cam."""
    if not image_ids:
        return pd.DataFrame(columns=["image_id", "target", "target_label", "cam_size", "cam"])
    marks = ", ".join("?" for _ in image_ids)
    return _read(ref, f"""
        WITH h AS MATERIALIZED (SELECT run_id, method, image_id, target, target_label, cam_size, cam FROM heatmaps
                                WHERE image_id IN ({marks}))
        SELECT image_id, target, target_label, cam_size, cam FROM h
        WHERE run_id = ? AND method = ?""", [*image_ids, run_id, method])


@st.cache_data(show_spinner=False)
def load_image_detail(ref: StoreRef, run_id: str, image_id: str, fingerprint: str) -> dict[str, pd.DataFrame]:
    """Everything stored about one image in one run: prediction, energies, demographics, tags."""
    def by_id(table: str) -> str:  # the image's rows through the image_id index (module docstring)
        return f"WITH x AS MATERIALIZED (SELECT * FROM {table} WHERE image_id = ?) SELECT"

    pred, image, energies, demo, tags = _read_many(ref, [
        (f"{by_id('predictions')} true_label, pred_label, confidence, correct, probs, split FROM x "
         "WHERE run_id = ?", [image_id, run_id]),
        (f"{by_id('images')} path, split, soft_label FROM x WHERE run_id = ?", [image_id, run_id]),
        (f"{by_id('heatmaps')} method, target, target_label, {', '.join(ENERGY_COLUMNS)}, peak_region, gt_energy, "
         "gt_hit FROM x WHERE run_id = ? ORDER BY method, target", [image_id, run_id]),
        (f"{by_id('demographics')} source, inferred, gender, gender_conf, race, race_conf, age_group, age_conf, "
         "raw_gender, raw_race, raw_age FROM x WHERE dataset_fingerprint = ? "
         "ORDER BY inferred, source", [image_id, fingerprint]),
        ("SELECT method, tag FROM failure_tags WHERE run_id = ? AND image_id = ? ORDER BY tag",
         [run_id, image_id]),
    ])
    return {"prediction": pred, "image": image, "energies": energies, "demographics": demo, "tags": tags}


# ---------------------------------------------------------------- explanations


@st.cache_data(show_spinner=False)
def load_missing_tables(ref: StoreRef) -> tuple[str, ...]:
    """Tables added by later schema versions that this (older, still readable) store does not hold yet."""
    with _connection(ref) as con:
        return tuple(store.missing_added_tables(con))


_REGION_COLUMNS = ", ".join(f"{c} AS {c[2:]}" for c in ENERGY_COLUMNS)


@st.cache_data(show_spinner=False)
def load_region_energy(ref: StoreRef, run_id: str, method: str, split: str = "test") -> pd.DataFrame:
    """Mean CAM energy share per facial region, per true emotion and correct/misclassified (pred target).

    Exact means over every explained image, as `explain` stored them in
    heatmap_summary; empty when it stored none (see `load_summary_outdated`).
    """
    if "heatmap_summary" in load_missing_tables(ref):
        return pd.DataFrame(columns=["emotion", "correct", "n", *(c[2:] for c in ENERGY_COLUMNS)])
    return sort_natural(_read(ref, f"""
        SELECT emotion, correct, n, {_REGION_COLUMNS} FROM heatmap_summary
        WHERE run_id = ? AND method = ? AND split = ?""", [run_id, method, split]),
                        {"correct": "flag", "emotion": "emotion"})


@st.cache_data(show_spinner=False)
def load_mean_cams(ref: StoreRef, run_id: str, method: str, split: str = "test") -> pd.DataFrame:
    """Mean CAM (target 'pred') per true emotion and correct flag, over every explained image.

    Columns emotion, correct, n, cam_size, mean_cam (float32 cam_size x cam_size
    in [0, 1], the mean of the stored maps, as `explain` stored it in heatmap_summary).
    Empty when it stored none (see `load_summary_outdated`).
    """
    columns = ["emotion", "correct", "n", "cam_size", "mean_cam"]
    if "heatmap_summary" in load_missing_tables(ref):
        return pd.DataFrame(columns=columns)
    df = _read(ref, """
        SELECT emotion, correct, n, cam_size, mean_cam FROM heatmap_summary
        WHERE run_id = ? AND method = ? AND split = ? ORDER BY emotion, correct DESC""", [run_id, method, split])
    df["mean_cam"] = [np.frombuffer(bytes(b), dtype="<f4").reshape(int(k), int(k))
                      for b, k in zip(df["mean_cam"], df["cam_size"])]
    return df[columns]


@st.cache_data(show_spinner=False)
def load_summary_outdated(ref: StoreRef, run_id: str, method: str) -> bool:
    """Whether the run has heatmaps of `method` but no heatmap_summary rows for it.

    True for runs explained by a pipeline older than heatmap_summary: re-running
    `explain` stores the summary. Only worth asking when a summary query came back empty.
    """
    have_heatmaps = "EXISTS (SELECT 1 FROM heatmaps WHERE run_id = ? AND method = ? AND target = 'pred')"
    if "heatmap_summary" in load_missing_tables(ref):
        df = _read(ref, f"SELECT {have_heatmaps} AS outdated", [run_id, method])
    else:
        df = _read(ref, f"""SELECT {have_heatmaps}
            AND NOT EXISTS (SELECT 1 FROM heatmap_summary WHERE run_id = ? AND method = ?) AS outdated""",
                   [run_id, method, run_id, method])
    return bool(df["outdated"].iloc[0])


@st.cache_data(show_spinner=False)
def load_explanation_metrics(ref: StoreRef, run_id: str) -> pd.DataFrame:
    return sort_natural(_read(ref, """
        SELECT method, metric, emotion, value, ci_low, ci_high, n, passed FROM explanation_metrics
        WHERE run_id = ? ORDER BY method, metric""", [run_id]), {"method": "method", "metric": "method",
                                                                  "emotion": "emotion"})


# ---------------------------------------------------------------- fairness


@st.cache_data(show_spinner=False)
def load_audit_sources(ref: StoreRef, run_id: str) -> pd.DataFrame:
    return _read(ref, """SELECT source, split, count(*) AS n FROM audit_cells WHERE run_id = ?
                         GROUP BY source, split ORDER BY source, split""", [run_id])


@st.cache_data(show_spinner=False)
def load_audit_settings(ref: StoreRef, run_id: str, source: str, split: str) -> dict | None:
    """The settings an audit was computed with (its AuditConfig) and its coverage, or None when
    the store predates the `audits` table or the audit did not record them."""
    if "audits" in load_missing_tables(ref):
        return None
    df = _read(ref, """
        SELECT config, n_predictions, n_labelled, created_at FROM audits
        WHERE run_id = ? AND source = ? AND split = ?""", [run_id, source, split])
    if not len(df):
        return None
    row = df.iloc[0]
    config = row["config"]
    return {"config": json.loads(config) if isinstance(config, str) else dict(config),
            "n_predictions": int(row["n_predictions"]), "n_labelled": int(row["n_labelled"]),
            "created_at": row["created_at"]}


@st.cache_data(show_spinner=False)
def load_audit_cells(ref: StoreRef, run_id: str, source: str, split: str) -> pd.DataFrame:
    return sort_natural(_read(ref, """
        SELECT attribute, grp, metric, n, value, ci_low, ci_high, low_support FROM audit_cells
        WHERE run_id = ? AND source = ? AND split = ?""", [run_id, source, split]),
                        {"attribute": "attribute", "metric": "metric", "grp": "group"})


@st.cache_data(show_spinner=False)
def load_audit_gaps(ref: StoreRef, run_id: str, source: str, split: str) -> pd.DataFrame:
    return sort_natural(_read(ref, """
        SELECT attribute, metric, comparison, grp, gap, ci_low, ci_high, p_value, p_adjusted, correction, significant
        FROM audit_gaps WHERE run_id = ? AND source = ? AND split = ? ORDER BY comparison""",
                              [run_id, source, split]), {"attribute": "attribute", "metric": "metric", "grp": "group"})


@st.cache_data(show_spinner=False)
def load_proxy_agreement(ref: StoreRef, fingerprint: str) -> pd.DataFrame:
    df = _read(ref, """
        SELECT source, reference, attribute, annotated, inferred, n FROM proxy_agreement
        WHERE dataset_fingerprint = ? ORDER BY source""", [fingerprint])
    return sort_natural(df, {"attribute": "attribute", "annotated": "group", "inferred": "group"})


# ---------------------------------------------------------------- compare


@st.cache_data(show_spinner=False)
def load_compare_class_metrics(ref: StoreRef, run_ids: tuple[str, ...], split: str) -> pd.DataFrame:
    if not run_ids:
        return pd.DataFrame(columns=["run_id", "label", "precision", "recall", "f1", "support"])
    marks = ", ".join("?" for _ in run_ids)
    return sort_natural(_read(ref, f"""
        SELECT run_id, label, precision, recall, f1, support FROM class_metrics
        WHERE split = ? AND run_id IN ({marks}) ORDER BY run_id""", [split, *run_ids]), {"label": "emotion"})


@st.cache_data(show_spinner=False)
def load_compare_shared_images(ref: StoreRef, run_ids: tuple[str, ...], split: str) -> pd.DataFrame:
    """Per run: its predictions on the split, how many are on images every chosen run predicted (same
    dataset fingerprint and image id), and its accuracy on those shared images: the like-for-like
    comparison of runs from different sources (trained, external models, imported predictions).

    Runs on different datasets share nothing, and the shared images are among the smallest run's:
    so only that run's images are looked up in the others (a semi-join), where grouping every
    prediction of the chosen runs by image took 3.5-5 s with a 10M-prediction run."""
    if not run_ids:
        return pd.DataFrame(columns=["run_id", "kind", "n", "n_shared", "accuracy_shared"])
    marks = ", ".join("?" for _ in run_ids)
    key = load_join_column(ref)  # image_key or, on a store before version 6, image_id: same rows
    return _read(ref, f"""
        WITH p AS (
            SELECT run_id, {key} AS k, correct FROM predictions WHERE split = ? AND run_id IN ({marks})),
        counts AS (
            SELECT c.run_id, r.kind, r.dataset_fingerprint AS fingerprint, c.n
            FROM (SELECT run_id, count(*) AS n FROM p GROUP BY run_id) c JOIN runs r ON r.run_id = c.run_id),
        smallest AS (
            SELECT run_id FROM counts
            WHERE (SELECT count(DISTINCT fingerprint) FROM counts) = 1
            ORDER BY n, run_id LIMIT 1),
        candidates AS (SELECT k FROM p WHERE run_id IN (SELECT run_id FROM smallest)),
        matched AS (SELECT run_id, k, correct FROM p WHERE k IN (SELECT k FROM candidates)),
        shared AS (SELECT k FROM matched GROUP BY k HAVING count(DISTINCT run_id) = ?),
        hits AS (
            SELECT run_id, count(*) AS n_shared, avg(CAST(correct AS DOUBLE)) AS accuracy_shared
            FROM matched WHERE k IN (SELECT k FROM shared) GROUP BY run_id)
        SELECT c.run_id, c.kind, c.n, coalesce(h.n_shared, 0) AS n_shared, h.accuracy_shared
        FROM counts c LEFT JOIN hits h ON h.run_id = c.run_id
        ORDER BY c.run_id""", [split, *run_ids, len(run_ids)])


@st.cache_data(show_spinner=False)
def load_compare_groups(ref: StoreRef, run_ids: tuple[str, ...], source: str, split: str,
                        metric: str = "accuracy") -> pd.DataFrame:
    if not run_ids:
        return pd.DataFrame(columns=["run_id", "attribute", "grp", "n", "value", "ci_low", "ci_high", "low_support"])
    marks = ", ".join("?" for _ in run_ids)
    return sort_natural(_read(ref, f"""
        SELECT run_id, attribute, grp, n, value, ci_low, ci_high, low_support FROM audit_cells
        WHERE source = ? AND split = ? AND metric = ? AND attribute IN ('gender', 'race', 'age')
          AND run_id IN ({marks}) ORDER BY run_id""", [source, split, metric, *run_ids]),
                        {"attribute": "attribute", "grp": "group"})


# ---------------------------------------------------------------- slices and calibration


@st.cache_data(show_spinner=False)
def load_slices(ref: StoreRef, run_id: str, source: str, split: str) -> pd.DataFrame:
    """The run's discovered slices for one source and split, rank 1 first (empty on an older store)."""
    if "slices" in load_missing_tables(ref):
        return pd.DataFrame(columns=["rank", "definition", "n", "n_all", "error_rate", "rest_error_rate",
                                     "ci_low", "ci_high", "p_value", "p_adjusted", "significant"])
    return _read(ref, """
        SELECT rank, definition, n, n_all, error_rate, rest_error_rate, ci_low, ci_high, p_value, p_adjusted,
               significant
        FROM slices WHERE run_id = ? AND source = ? AND split = ? ORDER BY rank""", [run_id, source, split])


@st.cache_data(show_spinner=False)
def load_calibration(ref: StoreRef, run_id: str, source: str, split: str) -> pd.DataFrame:
    """Calibration per group, before and after temperature scaling (empty on an older store)."""
    columns = ["scaling", "temperature", "attribute", "grp", "n", "accuracy", "confidence", "gap", "ece",
               "ece_low", "ece_high", "gap_vs_rest", "gap_low", "gap_high", "p_value", "p_adjusted", "correction",
               "significant", "low_support"]
    if "calibration" in load_missing_tables(ref):
        return pd.DataFrame(columns=columns)
    return _read(ref, f"""
        SELECT {', '.join(columns)} FROM calibration WHERE run_id = ? AND source = ? AND split = ?
        ORDER BY scaling, attribute, grp""", [run_id, source, split])


@st.cache_data(show_spinner=False)
def load_calibration_bins(ref: StoreRef, run_id: str, source: str, split: str, attribute: str) -> pd.DataFrame:
    """Reliability-diagram bins of one attribute set's groups, both scalings."""
    if "calibration_bins" in load_missing_tables(ref):
        return pd.DataFrame(columns=["scaling", "grp", "bin", "bin_low", "bin_high", "n", "confidence", "accuracy"])
    return _read(ref, """
        SELECT scaling, grp, bin, bin_low, bin_high, n, confidence, accuracy FROM calibration_bins
        WHERE run_id = ? AND source = ? AND split = ? AND attribute = ? ORDER BY scaling, grp, bin""",
                 [run_id, source, split, attribute])

@st.cache_data(show_spinner=False)
def load_paired_predictions(ref: StoreRef, run_a: str, run_b: str, split: str, source: str,
                            fingerprint: str) -> pd.DataFrame:
    """One row per image both runs predicted on `split` with the same true label: each run's
    correctness and the image's demographics from `source` (NULL where it has none)."""
    return _read(ref, """
        SELECT a.image_id, a.true_label, a.correct AS correct_a, b.correct AS correct_b,
               d.gender, d.race, d.age_group AS age
        FROM predictions a
        JOIN predictions b ON b.run_id = ? AND b.image_id = a.image_id AND b.split = a.split
                          AND b.true_label = a.true_label
        LEFT JOIN demographics d ON d.dataset_fingerprint = ? AND d.source = ? AND d.image_id = a.image_id
        WHERE a.run_id = ? AND a.split = ?
        ORDER BY a.image_id""", [run_b, fingerprint, source, run_a, split])


@st.cache_data(show_spinner=False)
def compute_paired_comparison(ref: StoreRef, run_a: str, run_b: str, split: str, source: str,
                              fingerprint: str) -> tuple[dict, pd.DataFrame]:
    """McNemar's test and the paired bootstrap of every gap's change (pipeline.fairness.paired)."""
    from pipeline.fairness.paired import compute_gap_changes, compute_mcnemar

    frame = load_paired_predictions(ref, run_a, run_b, split, source, fingerprint)
    if frame.empty:
        return {"n": 0}, pd.DataFrame()
    return compute_mcnemar(frame["correct_a"], frame["correct_b"]), compute_gap_changes(frame)


# ---------------------------------------------------------------- counterfactual twins


@st.cache_data(show_spinner=False)
def load_twin_predictions(ref: StoreRef, run_id: str, kind: str) -> pd.DataFrame:
    """The run's predictions on counterfactual twins of one kind ('skin' | 'cue')."""
    if "twin_predictions" in load_missing_tables(ref):
        return pd.DataFrame(columns=["image_id", "variant", "drawn_as", "true_label", "pred_label", "correct", "probs"])
    return _read(ref, """
        SELECT image_id, variant, drawn_as, true_label, pred_label, correct, probs FROM twin_predictions
        WHERE run_id = ? AND kind = ? ORDER BY image_id, variant""", [run_id, kind])
