"""The train/evaluate stage's helpers (pipeline/train/runner.py); the stage itself runs end to end in
tests/pipeline/commands/test_train.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import UserError
from pipeline.train.recipes import RECIPES, get_recipe
from pipeline.train.runner import (CHECKPOINT_LAST, _jsonable, compute_split_results, create_epochs_frame,
                                   find_run_dir, recipe_from_config, resolve_device)


@pytest.mark.parametrize("recipe", [*RECIPES.values(), get_recipe("lightcnn-softlabel", "demo")],
                         ids=lambda r: f"{r.name}-{r.preset}")
def test_a_stored_recipe_rebuilds_exactly(recipe):
    import json

    stored = json.loads(json.dumps({"recipe": _jsonable(recipe)}))  # as it comes back from runs.config
    assert recipe_from_config(stored) == recipe


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available.*--device cpu"):
            resolve_device("cuda")


def test_find_run_dir_by_folder_id_or_prefix(tmp_path):
    db = tmp_path / "results.duckdb"
    for name in ("20261201-a", "20261201-b", "20261202-c"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / CHECKPOINT_LAST).write_bytes(b"")
    assert find_run_dir(db, "20261202").name == "20261202-c"
    assert find_run_dir(db, "20261201-a").name == "20261201-a"
    assert find_run_dir(db, str(tmp_path / "runs" / "20261201-b")).name == "20261201-b"
    with pytest.raises(UserError, match="matches several runs"):
        find_run_dir(db, "20261201")
    with pytest.raises(UserError, match="nothing to resume"):
        find_run_dir(db, "1999")


def test_split_results_and_epochs_frames():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    preds, metrics, confusion = compute_split_results("test", ["a", "b", "c"], np.array([0, 1, 1]), probs,
                                                      ["Surprise", "Fear"])
    assert list(preds["pred_label"]) == ["Surprise", "Fear", "Surprise"]
    acc = metrics.set_index("label").loc["accuracy", "f1"]
    assert acc == pytest.approx(2 / 3)
    assert int(confusion["n"].sum()) == 3
    epochs = create_epochs_frame([{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": float("nan"),
                                   "val_acc": None, "lr": 1e-3, "seconds": 2.0}])
    assert epochs["epoch"].dtype == "int64" and epochs.loc[0, "val_loss"] is None


def test_resolve_paths_equals_resolving_each_path(tmp_path, monkeypatch):
    """The images table's paths: one folder resolve shared by its files, the same strings as
    `Path.resolve` each, through folder and file symlinks, `..`, `.` and relative paths."""
    from pathlib import Path

    from pipeline.train.runner import resolve_paths

    (tmp_path / "real" / "d").mkdir(parents=True)
    (tmp_path / "real" / "d" / "a.jpg").write_bytes(b"x")
    (tmp_path / "far").mkdir()
    (tmp_path / "far" / "b.jpg").write_bytes(b"y")
    (tmp_path / "link").symlink_to(tmp_path / "real" / "d")
    (tmp_path / "real" / "d" / "c.jpg").symlink_to(tmp_path / "far" / "b.jpg")
    monkeypatch.chdir(tmp_path)
    paths = ["link/a.jpg", "link/../x.jpg", "link/c.jpg", "real/d/c.jpg", "a.jpg", Path("link/a.jpg"), None,
             str(tmp_path / "link" / "a.jpg"), "link/./a.jpg", "missing/z.jpg", "link/c.jpg/.."]
    assert resolve_paths(paths) == [str(Path(p).resolve()) if p is not None else None for p in paths]
    assert resolve_paths(["link/c.jpg"]) == [str(tmp_path / "far" / "b.jpg")]
