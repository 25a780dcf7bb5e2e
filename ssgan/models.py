"""The discriminator / generator pairs of Salimans et al. 2016 (sec. 5) and Wei et al. 2018 (CT-GAN).

A discriminator returns ``(logits, feats)``: K class logits (the fake-class logit is fixed at 0) and the
features that feature matching and the consistency term read (the last hidden layer of the MLP, before its
noise; the global-pool output of the CNN). A generator maps z ~ U[0, 1)^z_dim to images. Models never
compute losses. ``build_models`` picks the pair from ``MODELS``, keyed by ``model.arch``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Config, ConfigError, DataConfig, ModelConfig, first_line
from .layers import (GaussianNoise, GeneratorNorm, MinibatchDiscrimination, WNConv2d, WNConvTranspose2d,
                     WNLinear, data_dependent_init, spectral_conv, spectral_linear)
from .optim import HistoricalAverage, make_optimizer
from .trust import is_given, refusal

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


def build_models(data: DataConfig, cfg: ModelConfig) -> Tuple[nn.Module, nn.Module]:
    """The (discriminator, generator) pair named by ``cfg.arch`` for images of ``data.image_shape``;
    ``custom``: the user's modules of ``cfg.discriminator`` / ``cfg.generator`` (``build_custom``)."""
    shape = tuple(data.image_shape)
    if cfg.arch == "custom":
        return build_custom(cfg.discriminator, cfg.generator, shape, data.n_classes, cfg.z_dim)
    d_cls, g_cls = MODELS[cfg.arch]
    return d_cls(shape, data.n_classes, cfg), g_cls(shape, data.scaling, cfg)


# ---------------------------------------------------------------------------------- your own networks

class Encoder(nn.Module):
    """Bad GAN's VI encoder q(z | x) = N(mu(x), diag sigma(x)^2) (ssl_bad_gan model.py:273-296): three
    5x5 stride-2 convolutions (128, 256, 512 channels, no bias) each with batch norm and ReLU, then a linear
    layer to (mu, log sigma). Ours: any image size (the flattened width is computed), and the last layer is a
    plain linear one (the official weight-normalised one is never data-initialised either)."""

    def __init__(self, image_shape, z_dim: int, widths: Tuple[int, ...] = (128, 256, 512)) -> None:
        super().__init__()
        c, h, w = image_shape
        layers = []
        for width in widths:
            layers += [nn.Conv2d(c, width, 5, 2, 2, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            c, h, w = width, (h + 1) // 2, (w + 1) // 2
        self.core = nn.Sequential(*layers, nn.Flatten())
        self.out = nn.Linear(c * h * w, 2 * z_dim)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """x: (B, C, H, W) -> mu, log sigma, each (B, z_dim)."""
        return self.out(self.core(x)).chunk(2, dim=1)


def build_encoder(image_shape, z_dim: int) -> nn.Module:
    """The VI encoder for images of ``image_shape`` (C, H, W) and noise of ``z_dim``."""
    return Encoder(tuple(image_shape), z_dim)


class ModelError(ConfigError):
    """Networks of one's own that cannot be built or break the contract: one line, exit code 2."""


class CustomGenerator(nn.Module):
    """A user's generator with what ssgan asks of one: ``z_dim`` and ``sample_z`` (z ~ U[0, 1)^z_dim)."""

    def __init__(self, net: nn.Module, z_dim: int) -> None:
        super().__init__()
        self.net, self.z_dim = net, z_dim

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)

    def sample_z(self, n: int, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None) -> Tensor:
        return sample_z(n, self.z_dim, device, generator)


def _instantiate(spec: Dict, what: str, **offered) -> nn.Module:
    """``hydra.utils.instantiate(spec)`` with those of ``offered`` that the target's constructor accepts; only a
    spec the person running ssgan gave (``trust.is_given``): one read from a file names code to run."""
    if not is_given(spec):
        raise refusal(spec, what)
    import importlib
    import inspect

    from hydra.utils import instantiate

    try:
        module_name, _, name = str(spec["_target_"]).rpartition(".")
        target = getattr(importlib.import_module(module_name), name)
        parameters = inspect.signature(target).parameters
        takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
        extra = {k: v for k, v in offered.items() if (takes_any or k in parameters) and k not in spec}
        module = instantiate(spec, **extra)
    except Exception as error:  # ImportError, TypeError, the target's own: all a bad spec here
        cause = error.__cause__ or error
        raise ModelError(f"{what}: cannot build {spec.get('_target_')}: {type(cause).__name__}: "
                         f"{first_line(cause)}") from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"{what}: {spec['_target_']} gave a {type(module).__name__}, not a torch.nn.Module")
    return module


