"""The DuckDB results store: the one module of the pipeline that talks to DuckDB (the dashboard's
read-only queries open the store through `connect` and check it with `check_schema` / `missing_columns`).

Rules it relies on:
- One schema definition, `pipeline/store/schema.sql`, applied by the idempotent
  `ensure_schema(con)`; the store records `SCHEMA_VERSION` in `meta` and
  `check_schema(con)` refuses a store written with another version, except an
  older one that differs only by tables added since (`ADDED_TABLES`): it is
  read as it is (those tables are absent) and `ensure_schema` upgrades it in
  place by creating them.
- Values always go in as `?` parameters or as a registered data frame; table
  and column names come only from the schema (`TABLES`, and the columns the
  database reports for them), and are quoted.
- A run is written in one transaction (`save_run`): its `runs` row turns
  'complete' in the same commit that writes all its rows, so a crash leaves
  earlier runs intact and no half run that looks complete.
- DuckDB lets no process write while another holds the file open, even
  read-only. So the pipeline computes everything in memory and then opens,
  writes, commits and closes at once; the dashboard opens read-only only for
  a moment. `connect()` retries on lock errors with backoff for a bounded
  time, then raises a `UserError` naming the file.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
import secrets
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

SCHEMA_VERSION = 3
# Tables added after version 1, with the version that added them. Every other table and
# column is unchanged since UPGRADABLE_FROM, so a store of that version or later is read
# as it is and upgraded in place (the added tables created empty) when opened writable.
ADDED_TABLES: dict[str, int] = {"heatmap_summary": 2, "audits": 3}
UPGRADABLE_FROM = 1
SCHEMA_FILE = Path(__file__).with_name("schema.sql")
SCHEMA_SQL = SCHEMA_FILE.read_text(encoding="utf-8")

# The whitelist of table names: exactly the tables schema.sql creates.
TABLES: tuple[str, ...] = tuple(
    re.findall(r"CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+(\w+)", SCHEMA_SQL, flags=re.IGNORECASE)
)
# Tables whose rows belong to one run (deleted with it). `runs` itself is handled apart.
RUN_TABLES: tuple[str, ...] = tuple(
    t for t in TABLES
    if t not in ("meta", "runs")
    and re.search(rf"CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+{t}\s*\(\s*run_id\b", SCHEMA_SQL, re.IGNORECASE)
)
RUN_STATUSES = ("running", "complete", "failed")

_LOCK_MARKERS = ("could not set lock", "conflicting lock")
_MISSING_STORE_HINT = "Run `python -m pipeline demo` to create one, or pass --db PATH to an existing store."


class SchemaMismatchError(UserError):
    """The store was written with another schema version than this code uses."""


class StoreBusyError(UserError):
    """Another process held the store past `connect`'s timeout (the dashboard asks the user to refresh)."""


# --------------------------------------------------------------------------- connections


def connect(path: str | Path = DEFAULT_DB, read_only: bool = False, timeout_s: float = 60.0,
            check: bool = True) -> "duckdb.DuckDBPyConnection":
    """Open the store at `path`.

    Writable: creates the parent folder and the schema if needed. Read-only:
    the file must exist. While another process holds the file, retries with
    backoff for up to `timeout_s` seconds, then raises a UserError. With
    `check` (default) a store of another schema version raises
    SchemaMismatchError. The caller closes the connection (or use `open_store`).
    """
    import duckdb

    path = Path(path).expanduser().absolute()
    if read_only and not path.exists():
        raise UserError(f"No results store at {path}. {_MISSING_STORE_HINT}")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)

    deadline = time.monotonic() + max(0.0, float(timeout_s))
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
                raise UserError(f"Could not open the results store {path}: {message}") from exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreBusyError(
                    f"The results store {path} is in use by another process, which holds it open "
                    f"(gave up after {timeout_s:g} s). Close the dashboard or the other pipeline "
                    f"command using it and retry, or write to another store with --db PATH."
                ) from exc
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.5)

    try:
        if not read_only:
            ensure_schema(con)
        elif check:
            check_schema(con)
    except BaseException:
        con.close()
        raise
    return con


