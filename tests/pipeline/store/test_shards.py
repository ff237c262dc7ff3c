"""Parquet shards beside the store (pipeline/store/shards.py): written whole, merged in order, checked."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.errors import UserError
from pipeline.store.shards import load_shards, remove_shards, shard_folder, write_shard

HINT = "the same command with --shard {shard}"


def _frame(ids):
    return pd.DataFrame({"image_id": ids, "cam": [bytes([i]) * 4 for i in range(len(ids))],
                         "probs": [[0.25, 0.75]] * len(ids),
                         "gt_hit": [True, None][:len(ids)] + [False] * (len(ids) - 2)})


def test_shards_merge_in_shard_order_whatever_order_they_were_written(tmp_path):
    folder = shard_folder(tmp_path / "results.duckdb", "run-1", "explain", {"methods": ["gradcam"]})
    assert folder.parent == tmp_path / "shards" / "run-1"
    write_shard(folder, 1, 2, {"rows": _frame(["c", "d", "e"])}, {"job": 1, "seconds": 2.0})
    write_shard(folder, 0, 2, {"rows": _frame(["a", "b"])}, {"job": 1, "seconds": 1.0})
    assert sorted(p.name for p in folder.iterdir()) == ["1-of-2", "2-of-2"]  # no temporary folder left
    metas, tables = load_shards(folder, rerun_hint=HINT)
    assert [m["shard"] for m in metas] == [1, 2]
    rows = tables["rows"]
    assert rows["image_id"].tolist() == ["a", "b", "c", "d", "e"]
    assert rows["cam"].iloc[3] == bytes([1]) * 4 and list(rows["probs"].iloc[0]) == [0.25, 0.75]
    assert rows["gt_hit"].iloc[1] is None
    remove_shards(folder)
    assert not (tmp_path / "shards" / "run-1").exists()


def test_a_different_job_gets_another_folder(tmp_path):
    db = tmp_path / "results.duckdb"
    assert shard_folder(db, "r", "explain", {"limit": 1}) != shard_folder(db, "r", "explain", {"limit": 2})
    assert shard_folder(db, "r", "explain", {"a": 1, "b": 2}) == shard_folder(db, "r", "explain", {"b": 2, "a": 1})


def test_missing_shards_are_named_with_how_to_rerun_them(tmp_path):
    folder = tmp_path / "job"
    write_shard(folder, 1, 3, {"rows": _frame(["x", "y"])}, {"job": 1})
    with pytest.raises(UserError, match=r"shards 1/3, 3/3 of .* are missing .*--shard 1/3; .*--shard 3/3"):
        load_shards(folder, rerun_hint=HINT)
    with pytest.raises(UserError, match="no shards to merge"):
        load_shards(tmp_path / "nothing", rerun_hint=HINT)


def test_shards_of_another_split_or_job_are_refused(tmp_path):
    folder = tmp_path / "job"
    write_shard(folder, 0, 2, {"rows": _frame(["a", "b"])}, {"job": 1})
    write_shard(folder, 1, 2, {"rows": _frame(["c", "d"])}, {"job": 2})
    with pytest.raises(UserError, match="shard 2/2 .* disagrees with shard 1/2 on job"):
        load_shards(folder, rerun_hint=HINT)
    with pytest.raises(UserError, match="2-way split, not 4"):
        load_shards(folder, rerun_hint=HINT, expected_count=4)
    write_shard(folder, 0, 3, {"rows": _frame(["a", "b"])}, {"job": 1})
    with pytest.raises(UserError, match="mixes shards of 2 and 3-way splits"):
        load_shards(folder, rerun_hint=HINT)


def test_a_failed_write_leaves_the_earlier_shard(tmp_path):
    folder = tmp_path / "job"
    write_shard(folder, 0, 1, {"rows": _frame(["a", "b"])}, {"job": 1})
    with pytest.raises(Exception):
        write_shard(folder, 0, 1, {"rows": pd.DataFrame({"bad": [object()]})}, {"job": 1})
    assert sorted(p.name for p in folder.iterdir()) == ["1-of-1"]
    assert load_shards(folder, rerun_hint=HINT)[1]["rows"]["image_id"].tolist() == ["a", "b"]
