"""The DuckDB results store: the one module of the pipeline that talks to DuckDB (the dashboard's
read-only queries open the store through `connect` and check it with `check_schema` / `missing_columns`).

Rules it relies on:
- One schema definition, `pipeline/store/schema.sql`, applied by the idempotent
  `ensure_schema(con)`; the store records `SCHEMA_VERSION` in `meta` and
  `check_schema(con)` refuses a store written with another version, except an
  older one that differs only by tables added since (`ADDED_TABLES`): it is
  read as it is (those tables are absent) and `ensure_schema` upgrades it in
  place by creating them. Columns added to existing tables since (`ADDED_COLUMNS`)
  are likewise absent from an older store until a writable open adds them
  (`ALTER TABLE ... ADD COLUMN`, NULL in earlier rows). Indexes added since
  (`ADDED_INDEXES`) are built by the same writable open; until then a reader
  gets the same rows, only slower.
- Image keys (version 6): the tables of `IMAGE_KEY_TABLES` carry, beside each
  row's image_id, its integer `image_key` from the `image_keys` table (one key
  per id string, the same in every run and dataset), so the dashboard's filters
  join integers. `insert_frame` sets it on every row it writes, assigning keys
  to ids it has not seen; a writable open of an older store sets it on every
  row already there (`fill_image_keys`), in the same transaction as the columns
  it adds. A reader of an older store joins on image_id instead (same rows).
- Explorer rows (version 7): `explorer_rows` / `explorer_codes` are derived from a run's
  predictions, heatmaps, failure tags and its dataset's demographics, as integers the Error
  explorer filters and pages by. Every write of those tables through this module marks the
  runs concerned, and the outermost `transaction` rebuilds their explorer rows
  (`refresh_explorer`) just before it commits, so they never disagree with what they derive
  from; a writable open of an older store builds them for every run.
  Beside them (version 8), `heatmap_layers` (a run's methods and layers) and
  `demographic_sources` (a dataset's sources) are rebuilt the same way, so the
  dashboard reads a few rows where it grouped every heatmap or demographics row.
- Storage order: a table in `STORAGE_ORDER` is written sorted by its key
  (`insert_frame`), so one run's predictions lie in the order the dashboard pages
  them (most confident first) and DuckDB's zone maps let a page read a few row
  groups instead of every row. Rows written before version 5 keep their order.
- Values always go in as `?` parameters or as a registered data frame; table
  and column names come only from the schema (`TABLES`, and the columns the
  database reports for them), and are quoted.
- A run is written in one transaction (`save_run`): its `runs` row turns
  'complete' in the same commit that writes all its rows, so a crash leaves
  earlier runs intact and no half run that looks complete.
- DuckDB lets no process write while another holds the file open, even
  read-only. So the pipeline computes everything in memory and then opens,
  writes, commits and closes at once; the dashboard opens read-only only for
  a moment. `connect()` retries on lock errors with backoff: read-only opens
  for a bounded time, then a `UserError` naming the file; writable opens (which
  carry computed results) keep waiting, printing a line now and then, until
  the other process lets go or the user interrupts.
- A damaged store (a truncated or overwritten file) is found before anything
  is written: a writable open reads every table back (`find_damaged_tables`) and
  refuses with `StoreDamagedError`, which says how to copy what still reads
  into a new store (`salvage_store`). Every other DuckDB failure is turned into
  a one-line `UserError` by `describe_duckdb_error`.
- Writes that add rows to an existing run (`replace_rows`) check, inside their
  transaction, that the run is still there and complete, so a run deleted while
  a stage computed leaves no orphan rows; `find_orphans` / `delete_orphans`
  find and remove rows whose run is gone.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
import os
import secrets
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.paths import DEFAULT_DB

if TYPE_CHECKING:  # duckdb is imported lazily so `--help` stays fast
    import duckdb

SCHEMA_VERSION = 8
# Tables added after version 1, with the version that added them. Every other table and
# column is unchanged since UPGRADABLE_FROM, so a store of that version or later is read
# as it is and upgraded in place (the added tables created empty) when opened writable.
ADDED_TABLES: dict[str, int] = {"heatmap_summary": 2, "audits": 3, "slices": 4, "slice_images": 4,
                                "calibration": 4, "calibration_bins": 4,
                                "twin_predictions": 4, "image_keys": 6,
                                "explorer_rows": 7, "explorer_codes": 7,
                                "heatmap_layers": 8, "demographic_sources": 8}
# Columns added to existing tables after version 1: {table: {column: version}}. Their
# types come from schema.sql; a writable open of an older store adds them (NULL in the
# rows already there), and readers of an older store find them absent.
ADDED_COLUMNS: dict[str, dict[str, int]] = {
    "runs": {"checkpoint_sha256": 4, "pid": 4, "host": 4},
    "predictions": {"image_key": 6}, "heatmaps": {"image_key": 6}, "failure_tags": {"image_key": 6},
    "demographics": {"image_key": 6}, "slice_images": {"image_key": 6},
}
# Tables whose rows carry image_keys.image_key of their image_id (schema.sql; set by insert_frame).
IMAGE_KEY_TABLES: tuple[str, ...] = ("predictions", "heatmaps", "failure_tags", "demographics", "slice_images")
# The tables explorer_rows derive from, with the column naming whose explorer rows a row concerns
# (a run, or a dataset fingerprint: every run on that dataset).
EXPLORER_INPUTS: dict[str, str] = {"predictions": "run_id", "heatmaps": "run_id", "failure_tags": "run_id",
                                   "demographics": "dataset_fingerprint"}
# Tables the store derives from others (a salvaged copy derives them anew).
DERIVED_TABLES: tuple[str, ...] = ("image_keys", "explorer_rows", "explorer_codes", "heatmap_layers",
                                   "demographic_sources")
# Tags and methods of a run with a bit in explorer_rows' BIGINT masks (the non-sign bits); the
# explorer filters a rarer tag of a run with more through failure_tags itself.
EXPLORER_MASK_BITS = 63
# Indexes added after version 1 (schema.sql's CREATE INDEX statements): {index: version}.
ADDED_INDEXES: dict[str, int] = {"predictions_image_id": 5, "images_image_id": 5, "heatmaps_image_id": 5,
                                 "demographics_image_id": 5}
# The order `insert_frame` writes a table's rows in: {table: ORDER BY clause of its columns}.
# Predictions: the Error explorer's default order within a run and split (dashboard/queries.py).
STORAGE_ORDER: dict[str, tuple[tuple[str, str], ...]] = {
    "predictions": (("run_id", "ASC"), ("split", "ASC"), ("confidence", "DESC"), ("image_id", "ASC")),
}
UPGRADABLE_FROM = 1
SCHEMA_FILE = Path(__file__).with_name("schema.sql")
SCHEMA_SQL = SCHEMA_FILE.read_text(encoding="utf-8")

# The whitelist of table names: exactly the tables schema.sql creates.
TABLES: tuple[str, ...] = tuple(
    re.findall(r"CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+(\w+)", SCHEMA_SQL, flags=re.IGNORECASE)
)
# schema.sql's index statements (a bulk writer such as the benchmark's store builds them after its rows).
INDEX_STATEMENTS: tuple[str, ...] = tuple(
    re.findall(r"CREATE\s+INDEX\s+IF\s+NOT\s+EXISTS\s+\w+\s+ON\s+\w+\s*\([^)]*\)\s*;", SCHEMA_SQL, re.IGNORECASE)
)
# Tables whose rows belong to one run (deleted with it). `runs` itself is handled apart.
RUN_TABLES: tuple[str, ...] = tuple(
    t for t in TABLES
    if t not in ("meta", "runs")
    and re.search(rf"CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+{t}\s*\(\s*run_id\b", SCHEMA_SQL, re.IGNORECASE)
)
RUN_STATUSES = ("running", "complete", "failed", "interrupted")

_LOCK_MARKERS = ("could not set lock", "conflicting lock")
_MISSING_STORE_HINT = "Run `python -m pipeline demo` to create one, or pass --db PATH to an existing store."


class SchemaMismatchError(UserError):
    """The store was written with another schema version than this code uses."""


class StoreDamagedError(UserError):
    """Some of the store's tables no longer read back (a truncated or overwritten file)."""


