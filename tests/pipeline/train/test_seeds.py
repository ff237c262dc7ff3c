"""Seed spread: which runs are replicas of each other, and their mean, sample SD and range."""
from __future__ import annotations

import copy
import json
import statistics

import pandas as pd
import pytest

from pipeline.train.seeds import SPREAD_COLUMNS, compute_seed_spread, describe_replica, select_spread_of

CONFIG = {
    "dataset": {"name": "synthetic", "root": "/data/a", "seed": 0, "val_fraction": 0.1, "variant": "aligned",
                "label_source": "hard", "num_classes": 6},
    "recipe": {"name": "lightcnn-softlabel", "arch": "lightcnn-lite", "image_size": 48,
               "train": {"epochs": 12, "lr": 3e-4, "seed": 0, "augment": {"flip": True}}},
    "weights": "none", "seed": 0, "device": "cpu", "started_at": "2026-12-07T05:51:44", "epochs_run": 12,
    "best_epoch": 11, "torch_version": "2.14.1",
}


def _run(i: int, seed: int, accuracy: float, f1: float, *, fingerprint: str = "fp-a", kind: str = "train",
         **changes) -> dict:
    config = copy.deepcopy(CONFIG)
    config["dataset"]["seed"] = config["recipe"]["train"]["seed"] = config["seed"] = seed
    config["dataset"]["root"] = f"/data/copy{i}"       # the same files elsewhere: still a replica
    config["started_at"] = f"2026-12-07T06:{i:02d}:00"  # run-specific fields are not compared
    config["best_epoch"] = i
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return {"run_id": f"run-{i:02d}", "kind": kind, "recipe": config["recipe"]["name"],
            "model": config["recipe"]["arch"], "dataset": "synthetic", "dataset_fingerprint": fingerprint,
            "seed": seed, "started_at": pd.Timestamp(f"2026-12-07 06:{i:02d}"), "test_accuracy": accuracy,
            "test_macro_f1": f1, "n_test": 1050, "config": json.dumps(config)}


def test_replicas_share_everything_but_the_seed_and_where_the_files_are():
    a, b = _run(1, 0, 0.9, 0.8), _run(2, 3, 0.9, 0.8)
    assert describe_replica(a["config"]) == describe_replica(b["config"])
    assert describe_replica(json.loads(a["config"])) == describe_replica(a["config"])
    for change in ({"recipe.train.epochs": 6}, {"recipe.train.augment": {"flip": False}},
                   {"dataset.val_fraction": 0.2}, {"weights": "imagenet"}):
        assert describe_replica(_run(3, 0, 0.9, 0.8, **change)["config"]) != describe_replica(a["config"]), change
    assert describe_replica(json.dumps({"dataset": {}, "parent_run_id": "x"})) is None  # an evaluation
    assert describe_replica("not json") is None and describe_replica(None) is None


def test_seed_spread_is_mean_sample_sd_and_range_per_group_of_replicas():
    runs = pd.DataFrame([
        _run(1, 0, 0.893, 0.790), _run(2, 1, 0.882, 0.742), _run(3, 2, 0.891, 0.787),
        _run(4, 1, 0.880, 0.740),                                     # seed 1 again: its newest run counts
        _run(5, 0, 0.70, 0.60, **{"recipe.train.epochs": 1}),         # another recipe setting, alone
        _run(6, 0, 0.81, 0.70, fingerprint="fp-b"), _run(7, 1, 0.83, 0.72, fingerprint="fp-b"),  # other data
        _run(8, 2, 0.85, 0.75, kind="evaluate"),                      # not a training run
        {**_run(9, 3, 0.9, 0.8), "test_accuracy": None},              # no evaluation stored
    ])
    spread = compute_seed_spread(runs)
    assert list(spread.columns) == SPREAD_COLUMNS
    assert len(spread) == 2
    first = spread.iloc[0]
    assert first["n_seeds"] == 3 and first["seeds"] == "0, 1, 2"
    assert first["run_ids"] == "run-01, run-04, run-03"
    acc, f1 = [0.893, 0.880, 0.891], [0.790, 0.740, 0.787]
    assert first["accuracy_mean"] == pytest.approx(statistics.mean(acc))
    assert first["accuracy_sd"] == pytest.approx(statistics.stdev(acc))
    assert (first["accuracy_min"], first["accuracy_max"]) == (0.880, 0.893)
    assert first["macro_f1_mean"] == pytest.approx(statistics.mean(f1))
    assert first["macro_f1_sd"] == pytest.approx(statistics.stdev(f1))
    assert (first["macro_f1_min"], first["macro_f1_max"]) == (0.740, 0.790)
    assert first["n_test"] == 1050
    assert select_spread_of(spread, "run-04")["run_ids"].tolist() == ["run-01, run-04, run-03"]
    assert select_spread_of(spread, "run-02").empty  # seed 1's older run: not counted
    assert select_spread_of(spread, "run-1").empty    # ids match whole, not as prefixes
    second = spread.iloc[1]
    assert second["n_seeds"] == 2 and second["run_ids"] == "run-06, run-07"
    assert second["accuracy_sd"] == pytest.approx(statistics.stdev([0.81, 0.83]))


def test_no_replicas_give_an_empty_table_with_the_columns():
    assert list(compute_seed_spread(pd.DataFrame()).columns) == SPREAD_COLUMNS
    one_each = pd.DataFrame([_run(1, 0, 0.9, 0.8), _run(2, 0, 0.8, 0.7, **{"recipe.train.lr": 1e-3})])
    assert compute_seed_spread(one_each).empty


def test_the_demo_run_and_a_train_of_its_preset_with_another_seed_are_replicas(seed_store, capsys):
    from pipeline.cli import main
    from pipeline.store import db as store

    with store.open_store(seed_store, read_only=True) as con:
        runs = store.list_runs(con)
    spread = compute_seed_spread(runs)
    assert len(spread) == 1 and len(runs) == 2  # the demo's run and its replica
    row = spread.iloc[0]
    pair = runs[runs["run_id"].isin(row["run_ids"].split(", "))]
    assert row["seeds"] == "0, 1" and sorted(pair["seed"]) == [0, 1] and set(pair["kind"]) == {"train"}
    assert row["accuracy_sd"] == pytest.approx(statistics.stdev(pair["test_accuracy"]))
    capsys.readouterr()
    assert main(["runs", "--seeds", "--db", str(seed_store)]) == 0
    out = capsys.readouterr().out
    assert "2 seeds (0, 1)" in out
    assert f"accuracy  {row['accuracy_mean']:.4f} ± {row['accuracy_sd']:.4f} (SD)" in out


def test_runs_seeds_says_how_to_get_replicas_when_there_are_none(demo_store, capsys):
    from pipeline.cli import main

    assert main(["runs", "--seeds", "--db", str(demo_store)]) == 0
    assert "trained with two or more seeds" in capsys.readouterr().out
