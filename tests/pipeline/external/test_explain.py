"""`explain` on runs that came from outside: TorchScript, PyTorch-card and ONNX models get the methods that
apply to them, with the checks that apply; imported predictions and gradient methods on ONNX are refused."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.constants import FACE_REGIONS
from pipeline.store import db as store
from tests.pipeline.external.stores import create_byom_store, dataset_args, latest_run

SMALL = ["--limit", "10", "--faithfulness-samples", "6", "--sanity-samples", "6", "--n-boot", "30",
         "--rise-masks", "40", "--quiet"]
ENERGY = [f"e_{r}" for r in FACE_REGIONS]


@pytest.fixture(scope="module")
def byom(demo_store, tmp_path_factory):
    return create_byom_store(demo_store, tmp_path_factory.mktemp("byom-explain"))


def _stored(db, run_id):
    with store.open_store(db, read_only=True) as con:
        return (store.load_frame(con, "heatmaps", run_id=run_id),
                store.load_frame(con, "explanation_metrics", run_id=run_id),
                store.load_frame(con, "failure_tags", run_id=run_id))


def _metrics(metrics, method):
    return set(metrics.loc[(metrics["method"] == method) & (metrics["emotion"] == "all"), "metric"])


def test_onnx_runs_get_the_gradient_free_methods_by_default(byom, capsys):
    run = byom["external"]["onnx"]
    assert main(["explain", "--run", run["run_id"], "--db", str(byom["db"]), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "gradient-free only" in out and "no randomisation sanity check" in out and "onnx file" in out
    heat, metrics, tags = _stored(byom["db"], run["run_id"])
    assert set(heat["method"]) == {"occlusion", "rise"}
    assert (heat["target_layer"] == "input").all()
    for method in ("occlusion", "rise"):
        h = heat[(heat["method"] == method) & (heat["target"] == "pred")]
        assert len(h) == 10
        energies = h[ENERGY].to_numpy(float)
        ok = ~np.isnan(energies).any(axis=1)
        np.testing.assert_allclose(energies[ok].sum(axis=1), 1.0, atol=1e-5)
        got = _metrics(metrics, method)
        # ROAD, confidence change and the ground-truth localisation apply to any map ...
        assert {"road_morf", "road_lerf", "conf_drop", "gt_energy", "gt_energy_uniform", "gt_energy_shuffled",
                "pointing", "pointing_shuffled"} <= got, got
        # ... the randomisation check needs weights, and there is no Grad-CAM to agree with.
        assert not {m for m in got if m.startswith("sanity") or m.startswith("agree")}
    assert set(tags.loc[tags["method"] != "", "method"]) <= {"occlusion", "rise"}


def test_onnx_runs_refuse_gradient_methods_naming_the_card(byom, capsys):
    run = byom["external"]["onnx"]
    assert main(["explain", "--run", run["run_id"], "--db", str(byom["db"]), "--methods", "gradcam,rise",
                 *SMALL]) == 2
    err = capsys.readouterr().err
    assert str(byom["cards"]["onnx"]) in err and "gradcam" in err and "--methods occlusion,rise" in err


def test_torchscript_gradcam_equals_the_trained_runs_and_agreement_is_stored(byom):
    """The demo explained its trained run with Grad-CAM; the TorchScript export's maps are the same maps."""
    run, train = byom["external"]["torchscript"], byom["train"]
    assert main(["explain", "--run", run["run_id"], "--db", str(byom["db"]), "--methods", "gradcam,occlusion",
                 *SMALL]) == 0
    heat, metrics, _ = _stored(byom["db"], run["run_id"])
    ref, _, _ = _stored(byom["db"], train["run_id"])
    layers = heat.groupby("method")["target_layer"].first().to_dict()
    assert layers["occlusion"] == "input" and layers["gradcam"] == ref.loc[ref["method"] == "gradcam",
                                                                          "target_layer"].iloc[0]
    mine = heat[heat["method"] == "gradcam"].set_index(["image_id", "target"])
    theirs = ref[ref["method"] == "gradcam"].set_index(["image_id", "target"]).loc[mine.index]
    a = np.stack([np.frombuffer(b, np.uint8) for b in mine["cam"]]).astype(int)
    b = np.stack([np.frombuffer(b, np.uint8) for b in theirs["cam"]]).astype(int)
    assert np.abs(a - b).max() <= 1  # uint8 rounding of the same maps
    agree = metrics[(metrics["metric"] == "agree_gradcam_spearman")]
    assert set(agree["method"]) == {"occlusion"} and "all" in set(agree["emotion"])
    row = agree[agree["emotion"] == "all"].iloc[0]
    assert -1 <= row["ci_low"] <= row["value"] <= row["ci_high"] <= 1 and row["n"] > 0
    assert not {m for m in _metrics(metrics, "gradcam") if m.startswith("sanity")}  # no re-initialisable weights


def test_pytorch_card_runs_get_the_sanity_check_for_cam_methods_only(byom, capsys):
    run = byom["external"]["pytorch"]
    assert main(["explain", "--run", run["run_id"], "--db", str(byom["db"]), "--methods", "gradcam,rise",
                 *SMALL[:-1]]) == 0
    out = capsys.readouterr().out
    assert "rise: no randomisation sanity check" in out and "gradcam: no randomisation" not in out
    heat, metrics, _ = _stored(byom["db"], run["run_id"])
    assert set(heat.loc[heat["method"] == "gradcam", "target_layer"]) == {"features"}
    assert "sanity_spearman" in _metrics(metrics, "gradcam")
    assert not {m for m in _metrics(metrics, "rise") if m.startswith("sanity")}
    assert "agree_gradcam_spearman" in _metrics(metrics, "rise")


def test_pytorch_card_names_the_candidates_of_an_unknown_layer(byom, capsys):
    run = byom["external"]["pytorch"]
    assert main(["explain", "--run", run["run_id"], "--db", str(byom["db"]), "--target-layer", "nope",
                 *SMALL]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "features" in err and str(byom["cards"]["pytorch"]) in err


def test_predictions_runs_have_no_model_to_explain(byom, capsys):
    assert main(["import-predictions", str(byom["folder"] / "preds.csv"), *dataset_args(byom["train"]),
                 "--db", str(byom["db"]), "--name", "to-explain"]) == 0
    run = latest_run(byom["db"], "predictions")
    capsys.readouterr()
    assert main(["explain", "--run", run["run_id"], "--db", str(byom["db"]), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert run["run_id"] in err and "no model to explain" in err and "preds.csv" in err