class RunGoneError(UserError):
    """The run a stage was adding rows to was deleted (or is no longer complete) meanwhile."""


# How long a read-only open waits for another process's lock before giving up (seconds).
READ_TIMEOUT_S = 60.0
# A writable open that waits for a lock says so after this long, then every WAIT_REPEAT_S.
WAIT_NOTICE_S = 3.0
WAIT_REPEAT_S = 60.0


class StoreBusyError(UserError):
    """Another process held the store past `connect`'s timeout (the dashboard asks the user to refresh)."""


# --------------------------------------------------------------------------- connections


def connect(path: str | Path = DEFAULT_DB, read_only: bool = False, timeout_s: float | None = None,
            check: bool = True) -> "duckdb.DuckDBPyConnection":
    """Open the store at `path`.

    Writable: creates the parent folder and the schema if needed, and (with
    `check`) refuses a damaged store (StoreDamagedError) before anything is
    written. Read-only: the file must exist. While another process holds the
    file, retries with backoff: for `timeout_s` seconds (read-only default
    READ_TIMEOUT_S), then a UserError; a writable open with `timeout_s=None`
    (the default) waits until the file is free, printing to stderr that it
    waits, so results computed before the write are never dropped. With
    `check` (default) a store of another schema version raises
    SchemaMismatchError. The caller closes the connection (or use `open_store`).
    """
    # Long on purpose: the lock-retry loop: one bounded loop that opens, classifies each DuckDB error and
    # waits, with its messages.
    import duckdb

    path = Path(path).expanduser().absolute()
    if read_only and not path.exists():
        raise UserError(f"No results store at {path}. {_MISSING_STORE_HINT}")
    if not read_only:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"Cannot create the folder {path.parent} for the results store ({exc.strerror}); "
                            f"pass --db PATH in a folder you can write.") from None
        check_writable(path)
    if timeout_s is None and read_only:
        timeout_s = READ_TIMEOUT_S

    started = time.monotonic()
    deadline = None if timeout_s is None else started + max(0.0, float(timeout_s))
    next_notice = started + WAIT_NOTICE_S
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.Error as exc:
            message = str(exc)
            if "different configuration" in message:
                raise UserError(
                    f"This process already has the results store {path} open "
                    f"{'writable' if read_only else 'read-only'}; close that connection before opening it "
                    f"{'read-only' if read_only else 'writable'} (use open_store(...) so it closes)."
                ) from exc
            if not any(marker in message.lower() for marker in _LOCK_MARKERS):
                raise UserError(describe_duckdb_error(exc, path)) from exc
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise StoreBusyError(
                    f"The results store {path} is in use by another process, which holds it open "
                    f"(gave up after {timeout_s:g} s). Close the dashboard or the other pipeline "
                    f"command using it and retry, or write to another store with --db PATH."
                ) from exc
            if deadline is None and now >= next_notice:
                print(f"waiting for the results store {path}: another process holds it open ({_holder(message)}); "
                      f"nothing computed is lost, it is written as soon as the store is free "
                      f"(waited {now - started:.0f} s; Ctrl-C gives up)", file=sys.stderr, flush=True)
                next_notice = now + WAIT_REPEAT_S
            time.sleep(min(delay, (deadline - now) if deadline is not None else delay))
            delay = min(delay * 2, 0.5)

    try:
        if not read_only:
            if check:
                _refuse_damaged(con, path)
            ensure_schema(con)
        elif check:
            check_schema(con)
    except BaseException:
        con.close()
        raise
    return con


def _holder(message: str) -> str:
    """The other process as DuckDB's lock error names it ('PID 123'), or a plain phrase."""
    found = re.search(r"PID (\d+)", message)
    return f"PID {found.group(1)}" if found else "the dashboard or another pipeline command"


def check_writable(path: str | Path) -> None:
    """Raise UserError unless the store file (or, for a new store, its folder) can be written.

    DuckDB writes a `.wal` file beside the store, so the folder must be writable too;
    checked before any work so that nothing computed is lost at the commit.
    """
    path = Path(path).expanduser().absolute()
    folder = path.parent
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"The results store {path} is read-only for you; make it writable "
                        f"(chmod u+w) or pass --db PATH to a store you can write.")
    if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"The folder {folder} of the results store {path.name} cannot be written "
                        f"(DuckDB writes {path.name}.wal beside it); pass --db PATH in a writable folder, "
                        f"or copy the store there first.")


def describe_duckdb_error(exc: BaseException, path: str | Path | None = None) -> str:
    """One line for a DuckDB error: what failed, which file, what to do."""
    kind = type(exc).__name__
    short = _short_error(exc)
    where = f"the results store {path}" if path else "the results store"
    lowered = str(exc).lower()
    if "not a valid duckdb database" in lowered:
        return (f"{where} is not a DuckDB database (empty, or overwritten by something else: {short}). "
                f"Pass --db PATH to a results store, or move the file away and run `python -m pipeline demo`.")
    if kind in ("IOException", "SerializationException", "InternalException", "CorruptionException") \
            or "corrupt" in lowered or "checksum" in lowered:
        return (f"{where} could not be read ({short}); the file is damaged. Copy what still reads with "
                f"`python -m pipeline runs --db {path or 'STORE'} --salvage NEW.duckdb`, or restore it from a backup.")
    if kind in ("TransactionException", "PermissionException") or "read-only" in lowered \
            or "permission" in lowered:
        return f"{where} could not be written ({short}); pass --db PATH to a store in a folder you can write."
    return f"{where} failed ({short}); check the file, or pass --db PATH to another store."


@contextmanager
def open_store(path: str | Path = DEFAULT_DB, read_only: bool = False, timeout_s: float | None = None,
               check: bool = True) -> Iterator["duckdb.DuckDBPyConnection"]:
    """`connect()` as a context manager: yields the connection and always closes it."""
    con = connect(path, read_only=read_only, timeout_s=timeout_s, check=check)
    try:
        yield con
    finally:
        con.close()


def _store_path(con) -> str:
    row = con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    return row[0] if row and row[0] else ":memory:"


# --------------------------------------------------------------------------- schema


def _existing_tables(con) -> set[str]:
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() "
        "WHERE database_name = current_database() AND schema_name = 'main'"
    ).fetchall()
    return {r[0] for r in rows}


