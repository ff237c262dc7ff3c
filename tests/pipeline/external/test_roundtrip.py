"""A model made here leaves and comes back: export-model both ways, evaluate --model on each export,
import-predictions of the run's own predictions; the audit and export work on every such run.

Runs on a copy of the session's demo store (a real 1-epoch light-CNN run on 300 synthetic faces), so
the runs added here never change what the other tests see as 'latest'.
"""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.cli import main
from tests.pipeline.external.stores import create_byom_store, dataset_args, latest_run, stored_predictions


@pytest.fixture(scope="module")
def byom(demo_store, tmp_path_factory):
    """The demo's trained run exported both ways and each export evaluated (runs of kind 'external', with a
    PyTorch-card run), and the run's own test predictions in a CSV with two rows of unknown images."""
    return create_byom_store(demo_store, tmp_path_factory.mktemp("byom"))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exports_evaluate_to_the_same_predictions(byom, fmt):
    run = byom["external"][fmt]
    assert run["config"]["card"]["format"] == fmt and run["config"]["card"]["file_sha256"]
    assert run["classes"] == byom["train"]["classes"]
    got = stored_predictions(byom["db"], run["run_id"]).set_index("image_id")
    ref = byom["preds"].set_index("image_id")
    assert sorted(got.index) == sorted(ref.index)
    diff = np.abs(np.stack(got.loc[ref.index, "probs"]) - np.stack(ref["probs"])).max()
    assert diff <= 1e-4, diff
    assert (got.loc[ref.index, "pred_label"] == ref["pred_label"]).all()
    assert run["test_accuracy"] == pytest.approx(byom["train"]["test_accuracy"])


def test_torchscript_export_gives_the_same_gradcam_maps(byom):
    from pipeline.data.images import load_images_array
    from pipeline.data.loaders import load_dataset
    from pipeline.explain.cams import compute_cams, resolve_target_layer
    from pipeline.external.card import load_card
    from pipeline.external.models import compute_card_cams, load_external_model, load_unit_batch
    from pipeline.train.augment import preprocess_batch
    from pipeline.train.models import load_model_from_checkpoint

    model, meta = load_model_from_checkpoint(byom["train"]["checkpoint_path"])
    scripted = load_external_model(load_card(byom["cards"]["torchscript"]))
    dataset = load_dataset(**byom["train"]["config"]["dataset"])
    images = load_images_array(dataset.split("test")[:6], int(meta["image_size"]))
    targets = [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]]
    layer, _ = resolve_target_layer(model)
    ref, _ = compute_cams(model, preprocess_batch(images, meta), targets, ["gradcam", "gradcam++"], layer)
    for _ in range(4):  # and again: TorchScript's profiling executor re-optimises the graph from the third call
        got = compute_card_cams(scripted, load_unit_batch(images, int(meta["image_size"])), targets,
                                ["gradcam", "gradcam++"])
        for m in ref:
            np.testing.assert_allclose(got[m], ref[m], atol=1e-4)


def test_import_predictions_reproduces_the_run(byom, capsys):
    folder, ref = byom["folder"], byom["preds"]
    assert main(["import-predictions", str(folder / "preds.csv"), *dataset_args(byom["train"]), "--db", str(byom["db"])]) == 0
    out = capsys.readouterr().out
    assert "2 rows name images that are not in the dataset (e.g. not_in_the_set_1, not_in_the_set_2)" in out
    run = latest_run(byom["db"], "predictions")
    assert run["config"]["unmatched"]["count"] == 2 and run["config"]["mode"] == "probabilities"
    assert run["test_accuracy"] == pytest.approx(byom["train"]["test_accuracy"])
    got = stored_predictions(byom["db"], run["run_id"]).set_index("image_id").loc[ref["image_id"]]
    assert (got["pred_label"].to_numpy() == ref["pred_label"].to_numpy()).all()

    labels = ref[["image_id"]].assign(pred_label=ref["pred_label"].str.lower())
    parquet = folder / "labels.parquet"
    labels.to_parquet(parquet)
    assert main(["import-predictions", str(parquet), *dataset_args(byom["train"]), "--db", str(byom["db"]),
                 "--name", "labels-only"]) == 0
    run = latest_run(byom["db"], "predictions")
    assert run["model"] == "labels-only" and run["config"]["mode"] == "labels"
    assert run["test_accuracy"] == pytest.approx(byom["train"]["test_accuracy"])


def test_audit_and_export_work_on_external_and_predictions_runs(byom, capsys):
    assert main(["import-predictions", str(byom["folder"] / "preds.csv"), *dataset_args(byom["train"]),
                 "--db", str(byom["db"]), "--name", "for-audit"]) == 0
    for run in (byom["external"]["onnx"], latest_run(byom["db"], "predictions")):
        assert main(["audit", "--run", run["run_id"], "--n-boot", "50", "--n-perm", "50",
                     "--db", str(byom["db"])]) == 0
        assert main(["export", "--run", run["run_id"], "--table", "audit", "--format", "csv",
                     "--db", str(byom["db"])]) == 0
        assert "accuracy" in capsys.readouterr().out


def test_export_model_refuses_runs_without_a_checkpoint(byom, capsys):
    run = byom["external"]["onnx"]
    assert main(["export-model", "--run", run["run_id"], "--format", "onnx", "--out", str(byom["folder"]),
                 "--db", str(byom["db"])]) == 2
    assert "without a checkpoint of its own" in capsys.readouterr().err
