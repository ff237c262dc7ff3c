"""The CUDA path of the training loop: mixed precision, channels-last, pinned staging, one GPU per rank.

These run on CUDA when it is present and skip with the reason otherwise; the CPU halves of the same
switches are checked here too, so that the branch taken on each device is pinned down.
"""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.train.distributed import World, process_device
from pipeline.train.loop import _stage

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device here (torch.cuda.is_available() is False)")


def _tiny_split(n: int = 24):
    from pipeline.train.loop import SplitTensors

    g = torch.Generator().manual_seed(0)
    return SplitTensors(images=torch.randint(0, 256, (n, 16, 16, 3), dtype=torch.uint8, generator=g),
                        labels=torch.arange(n) % 6)


def test_cpu_batches_are_not_staged():
    x = _tiny_split().images
    assert _stage(x, torch.device("cpu")) is x


def test_a_process_outside_torchrun_keeps_its_device():
    assert process_device("auto", World()) == "auto"
    assert process_device("cpu", World(rank=1, size=2, local_rank=1)) == "cpu"


@needs_cuda
def test_cuda_batches_are_staged_in_pinned_memory():
    staged = _stage(_tiny_split().images, torch.device("cuda"))
    assert staged.is_pinned()


@needs_cuda
def test_each_rank_takes_the_gpu_of_its_local_rank():
    assert process_device("auto", World(rank=3, size=4, local_rank=1)) == "cuda:1"
    assert process_device("cuda", World(rank=0, size=2, local_rank=0)) == "cuda:0"


@needs_cuda
def test_fit_on_cuda_uses_mixed_precision_and_channels_last():
    from pipeline.train.augment import AugmentConfig
    from pipeline.train.loop import TrainConfig, fit
    from pipeline.train.models import create_model

    torch.manual_seed(0)
    model = create_model("lightcnn", 6, head_dropout=0.0)
    states = []
    config = TrainConfig(epochs=1, batch_size=8, amp=True, early_stopping_patience=None,
                         augment=AugmentConfig(flip=True, rotation=10.0))
    meta = {"image_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3, "num_classes": 6, "classes": list("abcdef")}
    result = fit(model, _tiny_split(), _tiny_split(8), meta, config, "cuda", progress=False, log=lambda m: None,
                 on_checkpoint=lambda state, best: states.append(state))
    assert math.isfinite(result.history[0]["train_loss"])
    assert states[0]["scaler"] is not None, "the AMP grad scaler is on and saved for --resume"
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_cuda and conv.weight.is_contiguous(memory_format=torch.channels_last)