def schema_version(con) -> int | None:
    """The schema version recorded in the store, or None when it records none."""
    if "meta" not in _existing_tables(con):
        return None
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        return None
    try:
        return int(row[0])
    except ValueError:
        return None


def check_schema(con) -> None:
    """Raise SchemaMismatchError unless the store records SCHEMA_VERSION or an upgradable older one.

    A store of version UPGRADABLE_FROM or later lacks at most the `ADDED_TABLES`
    of later versions; readers must treat those as absent (see `missing_added_tables`).
    """
    found = schema_version(con)
    if found is not None and UPGRADABLE_FROM <= found <= SCHEMA_VERSION:
        return
    where = _store_path(con)
    if found is None:
        raise SchemaMismatchError(
            f"{where} is not a results store made by this tool (it records no schema version). "
            f"Pass --db PATH to a results store, or run `python -m pipeline demo` to create one."
        )
    if found < SCHEMA_VERSION:
        raise SchemaMismatchError(
            f"The results store {where} uses schema version {found}, older than this code's "
            f"version {SCHEMA_VERSION}. Re-run the pipeline into a new store (--db NEW.duckdb), "
            f"or move the old file away and re-run."
        )
    raise SchemaMismatchError(
        f"The results store {where} uses schema version {found}, newer than this code's "
        f"version {SCHEMA_VERSION}. Update this project's code, or use a store made by this version."
    )


def ensure_schema(con) -> None:
    """Create every table of schema.sql and record SCHEMA_VERSION; safe to call again.

    Upgrades a store of an older, upgradable version in place (creating the
    tables added since). Refuses (SchemaMismatchError) a store of another
    version, or a DuckDB file holding other tables and no schema version,
    before changing anything.
    """
    found = schema_version(con)
    if found is not None:
        check_schema(con)
    elif _existing_tables(con):
        check_schema(con)  # foreign DuckDB file: raises, naming it
    with transaction(con):
        con.execute(SCHEMA_SQL)
        for table, column in missing_added_columns(con):
            con.execute(f"ALTER TABLE {_q(table)} ADD COLUMN {_q(column)} {_schema_column_types()[table][column]}")
        if found is not None and found < ADDED_TABLES["image_keys"]:  # upgraded to image keys: key every row
            fill_image_keys(con)
        if found is not None and found < ADDED_TABLES["explorer_rows"]:  # upgraded: every run's explorer rows
            refresh_explorer(con)
        elif found is not None and found < ADDED_TABLES["heatmap_layers"]:  # upgraded from 7: the facets alone
            for table in _GROUPED:
                _rebuild_grouped(con, table, None)
        con.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
            [str(SCHEMA_VERSION)],
        )
        if found is not None and found < SCHEMA_VERSION:  # upgraded in place
            con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION)])


def missing_added_tables(con) -> list[str]:
    """The `ADDED_TABLES` an older (upgradable) store does not hold yet."""
    have = _existing_tables(con)
    return [t for t in ADDED_TABLES if t not in have]


_SCHEMA_TYPES: dict[str, dict[str, str]] = {}


def _schema_column_types() -> dict[str, dict[str, str]]:
    """{table: {column: DuckDB type}} as schema.sql defines them (read from an in-memory database)."""
    if not _SCHEMA_TYPES:
        import duckdb

        mem = duckdb.connect(":memory:")
        try:
            mem.execute(SCHEMA_SQL)
            for table, column, dtype in mem.execute(
                    "SELECT table_name, column_name, data_type FROM duckdb_columns() "
                    "WHERE schema_name = 'main' ORDER BY table_name, column_index").fetchall():
                _SCHEMA_TYPES.setdefault(table, {})[column] = dtype
        finally:
            mem.close()
    return _SCHEMA_TYPES


