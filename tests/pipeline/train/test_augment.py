"""Batch transforms (pipeline/train/augment.py): evaluation preprocessing and seeded training augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.train.augment import AugmentConfig, augment_batch, preprocess_batch, to_tensor_nhwc

META = {"image_size": 8, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
NONE = AugmentConfig(flip=False)


@pytest.fixture
def batch():
    return np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)


def test_preprocess_normalises_to_nchw_channels_last(batch):
    before = batch.copy()
    t = preprocess_batch(batch, META)
    assert t.shape == (4, 3, 8, 8) and t.is_contiguous(memory_format=torch.channels_last)
    expected = (batch.transpose(0, 3, 1, 2) / 255.0 - 0.5) / 0.5
    assert np.allclose(t.numpy(), expected, atol=1e-6)
    assert np.array_equal(batch, before)  # input untouched


def test_grey_images_are_repeated_and_resized():
    grey = np.full((2, 16, 16), 255, np.uint8)
    assert to_tensor_nhwc(grey).shape == (2, 16, 16, 3)
    t = preprocess_batch(grey, META)
    assert t.shape == (2, 3, 8, 8) and torch.allclose(t, torch.ones_like(t))
    with pytest.raises(ValueError, match="N,H,W"):
        to_tensor_nhwc(np.zeros((8,), np.uint8))


def test_no_augmentation_equals_preprocessing(batch):
    out = augment_batch(batch, META, NONE, torch.Generator().manual_seed(0))
    assert torch.allclose(out, preprocess_batch(batch, META))


def test_the_same_seed_gives_the_same_batch(batch):
    cfg = AugmentConfig(flip=True, rotation=15, translate=0.1, brightness=0.2, colour_shift=0.1, erasing=0.5)
    a = augment_batch(batch, META, cfg, torch.Generator().manual_seed(3))
    b = augment_batch(batch, META, cfg, torch.Generator().manual_seed(3))
    c = augment_batch(batch, META, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_mirrors_or_keeps_each_image(batch):
    out = augment_batch(batch, META, AugmentConfig(flip=True), torch.Generator().manual_seed(1))
    plain = preprocess_batch(batch, META)
    flipped = [torch.allclose(o, p.flip(-1)) for o, p in zip(out, plain)]
    kept = [torch.allclose(o, p) for o, p in zip(out, plain)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped)


def test_colour_shift_keeps_feature_contrast():
    # mid-grey images with one darker feature: a shift moves both, never their difference
    img = np.full((3, 8, 8, 3), 128, np.uint8)
    img[:, 2:4, 2:4] = 96
    out = augment_batch(img, META, AugmentConfig(flip=False, colour_shift=0.1), torch.Generator().manual_seed(0))
    diff = out[:, :, 0, 0] - out[:, :, 2, 2]
    assert torch.allclose(diff, torch.full_like(diff, 2 * 32 / 255), atol=1e-5)
    assert not torch.allclose(out, preprocess_batch(img, META))


def test_erasing_fills_a_rectangle_with_the_mean_colour(batch):
    out = augment_batch(batch, META, AugmentConfig(flip=False, erasing=1.0), torch.Generator().manual_seed(0))
    plain = preprocess_batch(batch, META)
    for o, p in zip(out, plain):
        changed = (o != p).any(0)
        assert changed.any() and torch.all(o[:, changed] == 0)
        rows, cols = changed.nonzero(as_tuple=True)
        # a filled rectangle: every pixel of the bounding box was erased (up to pixels already 0)
        box = o[:, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert torch.all(box == 0)