def build_custom(d_spec: Dict, g_spec: Dict, image_shape: Tuple[int, int, int], n_classes: int,
                 z_dim: int) -> Tuple[nn.Module, CustomGenerator]:
    """The user's (discriminator, generator) from Hydra instantiation specs (``model.arch=custom``)."""
    disc = _instantiate(d_spec, "model.discriminator", image_shape=image_shape, n_classes=n_classes)
    return disc, as_generator(_instantiate(g_spec, "model.generator", image_shape=image_shape, z_dim=z_dim), z_dim)


def as_generator(gen: nn.Module, z_dim: int) -> nn.Module:
    """A user's generator as ssgan uses one: as it is if it has ``sample_z``, else in a ``CustomGenerator``."""
    return gen if hasattr(gen, "sample_z") else CustomGenerator(gen, z_dim)


@torch.no_grad()
def check_contract(disc: nn.Module, gen: nn.Module, x: Tensor, n_classes: int, scaling: str) -> None:
    """D(x) -> (logits (B, K), features (B, F)) and G(z) -> images of x's shape in the data's range, on two
    examples in eval mode (no noise or dropout, so no random number is drawn but z's, from a generator of
    its own); ModelError with one line when broken."""
    for name, module in (("discriminator", disc), ("generator", gen)):  # an optimizer needs something to train
        if not any(p.requires_grad for p in module.parameters()):
            raise ModelError(f"the {name} has no parameters to train")
    was_training = disc.training, gen.training
    disc.eval()
    gen.eval()
    try:
        try:
            out = disc(x[:2])
        except Exception as error:  # the user's module failed on the data's images
            raise ModelError(f"the discriminator failed on images {tuple(x[:2].shape)}: {type(error).__name__}: "
                             f"{first_line(error)}") from None
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(torch.is_tensor(t) for t in out)):
            raise ModelError(f"the discriminator must return (logits (B, K), features (B, F)), it returned "
                             f"{type(out).__name__}")
        logits, feats = out
        if logits.shape != (2, n_classes) or feats.dim() != 2 or feats.shape[0] != 2:
            raise ModelError(f"the discriminator must return logits (B, {n_classes}) and features (B, F); for B=2 "
                             f"it returned {tuple(logits.shape)} and {tuple(feats.shape)}")
        z = gen.sample_z(2, x.device, torch.Generator(x.device).manual_seed(0))
        try:
            images = gen(z)
        except Exception as error:
            raise ModelError(f"the generator failed on z {tuple(z.shape)}: {type(error).__name__}: "
                             f"{first_line(error)}") from None
        low, high = (0.0, 1.0) if scaling == "unit" else (-1.0, 1.0)
        if not torch.is_tensor(images) or tuple(images.shape) != (2, *x.shape[1:]):
            raise ModelError(f"the generator must return images {(2, *x.shape[1:])} for 2 z, it returned "
                             f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
        if not torch.isfinite(images).all() or images.min() < low - 1e-3 or images.max() > high + 1e-3:
            raise ModelError(f"the generator's images must lie in the data's range [{low:g}, {high:g}] "
                             f"(dataset.scaling={scaling}); they span [{images.min():.3g}, {images.max():.3g}]")
    finally:
        disc.train(was_training[0])
        gen.train(was_training[1])


# ------------------------------------------------------------------------- a model's networks, built

@dataclass
class Networks:
    """One model's networks and optimizers: D, its Polyak average (the classifier), G, and their Adams."""

    disc: nn.Module
    disc_avg: nn.Module
    gen: nn.Module
    opt_d: torch.optim.Optimizer
    opt_g: torch.optim.Optimizer
    hist_d: Optional[HistoricalAverage] = None
    hist_g: Optional[HistoricalAverage] = None
    enc: Optional[nn.Module] = None  # Bad GAN's VI encoder q(z | x) and its Adam (method.vi_weight > 0)
    opt_e: Optional[torch.optim.Optimizer] = None

    def state_dict(self) -> Dict:
        return {"discriminator": self.disc.state_dict(), "discriminator_avg": self.disc_avg.state_dict(),
                "generator": self.gen.state_dict(), "opt_d": self.opt_d.state_dict(),
                "opt_g": self.opt_g.state_dict(),
                "historical_average": None if self.hist_d is None else
                {"d": self.hist_d.state_dict(), "g": self.hist_g.state_dict()},
                **({"encoder": self.enc.state_dict(), "opt_e": self.opt_e.state_dict()} if self.enc is not None
                   else {})}

    def load_state_dict(self, payload: Dict) -> None:
        self.disc.load_state_dict(payload["discriminator"])
        self.disc_avg.load_state_dict(payload["discriminator_avg"])
        self.gen.load_state_dict(payload["generator"])
        self.opt_d.load_state_dict(payload["opt_d"])
        self.opt_g.load_state_dict(payload["opt_g"])
        if self.hist_d is not None and payload.get("historical_average"):
            self.hist_d.load_state_dict(payload["historical_average"]["d"])
            self.hist_g.load_state_dict(payload["historical_average"]["g"])
        if self.enc is not None:
            self.enc.load_state_dict(payload["encoder"])
            self.opt_e.load_state_dict(payload["opt_e"])


def init_images(cfg: Config, x_all: Tensor, n_train: int, labeled_indices: np.ndarray,
                batches: Optional[Tuple[np.ndarray, ...]]) -> Tensor:
    """The images of D's data-dependent initialisation (``train.init_source``; docs/method.md sec. 6.4):
    ``pool``: ``init_batch`` images of the unlabeled pool drawn with ``RandomState([seed, 2])`` (ours);
    ``permuted``: the first of the permutation of the train split that picks the labeled subset (official
    MNIST); ``labeled``: the first of epoch 0's labeled stream, ``batches`` (official CIFAR-10 / SVHN);
    reflect-padded by ``train.init_pad`` pixels (CT-GAN's 36x36). (B, C, H + 2 pad, W + 2 pad)."""
    t = cfg.train
    if t.init_source == "pool":
        rows = np.random.RandomState([cfg.seed, 2]).permutation(len(x_all))[:t.init_batch]
    elif t.init_source == "permuted":  # balanced_labeled_subset's permutation (RandomState(seed))
        rows = np.random.RandomState(cfg.seed).permutation(n_train)[:t.init_batch]
    else:
        rows = labeled_indices[batches[0].reshape(-1)[:t.init_batch]]
    x = x_all[torch.from_numpy(rows).to(x_all.device)]
    if t.init_pad:
        x = torch.nn.functional.pad(x, (t.init_pad,) * 4, mode="reflect")
    return x


def init_networks(cfg: Config, x_init: Tensor, device: torch.device, *, probe: Optional[Tensor] = None,
                  modules: Optional[Tuple[nn.Module, nn.Module]] = None) -> Tuple[nn.Module, nn.Module]:
    """Build D and G (copies of ``modules`` when given) and initialise their weight-normalised layers
    (docs/method.md sec. 3, 6.3): D on the images ``x_init``, G on ``train.init_z`` z (``init_batch`` when
    unset). Noise and dropout are active, as in the official code. Networks of one's own are first checked
    against the contract on ``probe``, two images of the data's size. Draws from torch's global generator,
    which the caller has seeded."""
    if modules is not None:
        disc, gen = copy.deepcopy(modules[0]), as_generator(copy.deepcopy(modules[1]), cfg.model.z_dim)
    else:
        disc, gen = build_models(cfg.dataset, cfg.model)
    disc, gen = disc.to(device), gen.to(device)
    if cfg.model.arch == "custom" or modules is not None:
        check_contract(disc, gen, (x_init if probe is None else probe).to(device), cfg.dataset.n_classes,
                       cfg.dataset.scaling)
    data_dependent_init(disc, x_init.to(device))
    data_dependent_init(gen, gen.sample_z(cfg.train.init_z or cfg.train.init_batch, device))
    return disc, gen


def build_networks(cfg: Config, x_init: Tensor, device: torch.device, *, probe: Optional[Tensor] = None,
                   modules: Optional[Tuple[nn.Module, nn.Module]] = None, capturable: bool = False) -> Networks:
    """``init_networks``, the Polyak average (started at zero or from the initial weights: ``train.ema_start``)
    and the optimizers (in their capturable form when the iteration is captured as a CUDA graph)."""
    t = cfg.train
    disc, gen = init_networks(cfg, x_init, device, probe=probe, modules=modules)
    if t.channels_last:
        disc, gen = disc.to(memory_format=torch.channels_last), gen.to(memory_format=torch.channels_last)
    disc_avg = copy.deepcopy(disc).eval()
    with torch.no_grad():
        for p in disc_avg.parameters():
            p.requires_grad_(False)
            if t.ema_start != "init":  # the official scripts' start; buffers (fixed scales) stay copied
                p.zero_()
    history = cfg.method.historical_averaging > 0
    enc = opt_e = None
    if cfg.method.vi_weight > 0:  # drawn after D and G, so the networks of the other configs stay the same
        enc = build_encoder(cfg.dataset.image_shape, cfg.model.z_dim).to(device).train()
        opt_e = make_optimizer(enc.parameters(), t.optimizer, cfg.method.vi_lr or t.lr_g or t.lr, g_betas(t),
                               t.adam_eps, capturable)
    return Networks(disc, disc_avg, gen,
                    make_optimizer(disc.parameters(), t.optimizer, t.lr_d or t.lr, (t.beta1, t.beta2), t.adam_eps,
                                   capturable),
                    make_optimizer(gen.parameters(), t.optimizer, t.lr_g or t.lr, g_betas(t), t.adam_eps, capturable),
                    HistoricalAverage(disc.parameters()) if history else None,
                    HistoricalAverage(gen.parameters()) if history else None, enc, opt_e)


def g_betas(t) -> Tuple[float, float]:
    """G's (and the VI encoder's) Adam betas: ``train.beta1_g`` where set (Bad GAN: 0), else D's."""
    return (t.beta1 if t.beta1_g is None else t.beta1_g, t.beta2)