def missing_added_columns(con) -> list[tuple[str, str]]:
    """(table, column) of the `ADDED_COLUMNS` an older store does not hold yet (tables it holds)."""
    have = _existing_tables(con)
    out = []
    for table, columns in ADDED_COLUMNS.items():
        if table not in have:
            continue
        present = {r[0] for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name = 'main' AND table_name = ?", [table]).fetchall()}
        out += [(table, c) for c in columns if c not in present]
    return out


def _assign_image_keys(con, ids_sql: str) -> None:
    """Give every image id the SELECT `ids_sql` returns (one column, image_id) that has no key yet
    the next free integers, in id order (so keys follow the ids' order, as most tables are written)."""
    con.execute(f"""
        INSERT INTO image_keys (image_id, image_key)
        SELECT image_id, (SELECT coalesce(max(image_key), 0) FROM image_keys) + row_number() OVER (ORDER BY image_id)
        FROM (SELECT DISTINCT image_id FROM ({ids_sql}) AS ids (image_id)) AS n
        WHERE NOT EXISTS (SELECT 1 FROM image_keys k WHERE k.image_id = n.image_id)""")


def fill_image_keys(con) -> None:
    """Set image_key on every row of the store's `IMAGE_KEY_TABLES` from image_keys, assigning keys
    to ids that have none: the upgrade of a store written before version 6 (its rows have no key).

    Joins on the caller's transaction (ensure_schema's). Costs a join of each table with the
    keys: about 6 s of CPU for a 1M-prediction store, once."""
    present = [t for t in IMAGE_KEY_TABLES if t in _existing_tables(con)]
    if not present:
        return
    _assign_image_keys(con, " UNION ".join(f"SELECT image_id FROM {_q(t)}" for t in present))
    for table in present:
        con.execute(f"UPDATE {_q(table)} SET image_key = k.image_key FROM image_keys k "
                    f"WHERE k.image_id = {_q(table)}.image_id")


def has_image_keys(con) -> bool:
    """Whether the store keys its images (version 6 or later): the dashboard's filters then join on
    image_key; on an older store, read as it is, they join on image_id (the same rows)."""
    found = schema_version(con)
    return found is not None and found >= ADDED_TABLES["image_keys"] and "image_keys" in _existing_tables(con)


# --------------------------------------------------------------------------- explorer rows


# Per connection inside a transaction: {EXPLORER_INPUTS column: values written, or None for all}.
_STALE_EXPLORER: dict[int, dict[str, set | None]] = {}


def mark_explorer_stale(con, table: str, values: list | None) -> None:
    """Note that the rows of `table` (an `EXPLORER_INPUTS` table) with these run ids or dataset
    fingerprints (None: any) changed; the outermost `transaction` rebuilds their explorer rows."""
    column = EXPLORER_INPUTS[table]
    stale = _STALE_EXPLORER.setdefault(id(con), {})
    if values is None:
        stale[column] = None
    elif stale.get(column, set()) is not None:
        stale.setdefault(column, set()).update(str(v) for v in values)


def _refresh_stale_explorer(con) -> None:
    """`refresh_explorer` for the runs and datasets `mark_explorer_stale` noted on `con` (called before a commit)."""
    stale = _STALE_EXPLORER.pop(id(con), None)
    if not stale or "explorer_rows" not in _existing_tables(con):
        return
    if any(values is None for values in stale.values()):
        refresh_explorer(con)
        return
    run_ids = set(stale.get("run_id", set()))
    fingerprints = sorted(stale.get("dataset_fingerprint", set()))
    if fingerprints:
        run_ids |= {r[0] for r in con.execute(
            f"SELECT run_id FROM runs WHERE dataset_fingerprint IN ({_marks(fingerprints)})", fingerprints).fetchall()}
    refresh_explorer(con, sorted(run_ids), fingerprints)


def refresh_explorer(con, run_ids: list[str] | None = None, fingerprints: list[str] = ()) -> None:
    """Rebuild the explorer_rows, explorer_codes and heatmap_layers of `run_ids` from the store's
    predictions, heatmaps, failure tags and demographics, and the demographic_sources of the datasets
    `fingerprints` (whose demographics changed); `run_ids` None: every run and every dataset. In the
    caller's transaction.

    Measured on the 10M-prediction store of bench/bench_dashboard.py (two demographics sources,
    so 20M rows): 97 s of CPU for its main run, once per write of that run's inputs."""
    with transaction(con):
        everything = run_ids is None
        if everything:
            run_ids = [r[0] for r in con.execute(
                "SELECT DISTINCT run_id FROM predictions UNION SELECT DISTINCT run_id FROM explorer_codes "
                "ORDER BY run_id").fetchall()]
        for run_id in run_ids:
            con.execute("DELETE FROM explorer_rows WHERE run_id = ?", [run_id])
            con.execute("DELETE FROM explorer_codes WHERE run_id = ?", [run_id])
            _build_explorer(con, run_id)
        _rebuild_grouped(con, "heatmap_layers", None if everything else run_ids)
        _rebuild_grouped(con, "demographic_sources", None if everything else list(fingerprints))


# Derived tables that group one input table, in their columns' order:
# {table: (input table, key column, grouping columns, aggregates)}.
_GROUPED: dict[str, tuple[str, str, str, str]] = {
    "heatmap_layers": ("heatmaps", "run_id", "run_id, method, target_layer", "count(*)"),
    "demographic_sources": ("demographics", "dataset_fingerprint", "dataset_fingerprint, source",
                            "bool_or(inferred), count(*)"),
}


def _rebuild_grouped(con, table: str, keys: list[str] | None) -> None:
    """Rebuild the rows of the derived `table` (`_GROUPED`) whose key is in `keys` (None: every row)."""
    if keys is not None and not keys:
        return
    source, key, groups, aggregates = _GROUPED[table]
    where = "" if keys is None else f" WHERE {key} IN ({_marks(keys)})"
    params = [] if keys is None else list(keys)
    con.execute(f"DELETE FROM {_q(table)}{where}", params)
    con.execute(f"INSERT INTO {_q(table)} SELECT {groups}, {aggregates} FROM {_q(source)}{where} GROUP BY {groups}",
                params)


def _build_explorer(con, run_id: str) -> None:
    if con.execute("SELECT 1 FROM predictions WHERE run_id = ? LIMIT 1", [run_id]).fetchone() is None:
        return
    found = con.execute("SELECT dataset_fingerprint FROM runs WHERE run_id = ?", [run_id]).fetchone()
    names = {"run": run_id, "fp": found[0] if found else None}
    demographic = " ".join(
        f"UNION ALL SELECT DISTINCT '{kind}', {kind}, 0, NULL FROM demographics "
        f"WHERE dataset_fingerprint = $fp AND {kind} IS NOT NULL" for kind in ("gender", "race", "age_group"))
    con.execute(f"""
        INSERT INTO explorer_codes (run_id, kind, value, code, n)
        SELECT $run, kind, value, CAST(row_number() OVER (PARTITION BY kind ORDER BY weight DESC, value) - 1 AS INTEGER), n
        FROM (SELECT 'label' AS kind, label AS value, 0 AS weight, NULL AS n
              FROM (SELECT true_label FROM predictions WHERE run_id = $run
                    UNION SELECT pred_label FROM predictions WHERE run_id = $run) AS l (label)
              UNION ALL SELECT 'tag', tag, count(*), count(*) FROM failure_tags WHERE run_id = $run GROUP BY tag
              UNION ALL SELECT DISTINCT 'method', method, 0, NULL FROM heatmaps WHERE run_id = $run
              UNION ALL SELECT DISTINCT 'source', source, 0, NULL FROM demographics WHERE dataset_fingerprint = $fp
              UNION ALL SELECT 'fingerprint', $fp, 0, NULL WHERE $fp IS NOT NULL
              {demographic})""", names)
    con.execute("""INSERT INTO explorer_codes (run_id, kind, value, code) SELECT $run, 'source', '', 0
                   WHERE NOT EXISTS (SELECT 1 FROM explorer_codes WHERE run_id = $run AND kind = 'source')""",
                {"run": run_id})  # a dataset without demographics: one block of rows, source ''

    def mask(table: str, column: str, kind: str, where: str) -> str:
        return (f"SELECT x.image_key, bit_or(CAST(1 AS BIGINT) << c.code) AS mask FROM {table} x "
                f"JOIN c ON c.kind = '{kind}' AND c.value = x.{column} "
                f"WHERE x.run_id = $run AND c.code < {EXPLORER_MASK_BITS}{where} GROUP BY x.image_key")

    con.execute(f"""
        INSERT INTO explorer_rows
        WITH c AS MATERIALIZED (SELECT kind, value, code FROM explorer_codes WHERE run_id = $run),
        p AS (SELECT split, image_key, image_id, true_label, pred_label, confidence, correct,
                     row_number() OVER (PARTITION BY split ORDER BY confidence DESC, image_id) - 1 AS pos,
                     row_number() OVER (PARTITION BY split ORDER BY image_id) - 1 AS id_pos
              FROM predictions WHERE run_id = $run),
        t AS ({mask("failure_tags", "tag", "tag", "")}),
        h AS ({mask("heatmaps", "method", "method", " AND x.target = 'pred'")}),
        d AS (SELECT d.source, d.image_key, g.code AS gender_code, r.code AS race_code, a.code AS age_code
              FROM demographics d
              LEFT JOIN c g ON g.kind = 'gender' AND g.value = d.gender
              LEFT JOIN c r ON r.kind = 'race' AND r.value = d.race
              LEFT JOIN c a ON a.kind = 'age_group' AND a.value = d.age_group
              WHERE d.dataset_fingerprint = $fp)
        SELECT $run, p.split, s.value, p.pos, p.id_pos, p.image_key, p.image_id, i.path, lt.code, lp.code,
               p.confidence, p.correct, coalesce(t.mask, 0), coalesce(h.mask, 0), d.gender_code, d.race_code,
               d.age_code
        FROM p
        LEFT JOIN images i ON i.run_id = $run AND i.image_id = p.image_id
        JOIN c s ON s.kind = 'source'
        JOIN c lt ON lt.kind = 'label' AND lt.value = p.true_label
        JOIN c lp ON lp.kind = 'label' AND lp.value = p.pred_label
        LEFT JOIN t ON t.image_key = p.image_key
        LEFT JOIN h ON h.image_key = p.image_key
        LEFT JOIN d ON d.source = s.value AND d.image_key = p.image_key
        ORDER BY p.split, s.value, p.pos""", names)


def has_explorer_rows(con) -> bool:
    """Whether the store holds explorer rows (version 7 or later); an older store read as it is has none."""
    found = schema_version(con)
    return found is not None and found >= ADDED_TABLES["explorer_rows"] \
        and "explorer_rows" in _existing_tables(con)


# --------------------------------------------------------------------------- damage


def find_damaged_tables(con) -> dict[str, str]:
    """{table: error} for every table of the store that does not read back in full.

    Each table's every column is aggregated (`bit_xor(hash(...))`), which makes
    DuckDB read, and verify the checksum of, every block it holds; a truncated
    or overwritten file fails here with an IOException instead of in the middle
    of a stage. Tables absent from an older store are not reported.
    """
    import duckdb

    damaged: dict[str, str] = {}
    try:
        present = _existing_tables(con)
    except duckdb.Error as exc:
        return {"(catalog)": _short_error(exc)}
    for table in sorted(present):
        try:
            con.execute(f"SELECT count(*), bit_xor(hash(COLUMNS(*))) FROM {_q(table)}").fetchall()
        except duckdb.Error as exc:
            damaged[table] = _short_error(exc)
    return damaged


def _short_error(exc: BaseException) -> str:
    """'IOException: Could not read enough bytes ...': the first line, without the file's quoted path."""
    text = str(exc).strip().splitlines()
    first = re.sub(r'\s*"[^"]*"', "", text[0] if text else "").replace("IO Error: ", "")
    return f"{type(exc).__name__}: {first[:160]}"


def _damage_message(path, damaged: dict[str, str]) -> str:
    first = next(iter(damaged.values()))
    return (f"The results store {path} is damaged: {len(damaged)} table(s) no longer read back "
            f"({', '.join(damaged)}; {first}). Nothing was written to it. Copy what still reads into a new "
            f"store with `python -m pipeline runs --db {path} --salvage NEW.duckdb` and use that "
            f"(or restore the file from a backup).")


def _refuse_damaged(con, path) -> None:
    if not _existing_tables(con):
        return
    damaged = find_damaged_tables(con)
    if damaged:
        raise StoreDamagedError(_damage_message(path, damaged))


def verify_store(path: str | Path, timeout_s: float | None = None) -> None:
    """Raise StoreDamagedError (or a one-line UserError) unless every table of the store at `path` reads back."""
    import duckdb

    path = Path(path).expanduser().absolute()
    try:
        with open_store(path, read_only=True, timeout_s=timeout_s, check=False) as con:
            damaged = find_damaged_tables(con)
    except duckdb.Error as exc:
        raise UserError(describe_duckdb_error(exc, path)) from None
    if damaged:
        raise StoreDamagedError(_damage_message(path, damaged))


def salvage_store(source: str | Path, dest: str | Path) -> dict[str, int | str]:
    """Copy every table of `source` that still reads into a new store `dest`.

    A damaged table is copied run by run (rows of the runs whose rows read);
    returns {table: rows copied, or the error that stopped it}. `dest` must not exist.
    """
    import duckdb

    source, dest = Path(source).expanduser().absolute(), Path(dest).expanduser().absolute()
    if dest.exists():
        raise UserError(f"{dest} already exists; --salvage writes a new store, pass a path that does not exist")
    report: dict[str, int | str] = {}
    with open_store(source, read_only=True, check=False) as src:
        found = schema_version(src)
        if found is None or not UPGRADABLE_FROM <= found <= SCHEMA_VERSION:
            check_schema(src)
        present = _existing_tables(src)
        damaged = find_damaged_tables(src)
        frames: dict[str, pd.DataFrame | None] = {}
        for table in (t for t in TABLES if t in present and t not in ("meta", *DERIVED_TABLES)):  # dest derives anew
            if table not in damaged:
                frames[table] = src.execute(f"SELECT * FROM {_q(table)}").df()
                continue
            parts, lost = [], 0
            try:
                run_ids = [r[0] for r in src.execute(f"SELECT DISTINCT run_id FROM {_q(table)}").fetchall()] \
                    if table in RUN_TABLES or table == "runs" else []
            except duckdb.Error:
                run_ids = []
            for run_id in run_ids:
                try:
                    parts.append(src.execute(f"SELECT * FROM {_q(table)} WHERE run_id = ?", [run_id]).df())
                except duckdb.Error:
                    lost += 1
            frames[table] = pd.concat(parts, ignore_index=True) if parts else None
            report[table] = (f"damaged ({damaged[table]}): kept the rows of {len(parts)} run(s)"
                             + (f", lost {lost}" if lost else "") + ("" if run_ids else ", lost all"))
    with open_store(dest) as out, transaction(out):
        for table, frame in frames.items():
            if frame is None or frame.empty:
                report.setdefault(table, 0)
                continue
            frame = frame[[c for c in frame.columns if c in table_columns(out, table)]]
            n = insert_frame(out, table, frame)
            report.setdefault(table, n)
    return report


# --------------------------------------------------------------------------- orphans


def find_orphans(con) -> dict[str, int]:
    """{table: rows} of run tables whose run_id has no `runs` row (only tables with orphans)."""
    present = _existing_tables(con)
    out = {}
    for table in (t for t in RUN_TABLES if t in present):
        n = con.execute(f"SELECT count(*) FROM {_q(table)} WHERE run_id NOT IN (SELECT run_id FROM runs)"
                        ).fetchone()[0]
        if n:
            out[table] = int(n)
    return out


def delete_orphans(con) -> dict[str, int]:
    """Delete the rows `find_orphans` reports, in one transaction; returns what it deleted."""
    orphans = find_orphans(con)
    with transaction(con):
        for table in orphans:
            con.execute(f"DELETE FROM {_q(table)} WHERE run_id NOT IN (SELECT run_id FROM runs)")
    return orphans


def schema_columns() -> dict[str, tuple[str, ...]]:
    """{table: columns in order} as schema.sql declares them (read from an in-memory database once)."""
    global _SCHEMA_COLUMNS
    if _SCHEMA_COLUMNS is None:
        import duckdb

        con = duckdb.connect(":memory:")
        try:
            con.execute(SCHEMA_SQL)
            rows = con.execute("SELECT table_name, column_name FROM duckdb_columns() "
                               "WHERE schema_name = 'main' AND NOT internal "
                               "ORDER BY table_name, column_index").fetchall()
        finally:
            con.close()
        out: dict[str, list[str]] = {}
        for table, column in rows:
            out.setdefault(table, []).append(column)
        _SCHEMA_COLUMNS = {t: tuple(cs) for t, cs in out.items()}
    return _SCHEMA_COLUMNS


_SCHEMA_COLUMNS: dict[str, tuple[str, ...]] | None = None


def missing_columns(con) -> list[str]:
    """`table.column` of schema.sql that the store lacks (tables of `missing_added_tables` aside)."""
    have: dict[str, set[str]] = {}
    for table, column in con.execute(
            "SELECT table_name, column_name FROM duckdb_columns() "
            "WHERE database_name = current_database() AND schema_name = 'main'").fetchall():
        have.setdefault(table, set()).add(column)
    absent = set(missing_added_tables(con))
    added = {f"{t}.{c}" for t, cs in ADDED_COLUMNS.items() for c in cs}  # upgraded in place, read as absent
    return [f"{t}.{c}" for t, cs in schema_columns().items() if t not in absent
            for c in cs if c not in have.get(t, set()) and f"{t}.{c}" not in added]


def _check_table(table: str) -> str:
    if table not in TABLES:
        raise ValueError(f"Unknown table {table!r}; the store's tables are: {', '.join(TABLES)}")
    return table


def _column_info(con, table: str) -> dict[str, tuple[str, bool]]:
    """{column: (DuckDB type, nullable)} in table order."""
    _check_table(table)
    rows = con.execute(
        "SELECT column_name, data_type, is_nullable FROM duckdb_columns() "
        "WHERE database_name = current_database() AND schema_name = 'main' AND table_name = ? "
        "ORDER BY column_index",
        [table],
    ).fetchall()
    if not rows:
        raise UserError(f"Table {table} is missing from the store {_store_path(con)}; "
                        f"open it writable once (any pipeline command) to create it.")
    return {name: (dtype, bool(nullable)) for name, dtype, nullable in rows}


def table_columns(con, table: str) -> list[str]:
    """The columns of a schema table, in order."""
    return list(_column_info(con, table))


def _primary_key(con, table: str) -> list[str]:
    row = con.execute(
        "SELECT constraint_column_names FROM duckdb_constraints() "
        "WHERE database_name = current_database() AND schema_name = 'main' "
        "AND table_name = ? AND constraint_type = 'PRIMARY KEY'",
        [table],
    ).fetchone()
    return list(row[0]) if row else []


def _marks(values) -> str:
    """'?, ?, ?': one parameter per value."""
    return ", ".join("?" for _ in values)


def _q(name: str) -> str:
    """Quote an identifier that has already been checked against the schema."""
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- transactions


# Connections inside a `transaction()`, by id: DuckDB has no nested transactions, and a
# second BEGIN would abort the open one, so an inner `transaction()` joins the outer.
_IN_TRANSACTION: set[int] = set()


@contextmanager
def transaction(con) -> Iterator["duckdb.DuckDBPyConnection"]:
    """BEGIN; COMMIT on success, ROLLBACK on any exception.

    Inside another `transaction()` on the same connection this joins it (the
    outer one commits or rolls back).
    """
    import duckdb

    if id(con) in _IN_TRANSACTION:
        yield con
        return
    con.execute("BEGIN TRANSACTION")
    _IN_TRANSACTION.add(id(con))
    def rollback() -> None:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass

    try:
        try:
            yield con
        except BaseException:
            rollback()
            raise
        try:
            _refresh_stale_explorer(con)  # the derived explorer rows of what this transaction wrote
            con.execute("COMMIT")
        except BaseException:
            rollback()
            raise
    finally:
        _IN_TRANSACTION.discard(id(con))
        _STALE_EXPLORER.pop(id(con), None)


# --------------------------------------------------------------------------- value conversion


def _plain(value: Any) -> Any:
    """numpy / pandas / path values as plain Python values DuckDB and JSON accept."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, pd.Timestamp):
        return None if pd.isna(value) else value.to_pydatetime()
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.float16, np.float32)):
        return float(str(value))  # its shortest decimal form: float32(0.1) -> 0.1, not 0.10000000149
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, dt.datetime, dt.date, pd.Timestamp)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot store {type(value).__name__} value {value!r} as JSON")


def _to_json(value: Any) -> str | None:
    """JSON text for a JSON column: strings pass through, other values are dumped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, default=_json_default, sort_keys=True)


