"""Networks of one's own for the tests of ``model=custom`` and the estimator's ``discriminator=`` /
``generator=``: a small CNN discriminator built from ssgan's weight-normalised layers, and a generator."""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor, nn

from ssgan.layers import WNConv2d, WNLinear


class SmallCNN(nn.Module):
    """Two weight-normalised 3x3 convolutions, a global mean pool, a dense layer: (logits, features)."""

    def __init__(self, image_shape: Tuple[int, int, int], n_classes: int, width: int = 16) -> None:
        super().__init__()
        self.convs = nn.Sequential(nn.Dropout(0.2), WNConv2d(image_shape[0], width, 3, padding=1), nn.LeakyReLU(0.2),
                                   WNConv2d(width, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2))
        self.out = WNLinear(width, n_classes, train_scale=True)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        feats = self.convs(x).mean(dim=(2, 3))  # (B, width)
        return self.out(feats), feats


class SmallGenerator(nn.Module):
    """z -> a dense layer -> sigmoid images of the data's shape (no sample_z: ssgan adds it)."""

    def __init__(self, image_shape: Tuple[int, int, int], z_dim: int) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.net = nn.Sequential(nn.Linear(z_dim, 64), nn.ReLU(), nn.Linear(64, math.prod(image_shape)))

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.net(z)).view(-1, *self.image_shape)


class LogitsOnly(SmallCNN):
    """Breaks the contract: returns the logits alone."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)[0]


class NoParameters(nn.Module):
    """Breaks the contract: (logits, features) of the right shapes, but nothing to train."""

    def __init__(self, image_shape: Tuple[int, int, int], n_classes: int, width: int = 16) -> None:
        super().__init__()
        self.n_classes = n_classes

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        feats = x.flatten(1)
        return feats[:, :1].expand(-1, self.n_classes) * 0.0, feats


class FailsLater(SmallCNN):
    """Breaks mid-training: passes the contract check and the init, then raises from its ``fail_after``-th
    forward call on (a bug of one's own that only some batches reach)."""

    def __init__(self, image_shape: Tuple[int, int, int], n_classes: int, width: int = 16,
                 fail_after: int = 10) -> None:
        super().__init__(image_shape, n_classes, width)
        self.fail_after, self.calls = fail_after, 0

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        self.calls += 1
        if self.calls >= self.fail_after:
            raise ValueError(f"boom at call {self.calls}")
        return super().forward(x)
