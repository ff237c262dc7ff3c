"""Batched tensor preprocessing and augmentation.

Each split is decoded once into a uint8 NHWC array; these functions turn whole
batches of it into normalised float NCHW tensors. Per-image PIL transforms were
too slow on 2-core machines, so flips, rotation+translation (one affine_grid /
grid_sample call), colour jitter, an additive colour shift and random erasing run on the batch tensor.
All randomness comes from the `torch.Generator` passed in, so a seed fixes it.

`preprocess_batch(x, meta)` is the evaluation transform everyone uses: resize to
meta["image_size"], scale to [0, 1], normalise with meta["mean"]/meta["std"].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True                  # horizontal flip with probability 0.5
    rotation: float = 0.0              # maximum rotation in degrees (uniform in ±rotation)
    translate: float = 0.0             # maximum shift as a fraction of the image size
    brightness: float = 0.0            # colour jitter factors drawn from [1-b, 1+b]
    contrast: float = 0.0
    saturation: float = 0.0
    # additive colour shift: a common offset drawn from ±colour_shift plus a per-channel one
    # from ±colour_shift/3 (fractions of the 0..1 range). It moves skin, features and background
    # together, as a different skin tone or white balance does, while keeping every feature's
    # contrast, which a multiplicative brightness factor would change.
    colour_shift: float = 0.0
    erasing: float = 0.0               # probability of erasing one random rectangle
    erasing_scale: tuple[float, float] = (0.02, 0.33)
    erasing_ratio: tuple[float, float] = (0.3, 3.3)


def to_tensor_nhwc(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 N,H,W[,C] array/tensor -> uint8 tensor N,H,W,3 (grey repeated)."""
    t = torch.as_tensor(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if t.ndim == 3:
        t = t.unsqueeze(-1)
    if t.ndim != 4:
        raise ValueError(f"expected a batch of images N,H,W[,C], got shape {tuple(t.shape)}")
    if t.shape[-1] == 1:
        t = t.expand(-1, -1, -1, 3)
    return t


def _to_float_nchw(x: torch.Tensor, size: int, device: torch.device | str | None) -> torch.Tensor:
    t = to_tensor_nhwc(x)
    if device is not None:
        t = t.to(device, non_blocking=True)
    t = t.permute(0, 3, 1, 2).float().div_(255.0)
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        t = t.clamp_(0.0, 1.0)
    return t.contiguous(memory_format=torch.channels_last)


def _normalise(t: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=t.dtype, device=t.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=t.dtype, device=t.device).view(1, -1, 1, 1)
    return (t - m) / s


def preprocess_batch(x: np.ndarray | torch.Tensor, meta: Mapping[str, Any],
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Evaluation transform: uint8 NHWC (or NHW grey) -> float NCHW normalised,
    resized to meta["image_size"], channels-last. meta is a checkpoint's meta
    (keys image_size, mean, std)."""
    t = _to_float_nchw(x, int(meta["image_size"]), device)
    return _normalise(t, meta["mean"], meta["std"])


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (high - low) + low


def _grey(t: torch.Tensor) -> torch.Tensor:
    return (0.299 * t[:, 0:1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3])


def augment_batch(x: np.ndarray | torch.Tensor, meta: Mapping[str, Any], config: AugmentConfig,
                  generator: torch.Generator, device: torch.device | str | None = None) -> torch.Tensor:
    """Training transform: like preprocess_batch, with random flip, rotation and
    translation, colour jitter (before normalisation) and random erasing (after,
    with value 0 = the mean colour, as torchvision's RandomErasing after Normalize).
    Random numbers are drawn on the CPU from `generator`, so results do not depend
    on the device."""
    # Long on purpose: each transform draws from the one generator in a fixed order, so a seed gives the same
    # batch; the order is the contract.
    t = _to_float_nchw(x, int(meta["image_size"]), device)
    n, _, h, w = t.shape
    dev = t.device

    if config.flip:
        flip = torch.rand(n, generator=generator) < 0.5
        if flip.any():
            idx = flip.nonzero().squeeze(1).to(dev)
            t[idx] = t[idx].flip(-1)

    if config.rotation > 0 or config.translate > 0:
        angle = _uniform(n, -config.rotation, config.rotation, generator) * (math.pi / 180.0)
        # affine_grid works in [-1, 1] coordinates: a shift of f * size pixels is 2f.
        tx = _uniform(n, -config.translate, config.translate, generator) * 2.0
        ty = _uniform(n, -config.translate, config.translate, generator) * 2.0
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(dev)
        grid = F.affine_grid(theta, list(t.shape), align_corners=False)
        t = F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    if config.brightness > 0:
        b = _uniform(n, 1 - config.brightness, 1 + config.brightness, generator).to(dev).view(n, 1, 1, 1)
        t = (t * b).clamp_(0, 1)
    if config.contrast > 0:
        c = _uniform(n, 1 - config.contrast, 1 + config.contrast, generator).to(dev).view(n, 1, 1, 1)
        mean = _grey(t).mean(dim=(1, 2, 3), keepdim=True)
        t = ((t - mean) * c + mean).clamp_(0, 1)
    if config.saturation > 0:
        s = _uniform(n, 1 - config.saturation, 1 + config.saturation, generator).to(dev).view(n, 1, 1, 1)
        g = _grey(t)
        t = ((t - g) * s + g).clamp_(0, 1)
    if config.colour_shift > 0:
        common = _uniform(n, -config.colour_shift, config.colour_shift, generator).view(n, 1)
        channel = _uniform(3 * n, -config.colour_shift / 3, config.colour_shift / 3, generator).view(n, 3)
        t = (t + (common + channel).to(dev).view(n, 3, 1, 1)).clamp_(0, 1)

    t = _normalise(t, meta["mean"], meta["std"])

    if config.erasing > 0:
        erase = torch.rand(n, generator=generator) < config.erasing
        area = _uniform(n, *config.erasing_scale, generator) * (h * w)
        log_r = _uniform(n, math.log(config.erasing_ratio[0]), math.log(config.erasing_ratio[1]), generator)
        ratio = torch.exp(log_r)
        eh = torch.sqrt(area * ratio).round().clamp(1, h).long()
        ew = torch.sqrt(area / ratio).round().clamp(1, w).long()
        top = (torch.rand(n, generator=generator) * (h - eh + 1).float()).floor().long()
        left = (torch.rand(n, generator=generator) * (w - ew + 1).float()).floor().long()
        rows = torch.arange(h).view(1, h, 1)
        cols = torch.arange(w).view(1, 1, w)
        mask = ((rows >= top.view(n, 1, 1)) & (rows < (top + eh).view(n, 1, 1))
                & (cols >= left.view(n, 1, 1)) & (cols < (left + ew).view(n, 1, 1))
                & erase.view(n, 1, 1))
        t = t.masked_fill(mask.unsqueeze(1).to(dev), 0.0)

    return t.contiguous(memory_format=torch.channels_last)
