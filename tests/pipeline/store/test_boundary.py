"""One storage boundary: `--db` reaches duckdb.connect through few of the project's functions (issue 13).

Each test wraps duckdb.connect to record the call stack of every connection the
store opens, and counts the project's frames (pipeline/, dashboard/) between the
entry point (`pipeline.cli.main`, or a dashboard query) and duckdb.connect: at
most four from the CLI, five from the dashboard (the entry itself not counted for
the CLI, counted for the dashboard, where the query is the first function given the store).
"""
from __future__ import annotations

import traceback
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def connect_stacks(monkeypatch):
    stacks: list[list[traceback.FrameSummary]] = []
    real = duckdb.connect

    def recording(database=":memory:", *args, **kwargs):
        if str(database) != ":memory:":
            stacks.append(traceback.extract_stack()[:-1])
        return real(database, *args, **kwargs)

    monkeypatch.setattr(duckdb, "connect", recording)
    return stacks


def _project_frames_after(stack: list[traceback.FrameSummary], entry: str) -> list[str]:
    """The project's functions called from `entry` (exclusive) down to duckdb.connect."""
    names = [f"{Path(f.filename).relative_to(ROOT)}:{f.name}" for f in stack
             if f.filename.startswith(str(ROOT / "pipeline")) or f.filename.startswith(str(ROOT / "dashboard"))]
    starts = [i for i, n in enumerate(names) if n.endswith(entry)]
    assert starts, f"{entry} not on the stack: {names}"
    return names[starts[-1] + 1:]


@pytest.mark.parametrize("argv", [["runs"], ["export", "--run", "latest", "--table", "class-metrics", "--format", "csv"]])
def test_cli_db_reaches_duckdb_through_at_most_four_functions(demo_store, connect_stacks, argv):
    from pipeline.cli import main

    assert main([*argv, "--db", str(demo_store)]) == 0
    assert connect_stacks, "no store connection was opened"
    for stack in connect_stacks:
        chain = _project_frames_after(stack, "pipeline/cli.py:main")
        assert len(chain) <= 4, chain


def test_dashboard_db_reaches_duckdb_through_at_most_five_functions(demo_store, connect_stacks):
    from dashboard import queries

    ref = queries.create_store_ref(demo_store)
    queries.load_runs.clear()
    assert len(queries.load_runs(ref))
    assert connect_stacks
    for stack in connect_stacks:
        chain = ["dashboard/queries.py:load_runs", *_project_frames_after(stack, "dashboard/queries.py:load_runs")]
        assert len(chain) <= 5, chain
