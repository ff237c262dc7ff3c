"""Tiny importable model factories for the model-card tests (`factory = "tests.pipeline.external.factories:..."`)."""
from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv -> ReLU -> conv ('features') -> global average pool -> linear: 16x16 RGB in, num_classes out."""

    def __init__(self, num_classes: int = 6, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU())
        self.features = nn.Conv2d(4, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.features(self.stem(x)))).flatten(1))


class NanNet(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * float("nan")


def tiny(num_classes: int = 6, in_channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return TinyNet(num_classes, in_channels)


def nan_model(num_classes: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return NanNet(num_classes)
