"""A store with runs of every kind on the same images, made by the real pipeline, for the external-run tests
(tests/pipeline/external) and the dashboard's pages on such runs (tests/dashboard).

`create_byom_store` copies the session's demo store (a 1-epoch light-CNN run on 300 synthetic faces), exports
its trained run both ways and evaluates each export (runs of kind 'external': TorchScript and ONNX), evaluates
a tiny PyTorch-card model with random weights (`tests.pipeline.external.factories:tiny`), and writes the
trained run's own test predictions to a CSV with two rows of unknown images (for import-predictions). The runs
go into a copy, so the other tests never see them as 'latest'.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.cli import main
from pipeline.external.card import InputSpec, render_card
from pipeline.store import db as store

FACTORY = "tests.pipeline.external.factories:tiny"


def dataset_args(run) -> list[str]:
    ds = run["config"]["dataset"]
    return ["--dataset", ds["name"], "--root", ds["root"], "--classes", str(ds["num_classes"])]


def latest_run(db, kind: str) -> dict:
    with store.open_store(db, read_only=True) as con:
        runs = store.list_runs(con)
        return store.get_run(con, runs[runs["kind"] == kind].sort_values("started_at")["run_id"].iloc[-1])


def stored_predictions(db, run_id: str) -> pd.DataFrame:
    with store.open_store(db, read_only=True) as con:
        return store.load_frame(con, "predictions", run_id=run_id, split="test")


def _write_pytorch_card(folder: Path, classes: list[str]) -> Path:
    from tests.pipeline.external.factories import tiny

    torch.save(tiny(num_classes=len(classes)).state_dict(), folder / "tiny.pt")
    text = render_card(name="tiny-pytorch", format="pytorch", file="tiny.pt", classes=classes,
                       input=InputSpec(size=16, mean=(0.5,) * 3, std=(0.25,) * 3), target_layer="features")
    text = text.replace("[input]", f'factory = "{FACTORY}"\nfactory_kwargs = {{ num_classes = {len(classes)} }}\n'
                                   "\n[input]")
    card = folder / "tiny-pytorch.toml"
    card.write_text(text)
    return card


def create_byom_store(demo_store: Path, folder: Path) -> dict:
    """{db, folder, train (run dict), preds (its test predictions), cards {format: path},
    external {format: run dict}} for formats torchscript, onnx and pytorch; preds.csv in `folder`."""
    db = folder / "results.duckdb"
    shutil.copy(demo_store, db)
    shutil.copytree(demo_store.parent / "runs", folder / "runs")     # a run's model is read from its store's runs/
    with store.open_store(db, read_only=True) as con:
        runs = store.list_runs(con)
        train = store.get_run(con, runs[runs["kind"] == "train"]["run_id"].iloc[0])
        preds = store.load_frame(con, "predictions", run_id=train["run_id"], split="test")
    cards, external = {}, {}
    for fmt in ("torchscript", "onnx"):
        assert main(["export-model", "--run", train["run_id"], "--format", fmt, "--out", str(folder / "out"),
                     "--db", str(db)]) == 0
        cards[fmt] = folder / "out" / f"{train['run_id']}-{fmt}.toml"
    cards["pytorch"] = _write_pytorch_card(folder, train["classes"])
    for fmt, card in cards.items():
        assert main(["evaluate", "--model", str(card), *dataset_args(train), "--db", str(db), "--quiet"]) == 0
        external[fmt] = latest_run(db, "external")
    classes = train["classes"]
    probs = pd.DataFrame(np.stack(preds["probs"]), columns=[c.lower() for c in classes])
    table = pd.concat([preds[["image_id"]].reset_index(drop=True), probs], axis=1)
    table = pd.concat([table, pd.DataFrame({"image_id": ["not_in_the_set_1", "not_in_the_set_2"]})
                       .assign(**{c.lower(): 1.0 / len(classes) for c in classes})], ignore_index=True)
    table.to_csv(folder / "preds.csv", index=False)
    return {"db": db, "folder": folder, "train": train, "preds": preds, "cards": cards, "external": external}
