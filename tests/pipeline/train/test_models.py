"""Architectures, pretrained-weight loading, checkpoints and the batch transforms."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline.train.augment import AugmentConfig, augment_batch, preprocess_batch
from pipeline.errors import UserError, WeightsUnavailableError
from pipeline.train.models import (
    create_model, default_target_layer, load_imagenet_state_dict, load_model_from_checkpoint, save_checkpoint,
)

META64 = {"image_size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "classes": list("abcdef")}


@pytest.mark.parametrize("arch,expected_layer", [
    ("lightcnn", "block3"), ("lightcnn-half", "block3"), ("resnet18", "layer4.1"), ("resnet50", "layer4.2"),
])
def test_create_model_forward_and_target_layer(arch, expected_layer):
    model = create_model(arch, 6).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 6)
    layer, name = default_target_layer(model)
    assert name == expected_layer
    assert dict(model.named_modules())[name] is layer


def test_lightcnn_widths():
    full, half = create_model("lightcnn", 6), create_model("lightcnn-half", 6)
    assert full.block3[0][0].out_channels == 128 and half.block3[0][0].out_channels == 64
    assert len(full.block1) == 2 and len(full.block2) == 2 and len(full.block3) == 3


def test_unknown_arch_is_user_error():
    with pytest.raises(UserError, match="unknown architecture 'vgg'"):
        create_model("vgg", 6)


def test_imagenet_weights_unavailable_names_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as err:
        load_imagenet_state_dict("resnet50")
    msg = str(err.value)
    assert "resnet50-11ad3fa6.pth" in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg
    assert "--weights none" in msg and "--weights PATH" in msg


def test_imagenet_weights_taken_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "resnet18-f37072fd.pth")
    model = create_model("resnet18", 7, weights="imagenet")
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert model.fc[1].weight.shape == (7, 512)  # ImageNet's 1000-class head skipped


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model"])
def test_weights_path_loads_backbone_and_skips_other_head(tmp_path, wrap):
    source = create_model("resnet18", 7)
    state = source.state_dict()
    obj = state if wrap == "bare" else {wrap: state, "epoch": 3}
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    model = create_model("resnet18", 6, weights=path)
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model.fc[1].weight.shape == (6, 512)
    same = create_model("resnet18", 7, weights=path)
    assert torch.equal(same.fc[1].weight, source.fc[1].weight)


def test_weights_path_mismatch_names_file(tmp_path):
    path = tmp_path / "light.pt"
    torch.save(create_model("lightcnn", 6).state_dict(), path)
    with pytest.raises(UserError, match="light.pt") as err:
        create_model("resnet18", 6, weights=path)
    assert "do not fit" in str(err.value)
    with pytest.raises(UserError, match="does not exist"):
        create_model("resnet18", 6, weights=tmp_path / "missing.pt")


def test_checkpoint_roundtrip_atomic(tmp_path):
    torch.manual_seed(0)
    model = create_model("lightcnn-half", 6).eval()
    meta = {"arch": "lightcnn-half", **META64, "recipe": "lightcnn-softlabel", "head_dropout": 0.5}
    path = save_checkpoint(tmp_path / "run" / "best.pt", {"meta": meta, "state_dict": model.state_dict()})
    assert sorted(os.listdir(path.parent)) == ["best.pt"]  # no temporary file left behind
    loaded, loaded_meta = load_model_from_checkpoint(path)
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(loaded(x), model(x))
    assert loaded_meta["classes"] == list("abcdef") and not loaded.training


def test_preprocess_batch_normalises_and_resizes():
    x = np.zeros((2, 40, 40, 3), np.uint8)
    x[1] = 255
    out = preprocess_batch(x, META64)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out[0], torch.full_like(out[0], -1.0)) and torch.allclose(out[1], torch.ones_like(out[1]))
    grey = preprocess_batch(np.full((1, 32, 32), 128, np.uint8), META64)
    assert grey.shape == (1, 3, 32, 32)


def test_augment_batch_seeded_and_input_untouched():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    before = x.clone()
    cfg = AugmentConfig(flip=True, rotation=15, translate=0.1, brightness=0.2, contrast=0.2, saturation=0.2,
                        colour_shift=0.15, erasing=0.5)
    a = augment_batch(x, META64, cfg, torch.Generator().manual_seed(1))
    b = augment_batch(x, META64, cfg, torch.Generator().manual_seed(1))
    c = augment_batch(x, META64, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(x, before)
    assert a.shape == (8, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    off = augment_batch(x, META64, AugmentConfig(flip=False), torch.Generator().manual_seed(1))
    assert torch.allclose(off, preprocess_batch(x, META64))


def test_colour_shift_keeps_feature_contrast():
    # A dark stroke on mid-grey skin: the shift moves both by the same amount per channel,
    # so the stroke's contrast is unchanged (unlike a brightness factor).
    x = torch.full((16, 8, 8, 3), 120, dtype=torch.uint8)
    x[:, 3:5] = 60
    meta = {**META64, "image_size": 8, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    out = augment_batch(x, meta, AugmentConfig(flip=False, colour_shift=0.15), torch.Generator().manual_seed(0))
    base = preprocess_batch(x, meta)
    shift = out[:, :, 0, 0] - base[:, :, 0, 0]
    assert torch.allclose(out[:, :, 3, 0] - out[:, :, 0, 0], base[:, :, 3, 0] - base[:, :, 0, 0], atol=1e-6)
    assert shift.abs().max() <= 0.15 * 4 / 3 + 1e-6 and shift.std() > 0.03
    assert not torch.allclose(shift[:, 0], shift[:, 1])          # channels shift by different amounts


def test_augment_flip_mirrors_images():
    x = torch.zeros(64, 8, 8, 3, dtype=torch.uint8)
    x[:, :, :4] = 255  # left half white
    out = augment_batch(x, {**META64, "image_size": 8}, AugmentConfig(flip=True), torch.Generator().manual_seed(0))
    left_white = (out[:, 0, :, 0] > 0).all(1)
    right_white = (out[:, 0, :, 7] > 0).all(1)
    assert torch.equal(left_white, ~right_white)
    assert 10 < int(right_white.sum()) < 54  # about half flipped