def _to_blob(value: Any) -> bytes | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value).tobytes()
    return bytes(value)


def _prepare_frame(df: pd.DataFrame, info: dict[str, tuple[str, bool]]) -> pd.DataFrame:
    """A copy of `df` whose JSON and BLOB object columns hold text / bytes (input untouched)."""
    out = None
    for col in df.columns:
        dtype = info[col][0]
        series = df[col]
        if series.dtype != object:
            continue
        if dtype == "JSON":
            if series.map(lambda v: v is None or isinstance(v, str)).all():
                continue
            converter = _to_json
        elif dtype == "BLOB":
            if series.map(lambda v: v is None or isinstance(v, bytes)).all():
                continue
            converter = _to_blob
        else:
            continue
        if out is None:
            out = df.copy()
        out[col] = series.map(converter).astype(object)
    return df if out is None else out


# --------------------------------------------------------------------------- writing rows


def insert_frame(con, table: str, df: pd.DataFrame) -> int:
    """Append the rows of `df` to `table`; returns the number of rows written.

    Joins the caller's transaction, or runs in its own (so rows of `EXPLORER_INPUTS` tables
    get their explorer rows rebuilt before the commit that writes them).

    `df`'s columns must all be columns of the table; missing columns must be
    nullable. Values are cast to the table's types: list columns (FLOAT[],
    VARCHAR[]) from lists or numpy arrays, BLOB from bytes (or uint8 arrays),
    JSON from text (or dicts/lists, dumped). NaN in float columns is stored as NULL.
    A table of `STORAGE_ORDER` gets the rows sorted by its key. A table of `IMAGE_KEY_TABLES`
    gets each row's image_key from image_keys (an image_key column of `df` is ignored), ids new
    to the store keyed first; a key given to an id whose insert then fails stays unused.
    """
    info = _column_info(con, _check_table(table))
    unknown = [c for c in df.columns if c not in info]
    if unknown:
        raise ValueError(f"Columns {unknown} are not in table {table}; its columns are {list(info)}")
    if len(set(df.columns)) != len(df.columns):
        raise ValueError(f"Duplicate column names in the frame for table {table}: {list(df.columns)}")
    missing = [c for c, (_, nullable) in info.items() if not nullable and c not in df.columns]
    if missing:
        raise ValueError(f"Frame for table {table} lacks required (NOT NULL) columns {missing}")
    if len(df) == 0:
        return 0

    with transaction(con):
        written = _insert_rows(con, table, df, info)
        if table in EXPLORER_INPUTS:
            mark_explorer_stale(con, table, df[EXPLORER_INPUTS[table]].unique().tolist())
    return written


