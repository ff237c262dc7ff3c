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


@pytest.fixture(scope="session")
def seed_store(demo_store, tmp_path_factory) -> Path:
    """The demo store plus a replica of its run trained by the real pipeline as the README says, with seed 1:
    `train --dataset synthetic --root DATA --preset demo --seed 1` (and the demo fixture's 1 epoch)."""
    import shutil

    from pipeline.cli import main

    db = tmp_path_factory.mktemp("seeds") / "results.duckdb"
    shutil.copy(demo_store, db)
    data = demo_store.parent / "data"
    assert main(["train", "--dataset", "synthetic", "--root", str(data), "--db", str(db), "--preset", "demo",
                 "--epochs", "1", "--seed", "1", "--quiet", "--device", "cpu"]) == 0
    return db
