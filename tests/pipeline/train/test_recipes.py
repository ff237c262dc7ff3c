"""The training recipes (pipeline/train/recipes.py): the two reference recipes as DESIGN.md states them."""
from __future__ import annotations

import dataclasses

import pytest

from pipeline.constants import IMAGENET_MEAN, SYMMETRIC_MEAN
from pipeline.errors import UserError
from pipeline.train.recipes import LIGHTCNN_SOFTLABEL, RECIPES, RESNET50_TRANSFER, get_recipe


def test_resnet50_transfer_is_the_first_reference():
    r = RESNET50_TRANSFER
    t = r.train
    assert (r.arch, r.image_size, r.num_classes, r.weights, r.mean) == ("resnet50", 224, 7, "imagenet", IMAGENET_MEAN)
    assert (t.optimizer, t.lr, t.weight_decay, t.batch_size) == ("adamw", 1e-4, 1e-4, 64)
    assert (t.loss, t.label_smoothing) == ("ce", 0.1)
    assert (t.scheduler, t.plateau_patience, t.plateau_factor, t.early_stopping_patience) == ("plateau", 3, 0.5, 5)
    assert {"conv1", "layer1"} <= set(t.frozen_modules) and t.amp
    a = t.augment
    assert a.flip and a.rotation == 10.0 and a.brightness > 0 and a.erasing > 0


def test_lightcnn_softlabel_is_the_second_reference():
    r = LIGHTCNN_SOFTLABEL
    t = r.train
    assert (r.arch, r.image_size, r.num_classes, r.weights, r.mean) == ("lightcnn", 64, 6, "none", SYMMETRIC_MEAN)
    assert (t.optimizer, t.lr, t.loss, r.head_dropout) == ("adam", 3e-4, "soft-ce", 0.5)
    assert t.augment.flip and t.augment.rotation == 15.0 and t.augment.translate == 0.1


def test_get_recipe_and_presets():
    assert get_recipe("lightcnn-softlabel") is LIGHTCNN_SOFTLABEL
    demo = get_recipe("lightcnn-softlabel", "demo")
    assert demo.preset == "demo" and demo.arch == "lightcnn-lite" and demo.head_dropout == 0.2 and demo.train.scheduler == "onecycle"
    # the preset changes the model, the schedule and the input size (48 px, FER2013's), not the classes,
    # normalisation or weights
    assert demo.image_size == 48
    same = ("name", "num_classes", "mean", "std", "weights")
    assert all(getattr(demo, f) == getattr(LIGHTCNN_SOFTLABEL, f) for f in same)
    with pytest.raises(UserError, match="unknown recipe 'nope'.*resnet50-transfer"):
        get_recipe("nope")
    with pytest.raises(UserError, match="no preset 'fast'.*known: demo"):
        get_recipe("lightcnn-softlabel", "fast")
    with pytest.raises(UserError, match="known: none"):
        get_recipe("resnet50-transfer", "demo")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_are_frozen(name):
    with pytest.raises(dataclasses.FrozenInstanceError):
        RECIPES[name].image_size = 1