def _insert_rows(con, table: str, df: pd.DataFrame, info: dict[str, tuple[str, bool]]) -> int:
    frame = _prepare_frame(df.reset_index(drop=True), info)
    view = f"_insert_{uuid.uuid4().hex}"
    # image_key comes from this store's image_keys, whatever the frame holds (it may be another store's)
    keyed = table in IMAGE_KEY_TABLES and "image_key" in info
    cols = [c for c in info if c in df.columns and not (keyed and c == "image_key")]  # table order
    target = ", ".join(_q(c) for c in cols)
    source = ", ".join(f"CAST({_q(c)} AS {info[c][0]})" for c in cols)
    con.register(view, frame)
    try:
        key = STORAGE_ORDER.get(table, ())
        order = (" ORDER BY " + ", ".join(f"t.{_q(c)} {d}" for c, d in key)) if key and all(c in cols for c, _ in key) \
            else ""  # sorted after the casts: the stored values are the ones ordered
        if keyed:  # every row gets its image's key (ids new to the store get new keys first)
            _assign_image_keys(con, f"SELECT CAST(image_id AS VARCHAR) FROM {_q(view)}")
            row = con.execute(
                f"INSERT INTO {_q(table)} ({target}, image_key) SELECT t.*, k.image_key "
                f"FROM (SELECT {source} FROM {_q(view)}) AS t ({target}) "
                f"JOIN image_keys k ON k.image_id = t.image_id{order}").fetchone()
        else:
            row = con.execute(f"INSERT INTO {_q(table)} ({target}) SELECT t.* FROM "
                              f"(SELECT {source} FROM {_q(view)}) AS t ({target}){order}").fetchone()
    finally:
        con.unregister(view)
    return int(row[0]) if row else len(df)


