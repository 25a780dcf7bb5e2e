"""The discriminator / generator pairs of Salimans et al. 2016 (sec. 5) and Wei et al. 2018 (CT-GAN).

A discriminator returns ``(logits, feats)``: K class logits (the fake-class logit is fixed at 0) and the
features that feature matching and the consistency term read (the last hidden layer of the MLP, before its
noise; the global-pool output of the CNN). A generator maps z ~ U[0, 1)^z_dim to images. Models never
compute losses. ``build_models`` picks the pair from ``MODELS``, keyed by ``model.arch``.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DataConfig, ModelConfig
from .layers import (GaussianNoise, GeneratorNorm, MinibatchDiscrimination, WNConv2d, WNConvTranspose2d,
                     WNLinear, spectral_conv, spectral_linear)

# Number of reference samples of virtual batch norm (Salimans et al. 2016, sec. 3.4).
VBN_REFERENCE = 64


def _dense(in_features: int, out_features: int, cfg: ModelConfig, *, output: bool) -> nn.Module:
    """A weight-normalised dense layer (hidden: fixed scale, target std 1; output: trained scale,
    target std ``out_init_std``), or its spectral-norm counterpart."""
    if cfg.norm == "spectral":
        return spectral_linear(in_features, out_features)
    return WNLinear(in_features, out_features, init_std=cfg.weight_init_std,
                    target_std=cfg.out_init_std if output else 1.0, train_scale=output)


def _conv(in_channels: int, out_channels: int, kernel_size: int, cfg: ModelConfig, stride: int = 1,
          padding: int = 0) -> nn.Module:
    if cfg.norm == "spectral":
        return spectral_conv(in_channels, out_channels, kernel_size, stride, padding)
    return WNConv2d(in_channels, out_channels, kernel_size, stride, padding,
                    init_std=cfg.weight_init_std, target_std=1.0, train_scale=False)


class MLPDiscriminator(nn.Module):
    """MNIST discriminator: Gaussian noise on the input and after every hidden ReLU layer."""

    def __init__(self, image_shape: Tuple[int, int, int], n_classes: int, cfg: ModelConfig) -> None:
        super().__init__()
        in_features = math.prod(image_shape)
        widths = [in_features] + list(cfg.d_widths)
        self.input_noise = GaussianNoise(cfg.input_noise)
        self.hidden = nn.ModuleList(_dense(a, b, cfg, output=False) for a, b in zip(widths, widths[1:]))
        self.hidden_noise = GaussianNoise(cfg.hidden_noise)
        self.mbd = (MinibatchDiscrimination(widths[-1], cfg.mbd_kernels, cfg.mbd_kernel_dim)
                    if cfg.minibatch_discrimination else nn.Identity())
        out_features = widths[-1] + (cfg.mbd_kernels if cfg.minibatch_discrimination else 0)
        self.out = _dense(out_features, n_classes, cfg, output=True)
        self.batch_dependent = cfg.minibatch_discrimination
        self.n_features = widths[-1]

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        h = self.input_noise(x.flatten(1))  # (B, C*H*W)
        feats = h
        for layer in self.hidden:
            feats = F.relu(layer(h))  # (B, width); feature matching reads the last one, before noise
            h = self.hidden_noise(feats)
        logits = self.out(self.mbd(h))  # (B, K)
        return logits, feats


class CNNDiscriminator(nn.Module):
    """CIFAR-10 / SVHN discriminator: three 3x3 conv blocks with dropout, NiN layers, global mean pool.

    d_widths = [block 1, block 2, last 3x3 conv (no pad), NiN 1, NiN 2].
    """

    def __init__(self, image_shape: Tuple[int, int, int], n_classes: int, cfg: ModelConfig) -> None:
        super().__init__()
        c, w1, w2, w3, n1, n2 = image_shape[0], *cfg.d_widths
        self.layers = nn.Sequential(
            nn.Dropout(cfg.input_dropout),
            _conv(c, w1, 3, cfg, padding=1), nn.LeakyReLU(0.2),
            _conv(w1, w1, 3, cfg, padding=1), nn.LeakyReLU(0.2),
            _conv(w1, w1, 3, cfg, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Dropout(cfg.hidden_dropout),
            _conv(w1, w2, 3, cfg, padding=1), nn.LeakyReLU(0.2),
            _conv(w2, w2, 3, cfg, padding=1), nn.LeakyReLU(0.2),
            _conv(w2, w2, 3, cfg, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Dropout(cfg.hidden_dropout),
            _conv(w2, w3, 3, cfg, padding=0), nn.LeakyReLU(0.2),
            _conv(w3, n1, 1, cfg), nn.LeakyReLU(0.2),  # network-in-network: 1x1 convolutions
            _conv(n1, n2, 1, cfg), nn.LeakyReLU(0.2),
        )
        self.mbd = (MinibatchDiscrimination(n2, cfg.mbd_kernels, cfg.mbd_kernel_dim)
                    if cfg.minibatch_discrimination else nn.Identity())
        self.out = _dense(n2 + (cfg.mbd_kernels if cfg.minibatch_discrimination else 0), n_classes, cfg,
                          output=True)
        self.batch_dependent = cfg.minibatch_discrimination
        self.n_features = n2

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        h = self.layers(x)  # (B, n2, h, w)
        feats = h.mean(dim=(2, 3))  # (B, n2) global mean pool
        return self.out(self.mbd(feats)), feats


class _Generator(nn.Module):
    """Shared z handling: prepend the fixed reference batch when virtual batch norm is on."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.z_dim = cfg.z_dim
        self.virtual = cfg.virtual_batch_norm
        if self.virtual:
            self.register_buffer("z_ref", torch.rand(VBN_REFERENCE, cfg.z_dim))

    def _norm(self, n_features: int) -> GeneratorNorm:
        return GeneratorNorm(n_features, virtual=self.virtual, n_ref=VBN_REFERENCE)

    def body(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, z: Tensor) -> Tensor:
        if not self.virtual:
            return self.body(z)
        return self.body(torch.cat([self.z_ref, z], dim=0))[VBN_REFERENCE:]

    def sample_z(self, n: int, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None) -> Tensor:
        """z ~ Uniform[0, 1)^z_dim, as in the official code."""
        return sample_z(n, self.z_dim, device, generator)


