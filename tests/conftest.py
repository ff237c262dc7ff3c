"""Session-wide fixtures shared by the pipeline and dashboard tests."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory) -> Path:
    """A store made by the real pipeline: `python -m pipeline demo` on 300 synthetic
    faces, 1 epoch (every stage: data, train, explain, demographics, audit)."""
    from pipeline.cli import main

    root = tmp_path_factory.mktemp("demo_store")
    db = root / "results.duckdb"
    rc = main(["demo", "--db", str(db), "--data", str(root / "data"), "--n", "300", "--epochs", "1", "--quiet"])
    assert rc == 0, "python -m pipeline demo failed; see the captured output"
    return db