def _where(info: dict[str, tuple[str, bool]], table: str, keys: dict[str, Any]) -> tuple[str, list]:
    """A parameterised WHERE clause for equality (or IN, for list values) on key columns."""
    clauses, params = [], []
    for key, value in keys.items():
        if key not in info:
            raise ValueError(f"{key!r} is not a column of table {table}; its columns are {list(info)}")
        if isinstance(value, (list, tuple, set, np.ndarray, pd.Series)):
            values = [_plain(v) for v in value]
            if not values:
                clauses.append("FALSE")
                continue
            clauses.append(f"{_q(key)} IN ({_marks(values)})")
            params.extend(values)
        elif value is None:
            clauses.append(f"{_q(key)} IS NULL")
        else:
            clauses.append(f"{_q(key)} = ?")
            params.append(_plain(value))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def replace_rows(con, table: str, df: pd.DataFrame, **keys) -> int:
    """Delete the rows of `table` matching `keys` (e.g. run_id=..., method=...), then insert `df`.

    For re-runnable stages. Key columns missing from `df` are filled with the
    key values; present ones must equal them. Runs in one transaction (or
    joins the caller's). Returns the number of rows inserted.
    """
    if not keys:
        raise ValueError("replace_rows needs at least one key column, e.g. run_id=...")
    info = _column_info(con, _check_table(table))
    for key, value in keys.items():
        if isinstance(value, (list, tuple, set, np.ndarray, pd.Series)) or value is None:
            raise ValueError(f"replace_rows key {key} must be a single value, not {value!r}")
    where, params = _where(info, table, keys)
    frame = df
    run_id = keys.get("run_id")
    for key, value in keys.items():
        if key in frame.columns:
            bad = frame[key] != value
            if bool(bad.any()):
                raise ValueError(f"Frame for table {table} has {key} values other than {value!r}: "
                                 f"{sorted(map(str, frame.loc[bad, key].unique()))[:5]}")
        else:
            frame = frame.assign(**{key: value})
    with transaction(con):
        if run_id is not None and table in RUN_TABLES:
            status = _run_status(con, run_id)
            if status != "complete":
                state = "was deleted" if status is None else f"is now {status}"
                raise RunGoneError(
                    f"Run {run_id} {state} in {_store_path(con)} while this command computed its {table} rows; "
                    f"nothing was written. Re-run the command on a complete run (list them with "
                    f"`python -m pipeline runs --db {_store_path(con)}`).")
        con.execute(f"DELETE FROM {_q(table)}{where}", params)
        if table in EXPLORER_INPUTS:  # the deleted rows' runs (every run when the keys do not say)
            column = EXPLORER_INPUTS[table]
            mark_explorer_stale(con, table, [keys[column]] if column in keys else None)
        return insert_frame(con, table, frame)


def replace_tables(path: str | Path, tables: dict[str, pd.DataFrame], timeout_s: float | None = None,
                   **keys) -> dict[str, int]:
    """Open the store, `replace_rows` each table with the same keys in one transaction, close.

    For later stages adding rows to an existing run, e.g.
    `replace_tables(db, {"audit_cells": cells, "audit_gaps": gaps}, run_id=r, source="deepface")`.
    """
    with open_store(path, timeout_s=timeout_s) as con, transaction(con):
        return {table: replace_rows(con, table, df, **keys) for table, df in tables.items()}


# --------------------------------------------------------------------------- runs