@contextmanager
def open_store(path: str | Path = DEFAULT_DB, read_only: bool = False, timeout_s: float = 60.0,
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
    return [f"{t}.{c}" for t, cs in schema_columns().items() if t not in absent
            for c in cs if c not in have.get(t, set())]


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
    try:
        try:
            yield con
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise
        try:
            con.execute("COMMIT")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise
    finally:
        _IN_TRANSACTION.discard(id(con))


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

    `df`'s columns must all be columns of the table; missing columns must be
    nullable. Values are cast to the table's types: list columns (FLOAT[],
    VARCHAR[]) from lists or numpy arrays, BLOB from bytes (or uint8 arrays),
    JSON from text (or dicts/lists, dumped). NaN in float columns is stored as NULL.
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

    frame = _prepare_frame(df.reset_index(drop=True), info)
    view = f"_insert_{uuid.uuid4().hex}"
    cols = [c for c in info if c in df.columns]  # table order
    target = ", ".join(_q(c) for c in cols)
    source = ", ".join(f"CAST({_q(c)} AS {info[c][0]})" for c in cols)
    con.register(view, frame)
    try:
        row = con.execute(f"INSERT INTO {_q(table)} ({target}) SELECT {source} FROM {_q(view)}").fetchone()
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
            clauses.append(f"{_q(key)} IN ({', '.join('?' for _ in values)})")
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
    for key, value in keys.items():
        if key in frame.columns:
            bad = frame[key] != value
            if bool(bad.any()):
                raise ValueError(f"Frame for table {table} has {key} values other than {value!r}: "
                                 f"{sorted(map(str, frame.loc[bad, key].unique()))[:5]}")
        else:
            frame = frame.assign(**{key: value})
    with transaction(con):
        con.execute(f"DELETE FROM {_q(table)}{where}", params)
        return insert_frame(con, table, frame)


def replace_tables(path: str | Path, tables: dict[str, pd.DataFrame], timeout_s: float = 60.0,
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
        f"INSERT INTO runs ({', '.join(_q(c) for c in cols)}) VALUES ({', '.join('?' for _ in cols)})",
        [row[c] for c in cols],
    )


def _run_status(con, run_id: str) -> str | None:
    found = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchone()
    return found[0] if found else None


def save_run(path: str | Path, run: dict, tables: dict[str, pd.DataFrame], timeout_s: float = 60.0) -> str:
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


def start_run(path: str | Path, run: dict, timeout_s: float = 60.0) -> None:
    """Record a run as 'running' (for long runs); `save_run` later replaces it atomically."""
    run_id = run.get("run_id")
    if not run_id:
        raise ValueError("start_run needs run['run_id'] (see new_run_id)")
    with open_store(path, timeout_s=timeout_s) as con, transaction(con):
        row = _run_row(con, run, "running")
        if _run_status(con, run_id) is not None:
            raise UserError(f"Run {run_id} already exists in {path}; use a new run id")
        _insert_run_row(con, row)


def mark_failed(path: str | Path, run_id: str, error: str, timeout_s: float = 60.0) -> None:
    """Mark a 'running' run as 'failed' (no-op if it has no running row).

    The error text is stored in runs.error when the schema has that column.
    """
    with open_store(path, timeout_s=timeout_s) as con, transaction(con):
        if "error" in table_columns(con, "runs"):
            con.execute("UPDATE runs SET status = 'failed', finished_at = ?, error = ? "
                        "WHERE run_id = ? AND status = 'running'", [_utcnow(), str(error), run_id])
        else:
            con.execute("UPDATE runs SET status = 'failed', finished_at = ? "
                        "WHERE run_id = ? AND status = 'running'", [_utcnow(), run_id])


# --------------------------------------------------------------------------- reading


def list_runs(con, include_incomplete: bool = False) -> pd.DataFrame:
    """All runs (only complete ones unless `include_incomplete`), newest first."""
    where = "" if include_incomplete else " WHERE status = 'complete'"
    return con.execute(f"SELECT * FROM runs{where} ORDER BY started_at DESC, run_id DESC").df()


def resolve_run_id(con, run_id: str, statuses: tuple[str, ...] = ("complete",)) -> str:
    """An exact run id, a unique prefix, or 'latest' → the full id among runs of `statuses`."""
    marks = ", ".join("?" for _ in statuses)
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

    BLOB columns come back as bytes, list columns as lists, JSON as text.
    """
    info = _column_info(con, _check_table(table))
    cols = list(info) if columns is None else list(columns)
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
    """Delete a run (exact id or unique prefix, any status) and all its rows, in one transaction.

    Returns the number of rows deleted over all tables.
    """
    full_id = resolve_run_id(con, run_id, RUN_STATUSES)
    deleted = 0
    present = _existing_tables(con)  # an older store may lack ADDED_TABLES (writable opens create them)
    with transaction(con):
        for table in (t for t in (*RUN_TABLES, "runs") if t in present):
            row = con.execute(f"DELETE FROM {_q(table)} WHERE run_id = ?", [full_id]).fetchone()
            deleted += int(row[0]) if row else 0
    return deleted
