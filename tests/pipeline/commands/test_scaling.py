"""Scaling out (README, 'Scaling out'): the exact torchrun lines on 2 CPU processes with gloo, and
`--shard K/N` jobs with `--merge-shards`, against one process, through the real CLI.

Tiny on purpose: 60 synthetic faces at 16 px, 1-2 epochs. Each torchrun launch costs about 20 s here
(two interpreters importing torch on shared cores), so the launches are few and each checks much.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.paths import PROJECT_ROOT, runs_dir_for
from pipeline.store import db as store

TRAIN = ["--recipe", "lightcnn-softlabel", "--batch-size", "16", "--image-size", "16", "--quiet", "--device", "cpu"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m pipeline -- ARGS`, as the README gives it."""
    found = shutil.which("torchrun")
    launcher = [found] if found else [sys.executable, "-m", "torch.distributed.run"]
    out = subprocess.run([*launcher, "--standalone", "--nproc_per_node=2", "-m", "pipeline", "--", *args],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _runs(db) -> pd.DataFrame:
    with store.open_store(db, read_only=True) as con:
        return store.list_runs(con, include_incomplete=True)


def _frame(db, table, run_id, sort):
    with store.open_store(db, read_only=True) as con:
        frame = store.load_frame(con, table, run_id=run_id)
    return frame.drop(columns="run_id").sort_values(sort).reset_index(drop=True)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """A run trained by `torchrun ... -- train` (DDP, 2 processes, 1 epoch)."""
    from pipeline.synth.faces import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("scaling-synth") / "synthetic"
    generate_dataset(root, SynthConfig(n=60, seed=11, workers=1), progress=False)
    db = tmp_path_factory.mktemp("scaling-db") / "results.duckdb"
    torchrun("train", "--dataset", "synthetic", "--root", str(root), "--db", str(db), "--epochs", "1", *TRAIN)
    runs = _runs(db)
    return db, root, runs.iloc[0].to_dict(), runs


def test_torchrun_train_stores_one_run_with_rank0_checkpoints(ddp_run):
    db, _, run, runs = ddp_run
    assert len(runs) == 1 and run["status"] == "complete" and run["kind"] == "train"
    assert json.loads(run["config"])["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert sorted(p.name for p in (runs_dir_for(db) / run["run_id"]).iterdir()) == ["best.pt", "last.pt"]
    assert len(_frame(db, "epochs", run["run_id"], "epoch")) == 1


def _evaluate_args(db, root, run_id):
    return ["evaluate", "--run", run_id, "--dataset", "synthetic", "--root", str(root), "--db", str(db),
            "--split", "all", "--classes", "6", "--device", "cpu", "--quiet"]


def _assert_same_evaluation(db, one, other):
    p1 = _frame(db, "predictions", one, ["split", "image_id"])
    p2 = _frame(db, "predictions", other, ["split", "image_id"])
    assert len(p1) == len(p2) > 0
    pd.testing.assert_frame_equal(p1.drop(columns="probs"), p2.drop(columns="probs"))
    np.testing.assert_allclose(np.stack(p1["probs"]), np.stack(p2["probs"]), atol=1e-6)
    for table, key in (("images", ["image_id"]), ("class_metrics", ["split", "label"]),
                       ("confusion", ["split", "true_label", "pred_label"])):
        pd.testing.assert_frame_equal(_frame(db, table, one, key), _frame(db, table, other, key))


def test_torchrun_evaluate_equals_one_process_row_for_row(ddp_run):
    db, root, run, _ = ddp_run
    args = _evaluate_args(db, root, run["run_id"])
    assert main(args) == 0
    single = _runs(db).iloc[0]["run_id"]
    before = len(_runs(db))
    out = torchrun(*args)
    runs = _runs(db)
    assert len(runs) == before + 1, "one run per launch, not one per rank"
    assert out.stdout.count("stored as run") == 1
    _assert_same_evaluation(db, single, runs.iloc[0]["run_id"])
    assert not (db.parent / "shards" / run["run_id"]).exists(), "merged shards are removed"


def test_shard_jobs_then_merge_equal_one_process_and_a_missing_shard_is_named(ddp_run, capsys):
    db, root, run, _ = ddp_run
    args = _evaluate_args(db, root, run["run_id"])
    assert main(args) == 0
    single = _runs(db).iloc[0]["run_id"]
    assert main([*args, "--shard", "2/2"]) == 0
    capsys.readouterr()
    assert main([*args, "--merge-shards"]) == 2
    err = capsys.readouterr().err
    assert "shard 1/2" in err and "missing" in err and "--shard 1/2" in err
    assert _runs(db).iloc[0]["run_id"] == single, "a failed merge stores nothing"
    assert main([*args, "--shard", "1/2"]) == 0
    assert main([*args, "--merge-shards"]) == 0
    _assert_same_evaluation(db, single, _runs(db).iloc[0]["run_id"])
    assert main([*args, "--shard", "3/2"]) == 2 and "K must be between 1 and N" in capsys.readouterr().err


SHUFFLED = ("gt_energy_shuffled", "pointing_shuffled")   # drawn within each shard's images (stage docstring)


def _explanations(db, run_id):
    heat = _frame(db, "heatmaps", run_id, ["method", "image_id", "target"])
    metrics = _frame(db, "explanation_metrics", run_id, ["method", "metric", "emotion"])
    summary = _frame(db, "heatmap_summary", run_id, ["method", "emotion", "correct"])
    return {"heatmaps": heat, "heatmap_summary": summary,
            "failure_tags": _frame(db, "failure_tags", run_id, ["image_id", "method", "tag"]),
            # pointing passes by a margin over pointing_shuffled, so its flag is shard-dependent too
            "metrics": metrics[~metrics["metric"].isin(SHUFFLED)].reset_index(drop=True).assign(
                passed=lambda f: f["passed"].where(f["metric"] != "pointing", None)),
            "shuffled": metrics[metrics["metric"].isin(SHUFFLED)].reset_index(drop=True)}


def _nulls_as_none(column: pd.Series) -> list:
    return [None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v for v in column]


def _assert_same_explanations(one, other):
    assert len(one["heatmaps"]) > 0 and len(one["metrics"]) > 0 and len(one["shuffled"]) > 0
    for name in ("heatmaps", "heatmap_summary", "failure_tags", "metrics"):
        a, b = one[name], other[name]
        assert list(a.columns) == list(b.columns) and len(a) == len(b), name
        for col in a.columns:
            if a[col].dtype.kind == "f":
                np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), atol=1e-5, err_msg=f"{name}.{col}")
            elif col in ("cam", "mean_cam"):
                x = np.stack([np.frombuffer(v, np.uint8 if col == "cam" else "<f4") for v in a[col]]).astype(float)
                y = np.stack([np.frombuffer(v, np.uint8 if col == "cam" else "<f4") for v in b[col]]).astype(float)
                np.testing.assert_allclose(x, y, atol=1 if col == "cam" else 1 / 255, err_msg=f"{name}.{col}")
            else:
                assert _nulls_as_none(a[col]) == _nulls_as_none(b[col]), f"{name}.{col}"
    # The shuffled baselines are there for the same methods (their per-emotion rows may differ).
    overall = [f[f["emotion"] == "all"][["method", "metric"]].reset_index(drop=True) for f in (one["shuffled"],
                                                                                              other["shuffled"])]
    pd.testing.assert_frame_equal(*overall)