def sample_z(n: int, z_dim: int, device: torch.device | str = "cpu",
             generator: torch.Generator | None = None) -> Tensor:
    """z ~ Uniform[0, 1)^z_dim, as in the official code. (n, z_dim)."""
    return torch.rand(n, z_dim, device=device, generator=generator)


@torch.no_grad()
def _init_generator_weight(weight: Tensor, cfg: ModelConfig) -> None:
    """``model.g_init``: N(0, weight_init_std), or Glorot-uniform with gain 1 (Lasagne's default, which the
    official MNIST generator's three dense layers take: U(-a, a), a = sqrt(6 / (fan_in + fan_out)))."""
    if cfg.g_init == "glorot":
        nn.init.xavier_uniform_(weight)
    else:
        nn.init.normal_(weight, std=cfg.weight_init_std)


def _output_activation(scaling: str) -> Callable[[Tensor], Tensor]:
    return torch.sigmoid if scaling == "unit" else torch.tanh


class MLPGenerator(_Generator):
    """MNIST generator: dense + batch norm (no gain) + softplus, then an l2-normalised output layer with a
    trained per-unit scale and a sigmoid (tanh for inputs scaled to [-1, 1])."""

    def __init__(self, image_shape: Tuple[int, int, int], scaling: str, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        widths = [cfg.z_dim] + list(cfg.g_widths)
        self.hidden = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(self._norm(b) for b in widths[1:])
        for layer in self.hidden:
            _init_generator_weight(layer.weight, cfg)
        self.out = WNLinear(widths[-1], math.prod(image_shape), init_std=cfg.weight_init_std,
                            train_scale=True, data_init=False)
        if cfg.g_init == "glorot":  # (normal: WNLinear's own N(0, init_std) draw)
            _init_generator_weight(self.out.v, cfg)
        self.activation = _output_activation(scaling)
        self.image_shape = tuple(image_shape)

    def body(self, z: Tensor) -> Tensor:
        h = z
        for layer, norm in zip(self.hidden, self.norms):
            h = F.softplus(norm(layer(h)))
        return self.activation(self.out(h)).view(-1, *self.image_shape)


class CNNGenerator(_Generator):
    """CIFAR-10 / SVHN generator: dense to 4x4, three 5x5 stride-2 transposed convolutions to 32x32.

    g_widths = [channels at 4x4, at 8x8, at 16x16]; the last layer is weight-normalised with a trained scale
    initialised to std ``out_init_std`` on a first batch.
    """

    def __init__(self, image_shape: Tuple[int, int, int], scaling: str, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        c, height, width = image_shape
        if height % 8 or width % 8:
            raise ValueError(f"the cnn generator needs image sides divisible by 8, got {height}x{width}")
        g0, g1, g2 = cfg.g_widths
        self.seed_shape = (g0, height // 8, width // 8)
        self.fc = nn.Linear(cfg.z_dim, math.prod(self.seed_shape), bias=False)
        # Batch norm of the dense layer per unit (g0 * H/8 * W/8 of them), before the reshape, as in the
        # official code; the transposed convolutions below are normalised per channel.
        self.norm0 = self._norm(math.prod(self.seed_shape))
        self.up1 = nn.ConvTranspose2d(g0, g1, 5, stride=2, padding=2, output_padding=1, bias=False)
        self.norm1 = self._norm(g1)
        self.up2 = nn.ConvTranspose2d(g1, g2, 5, stride=2, padding=2, output_padding=1, bias=False)
        self.norm2 = self._norm(g2)
        for layer in (self.fc, self.up1, self.up2):
            _init_generator_weight(layer.weight, cfg)
        self.out = WNConvTranspose2d(g2, c, 5, stride=2, padding=2, output_padding=1,
                                     init_std=cfg.weight_init_std, target_std=cfg.out_init_std,
                                     train_scale=True)
        if cfg.g_init == "glorot":
            _init_generator_weight(self.out.v, cfg)
        self.activation = _output_activation(scaling)

    def body(self, z: Tensor) -> Tensor:
        h = F.relu(self.norm0(self.fc(z))).view(-1, *self.seed_shape)  # (B, g0, H/8, W/8)
        h = F.relu(self.norm1(self.up1(h)))  # (B, g1, H/4, W/4)
        h = F.relu(self.norm2(self.up2(h)))  # (B, g2, H/2, W/2)
        return self.activation(self.out(h))  # (B, C, H, W)


MODELS: Dict[str, Tuple[type, type]] = {
    "mlp": (MLPDiscriminator, MLPGenerator),
    "cnn": (CNNDiscriminator, CNNGenerator),
}


def build_models(data: DataConfig, cfg: ModelConfig) -> Tuple[nn.Module, _Generator]:
    """The (discriminator, generator) pair named by ``cfg.arch`` for images of ``data.image_shape``."""
    d_cls, g_cls = MODELS[cfg.arch]
    shape = tuple(data.image_shape)
    return d_cls(shape, data.n_classes, cfg), g_cls(shape, data.scaling, cfg)
