"""Process groups and shards (pipeline/train/distributed.py) and DDP training in the loop
(pipeline/train/loop.py under two gloo processes, spawned with torch.multiprocessing)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.errors import UserError
from pipeline.train.distributed import Shard, current_world, parse_shard, shard_slice


@pytest.mark.parametrize("text, shard", [("1/1", Shard(0, 1)), ("1/2", Shard(0, 2)), ("2/2", Shard(1, 2)),
                                         (" 3 / 4 ", Shard(2, 4))])
def test_parse_shard_counts_from_one(text, shard):
    assert parse_shard(text) == shard
    assert parse_shard(shard.label) == shard and shard.name == shard.label.replace("/", "-of-")


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "2", "a/b", "1/2/3", "-1/2"])
def test_parse_shard_rejects_bad_specs(text):
    with pytest.raises(UserError, match="--shard"):
        parse_shard(text)


@pytest.mark.parametrize("n", [0, 1, 5, 7, 43])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shard_slices_cover_the_items_once_in_order(n, count):
    items = list(range(n))
    blocks = [items[shard_slice(n, Shard(k, count))] for k in range(count)]
    assert sum(blocks, []) == items
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_a_plain_process_is_a_world_of_one():
    world = current_world()
    assert (world.rank, world.size, world.is_main) == (0, 1, True)


# --------------------------------------------------------------------------- DDP training, 2 CPU processes

# Without BatchNorm, DDP over 2 ranks with the global batch of one process is the same computation up to
# float rounding: measured relative gap |w_ddp - w_one| / |w_one - w_init| of about 1e-7.
MAX_GAP_WITHOUT_BATCHNORM = 1e-4
# With BatchNorm (the recipes' CNNs) each rank normalises with its own half batch (SyncBatchNorm is
# CUDA-only), so the trajectories part: measured val-loss gaps of 0.10 after 1 and 2 epochs at 8 images
# per rank, against a fall of 0.17 in those 2 epochs.
MAX_VAL_LOSS_GAP_WITH_BATCHNORM = 0.2


def _tiny_problem(**overrides):
    from pipeline.train.augment import AugmentConfig
    from pipeline.train.loop import SplitTensors, TrainConfig

    g = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 6, (70,), generator=g)
    images = torch.randint(0, 60, (70, 16, 16, 3), generator=g, dtype=torch.uint8)
    images[..., 0] += (labels * 30).to(torch.uint8).view(-1, 1, 1)   # a learnable cue
    soft = torch.softmax(torch.nn.functional.one_hot(labels, 6).float() * 3 + torch.rand(70, 6, generator=g), 1)
    train = SplitTensors(images=images[:56], labels=labels[:56], soft=soft[:56])
    val = SplitTensors(images=images[56:], labels=labels[56:], soft=soft[56:])
    config = TrainConfig(epochs=2, batch_size=16, lr=3e-3, loss="soft-ce", sampler="balanced",
                         early_stopping_patience=None, augment=AugmentConfig(flip=False), seed=0)
    meta = {"image_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3, "num_classes": 6, "classes": list("abcdef")}
    return train, val, dataclasses.replace(config, **overrides), meta


def _initial_model(batchnorm: bool):
    from torch import nn

    from pipeline.train.models import create_model

    torch.manual_seed(0)
    if batchnorm:
        return create_model("lightcnn", 6, head_dropout=0.0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 6))


def _train(batchnorm: bool):
    from pipeline.train.loop import fit

    train, val, config, meta = _tiny_problem()
    model = _initial_model(batchnorm)
    start = _flat(model.state_dict())
    result = fit(model, train, val, meta, config, "cpu", progress=False, log=lambda m: None)
    return start, model.state_dict(), result.history


def _ddp_worker(rank: int, world_size: int, rendezvous: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # as torchrun sets it: two processes on the same cores
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world_size)
    try:
        torch.save({bn: _train(bn)[1:] for bn in (False, True)}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _flat(state) -> torch.Tensor:
    """The parameters (not BatchNorm's running statistics, which are each rank's own between forwards)."""
    return torch.cat([v.flatten().float() for k, v in state.items() if v.is_floating_point() and "running" not in k])


def test_ddp_training_matches_one_process(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "ddp")
    mp.spawn(_ddp_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)]
    for batchnorm in (False, True):
        w0, one, one_history = _train(batchnorm)
        (state0, history0), (state1, history1) = ranks[0][batchnorm], ranks[1][batchnorm]
        torch.testing.assert_close(_flat(state0), _flat(state1))  # DDP keeps the ranks' weights equal
        timeless = [[{k: v for k, v in h.items() if k != "seconds"} for h in hist] for hist in (history0, history1)]
        assert timeless[0] == timeless[1]  # every rank logs, schedules and stops on the same figures
        assert [h["epoch"] for h in history0] == [1, 2]
        w1 = _flat(one)
        gap = float((_flat(state0) - w1).norm() / (w1 - w0).norm())
        loss_gap = max(abs(a["val_loss"] - b["val_loss"]) for a, b in zip(one_history, history0))
        print(f"batchnorm={batchnorm}: relative weight gap {gap:.2e}, val-loss gap {loss_gap:.3f}")
        if batchnorm:
            assert loss_gap < MAX_VAL_LOSS_GAP_WITH_BATCHNORM
        else:
            assert gap < MAX_GAP_WITHOUT_BATCHNORM
            assert loss_gap < 1e-4