def test_sharded_explain_equals_one_process_but_for_the_shuffled_baselines(ddp_run):
    db, _, run, _ = ddp_run
    args = ["explain", "--run", run["run_id"], "--db", str(db), "--methods", "gradcam,eigencam",
            "--faithfulness-samples", "4", "--sanity-samples", "4", "--n-boot", "50", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    single = _explanations(db, run["run_id"])
    torchrun(*args)
    _assert_same_explanations(single, _explanations(db, run["run_id"]))
    assert main([*args, "--shard", "1/2"]) == 0 and main([*args, "--shard", "2/2"]) == 0
    assert main([*args, "--merge-shards"]) == 0
    _assert_same_explanations(single, _explanations(db, run["run_id"]))


def test_resume_across_world_sizes(ddp_run):
    """One process stops after epoch 1, two processes continue to epoch 2 and stop, one process finishes."""
    db, root, _, _ = ddp_run
    db = db.parent / "resume.duckdb"
    assert main(["train", "--dataset", "synthetic", "--root", str(root), "--db", str(db), "--epochs", "3",
                 "--stop-after", "1", *TRAIN]) == 0
    run_id = _runs(db).iloc[0]["run_id"]
    torchrun("train", "--resume", run_id, "--db", str(db), "--stop-after", "2", "--quiet", "--device", "cpu")
    assert main(["train", "--resume", run_id, "--db", str(db), "--quiet", "--device", "cpu"]) == 0
    runs = _runs(db)
    assert len(runs) == 1 and runs.iloc[0]["status"] == "complete"
    epochs = _frame(db, "epochs", run_id, "epoch")
    assert epochs["epoch"].tolist() == [1, 2, 3]
