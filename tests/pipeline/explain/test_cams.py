"""CAM computation (pipeline/explanation.py) and the `explain` command end to end.

Tiny real models: the light CNN at half width and a ResNet-18 on 32 px inputs.
Our batched, head-only backward must give exactly pytorch-grad-cam's maps.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.explain.cams import (METHODS, compute_cams, compute_heatmap_summary, decode_cam, encode_cam, find_layer,
                                  resolve_target_layer, validate_methods)
from pipeline.train.models import LightCNN, create_model

ALL_METHODS = list(METHODS)


ARCHS = ["lightcnn-half", "resnet18"]
_MODELS: dict[str, tuple[torch.nn.Module, torch.Tensor]] = {}


def _tiny(arch: str) -> tuple[torch.nn.Module, torch.Tensor]:
    if arch not in _MODELS:
        torch.manual_seed(0)
        _MODELS[arch] = (create_model(arch, 4).eval(), torch.randn(3, 3, 32, 32))
    model, x = _MODELS[arch]
    for p in model.parameters():
        p.grad = None
    return model, x


@pytest.fixture(params=ARCHS)
def tiny(request):
    return _tiny(request.param)


# ScoreCAM costs one forward pass per channel: checked on the light CNN (64 channels), not ResNet-18's 512.
METHOD_CASES = [(a, m) for a in ARCHS for m in METHODS if not (m == "scorecam" and a == "resnet18")]


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
               for m in model.modules())


@pytest.mark.parametrize("arch,method", METHOD_CASES)
def test_every_method_equals_the_library(arch, method):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = _tiny(arch)
    layer, _ = resolve_target_layer(model)
    pred, true = [0, 1, 2], [3, 3, 0]
    if method == "scorecam":  # one forward pass per channel: two images are enough
        x, pred, true = x[:2], pred[:2], true[:2]
    cams, logits = compute_cams(model, x, [pred, true], [method], layer, scorecam_batch_size=32)
    assert cams[method].shape == (2, len(x), 32, 32) and logits.shape == (len(x), 4)
    assert cams[method].min() >= 0 and cams[method].max() <= 1 + 1e-6
    for s, targets in enumerate((pred, true)):
        with METHODS[method](model, [layer]) as lib:
            lib.batch_size = 32  # ScoreCAM's masked batch; ignored by the others
            ref = lib(x, [ClassifierOutputTarget(c) for c in targets])
        np.testing.assert_allclose(cams[method][s], ref, atol=1e-5)
    assert _no_hooks(model)


def test_out_size_and_one_pass_for_several_methods(tiny):
    model, x = tiny
    layer, _ = resolve_target_layer(model)
    cams, _ = compute_cams(model, x, [[0, 1, 2]], ["gradcam", "layercam", "eigencam"], layer, out_size=(20, 10))
    assert set(cams) == {"gradcam", "layercam", "eigencam"}
    assert all(c.shape == (1, 3, 10, 20) for c in cams.values())


def test_hooks_released_inputs_untouched_and_mode_restored(tiny):
    model, x = tiny
    layer, _ = resolve_target_layer(model)
    before = x.clone()
    params = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        methods = [m for m in ALL_METHODS if m != "scorecam" or isinstance(model, LightCNN)]
        compute_cams(model, x, [[0, 1, 2]], methods, layer, scorecam_batch_size=16)
        assert model.training  # restored
    finally:
        model.eval()
    assert torch.equal(x, before)
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())  # no parameter gradients accumulate
    assert _no_hooks(model)


def test_hooks_released_after_an_error(tiny):
    model, x = tiny
    layer, _ = resolve_target_layer(model)
    with pytest.raises((IndexError, RuntimeError)):
        compute_cams(model, x, [[0, 1, 99]], ["gradcam"], layer)  # class 99 does not exist
    assert _no_hooks(model)
    assert torch.is_grad_enabled()


def test_target_layer_names():
    model = create_model("resnet18", 4)
    a, name_a = find_layer(model, "layer4[-1]")
    b, name_b = find_layer(model, "layer4.1")
    assert a is b is model.layer4[1] and name_a == name_b == "layer4.1"
    assert resolve_target_layer(model)[0] is model.layer4[1]
    light = create_model("lightcnn-half", 4)
    assert resolve_target_layer(light) == (light.block3, "block3")
    assert find_layer(light, "block2")[0] is light.block2
    with pytest.raises(ValueError, match="no child 'layer9'"):
        find_layer(model, "layer9")
    with pytest.raises(ValueError, match="out of range"):
        find_layer(model, "layer4.5")
    with pytest.raises(ValueError, match="unknown CAM method"):
        validate_methods(["gradcam", "nope"])


def test_stored_heatmap_round_trips():
    rng = np.random.default_rng(0)
    cam = rng.random((32, 32)).astype(np.float32)
    blob = encode_cam(cam, 32)
    assert isinstance(blob, bytes) and len(blob) == 32 * 32
    back = decode_cam(blob, 32)
    assert back.dtype == np.float32 and back.shape == (32, 32)
    assert np.abs(back - cam).max() <= 0.5 / 255 + 1e-6
    assert np.array_equal(decode_cam(blob), back)
    # larger maps are downsampled to the stored size, keeping where the mass is
    big = np.zeros((100, 100), np.float32)
    big[60:90, 30:70] = 1.0
    small = decode_cam(encode_cam(big, 32), 32)
    assert small[20:28, 11:21].min() > 0.9 and small[:15].max() == 0
    with pytest.raises(ValueError):
        decode_cam(blob, 16)


# --------------------------------------------------------------------------- the command

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from pipeline.store import db as store
    from pipeline.cli import main
    from pipeline.synth.faces import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("explain-synth") / "synthetic"
    generate_dataset(root, SynthConfig(n=60, seed=5, workers=1), progress=False)
    db = tmp_path_factory.mktemp("explain-db") / "results.duckdb"
    assert main(["train", "--dataset", "synthetic", "--root", str(root), "--db", str(db), "--recipe",
                 "lightcnn-softlabel", "--epochs", "1", "--batch-size", "16", "--image-size", "16", "--quiet",
                 "--device", "cpu"]) == 0
    with store.open_store(db, read_only=True) as con:
        run = store.get_run(con, "latest")
        preds = store.load_frame(con, "predictions", run_id=run["run_id"], split="test")
    return db, run, preds


def test_explain_command_stores_heatmaps_tags_and_metrics(trained_run):
    from pipeline.store import db as store
    from pipeline.cli import main
    from pipeline.constants import FACE_REGIONS

    db, run, preds = trained_run
    args = ["explain", "--db", str(db), "--run", run["run_id"][:12], "--methods", "gradcam,eigencam",
            "--faithfulness-samples", "4", "--sanity-samples", "4", "--n-boot", "50", "--quiet"]
    assert main(args) == 0
    with store.open_store(db, read_only=True) as con:
        heat = store.load_frame(con, "heatmaps", run_id=run["run_id"])
        tags = store.load_frame(con, "failure_tags", run_id=run["run_id"])
        metrics = store.load_frame(con, "explanation_metrics", run_id=run["run_id"])
    wrong = preds[preds["true_label"] != preds["pred_label"]]
    for method in ("gradcam", "eigencam"):
        h = heat[heat["method"] == method]
        assert (h["target"] == "pred").sum() == len(preds)
        assert set(h.loc[h["target"] == "true", "image_id"]) == set(wrong["image_id"])
        energies = h[[f"e_{r}" for r in FACE_REGIONS]].to_numpy(float)
        ok = ~np.isnan(energies).any(axis=1)
        np.testing.assert_allclose(energies[ok].sum(axis=1), 1.0, atol=1e-5)
        assert all(len(b) == 32 * 32 for b in h["cam"])
        assert h["gt_energy"].notna().any()  # synthetic: ground truth known
        m = metrics[metrics["method"] == method]
        for metric in ("gt_energy", "gt_energy_uniform", "gt_energy_shuffled", "pointing", "pointing_shuffled",
                       "road_morf", "conf_drop", "sanity_spearman"):
            assert ((m["metric"] == metric) & (m["emotion"] == "all")).any(), metric
    confusion = tags[tags["tag"].str.startswith("confusion:")]
    assert set(confusion["image_id"]) == set(wrong["image_id"])
    assert (confusion["method"] == "").all()
    # Re-running replaces a method's rows rather than adding to them.
    assert main(args[:6] + ["gradcam", "--faithfulness-samples", "0", "--sanity-samples", "0", "--quiet"]) == 0
    with store.open_store(db, read_only=True) as con:
        again = store.load_frame(con, "heatmaps", run_id=run["run_id"])
    assert len(again) == len(heat)


def test_explain_stores_the_exact_mean_of_its_heatmaps(trained_run, tmp_path):
    import shutil

    import pandas as pd

    from pipeline.store import db as store
    from pipeline.cli import main
    from pipeline.constants import FACE_REGIONS

    src, run, preds = trained_run
    db = tmp_path / "summary.duckdb"
    shutil.copy(src, db)
    energy = [f"e_{r}" for r in FACE_REGIONS]
    args = ["explain", "--db", str(db), "--run", run["run_id"], "--methods", "gradcam,layercam",
            "--faithfulness-samples", "0", "--sanity-samples", "0", "--quiet"]
    assert main(args) == 0
    with store.open_store(db, read_only=True) as con:
        heat = store.load_frame(con, "heatmaps", run_id=run["run_id"], target="pred")
        summary = store.load_frame(con, "heatmap_summary", run_id=run["run_id"])
    assert {"gradcam", "layercam"} <= set(summary["method"]) and (summary["split"] == "test").all()
    heat = heat.merge(preds[["image_id", "true_label", "correct"]], on="image_id")
    for method in ("gradcam", "layercam"):
        got = summary[summary["method"] == method].set_index(["emotion", "correct"]).sort_index()
        h = heat[heat["method"] == method]
        counts = preds.groupby(["true_label", "correct"]).size()
        assert got["n"].to_dict() == {k: int(v) for k, v in counts.items()}  # one row per (emotion, correct)
        for (emotion, correct), g in h.groupby(["true_label", "correct"]):
            row = got.loc[(emotion, correct)]
            np.testing.assert_allclose(row[energy].to_numpy(float), g[energy].mean().to_numpy(float), atol=1e-6)
            size = int(row["cam_size"])
            stored = np.stack([np.frombuffer(b, np.uint8).reshape(size, size) for b in g["cam"]])
            mean_cam = np.frombuffer(row["mean_cam"], "<f4").reshape(size, size)
            assert np.allclose(mean_cam, stored.mean(axis=0) / 255.0, atol=1e-6)
            assert mean_cam.std() > 0  # a real map, not a constant
    # Re-explaining a method replaces its summary rows; deleting the run removes them all.
    assert main(args[:6] + ["gradcam", "--faithfulness-samples", "0", "--sanity-samples", "0", "--quiet"]) == 0
    with store.open_store(db, read_only=True) as con:
        again = store.load_frame(con, "heatmap_summary", run_id=run["run_id"])
    keys = ["method", "split", "emotion", "correct", "n"]
    pd.testing.assert_frame_equal(again[keys], summary[keys])
    assert main(["runs", "--db", str(db), "--delete", run["run_id"]]) == 0
    with store.open_store(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM heatmap_summary").fetchone()[0] == 0


def test_explain_names_a_missing_run_or_checkpoint(trained_run, tmp_path, capsys):
    import shutil

    from pipeline.store import db as store
    from pipeline.cli import main

    db, run, _ = trained_run
    assert main(["explain", "--db", str(db), "--run", "nosuchrun", "--quiet"]) == 2
    assert "nosuchrun" in capsys.readouterr().err
    copy = tmp_path / "copy.duckdb"
    shutil.copy(db, copy)
    with store.open_store(copy) as con:
        con.execute("UPDATE runs SET checkpoint_path = ? WHERE run_id = ?", [str(tmp_path / "gone.pt"), run["run_id"]])
    assert main(["explain", "--db", str(copy), "--run", run["run_id"], "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "gone.pt" in err and run["run_id"] in err


def test_overlays_are_drawn_from_stored_maps_without_touching_inputs():
    from pipeline.explain.overlay import create_cam_overlay, create_region_overlay, to_pil
    from pipeline.explain.regions import compute_region_map

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    cam = decode_cam(encode_cam(rng.random((32, 32)), 32), 32)
    image_before, cam_before = image.copy(), cam.copy()
    out = create_cam_overlay(image, cam, alpha=0.5)
    assert out.shape == (100, 100, 3) and out.dtype == np.uint8 and not np.array_equal(out, image)
    assert np.array_equal(create_cam_overlay(image, cam, alpha=0.0), image)
    assert create_cam_overlay(image, cam, scale=2).shape == (200, 200, 3)
    assert create_cam_overlay(image[:, :, 0], cam).shape == (100, 100, 3)  # greyscale input
    regions = create_region_overlay(image, compute_region_map(None))
    assert regions.shape == (100, 100, 3) and np.array_equal(regions[0, 0], image[0, 0])  # background untinted
    assert to_pil(out).size == (100, 100)
    assert np.array_equal(image, image_before) and np.array_equal(cam, cam_before)
    with pytest.raises(ValueError):
        create_cam_overlay(image, cam, colormap="nope")


def test_heatmap_summary_is_the_exact_mean_per_emotion_and_outcome():
    import pandas as pd

    from pipeline.explain.regions import ENERGY_COLUMNS

    maps = [np.full((4, 4), v, np.float32) for v in (0.0, 1.0, 0.5)]
    energy = ENERGY_COLUMNS[0]
    heat = pd.DataFrame({"image_id": ["a", "b", "c", "a"], "target": ["pred", "pred", "pred", "true"],
                         "cam_size": 4, "cam": [encode_cam(m, 4) for m in maps] + [encode_cam(maps[1], 4)],
                         energy: [0.2, np.nan, 0.6, 0.9]})
    outcomes = pd.DataFrame({"image_id": ["a", "b", "c"], "true_label": ["Fear", "Fear", "Fear"],
                             "correct": [True, True, False]})
    before = heat.copy()
    out = compute_heatmap_summary(heat, outcomes, "test").set_index("correct")
    pd.testing.assert_frame_equal(heat, before)                       # input not mutated
    assert out.loc[True, "n"] == 2 and out.loc[False, "n"] == 1       # the 'true'-target map is not averaged
    mean = np.frombuffer(out.loc[True, "mean_cam"], "<f4").reshape(4, 4)
    assert np.allclose(mean, 0.5)
    assert out.loc[True, energy] == pytest.approx(0.2, abs=1e-6)      # unknown energies skipped, like SQL avg
    mixed = heat.assign(cam_size=[4, 8, 4, 4], cam=[encode_cam(maps[0], 4), encode_cam(maps[1], 8),
                                                     encode_cam(maps[2], 4), encode_cam(maps[1], 4)])
    with pytest.raises(ValueError, match="mix cam sizes"):
        compute_heatmap_summary(mixed, outcomes.assign(correct=True), "test")
