"""Layers of the official networks: weight normalisation with data-dependent initialisation, Gaussian noise,
minibatch discrimination and virtual batch normalisation.

Weight normalisation (Salimans & Kingma 2016): w = g * v / ||v|| per output unit. The data-dependent
initialisation sets g and b on a first batch so that each unit's pre-activation has mean 0 and a target
std (docs/method.md sec. 3). As in the official code (docs/method.md sec. 6), the scale g of hidden layers is fixed
after that initialisation (a buffer) and only the output layers' scales are trained.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _WeightNormBase(nn.Module):
    """Shared parts of the weight-normalised layers. Subclasses define ``_apply_op``."""

    # Dims of v reduced by the norm: every dim except the output-unit dim.
    _unit_dim = 0

    def __init__(self, v_shape: tuple, n_units: int, *, init_std: float, target_std: float,
                 train_scale: bool, data_init: bool = True) -> None:
        super().__init__()
        self.data_init = data_init  # False: keep g = 1 (an l2-normalised layer, MNIST generator output)
        self.v = nn.Parameter(torch.randn(v_shape) * init_std)
        self.b = nn.Parameter(torch.zeros(n_units))
        scale = torch.ones(n_units)
        if train_scale:
            self.g = nn.Parameter(scale)
        else:
            self.register_buffer("g", scale)
        self.target_std = target_std
        self.init_mode = False  # set by data_dependent_init()

    def _norm_dims(self) -> list[int]:
        return [d for d in range(self.v.dim()) if d != self._unit_dim]

    def weight(self) -> Tensor:
        """w = g * v / ||v||, the norm taken per output unit."""
        shape = [1] * self.v.dim()
        shape[self._unit_dim] = -1
        norm = self.v.pow(2).sum(dim=self._norm_dims(), keepdim=True).sqrt()
        return self.v * (self.g.view(shape) / norm)

    def _apply_op(self, x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError

    def _unit_view(self, t: Tensor, ndim: int) -> Tensor:
        return t.view(1, -1, *([1] * (ndim - 2)))

    def scale(self) -> Tensor:
        """g / ||v|| per output unit, (units,): w = v * scale along the unit dim."""
        return self.g / self.v.pow(2).sum(dim=self._norm_dims()).sqrt()

    def _once(self, key: str, compute) -> Tensor:
        """``compute()``, or inside ``weights_once`` the value computed on this layer's first pass there."""
        cache = self.__dict__.get("_weight_cache")
        if cache is None:
            return compute()
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    def forward(self, x: Tensor) -> Tensor:
        if self.init_mode:
            return self.init_from_batch(x, self.target_std)
        if self.__dict__.get("scale_after") and not torch.is_autocast_enabled(x.device.type):
            # (x v^T) * g/||v|| + b: w is never written (train.step=lean; the same product up to rounding)
            out = self._apply_op(x, self.v)
            scale = self._once("scale", self.scale)
            return torch.addcmul(self._unit_view(self.b, out.dim()), out, self._unit_view(scale, out.dim()))
        weight = self._once("w", self.weight)
        if torch.is_autocast_enabled(x.device.type):
            # bf16: the bias inside the product (autocast casts it too). Added afterwards, a float32 bias would
            # turn every activation back into float32 (and the next layer cast it down again); inside, the
            # output stays bf16 and the separate add goes (one operator fewer per layer and pass).
            return self._apply_op(x, weight, self.b)
        out = self._apply_op(x, weight)  # float32: the official order, product then bias (bit-identical)
        return out + self._unit_view(self.b, out.dim())

    @torch.no_grad()
    def init_from_batch(self, x: Tensor, target_std: float) -> Tensor:
        """Data-dependent init: set g, b so the pre-activations on x have mean 0 and std target_std.

        With g = 1, b = 0 the pre-activation is t = x * v/||v||; then g <- target_std / std(t) and
        b <- -mean(t) * target_std / std(t), per unit. Returns the initialised layer's output on x.
        """
        self.g.fill_(1.0)
        t = self._apply_op(x, self.weight())  # (B, units, ...)
        dims = [0] + list(range(2, t.dim()))
        # The biased std (divide by the count), as in the official code's initialisation.
        mean, std = t.mean(dim=dims), t.std(dim=dims, correction=0)
        scale = target_std / (std + 1e-8)
        self.g.copy_(scale)
        self.b.copy_(-mean * scale)
        return (t - self._unit_view(mean, t.dim())) * self._unit_view(scale, t.dim())


