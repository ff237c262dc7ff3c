"""Seed spread: how much a recipe's test figures move when only the seed changes.

A run's confidence intervals describe the test images it was scored on, not
the randomness of training: the same recipe trained again with another seed
(another validation split, initialisation, augmentation and batch order) can
land a few points away. `compute_seed_spread` finds the training runs in a
runs table (`store.list_runs`, or the dashboard's `load_runs`) that are
replicas of each other — the same dataset files (fingerprint), the same
dataset options but for the seed and where the files sit, and the same recipe
in every setting but its seed — and summarises each group of two or more
seeds: mean, sample standard deviation (n − 1) and range of test accuracy and
macro-F1. Pure: data frames in, a data frame out.

Settings are compared as stored, so runs stored by pipelines that recorded
different settings (one from before a setting existed) are not replicas: the
code that trained them differs too. `train --seed N` with the options of an
earlier run makes a replica of it (the demo's run: `train --dataset synthetic
--root DATA --preset demo --seed N`).
"""
from __future__ import annotations

import json

import pandas as pd

# Settings that differ between replicas by construction: the seeds, and where the dataset's files sit
# (the fingerprint says whether they are the same files).
_DATASET_IGNORED = ("seed", "root")
SPREAD_COLUMNS = ["recipe", "model", "dataset", "n_seeds", "seeds", "accuracy_mean", "accuracy_sd",
                  "accuracy_min", "accuracy_max", "macro_f1_mean", "macro_f1_sd", "macro_f1_min", "macro_f1_max",
                  "n_test", "run_ids"]


def describe_replica(config: str | dict | None) -> str | None:
    """The part of a training run's stored config that replicas share (JSON text), or None for a run that
    is not a training run of a recipe (an evaluation, an imported or external model)."""
    try:
        config = json.loads(config) if isinstance(config, str) else config
    except ValueError:
        return None
    if not isinstance(config, dict) or not isinstance(config.get("recipe"), dict):
        return None
    recipe = json.loads(json.dumps(config["recipe"]))  # a deep copy
    if isinstance(recipe.get("train"), dict):
        recipe["train"].pop("seed", None)
    dataset = {k: v for k, v in (config.get("dataset") or {}).items() if k not in _DATASET_IGNORED}
    return json.dumps({"recipe": recipe, "dataset": dataset, "weights": config.get("weights")}, sort_keys=True)


def compute_seed_spread(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per group of complete training runs that differ only in their seed (two seeds or more):
    SPREAD_COLUMNS, largest group first. A seed trained twice counts once, with its newest run."""
    if not len(runs):
        return pd.DataFrame(columns=SPREAD_COLUMNS)
    frame = runs[(runs["kind"] == "train") & runs["test_accuracy"].notna()].copy()
    frame["replica"] = [describe_replica(c) for c in frame["config"]]
    frame = frame[frame["replica"].notna()]
    frame = frame.sort_values(["started_at", "run_id"], ascending=False)
    frame = frame.drop_duplicates(["dataset_fingerprint", "replica", "seed"])  # newest run per seed
    rows = []
    for _, group in frame.groupby(["dataset_fingerprint", "replica"], sort=False):
        if len(group) < 2:
            continue
        group = group.sort_values("seed")
        acc, f1 = group["test_accuracy"].astype(float), group["test_macro_f1"].astype(float)
        n_test = group["n_test"].dropna().unique()
        rows.append({
            "recipe": group["recipe"].iloc[0], "model": group["model"].iloc[0], "dataset": group["dataset"].iloc[0],
            "n_seeds": len(group), "seeds": ", ".join(str(int(s)) for s in group["seed"]),
            "accuracy_mean": acc.mean(), "accuracy_sd": acc.std(ddof=1),
            "accuracy_min": acc.min(), "accuracy_max": acc.max(),
            "macro_f1_mean": f1.mean(), "macro_f1_sd": f1.std(ddof=1), "macro_f1_min": f1.min(),
            "macro_f1_max": f1.max(),
            "n_test": int(n_test[0]) if len(n_test) == 1 else None,
            "run_ids": ", ".join(group["run_id"]),
        })
    out = pd.DataFrame(rows, columns=SPREAD_COLUMNS)
    return out.sort_values(["n_seeds", "recipe"], ascending=[False, True], kind="stable").reset_index(drop=True)


def select_spread_of(spread: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """The row of `spread` (compute_seed_spread) whose replicas include run `run_id`: one row, or none."""
    if not len(spread):
        return spread
    return spread[[run_id in ids.split(", ") for ids in spread["run_ids"]]].reset_index(drop=True)
