"""Default locations, relative to the project root (overridable on the command line)."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"
DEFAULT_SYNTHETIC_DIR = DATA_DIR / "synthetic"
DEFAULT_DB = Path(os.environ.get("FER_RESULTS_DB", PROJECT_ROOT / "results.duckdb"))


def runs_dir_for(db_path: Path) -> Path:
    """Checkpoints and per-run files live in `runs/` beside the results store."""
    return Path(db_path).resolve().parent / "runs"
