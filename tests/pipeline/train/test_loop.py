"""The training loop on random tensors: losses, class weights, sampling, determinism, exact resume."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from pipeline.train.models import create_model
from pipeline.train.recipes import get_recipe
from pipeline.train.loop import (
    GroupDRO, SplitTensors, TrainConfig, compute_class_weights, compute_group_weights, compute_loss, epoch_order, fit,
    predict_probabilities, seed_everything,
)

META = {"image_size": 16, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "num_classes": 6,
        "classes": list("abcdef")}


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (24, 20, 20, 3), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 6, (24,), generator=g)
    soft = torch.softmax(torch.randn(24, 6, generator=g), 1)
    return SplitTensors(x, y, soft), SplitTensors(x[:8], y[:8], soft[:8])


def _config(recipe: str, **changes) -> TrainConfig:
    return replace(get_recipe(recipe).train, **{"epochs": 3, "batch_size": 8, **changes})


def _fit(arch, config, data, **kwargs):
    seed_everything(config.seed)
    model = create_model(arch, 6)
    result = fit(model, data[0], data[1], META, config, progress=False, log=lambda s: None, **kwargs)
    return model, result


def test_soft_ce_with_one_hot_equals_ce_and_focal_gamma0_equals_ce():
    logits, labels = torch.randn(10, 6), torch.randint(0, 6, (10,))
    ce = F.cross_entropy(logits, labels)
    assert compute_loss(logits, labels, None, TrainConfig(loss="soft-ce")) == pytest.approx(ce.item(), rel=1e-5)
    assert compute_loss(logits, labels, None, TrainConfig(loss="focal", focal_gamma=0)) == pytest.approx(ce.item(), rel=1e-5)
    smooth = F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert compute_loss(logits, labels, None, TrainConfig(loss="ce", label_smoothing=0.1)) == pytest.approx(smooth.item())


def test_class_weights():
    labels = torch.tensor([0] * 9 + [1] * 1)
    sqrt = compute_class_weights(labels, 2, "sqrt")
    balanced = compute_class_weights(labels, 2, "balanced")
    assert sqrt[1] / sqrt[0] == pytest.approx(3.0)
    assert balanced[1] / balanced[0] == pytest.approx(9.0)
    assert float((balanced[labels]).mean()) == pytest.approx(1.0)
    assert compute_class_weights(labels, 2, "none") is None


def test_balanced_sampler_evens_classes():
    labels = torch.tensor([0] * 900 + [1] * 100)
    order = epoch_order(labels, "balanced", torch.Generator().manual_seed(0))
    share = float((labels[order] == 1).float().mean())
    assert 0.4 < share < 0.6


@pytest.mark.parametrize("recipe,arch", [("lightcnn-softlabel", "lightcnn-half"), ("resnet50-transfer", "resnet18")])
def test_same_seed_same_model_and_exact_resume(data, recipe, arch):
    config = _config(recipe, epochs=2)
    full_model, full = _fit(arch, config, data)
    again_model, _ = _fit(arch, config, data)
    for a, b in zip(full_model.state_dict().values(), again_model.state_dict().values()):
        assert torch.equal(a, b)
    saved = []
    _, stopped = _fit(arch, config, data, stop_after=1, on_checkpoint=lambda s, best: saved.append(copy.deepcopy(s)))
    assert not stopped.finished and len(stopped.history) == 1
    resumed_model, resumed = _fit(arch, config, data, resume=saved[-1])
    assert resumed.finished and [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)


def test_frozen_modules_do_not_change(data):
    config = _config("resnet50-transfer", epochs=1)
    seed_everything(0)
    model = create_model("resnet18", 6)
    before = copy.deepcopy(model.state_dict())
    fit(model, data[0], data[1], META, config, progress=False, log=lambda s: None)
    after = model.state_dict()
    for key in before:
        if key.startswith(("conv1.", "bn1.", "layer1.")):
            assert torch.equal(before[key], after[key]), key  # weights and BN running stats
    assert not torch.equal(before["layer4.1.conv2.weight"], after["layer4.1.conv2.weight"])


def test_early_stopping_and_best_state(data):
    config = _config("lightcnn-softlabel", epochs=8, early_stopping_patience=1, lr=1.0)
    model, result = _fit("lightcnn-half", config, data)
    assert result.stopped_early and len(result.history) < 8
    losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == 1 + losses.index(min(losses))
    model.load_state_dict(result.best_state_dict)
    probs = predict_probabilities(model, data[1].images, META)
    assert probs.shape == (8, 6) and abs(probs.sum(1) - 1).max() < 1e-5


@pytest.mark.parametrize("changes", [{"loss": "focal", "class_weights": "sqrt"}, {"sampler": "balanced"},
                                     {"scheduler": "onecycle"}, {"scheduler": "plateau"}])
def test_options_plug_into_the_loop(data, changes):
    _, result = _fit("lightcnn-half", _config("lightcnn-softlabel", epochs=2, **changes), data)
    assert len(result.history) == 2 and all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 8])
def test_onecycle_trains_with_few_steps(steps):
    """A one-step warm-up (pct_start x steps == 1, e.g. 0.25 x 4) made OneCycleLR divide by zero."""
    import torch

    from pipeline.train.loop import TrainConfig, create_scheduler

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler, per_batch = create_scheduler(
        optimizer, TrainConfig(scheduler="onecycle", epochs=1, onecycle_pct_start=0.25), steps)
    assert per_batch
    lrs = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert all(lr == lr and lr >= 0 for lr in lrs)  # defined (no NaN), never negative

def test_group_weights_give_every_cell_the_same_total():
    groups = torch.tensor([0] * 8 + [1] * 4)
    labels = torch.tensor([0] * 6 + [1] * 2 + [0] * 1 + [1] * 3)
    w = compute_group_weights(groups, labels, 2)
    assert float(w.mean()) == pytest.approx(1.0)
    cells = groups * 2 + labels
    totals = [float(w[cells == c].sum()) for c in range(4)]
    assert totals == pytest.approx([totals[0]] * 4)
    assert float(w[0] / w[6]) == pytest.approx(2 / 6)     # a cell of 6 against a cell of 2


def test_group_weights_within_class_keep_a_balanced_samplers_emotions_equal():
    """Under class-balanced sampling each emotion's draws keep mean weight 1 (no second class
    correction) and the groups inside an emotion get equal totals."""
    groups = torch.tensor([0] * 60 + [1] * 30 + [0] * 9 + [1] * 1)
    labels = torch.tensor([0] * 90 + [1] * 10)
    w = compute_group_weights(groups, labels, 2, within_class=True)
    for c in (0, 1):
        assert float(w[labels == c].mean()) == pytest.approx(1.0)
        assert float(w[(labels == c) & (groups == 0)].sum()) == pytest.approx(float(w[(labels == c) & (groups == 1)].sum()))
    assert float(w.max()) == pytest.approx(5.0)            # the lone image of its cell: 10 / (2 cells x 1)
    plain = compute_group_weights(groups, labels, 2)
    assert float(plain[labels == 1].mean() / plain[labels == 0].mean()) == pytest.approx(9.0)   # 90 / 10 again


def test_group_dro_upweights_the_worst_cell():
    dro = GroupDRO(3, step_size=0.5)
    losses = torch.tensor([0.1, 0.1, 2.0, 2.0, 0.5], requires_grad=True)
    cells = torch.tensor([0, 0, 1, 1, 2])
    for _ in range(5):
        loss = dro.loss(losses, cells)
    assert int(dro.q.argmax()) == 1 and float(dro.q.sum()) == pytest.approx(1.0)
    assert float(dro.q[1]) > float(dro.q[2]) > float(dro.q[0])
    loss.backward()                                        # the gradient follows the weights
    assert losses.grad[2] > losses.grad[4] > losses.grad[0] > 0


def test_per_image_losses_average_to_the_mean_loss():
    logits, labels = torch.randn(10, 6), torch.randint(0, 6, (10,))
    soft = torch.softmax(torch.randn(10, 6), 1)
    for loss in ("ce", "soft-ce", "focal"):
        config = TrainConfig(loss=loss)
        each = compute_loss(logits, labels, soft, config, reduction="none")
        assert each.shape == (10,)
        assert float(each.mean()) == pytest.approx(float(compute_loss(logits, labels, soft, config)), rel=1e-5)


def _with_groups(data):
    train, val = data
    groups = torch.arange(len(train)) % 2
    return SplitTensors(train.images, train.labels, train.soft, groups), val


@pytest.mark.parametrize("changes", [{"group_balance": "sample"}, {"group_balance": "reweight"},
                                     {"group_dro": True}])
def test_group_mitigations_plug_into_the_loop_and_resume_exactly(data, changes):
    config = _config("lightcnn-softlabel", epochs=2, **changes)
    grouped = _with_groups(data)
    full_model, full = _fit("lightcnn-half", config, grouped)
    plain_model, _ = _fit("lightcnn-half", _config("lightcnn-softlabel", epochs=2), data)
    assert not all(torch.equal(a, b) for a, b in zip(full_model.state_dict().values(),
                                                     plain_model.state_dict().values()))
    saved = []
    _fit("lightcnn-half", config, grouped, stop_after=1, on_checkpoint=lambda s, best: saved.append(copy.deepcopy(s)))
    resumed_model, resumed = _fit("lightcnn-half", config, grouped, resume=saved[-1])
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)


def test_group_mitigation_without_groups_is_refused(data):
    with pytest.raises(ValueError, match="group codes"):
        _fit("lightcnn-half", _config("lightcnn-softlabel", epochs=1, group_dro=True), data)


def _input_sizes(model) -> list[tuple[bool, int]]:
    """(training?, input height) of every forward call of `model`, recorded by a hook."""
    seen: list[tuple[bool, int]] = []
    model.register_forward_pre_hook(lambda m, args: seen.append((m.training, int(args[0].shape[-1]))))
    return seen


def test_progressive_resizing_trains_the_first_epochs_small_and_resumes_exactly(data):
    config = _config("lightcnn-softlabel", epochs=4, progressive_size=8, progressive_fraction=0.5)
    assert config.progressive_epochs == 2
    seed_everything(0)
    model = create_model("lightcnn-lite", 6)
    seen = _input_sizes(model)
    logs: list[str] = []
    full = fit(model, data[0], data[1], META, config, progress=False, log=logs.append)
    steps = 3                                     # 24 images in batches of 8
    train_sizes = [size for training, size in seen if training]
    assert train_sizes == [8] * (2 * steps) + [16] * (2 * steps)
    assert {size for training, size in seen if not training} == {16}   # validation at the model's size
    assert ["trained at 8px" in line for line in logs if line.startswith("epoch")] == [True, True, False, False]

    plain = _config("lightcnn-softlabel", epochs=4)
    seed_everything(0)
    plain_model = create_model("lightcnn-lite", 6)
    fit(plain_model, data[0], data[1], META, plain, progress=False, log=lambda s: None)
    assert not torch.equal(plain_model.state_dict()["block1.0.0.weight"], model.state_dict()["block1.0.0.weight"])

    saved = []                                    # stopped inside the small epochs, resumed across the switch
    seed_everything(0)
    fit(create_model("lightcnn-lite", 6), data[0], data[1], META, config, progress=False, log=lambda s: None,
        stop_after=1, on_checkpoint=lambda s, best: saved.append(copy.deepcopy(s)))
    seed_everything(0)
    resumed_model = create_model("lightcnn-lite", 6)
    resumed = fit(resumed_model, data[0], data[1], META, config, progress=False, log=lambda s: None, resume=saved[-1])
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    for a, b in zip(model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("epochs,fraction,expected", [(12, 0.5, 6), (12, 1 / 3, 4), (12, 0.333, 4), (1, 1 / 3, 0),
                                                     (1, 0.5, 0), (3, 0.5, 1), (10, 0.7, 7), (5, 1.0, 5)])
def test_progressive_epochs_are_the_fraction_rounded_to_the_nearest(epochs, fraction, expected):
    config = TrainConfig(epochs=epochs, progressive_size=32, progressive_fraction=fraction)
    assert config.progressive_epochs == expected
    assert [config.epoch_image_size(e, 48) for e in range(1, epochs + 1)] == [32] * expected + [48] * (epochs - expected)
    assert TrainConfig(epochs=epochs, progressive_fraction=fraction).progressive_epochs == 0


@pytest.mark.parametrize("size,fraction,words", [(16, 0.5, "smaller than the model's input size 16"),
                                                 (4, 0.5, "at least 8"), (8, 0.0, "must be in (0, 1]"),
                                                 (8, 1.5, "must be in (0, 1]")])
def test_progressive_resizing_that_cannot_apply_is_refused(data, size, fraction, words):
    from pipeline.errors import UserError

    config = _config("lightcnn-softlabel", epochs=2, progressive_size=size, progressive_fraction=fraction)
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        _fit("lightcnn-lite", config, data)
