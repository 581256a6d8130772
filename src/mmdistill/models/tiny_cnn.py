"""The built-in small student of seed 002: four conv blocks, global pooling, ~1.2M parameters.

Each block is two 3x3 conv + BatchNorm + ReLU layers followed by 2x2 max-pooling; with the
default widths (32, 64, 128, 256) that is 1.17M parameters, the size the fire/smoke seed used,
small enough to run in real time on a CPU and to quantize well (only conv/BN/ReLU/linear ops).

`norm: group` puts GroupNorm where BatchNorm is: per-sample statistics, so a DDP run with a
small batch per device trains as one device would (BatchNorm sees each rank's part of the
batch; SyncBatchNorm, which fixes that, works only on GPUs).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(math.gcd(8, channels), channels)


def _block(cin: int, cout: int, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        _norm(norm, cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        _norm(norm, cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class TinyCNN(nn.Module):
    def __init__(self, in_chans: int = 3, widths: tuple[int, ...] = (32, 64, 128, 256), norm: str = "batch"):
        super().__init__()
        chans = [in_chans, *widths]
        self.blocks = nn.Sequential(*[_block(a, b, norm) for a, b in zip(chans[:-1], chans[1:])])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map of the last block (for attention transfer and similar terms)."""
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling of a feature map (timm's name, so encoders treat both alike;
        there is no classifier, so `pre_logits` changes nothing)."""
        return self.pool(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
