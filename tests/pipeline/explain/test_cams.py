"""CAM computation (pipeline/explain/cams.py) and the per-emotion heatmap summary.

Tiny real models: the light CNN at half width and a ResNet-18 on 32 px inputs.
Our batched, head-only backward must give exactly pytorch-grad-cam's maps.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.explain.codec import encode_cam
from pipeline.explain.cams import (METHODS, compute_cams, compute_heatmap_summary, find_layer,
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


def test_heatmap_summary_is_the_exact_mean_per_emotion_and_outcome():
    import pandas as pd

    from pipeline.constants import ENERGY_COLUMNS

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


def test_the_demo_methods_and_checks_never_import_pytorch_grad_cam():
    """Grad-CAM, Grad-CAM++ and the confidence change are computed without the library
    (its import costs seconds); the formulas are the library's (the tests above)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, torch; from pipeline.train.models import create_model; "
            "from pipeline.explain.cams import compute_cams, resolve_target_layer; "
            "from pipeline.explain.faithfulness import compute_confidence_change, compute_road_scores; "
            "m = create_model('lightcnn-half', 4).eval(); x = torch.randn(2, 3, 32, 32); "
            "cams, _ = compute_cams(m, x, [[0, 1]], ['gradcam', 'gradcam++'], resolve_target_layer(m)[0]); "
            "compute_confidence_change(m, x, cams['gradcam'][0], [0, 1]); "
            "compute_road_scores(m, x, cams['gradcam++'][0], [0, 1], percentiles=(50,)); "
            "print(sorted(k for k in ('pytorch_grad_cam', 'torchvision', 'sklearn') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[3]).stdout.split("\n")
    assert out[0] == "[]"


def test_importing_cams_leaves_pytorch_grad_cam_and_torchvision_unloaded():
    """pytorch-grad-cam's package pulls torchvision's model zoo and scikit-learn
    (seconds); the module imports it only when a CAM is computed."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, pipeline.explain.cams as c; "
            "print(sorted(m for m in ('pytorch_grad_cam', 'torchvision', 'sklearn') if m in sys.modules)); "
            "print(c.METHODS['gradcam'].__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[3]).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "GradCAM"