def new_run_id(recipe: str, now: dt.datetime | None = None) -> str:
    """A sortable, readable, unique id: '20261122-031502-lightcnn-softlabel-3f9a' (UTC time)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    slug = re.sub(r"[^a-z0-9]+", "-", str(recipe).lower()).strip("-")[:40].strip("-") or "run"
    return f"{now:%Y%m%d-%H%M%S}-{slug}-{secrets.token_hex(2)}"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _run_row(con, run: dict, status: str) -> dict[str, Any]:
    """The run dict as `runs` column values: checked names, config as JSON text, plain types."""
    info = _column_info(con, "runs")
    unknown = [k for k in run if k not in info]
    if unknown:
        raise ValueError(f"Run fields {unknown} are not columns of table runs; its columns are {list(info)}")
    row = {k: _plain(v) for k, v in run.items() if k != "config"}
    row["config"] = _to_json(run.get("config", {}))
    row["status"] = status
    if "classes" in row and row["classes"] is not None:
        row["classes"] = [str(c) for c in row["classes"]]
    for key in ("started_at", "finished_at"):
        if isinstance(row.get(key), str):
            row[key] = dt.datetime.fromisoformat(row[key])
        if isinstance(row.get(key), dt.datetime) and row[key].tzinfo is not None:
            row[key] = row[key].astimezone(dt.timezone.utc).replace(tzinfo=None)
    missing = [c for c, (_, nullable) in info.items() if not nullable and row.get(c) is None]
    if missing:
        raise ValueError(f"Run {run.get('run_id')!r} lacks required fields {missing}")
    return row


def _insert_run_row(con, row: dict[str, Any]) -> None:
    cols = list(row)
    con.execute(
        f"INSERT INTO runs ({', '.join(_q(c) for c in cols)}) VALUES ({_marks(cols)})",
        [row[c] for c in cols],
    )


def _run_status(con, run_id: str) -> str | None:
    found = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchone()
    return found[0] if found else None


def save_run(path: str | Path, run: dict, tables: dict[str, pd.DataFrame], timeout_s: float | None = None) -> str:
    """Write a finished run in one transaction: its `runs` row (status 'complete') and every table.

    `run` holds `runs` columns (run_id required; finished_at defaults to now).
    `tables` maps run-keyed table names to frames; a frame's run_id column may be
    omitted (it is filled in). Replaces a 'running' or 'failed' row of the same
    run_id. If anything fails nothing of the run is visible. Returns the run_id.
    """
    run_id = run.get("run_id")
    if not run_id:
        raise ValueError("save_run needs run['run_id'] (see new_run_id)")
    run = {"finished_at": _utcnow(), **run}
    frames = {}
    for table, df in tables.items():
        if _check_table(table) not in RUN_TABLES:
            raise ValueError(f"save_run writes run tables only ({', '.join(RUN_TABLES)}), not {table!r}; "
                             f"use replace_rows/replace_tables for it")
        frames[table] = _with_run_id(df, run_id, table)

    with open_store(path, timeout_s=timeout_s) as con, transaction(con):
        row = _run_row(con, run, "complete")
        status = _run_status(con, run_id)
        if status == "complete":
            raise UserError(f"Run {run_id} already exists in {path}; use a new run id "
                            f"or delete it first with `python -m pipeline runs --delete {run_id}`")
        if status is not None:
            con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
        for table, frame in frames.items():
            insert_frame(con, table, frame)
        _insert_run_row(con, row)
    return run_id


def _with_run_id(df: pd.DataFrame, run_id: str, table: str) -> pd.DataFrame:
    if "run_id" not in df.columns:
        return df.assign(run_id=run_id)
    bad = df["run_id"] != run_id
    if bool(bad.any()):
        raise ValueError(f"Frame for table {table} holds rows of other runs than {run_id}")
    return df


def start_run(path: str | Path, run: dict, timeout_s: float | None = None) -> None:
    """Record a run as 'running' (for long runs); `save_run` later replaces it atomically."""
    run_id = run.get("run_id")
    if not run_id:
        raise ValueError("start_run needs run['run_id'] (see new_run_id)")
    with open_store(path, timeout_s=timeout_s) as con, transaction(con):
        row = _run_row(con, run, "running")
        if _run_status(con, run_id) is not None:
            raise UserError(f"Run {run_id} already exists in {path}; use a new run id")
        _insert_run_row(con, row)


def reopen_run(path: str | Path, run: dict, timeout_s: float | None = None) -> None:
    """Turn a 'failed', 'interrupted' or stale 'running' row back to 'running' for `--resume`
    (recording the new pid and host); records the run afresh when its row was deleted."""
    run_id = run.get("run_id")
    with open_store(path, timeout_s=timeout_s) as con, transaction(con):
        status = _run_status(con, run_id)
        if status == "complete":
            raise UserError(f"run {run_id} in {path} is already complete; nothing to resume")
        if status is None:
            _insert_run_row(con, _run_row(con, run, "running"))
            return
        con.execute("UPDATE runs SET status = 'running', error = NULL, finished_at = NULL, pid = ?, host = ? "
                    "WHERE run_id = ?", [run.get("pid"), run.get("host"), run_id])


def run_liveness(run: dict, host: str | None = None) -> str:
    """For a 'running' row: 'alive', 'stale' (its process on this host is gone) or 'unknown'
    (another host, or no pid recorded). Other statuses: ''."""
    import socket

    if run.get("status") != "running":
        return ""
    pid, run_host = run.get("pid"), run.get("host")
    if pid is None or pid != pid or not run_host or run_host != (host or socket.gethostname()):
        return "unknown"
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return "stale"
    except PermissionError:
        return "alive"
    return "alive"


def mark_failed(path: str | Path, run_id: str, error: str, *, timeout_s: float | None = READ_TIMEOUT_S,
                status: str = "failed") -> None:
    """Mark a 'running' run as 'failed' (or `status`, e.g. 'interrupted'); no-op if it has no running row.

    The error text (why, and how to resume) is stored in runs.error.
    """
    if status not in RUN_STATUSES or status in ("running", "complete"):
        raise ValueError(f"mark_failed status must be 'failed' or 'interrupted', got {status!r}")
    with open_store(path, timeout_s=timeout_s) as con, transaction(con):
        con.execute("UPDATE runs SET status = ?, finished_at = ?, error = ? "
                    "WHERE run_id = ? AND status = 'running'", [status, _utcnow(), str(error), run_id])


# --------------------------------------------------------------------------- reading


def list_runs(con, include_incomplete: bool = False) -> pd.DataFrame:
    """All runs (only complete ones unless `include_incomplete`), newest first."""
    where = "" if include_incomplete else " WHERE status = 'complete'"
    return con.execute(f"SELECT * FROM runs{where} ORDER BY started_at DESC, run_id DESC").df()


def resolve_run_id(con, run_id: str, statuses: tuple[str, ...] = ("complete",)) -> str:
    """An exact run id, a unique prefix, or 'latest' → the full id among runs of `statuses`."""
    marks = _marks(statuses)
    where = _store_path(con)
    if run_id == "latest":
        found = con.execute(f"SELECT run_id FROM runs WHERE status IN ({marks}) "
                            f"ORDER BY started_at DESC, run_id DESC LIMIT 1", list(statuses)).fetchone()
        if found is None:
            raise UserError(f"No complete run in {where}. Run `python -m pipeline demo` or train one first.")
        return found[0]
    rows = con.execute("SELECT run_id, status FROM runs WHERE starts_with(run_id, ?) ORDER BY run_id",
                       [str(run_id)]).fetchall()
    exact = [r for r in rows if r[0] == run_id]
    if exact:
        rows = exact
    if not rows:
        raise UserError(f"No run {run_id!r} in {where}. List runs with `python -m pipeline runs --db {where}`.")
    if len(rows) > 1:
        shown = ", ".join(r[0] for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
        raise UserError(f"Run id {run_id!r} is ambiguous in {where}: it matches {shown}. Give more characters.")
    found_id, status = rows[0]
    if status not in statuses:
        raise UserError(f"Run {found_id} in {where} is {status}, not complete; re-run it or delete it "
                        f"with `python -m pipeline runs --delete {found_id}`.")
    return found_id


def get_run(con, run_id: str) -> dict:
    """The complete run `run_id` (exact id, unique prefix, or 'latest') as a dict.

    `config` is parsed to a dict, `classes` is a list of str.
    """
    full_id = resolve_run_id(con, run_id, ("complete",))
    cur = con.execute("SELECT * FROM runs WHERE run_id = ?", [full_id])
    names = [d[0] for d in cur.description]
    run = dict(zip(names, cur.fetchone()))
    run["config"] = json.loads(run["config"]) if run.get("config") else {}
    run["classes"] = list(run["classes"] or [])
    return run


def load_frame(con, table: str, columns: list[str] | None = None, **keys) -> pd.DataFrame:
    """Rows of `table` matching `keys` (equality; a list value means IN), ordered by primary key.

    BLOB columns come back as bytes, list columns as lists, JSON as text. Without `columns`,
    every column but image_key (the store's own join key, not data: see IMAGE_KEY_TABLES).
    """
    info = _column_info(con, _check_table(table))
    cols = [c for c in info if not (table in IMAGE_KEY_TABLES and c == "image_key")] if columns is None \
        else list(columns)
    unknown = [c for c in cols if c not in info]
    if unknown:
        raise ValueError(f"Columns {unknown} are not in table {table}; its columns are {list(info)}")
    where, params = _where(info, table, keys)
    order = _primary_key(con, table)
    order_sql = f" ORDER BY {', '.join(_q(c) for c in order)}" if order else ""
    df = con.execute(f"SELECT {', '.join(_q(c) for c in cols)} FROM {_q(table)}{where}{order_sql}", params).df()
    for col in cols:
        if info[col][0] == "BLOB":
            df[col] = df[col].map(lambda v: bytes(v) if isinstance(v, (bytearray, memoryview)) else v)
    return df


def delete_run(con, run_id: str) -> int:
    """Delete a run (exact id or unique prefix, any status) and all its rows, and every
    orphan row (of runs already gone, see `find_orphans`), in one transaction.

    Returns the number of rows deleted over all tables.
    """
    full_id = resolve_run_id(con, run_id, RUN_STATUSES)
    deleted = 0
    present = _existing_tables(con)  # an older store may lack ADDED_TABLES (writable opens create them)
    with transaction(con):
        for table in (t for t in (*RUN_TABLES, "runs") if t in present):
            row = con.execute(f"DELETE FROM {_q(table)} WHERE run_id = ?", [full_id]).fetchone()
            deleted += int(row[0]) if row else 0
        deleted += sum(delete_orphans(con).values())
    return deleted