class WNLinear(_WeightNormBase):
    """Weight-normalised dense layer; v: (out, in)."""

    def __init__(self, in_features: int, out_features: int, *, init_std: float = 0.05,
                 target_std: float = 1.0, train_scale: bool = False, data_init: bool = True) -> None:
        super().__init__((out_features, in_features), out_features, init_std=init_std,
                         target_std=target_std, train_scale=train_scale, data_init=data_init)

    def _apply_op(self, x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        return F.linear(x, weight, bias)


class WNConv2d(_WeightNormBase):
    """Weight-normalised convolution; v: (out, in, k, k)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, *, init_std: float = 0.05, target_std: float = 1.0,
                 train_scale: bool = False) -> None:
        super().__init__((out_channels, in_channels, kernel_size, kernel_size), out_channels,
                         init_std=init_std, target_std=target_std, train_scale=train_scale)
        self.stride, self.padding = stride, padding

    def _apply_op(self, x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        return F.conv2d(x, weight, bias, stride=self.stride, padding=self.padding)


class WNConvTranspose2d(_WeightNormBase):
    """Weight-normalised transposed convolution; v: (in, out, k, k), normalised per output channel."""

    _unit_dim = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, output_padding: int = 0, *, init_std: float = 0.05,
                 target_std: float = 1.0, train_scale: bool = False, data_init: bool = True) -> None:
        super().__init__((in_channels, out_channels, kernel_size, kernel_size), out_channels,
                         init_std=init_std, target_std=target_std, train_scale=train_scale,
                         data_init=data_init)
        self.stride, self.padding, self.output_padding = stride, padding, output_padding

    def _apply_op(self, x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        return F.conv_transpose2d(x, weight, bias, stride=self.stride, padding=self.padding,
                                  output_padding=self.output_padding)


def weight_norm_layers(module: nn.Module) -> Iterator[_WeightNormBase]:
    return (m for m in module.modules() if isinstance(m, _WeightNormBase))


@contextlib.contextmanager
def init_mode(module: nn.Module) -> Iterator[None]:
    """Within this context every weight-normalised layer initialises itself on the batch it sees."""
    layers = [layer for layer in weight_norm_layers(module) if layer.data_init]
    for layer in layers:
        layer.init_mode = True
    try:
        yield
    finally:
        for layer in layers:
            layer.init_mode = False


def scale_after_product(module: nn.Module, on: bool = True) -> None:
    """Make each weight-normalised layer of ``module`` apply its scale after the product,
    (x v^T) * g / ||v|| + b, instead of forming w = g v / ||v|| (``train.step=lean``): w is never written
    and read, one operator fewer per layer and pass (the bias added in the same ``addcmul``). The same
    function; products and sums rounded in another order (the last bits). Float32 only: under autocast the
    layers form w as before. Dense layers only: there w (in x out) outweighs the batch's outputs; a
    convolution's outputs (B, C, H, W) outweigh its kernel, and scaling them costs more bytes than w saves
    (CIFAR-10, measured: results/benchmarks.md)."""
    for layer in weight_norm_layers(module):
        if isinstance(layer, WNLinear):
            layer.__dict__["scale_after"] = on


@contextlib.contextmanager
def weights_once(module) -> Iterator[None]:
    """Within this context each weight-normalised layer of ``module`` (anything with ``modules()``) computes
    w = g v / ||v|| on its first pass and reuses it on the next ones: 5 operators per layer and pass fewer.
    The parameters must not change inside. A first pass under ``torch.no_grad`` gives a constant w (the
    network that a step does not train); the values, and the gradients into the other network, are the
    same as recomputing w for every pass (bit-identical)."""
    layers = list(weight_norm_layers(module))
    for layer in layers:
        layer.__dict__["_weight_cache"] = {}
    try:
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("_weight_cache", None)


@torch.no_grad()
def data_dependent_init(module: nn.Module, *inputs: Tensor) -> None:
    """Run one forward pass in init mode (noise and dropout active, as in the official code)."""
    was_training = module.training
    module.train()
    with init_mode(module):
        module(*inputs)
    module.train(was_training)


def gaussian_noise(x: Tensor, std: float, training: bool) -> Tensor:
    """x + N(0, std^2) during training, x unchanged otherwise."""
    if not training or std == 0:
        return x
    return x + torch.randn_like(x) * std


class GaussianNoise(nn.Module):
    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: Tensor) -> Tensor:
        return gaussian_noise(x, self.std, self.training)


def minibatch_features(m: Tensor) -> Tensor:
    """Minibatch discrimination (Salimans et al. 2016, sec. 3.2).

    m: (B, n_kernels, kernel_dim), the features projected by the tensor T. Returns o: (B, n_kernels) with
    o(x_i)_k = sum_{j != i} exp(-||M_i,k - M_j,k||_1).
    """
    dist = (m.unsqueeze(0) - m.unsqueeze(1)).abs().sum(dim=3)  # (B, B, n_kernels)
    return torch.exp(-dist).sum(dim=1) - 1.0  # drop the j = i term, exp(0) = 1


class MinibatchDiscrimination(nn.Module):
    """Appends minibatch features to each example's features: (B, F) -> (B, F + n_kernels)."""

    def __init__(self, in_features: int, n_kernels: int = 100, kernel_dim: int = 5) -> None:
        super().__init__()
        self.T = nn.Parameter(torch.randn(in_features, n_kernels * kernel_dim) * 0.05)
        self.n_kernels, self.kernel_dim = n_kernels, kernel_dim

    def forward(self, feats: Tensor) -> Tensor:
        m = (feats @ self.T).view(-1, self.n_kernels, self.kernel_dim)
        return torch.cat([feats, minibatch_features(m)], dim=1)


def virtual_batch_norm(x: Tensor, ref: Tensor, eps: float = 1e-5) -> Tensor:
    """Virtual batch normalisation (Salimans et al. 2016, sec. 3.4).

    Each example of x is normalised with the statistics of the fixed reference batch ``ref`` together with
    the example itself (weight 1/(R+1)). x: (B, C, ...), ref: (R, C, ...). Statistics are per channel.
    """
    dims = [0] + list(range(2, x.dim()))
    n_ref = ref.shape[0]
    ref_mean = ref.mean(dim=dims, keepdim=True)  # (1, C, 1...)
    ref_sq = ref.pow(2).mean(dim=dims, keepdim=True)
    own_dims = list(range(2, x.dim()))
    own_mean = x.mean(dim=own_dims, keepdim=True) if own_dims else x  # (B, C, 1...)
    own_sq = x.pow(2).mean(dim=own_dims, keepdim=True) if own_dims else x.pow(2)
    mean = (n_ref * ref_mean + own_mean) / (n_ref + 1)
    var = (n_ref * ref_sq + own_sq) / (n_ref + 1) - mean.pow(2)
    return (x - mean) / torch.sqrt(var.clamp_min(0) + eps)


class GeneratorNorm(nn.Module):
    """The generator's normalisation: batch norm without a gain, using batch statistics also when sampling
    (the official code), or virtual batch norm against the reference part of the batch.

    With ``virtual=True`` the input holds the reference batch first: x = cat(ref (R), main (B)); the
    reference rows are normalised with their own statistics and the main rows by ``virtual_batch_norm``.
    """

    def __init__(self, n_features: int, virtual: bool = False, n_ref: int = 0) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n_features))
        self.virtual, self.n_ref = virtual, n_ref

    def forward(self, x: Tensor) -> Tensor:
        dims = [0] + list(range(2, x.dim()))
        if self.virtual:
            ref, main = x[: self.n_ref], x[self.n_ref:]
            ref_out = (ref - ref.mean(dim=dims, keepdim=True)) / torch.sqrt(
                ref.var(dim=dims, unbiased=False, keepdim=True) + 1e-5)
            out = torch.cat([ref_out, virtual_batch_norm(main, ref)], dim=0)
        else:
            out = F.batch_norm(x, None, None, training=True, eps=1e-5)
        return out + self.bias.view(1, -1, *([1] * (x.dim() - 2)))


def spectral_linear(in_features: int, out_features: int) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(nn.Linear(in_features, out_features))


def spectral_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  padding: int = 0) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding))
