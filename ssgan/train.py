"""Training: one discriminator step then one generator step per iteration (Salimans et al. 2016, sec. 5;
Wei et al. 2018), the official schedule, Polyak averaging, and ``fit``, the one path that the CLI, the seeds
runs and the estimator call.

The training frame (``train_members``) runs one model or several trained together: the epoch loop, the
learning rates, the data order, evaluation, the metrics log, checkpoints, SIGINT / SIGTERM and the outputs,
for every member. What an iteration does to the networks is an engine's ``step``: ``SingleEngine`` here (the
modules themselves), ``concurrent.StackedEngine`` for several models stacked and vectorised. Only this module
(and the vectorised step in ``concurrent.py``) calls both a network and a loss, and ``update`` is the one
place that runs ``backward()`` and an optimizer step.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import losses, plots
from .config import Config, ConfigError, MethodConfig, first_line, refused_options, resolve_device, validate
from .data import DataError, ImageData, augment, balanced_labeled_subset, epoch_order, load_data
from .evaluate import class_report, error_rate, float32_precision, predict_proba, sample_grid_png
from .layers import data_dependent_init
from .models import as_generator, build_encoder, build_models, check_contract, sample_z
from .optim import make_optimizer, set_lr
from .rundir import (CHECKPOINT_NAME, CONFUSION_NAME, CURVE_NAME, SAMPLES_NAME, MetricsLog, RunDirError, atomic_write,
                     check_resume_fits, environment, locked, restore_rng, rng_state, write_config, write_group_checkpoints, write_result)

logger = logging.getLogger(__name__)  # one DEBUG record per finished epoch (the CLI shows a progress bar)

# The per-iteration statistics, in the order of a stats row and of an epoch's record in metrics.jsonl.
STAT_NAMES = ("loss_d", "loss_sup", "loss_unl", "loss_fake", "loss_ct", "train_acc", "loss_g")

# ------------------------------------------------------------------------------------- pure functions


def lr_at(epoch: int, base_lr: float, decay_start: Optional[int], epochs: int) -> float:
    """The official schedule: constant, then linear from ``decay_start`` to 0 at ``epochs``.

    CIFAR-10: lr * min(1, (1200 - epoch) / 400), i.e. decay_start 800 of 1200 epochs. None: constant.
    """
    if decay_start is None or epoch < decay_start or epochs <= decay_start:
        return base_lr
    return base_lr * max(0.0, (epochs - epoch) / (epochs - decay_start))


@torch.no_grad()
def polyak_update(avg: nn.Module, model: nn.Module, decay: float) -> None:
    """avg <- decay * avg + (1 - decay) * model for every parameter; buffers are copied."""
    torch._foreach_lerp_(list(avg.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    buffers = list(avg.buffers())
    if buffers:  # one foreach copy, not one operator per buffer (the hidden layers' fixed scales g)
        torch._foreach_copy_(buffers, list(model.buffers()))


def _forward_parts(model: nn.Module, parts: List[Tensor]) -> List[Tuple[Tensor, Tensor]]:
    """Run the discriminator on several batches. Without batch-dependent layers one concatenated pass
    gives the same distribution of outputs as separate passes (dropout and noise are per example)."""
    if getattr(model, "batch_dependent", False):
        return [model(x) for x in parts]
    logits, feats = model(torch.cat(parts))
    sizes = [len(x) for x in parts]
    return list(zip(logits.split(sizes), feats.split(sizes)))


class HistoricalAverage:
    """Running mean of a network's parameters over the steps so far (Salimans et al. 2016, sec. 3.3)."""

    def __init__(self, model: nn.Module) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.means = [p.detach().clone() for p in self.params]
        self.count = 1

    @torch.no_grad()
    def update(self) -> None:
        self.count += 1
        torch._foreach_lerp_(self.means, [p.detach() for p in self.params], 1.0 / self.count)

    def penalty(self) -> Tensor:
        return losses.historical_averaging_loss(self.params, self.means)

    def state_dict(self) -> Dict:
        return {"means": [m.clone() for m in self.means], "count": self.count}

    def load_state_dict(self, state: Dict) -> None:
        with torch.no_grad():
            for mean, saved in zip(self.means, state["means"]):
                mean.copy_(saved)
        self.count = int(state["count"])


# ------------------------------------------------------------------------------------------ the steps

# fp16 is refused by config.validate: without gradient scaling small GAN gradients underflow silently
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """bf16 autocast for the forward passes, or nothing. Losses are float32 whatever the networks'
    precision (they cast the logits and features before logsumexp). Its cache of cast weights is off: weights
    change every step, and a CUDA graph must not keep casts made during its capture."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False)


def update(loss: Tensor, optimizer: torch.optim.Optimizer, *more: torch.optim.Optimizer) -> None:
    """Backward of ``loss`` into the optimizer's parameters only, then one optimizer step: the one place where
    training runs ``backward()`` and ``step()``, for one model or many.

    Several models stacked along a leading dimension give one loss each, (S,): their sum has each model's
    gradient in that model's slice, since the models share no parameters. Gradients flow only into the
    optimizer's parameters (``inputs=``), so the generator step leaves the discriminator's untouched.
    ``more``: optimizers stepped on the same loss (Bad GAN's VI encoder, trained with G).
    """
    optimizers = (optimizer, *more)
    params = [p for opt in optimizers for group in opt.param_groups for p in group["params"]]
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    torch.autograd.backward(loss.sum(), inputs=params)
    for opt in optimizers:
        opt.step()


def discriminator_step(disc: nn.Module, gen: nn.Module, optimizer: torch.optim.Optimizer, x_lab: Tensor,
                       y_lab: Tensor, x_unl: Tensor, z: Tensor, *, method: MethodConfig,
                       targets: Optional[Tensor] = None, history: Optional[HistoricalAverage] = None,
                       amp_dtype: Optional[torch.dtype] = None,
                       loss_fn: Optional[Callable] = None) -> Tuple[Dict[str, Tensor], Tensor]:
    """One update of D on L_D = L_sup + w (L_unl + L_fake + lambda CT) / 2 (+ the optional terms).

    x_lab: (B, C, H, W), y_lab: (B,), x_unl: (B, C, H, W), z: (B, z_dim); ``targets`` (B, K + F): the
    temporal ensemble's targets of x_unl (``method.ct_mode=temporal``). ``loss_fn``: the loss computation,
    ``discriminator_loss`` or its torch.compile'd form. Returns the step's statistics (0-d tensors) and the
    unlabeled pass's logits and features, (B, K + F), detached.
    """
    with autocast(x_lab.device, amp_dtype):
        loss, stats, outputs = (loss_fn or discriminator_loss)(disc, gen, x_lab, y_lab, x_unl, z, method, targets,
                                                               history)
    update(loss, optimizer)
    if history is not None:
        history.update()
    return stats, outputs


def discriminator_loss(disc: nn.Module, gen: nn.Module, x_lab: Tensor, y_lab: Tensor, x_unl: Tensor,
                       z: Tensor, method: MethodConfig, targets: Optional[Tensor] = None,
                       history: Optional[HistoricalAverage] = None,
                       ) -> Tuple[Tensor, Dict[str, Tensor], Tensor]:
    """L_D and its parts, from one pass of D over the labeled, unlabeled and generated batches; and that
    unlabeled pass's logits and features (B, K + F), detached (what the temporal ensemble records)."""
    with torch.no_grad():
        x_gen = gen(z)  # (B, C, H, W)
    (logits_lab, _), (logits_unl, feats_unl), (logits_gen, _) = _forward_parts(disc, [x_lab, x_unl, x_gen])
    sup = losses.supervised_loss(logits_lab, y_lab)
    unl = losses.unlabeled_loss(logits_unl, method.label_smoothing)
    fake = losses.fake_loss(logits_gen)
    ct = torch.zeros((), device=x_lab.device)
    if method.ct_weight > 0 and method.ct_mode == "temporal":
        # The one unlabeled pass against each example's moving average of earlier logits and features.
        target_logits, target_feats = targets.split([logits_unl.shape[1], feats_unl.shape[1]], dim=1)
        ct = losses.consistency_loss(logits_unl.float().softmax(1), target_logits.float().softmax(1), feats_unl,
                                     target_feats, method.ct_feat_weight, method.ct_margin)
    elif method.ct_weight > 0:
        # Second pass of the same unlabeled batch under fresh dropout / noise; the first is the one above.
        logits_unl2, feats_unl2 = disc(x_unl)
        ct = losses.consistency_loss(logits_unl.float().softmax(1), logits_unl2.float().softmax(1), feats_unl,
                                     feats_unl2, method.ct_feat_weight, method.ct_margin)
    loss = losses.discriminator_loss(sup, unl, fake, ct, method.unl_weight, method.ct_weight)
    if method.cond_entropy_weight > 0:  # Bad GAN (svhn_trainer.py:83, 93): outside the factor 1/2
        loss = loss + method.cond_entropy_weight * losses.conditional_entropy(logits_unl)
    if method.gradient_penalty > 0:
        eps = torch.rand(len(x_gen), *([1] * (x_gen.dim() - 1)), device=x_gen.device)  # (B, 1, 1, 1)
        n = min(len(x_unl), len(x_gen))
        x_hat = losses.interpolate(x_unl[:n], x_gen[:n], eps[:n]).requires_grad_(True)
        realness = torch.logsumexp(disc(x_hat)[0].float(), dim=1)  # log Z(x_hat), the logit of D(x_hat)
        (grad,) = torch.autograd.grad(realness.sum(), x_hat, create_graph=True)
        loss = loss + method.gradient_penalty * losses.gradient_penalty(grad)
    if history is not None:
        loss = loss + method.historical_averaging * history.penalty()
    with torch.no_grad():
        acc = (logits_lab.argmax(1) == y_lab).float().mean()
    outputs = torch.cat([logits_unl.float(), feats_unl.float()], dim=1).detach()  # (B, K + F)
    return loss, {"loss_d": loss.detach(), "loss_sup": sup.detach(), "loss_unl": unl.detach(),
                  "loss_fake": fake.detach(), "loss_ct": ct.detach(), "train_acc": acc}, outputs


def generator_step(disc: nn.Module, gen: nn.Module, optimizer: torch.optim.Optimizer, x_unl: Tensor,
                   z: Tensor, *, fm_norm: int, history_weight: float = 0.0,
                   history: Optional[HistoricalAverage] = None, amp_dtype: Optional[torch.dtype] = None,
                   loss_fn: Optional[Callable] = None, pull_away_weight: float = 0.0,
                   encoder: Optional[nn.Module] = None, vi_weight: float = 0.0,
                   opt_e: Optional[torch.optim.Optimizer] = None, density: Optional[Callable] = None,
                   density_z: Optional[Tensor] = None) -> Tensor:
    """One update of G by feature matching against a second, independently drawn unlabeled batch (plus
    Bad GAN's pull-away and VI terms where their weights are set; the encoder is stepped with G).

    x_unl: (B, C, H, W), z: (B, z_dim). ``loss_fn``: the loss computation, ``generator_loss`` or its
    torch.compile'd form. Returns the loss (0-d).
    """
    with autocast(x_unl.device, amp_dtype):
        loss = (loss_fn or generator_loss)(disc, gen, x_unl, z, fm_norm, pull_away_weight=pull_away_weight,
                                           encoder=encoder, vi_weight=vi_weight)
    if history is not None:
        loss = loss + history_weight * history.penalty()
    if density_z is not None:  # Bad GAN's low-density penalty on this iteration (density.DensityPenalty)
        loss = loss + density(gen, density_z)
    update(loss, optimizer, *([opt_e] if opt_e is not None else []))
    if history is not None:
        history.update()
    return loss.detach()


def generator_loss(disc: nn.Module, gen: nn.Module, x_unl: Tensor, z: Tensor, fm_norm: int, *,
                   pull_away_weight: float = 0.0, encoder: Optional[nn.Module] = None,
                   vi_weight: float = 0.0) -> Tensor:
    """Feature matching of G(z) against a real batch, both through D in training mode (the official code);
    Bad GAN's generator entropy terms where their weights are set: the pull-away term on the generated
    features (svhn_trainer.py:116-124) and the encoder's Gaussian NLL of z (cifar_trainer.py:113-123)."""
    x_gen = gen(z)  # (B, C, H, W)
    with torch.no_grad():
        _, feats_real = disc(x_unl)
    _, feats_gen = disc(x_gen)
    loss = losses.feature_matching_loss(feats_real, feats_gen, fm_norm)
    if pull_away_weight > 0:
        loss = loss + pull_away_weight * losses.pull_away_term(feats_gen)
    if vi_weight > 0:
        mu, log_sigma = encoder(x_gen)  # each (B, z_dim)
        loss = loss + vi_weight * losses.gaussian_nll(mu, log_sigma, z)
    return loss


def compiled_losses(backend: str, mode: Optional[str] = None) -> Tuple[Optional[Callable], Optional[Callable]]:
    """The D and G loss computations (forward passes and losses; backward follows through AOT autograd)
    captured with ``torch.compile(backend=..., mode=...)``, or (None, None) for eager. The optimizer steps
    and the Polyak update stay outside: they are already foreach kernels."""
    if backend == "off":
        return None, None
    options = {"backend": backend, **({"mode": mode} if mode else {})}
    return torch.compile(discriminator_loss, **options), torch.compile(generator_loss, **options)


# -------------------------------------------------------------------------------- networks and engine

class TemporalEnsemble:
    """The per-example targets of CT-GAN's temporal-ensemble form (Wei et al. 2018; CT_CIFAR-10_TE.py,
    docs/method.md sec. 6.9): for every example of the unlabeled pool, a moving average over epochs of its
    logits and features from the unlabeled pass of D's step (dropout on, before the step's update).

    After each epoch, ensemble <- decay ensemble + (1 - decay) values, where ``values`` holds each example's
    latest logits and features; during epoch e (e finished epochs before it) the targets are
    ensemble / (1 - decay^e), bias-corrected, and zero in the first epoch.
    """

    def __init__(self, n_examples: int, width: int, decay: float, device: torch.device) -> None:
        self.decay = decay
        self.ensemble = torch.zeros(n_examples, width, device=device)  # (U, K + F)
        self.values = torch.zeros(n_examples, width, device=device)  # (U, K + F), the latest per example
        self.epochs = 0  # finished epochs
        # 1 - decay^epochs on the device (1 before the first epoch, whose targets are the zero ensemble), so
        # that a captured iteration reads each epoch's correction
        self.correction = torch.ones((), device=device)

    def targets(self, rows: Tensor) -> Tensor:
        """The targets of the pool's ``rows`` (B,) during the current epoch: (B, K + F)."""
        return self.ensemble[rows] / self.correction

    def record(self, rows: Tensor, outputs: Tensor) -> None:
        """This iteration's logits and features (B, K + F) of the pool's ``rows`` (B,)."""
        self.values[rows] = outputs.float()

    def end_epoch(self) -> None:
        self.ensemble.mul_(self.decay).add_(self.values, alpha=1 - self.decay)
        self.epochs += 1
        self.correction.fill_(1 - self.decay ** self.epochs)

    def state_dict(self) -> Dict[str, Tensor]:
        return {"ensemble": self.ensemble.cpu(), "values": self.values.cpu(), "epochs": self.epochs}

    def load_state_dict(self, state: Dict[str, Tensor]) -> None:
        self.ensemble.copy_(state["ensemble"])
        self.values.copy_(state["values"])
        self.epochs = int(state["epochs"])
        self.correction.fill_(1 - self.decay ** self.epochs if self.epochs else 1.0)


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


def init_networks(cfg: Config, x_init: Tensor, device: torch.device, probe: Optional[Tensor] = None,
                  modules: Optional[Tuple[nn.Module, nn.Module]] = None) -> Tuple[nn.Module, nn.Module]:
    """Build D and G (copies of ``modules`` when given) and initialise their weight-normalised layers
    (docs/method.md sec. 3, 6.3): D on the images ``x_init`` (``init_images``), G on ``train.init_z`` z
    (``init_batch`` when unset). Noise and dropout are active, as in the official code. Networks of one's
    own are first checked against the contract on ``probe``, two images of the data's size. Draws from
    torch's global generator, which the caller has seeded."""
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


def build_networks(cfg: Config, x_init: Tensor, device: torch.device, probe: Optional[Tensor] = None,
                   modules: Optional[Tuple[nn.Module, nn.Module]] = None, capture: bool = False) -> Networks:
    """``init_networks``, the Polyak average (started from the initial weights) and the optimizers (in their
    capturable form when the iteration is captured as a CUDA graph)."""
    t = cfg.train
    disc, gen = init_networks(cfg, x_init, device, probe, modules)
    if t.channels_last:
        disc, gen = disc.to(memory_format=torch.channels_last), gen.to(memory_format=torch.channels_last)
    disc_avg = copy.deepcopy(disc).eval()
    for p in disc_avg.parameters():
        p.requires_grad_(False)
    betas, capturable = (t.beta1, t.beta2), capture
    history = cfg.method.historical_averaging > 0
    enc = opt_e = None
    if cfg.method.vi_weight > 0:  # drawn after D and G, so the networks of the other configs stay the same
        enc = build_encoder(cfg.dataset.image_shape, cfg.model.z_dim).to(device).train()
        opt_e = make_optimizer(enc.parameters(), t.optimizer, cfg.method.vi_lr or t.lr_g or t.lr, g_betas(t),
                               t.adam_eps, capturable)
    return Networks(disc, disc_avg, gen,
                    make_optimizer(disc.parameters(), t.optimizer, t.lr_d or t.lr, betas, t.adam_eps, capturable),
                    make_optimizer(gen.parameters(), t.optimizer, t.lr_g or t.lr, g_betas(t), t.adam_eps, capturable),
                    HistoricalAverage(disc) if history else None, HistoricalAverage(gen) if history else None,
                    enc, opt_e)


def g_betas(t) -> Tuple[float, float]:
    """G's (and the VI encoder's) Adam betas: ``train.beta1_g`` where set (Bad GAN: 0), else D's."""
    return (t.beta1 if t.beta1_g is None else t.beta1_g, t.beta2)


class SingleEngine:
    """One model: an iteration's steps on the modules themselves. The frame hands it batches with a leading
    dimension of one model, (1, B, ...), as it hands ``concurrent.StackedEngine`` (S, B, ...)."""

    def __init__(self, networks: Networks, cfg: Config) -> None:
        self.net, self.method, self.ema_decay = networks, cfg.method, cfg.train.ema_decay
        self.amp_dtype = AMP_DTYPES[cfg.train.precision]
        self.d_loss_fn, self.g_loss_fn = compiled_losses(cfg.train.compile, cfg.train.compile_mode)
        self.optimizers = (networks.opt_d, networks.opt_g, *([networks.opt_e] if networks.opt_e else []))
        self.density, self.global_iteration = None, 0
        if cfg.method.density_weight > 0:
            from .density import DensityPenalty
            self.density = DensityPenalty(cfg, next(networks.gen.parameters()).device)

    def begin_epoch(self, epoch: int, iteration: int, iters: int) -> None:
        """Where the next step is in the whole run (the density penalty's schedule; exact after a resume)."""
        self.global_iteration = epoch * iters + iteration

    def train(self) -> None:
        self.net.disc.train()
        self.net.gen.train()

    def step(self, x_lab: Tensor, y_lab: Tensor, x_unl: Tensor, x_unl_fm: Tensor, z_d: Tensor, z_g: Tensor,
             targets: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """One D step, one G step and the Polyak update; returns the stats row (1, len(STAT_NAMES)) and the
        unlabeled pass's logits and features (1, B, K + F)."""
        n = self.net
        density_z = None
        if self.density is not None:
            density_z = self.density.z_at(self.global_iteration)
        self.global_iteration += 1
        stats, outputs = discriminator_step(n.disc, n.gen, n.opt_d, x_lab[0], y_lab[0], x_unl[0], z_d[0],
                                            method=self.method, targets=None if targets is None else targets[0],
                                            history=n.hist_d, amp_dtype=self.amp_dtype, loss_fn=self.d_loss_fn)
        stats["loss_g"] = generator_step(n.disc, n.gen, n.opt_g, x_unl_fm[0], z_g[0], fm_norm=self.method.fm_norm,
                                         history_weight=self.method.historical_averaging, history=n.hist_g,
                                         amp_dtype=self.amp_dtype, loss_fn=self.g_loss_fn,
                                         pull_away_weight=self.method.pull_away_weight, encoder=n.enc,
                                         vi_weight=self.method.vi_weight, opt_e=n.opt_e, density=self.density,
                                         density_z=density_z)
        polyak_update(n.disc_avg, n.disc, self.ema_decay)
        return torch.stack([stats[k].float() for k in STAT_NAMES])[None], outputs[None]

    def networks(self, index: int) -> Networks:
        return self.net

    def finite_parameters(self) -> Tensor:
        """(1,) bool: whether every parameter of D and G is finite (on the device: no wait)."""
        params = [p for module in (self.net.disc, self.net.gen) for p in module.parameters()]
        return torch.stack([torch.isfinite(p).all() for p in params]).all().view(1)

    def averaged(self, index: int) -> nn.Module:
        return self.net.disc_avg


# ------------------------------------------------------------------------------------------ the data

def place_data(x: np.ndarray, device: torch.device, placement: str = "auto") -> Tensor:
    """The images as one tensor on the device (``device``), or in pinned host memory (``host``) for data sets
    that do not fit; ``auto`` keeps them on a GPU while they take at most half of its free memory."""
    tensor = torch.from_numpy(x)
    if placement == "auto":
        fits = device.type != "cuda" or tensor.nbytes <= 0.5 * torch.cuda.mem_get_info(device)[0]
        placement = "device" if fits else "host"
    if placement == "device":
        return tensor.to(device)
    return tensor.pin_memory() if torch.cuda.is_available() else tensor


def _augment_stacked(x: Tensor, translate: int, flip: bool) -> Tensor:
    """``data.augment`` over the examples of every model at once: (S, B, C, H, W)."""
    return augment(x.flatten(0, 1), translate, flip).view_as(x)


# ----------------------------------------------------------------------------------------- the frame

class TrainingDiverged(RuntimeError):
    """A non-finite loss or parameter: training stops and keeps the last good checkpoint, which the
    message names (``run_dir``: the run directory, if any)."""

    def __init__(self, message: str, run_dir: Optional[Path] = None) -> None:
        if run_dir is not None:
            kept = Path(run_dir) / CHECKPOINT_NAME
            message += f"; the last good checkpoint is {kept}" if kept.exists() else "; no checkpoint was written yet"
        super().__init__(message)


class TrainingInterrupted(RuntimeError):
    """SIGINT / SIGTERM: a checkpoint of the exact position was written; ``--resume`` continues.

    ``where``: the position (None: the signal came during the final writes of a finished run, which were
    completed first). ``how_to_continue``: the command that continues (``ssgan fit --resume DIR``; None when
    nothing is left); a seeds run or a table replaces it with its own (``resume_with``).
    """

    def __init__(self, where: Optional[str], signum: int, how_to_continue: Optional[str]) -> None:
        self.where, self.signum, self.how_to_continue = where, signum, how_to_continue
        name = signal.Signals(signum).name
        if where is None:
            message = f"interrupted by {name} while writing the outputs of the finished run, which were completed"
        else:
            message = f"interrupted by {name} at {where}; checkpoint written"
        super().__init__(message + (f", continue with: {how_to_continue}" if how_to_continue else ""))

    def resume_with(self, how_to_continue: str) -> "TrainingInterrupted":
        return TrainingInterrupted(self.where, self.signum, how_to_continue)


@dataclass
class FitResult:
    """What ``fit`` returns: the final test error (%) of the averaged discriminator and the networks."""

    test_error: float
    discriminator: nn.Module  # Polyak-averaged weights, the classifier
    generator: nn.Module
    labeled_indices: np.ndarray
    class_names: List[str]
    history: List[Dict[str, float]] = field(default_factory=list)
    run_dir: Optional[Path] = None
    val_error: Optional[float] = None
    class_values: List = field(default_factory=list)  # each class's label value in the data
    test_probs: Optional[np.ndarray] = None  # (N, K) class probabilities of the test images


@dataclass
class Member:
    """One model of a training (one seed): its config, run directory, labeled subset, random streams and
    position. ``epoch`` counts finished epochs and ``iteration`` the finished iterations of the current one;
    mid-epoch (after an interrupt) ``batches`` holds that epoch's data order and ``stats`` its statistics."""

    cfg: Config
    run_dir: Optional[Path]
    labeled_indices: np.ndarray
    class_names: List[str]
    order_rng: np.random.RandomState
    z_rng: torch.Generator
    epoch: int = 0
    iteration: int = 0
    batches: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None
    stats: Optional[Tensor] = None  # (iteration, len(STAT_NAMES)) of the interrupted epoch
    resumed: bool = False
    log: Optional[MetricsLog] = None
    test_error: float = float("nan")
    class_values: List = field(default_factory=list)  # each class's label value in the data (ImageData)
    te: Optional["TemporalEnsemble"] = None  # method.ct_mode=temporal: the per-example targets
    clock: float = 0.0  # time.time() at the start of training, less the seconds of the epochs before a resume

    def open_log(self) -> None:
        """Start the metrics log; a resumed member keeps the records of its finished epochs."""
        self.log = MetricsLog(self.run_dir, resume_epoch=self.epoch if self.resumed else None,
                              tensorboard=self.cfg.train.tensorboard)
        history = self.log.history
        self.test_error = history[-1].get("test_error", float("nan")) if history else float("nan")
        self.clock = time.time() - (history[-1]["seconds"] if history else 0.0)

    def begin_epoch(self, n_unlabeled: int, iters: int, stats: Tensor) -> None:
        """Draw this epoch's data order, unless a resumed epoch brought its own; put a resumed epoch's
        statistics into ``stats`` (iters, len(STAT_NAMES))."""
        if self.batches is None:
            self.batches = epoch_order(self.order_rng, len(self.labeled_indices), n_unlabeled, iters,
                                       self.cfg.train.batch_size)
        if self.stats is not None:
            stats[:self.iteration] = self.stats.to(stats.device)
            self.stats = None

    def log_epoch(self, record: Dict[str, float]) -> None:
        """Append a finished epoch's record, with the training seconds so far, to the metrics log."""
        record["seconds"] = round(time.time() - self.clock, 3)
        self.log.write(record)

    def state_dict(self, stats: Tensor) -> Dict:
        """The member's part of a checkpoint; ``stats`` (iteration, len(STAT_NAMES)): this epoch's so far."""
        return {"epoch": self.epoch, "iteration": self.iteration, "rng": rng_state(self.order_rng, self.z_rng),
                "batches": None if self.batches is None else [torch.from_numpy(b) for b in self.batches],
                "stats": {k: stats[:, i].cpu().clone() for i, k in enumerate(STAT_NAMES)} if self.iteration else None,
                "labeled_indices": torch.from_numpy(self.labeled_indices), "class_names": list(self.class_names),
                "class_values": list(self.class_values),
                "temporal_ensemble": None if self.te is None else self.te.state_dict()}

    def load_state_dict(self, payload: Dict) -> None:
        self.epoch, self.iteration = int(payload["epoch"]), int(payload["iteration"])
        self.batches = None if payload["batches"] is None else tuple(b.numpy() for b in payload["batches"])
        if payload["stats"] and self.iteration:
            self.stats = torch.stack([payload["stats"][k][:self.iteration].float() for k in STAT_NAMES], dim=1)
        restore_rng(payload["rng"], self.order_rng, self.z_rng)
        if self.te is not None:
            self.te.load_state_dict(payload["temporal_ensemble"])
        self.resumed = True


def start_member(cfg: Config, data: ImageData, x_all: Tensor, device: torch.device, run_dir: Optional[Path],
                 labeled_indices: Optional[np.ndarray] = None, resume: Optional[Dict] = None,
                 modules: Optional[Tuple[nn.Module, nn.Module]] = None,
                 capture: bool = False) -> Tuple[Member, Networks]:
    """Everything a seed draws before training, in a fixed order: torch's global generator (initialisation,
    dropout, noise), the data order, z, the labeled subset (``RandomState(seed)``, unless
    ``labeled_indices`` of ``data.x_train`` are given) and the networks; then the checkpoint ``resume``,
    if any, replaces the weights, optimizers, position and random states."""
    torch.manual_seed(cfg.seed)
    order_rng = np.random.RandomState([cfg.seed, 1])  # data order; the labeled subset uses RandomState(seed)
    z_rng = torch.Generator(device).manual_seed(cfg.seed)  # z: one stream per model
    if resume is not None:
        lab_idx = resume["labeled_indices"].numpy()
        check_resume_fits(resume, run_dir, len(data.y_train), iterations_per_epoch(cfg.train, len(x_all)))
    elif labeled_indices is None:
        lab_idx = balanced_labeled_subset(data.y_train, cfg.dataset.labels, data.n_classes, cfg.seed)
    else:
        lab_idx = np.asarray(labeled_indices, dtype=np.int64)
    t = cfg.train
    member = Member(cfg, run_dir, lab_idx, list(data.class_names), order_rng, z_rng,
                    class_values=data.label_values)
    if t.init_source == "labeled":  # epoch 0's order is drawn now: its labeled stream gives the init images
        member.batches = epoch_order(order_rng, len(lab_idx), len(x_all), iterations_per_epoch(t, len(x_all)),
                                     t.batch_size)
    x_init = init_images(cfg, x_all, len(data.y_train), lab_idx, member.batches)
    probe = x_all[:2].to(device)  # two images of the data's size
    networks = build_networks(cfg, x_init, device, probe=probe, modules=modules, capture=capture)
    if cfg.method.ct_mode == "temporal":
        with torch.no_grad():  # eval mode: no noise or dropout, so no random number is drawn
            logits, feats = networks.disc.eval()(probe)
        networks.disc.train()
        member.te = TemporalEnsemble(len(x_all), logits.shape[1] + feats.shape[1], cfg.method.te_decay, device)
    if resume is not None:
        try:
            networks.load_state_dict(resume)
            member.load_state_dict(resume)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as error:
            raise RunDirError(f"{run_dir}: the checkpoint does not fit the networks its config names "
                              f"({first_line(error)[:200]})") from None
    return member, networks


class _StopSignals:
    """Turn SIGINT / SIGTERM into a flag checked between iterations (main thread only)."""

    def __init__(self, enabled: bool) -> None:
        self.signum: Optional[int] = None
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.previous: Dict[int, object] = {}

    def __enter__(self) -> "_StopSignals":
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def numerics(t, device: Optional[torch.device] = None) -> Iterator[None]:
    """The numerics of a training, for its duration: ``torch.use_deterministic_algorithms``
    (``train.deterministic``) and TensorFloat-32 for float32 matrix products and cuDNN convolutions
    (``train.tf32``; off: true float32, as the official Theano code ran; PyTorch's own default turns it on
    for convolutions; ``evaluate.float32_precision``). Both are restored afterwards.

    ``device`` (default: ``train.device`` resolved): on CUDA, deterministic cuBLAS needs
    ``CUBLAS_WORKSPACE_CONFIG`` before its first float32 product, else PyTorch raises there; it is set to
    ``:4096:8`` unless the environment already has a value (and left set: cuBLAS reads it when it allocates).
    """
    if device is None:
        device = resolve_device(t.device)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if t.deterministic and device.type == "cuda" and not os.environ.get("CUBLAS_WORKSPACE_CONFIG"):
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(t.deterministic or was_deterministic)
    try:
        with float32_precision(t.tf32):
            yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def prepare(cfg: Config, data: Optional[ImageData], n_models: int = 1) -> Tuple[Config, ImageData, torch.device]:
    """The device, the data (loaded unless given) and the config with the data's number of classes; sizes
    that the data or the memory cannot hold are refused before anything is allocated."""
    device = resolve_device(cfg.train.device)
    use_cuda_graph(cfg, device)  # train.cuda_graph=on where it cannot capture: refused before anything starts
    if data is None:
        data = load_data(cfg.dataset, cfg.seed)
    t, n_unlabeled = cfg.train, len(data.x_unlabeled)
    iters = iterations_per_epoch(t, n_unlabeled)
    # An epoch's order: three (iterations, batch) index arrays per model, with copies on the way to the device;
    # a batch: three real and one generated batch of images per model (activations come on top).
    order_bytes = 4 * 3 * 8 * n_models * iters * t.batch_size
    batch_bytes = 4 * 4 * n_models * t.batch_size * math.prod(data.x_unlabeled.shape[1:])
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if device.type == "cuda":
        memory = min(memory, torch.cuda.mem_get_info(device)[1])
    if order_bytes + batch_bytes > memory / 4:
        raise DataError(f"train.batch_size={t.batch_size} with train.iters_per_epoch={iters}: an epoch's data order "
                        f"and a batch take {(order_bytes + batch_bytes) / 2**30:.1f} GiB, which does not fit in "
                        f"memory ({memory / 2**30:.1f} GiB)")
    return replace(cfg, dataset=replace(cfg.dataset, n_classes=data.n_classes)), data, device


def fit(cfg: Config, data: Optional[ImageData] = None, run_dir: Optional[Path] = None,
        labeled_indices: Optional[np.ndarray] = None, resume: Optional[Dict] = None,
        modules: Optional[Tuple[nn.Module, nn.Module]] = None) -> FitResult:
    """Train one model as ``cfg`` says; write the run directory if one is given.

    ``modules``: a (discriminator, generator) of one's own to train (copies of them), instead of the networks
    that ``cfg.model`` names (the estimator's ``discriminator=`` / ``generator=``).

    The labeled subset (unless ``labeled_indices`` of ``data.x_train`` are given, as the estimator does),
    the initialisation, the data order and the noise all follow from ``cfg.seed``. ``resume`` is a
    checkpoint payload (``rundir.load_checkpoint``) to continue from exactly where it was written.
    Returns the test error (%) of the Polyak-averaged discriminator after the last epoch (NaN without
    test images). Raises TrainingDiverged or TrainingInterrupted.
    """
    validate(cfg)
    if run_dir is not None:
        cfg = replace(cfg, run_dir=str(run_dir))
    with numerics(cfg.train):
        cfg, data, device = prepare(cfg, data)
        x_all = place_data(data.x_unlabeled, device, cfg.train.data_placement)  # (U, C, H, W)
        if cfg.train.channels_last:
            x_all = x_all.contiguous(memory_format=torch.channels_last)
        capture = decide_capture(cfg, device, x_all)
        member, networks = start_member(cfg, data, x_all, device, run_dir, labeled_indices, resume, modules,
                                        capture)
        (result,) = train_members([member], SingleEngine(networks, cfg), data, x_all, device, capture)
    return result


def train_members(members: Sequence[Member], engine, data: ImageData, x_all: Tensor, device: torch.device,
                  capture: bool = False) -> List[FitResult]:
    """The training frame, for one model or several trained together (they share the config but the seed,
    and move in step): the epoch loop, evaluation, logs, checkpoints, signals and outputs of every member.

    ``engine``: ``SingleEngine`` or ``concurrent.StackedEngine``, holding the members' networks.
    ``x_all``: the unlabeled pool as placed (``place_data``).
    """
    with contextlib.ExitStack() as held:
        for member in members:  # one process trains a run directory at a time
            if member.run_dir is not None:
                held.enter_context(locked(member.run_dir))
                write_config(member.run_dir, member.cfg)  # the config it trains with (a resume's, too)
        with _StopSignals(any(m.run_dir is not None for m in members)) as signals:  # until the last write
            _train_epochs(members, engine, data, x_all, device, signals, capture)
            results = _finish(members, engine, data, device)
            if signals.signum is not None:  # it came during the final writes, which are complete
                raise TrainingInterrupted(None, signals.signum, None)
    return results


def _train_epochs(members: Sequence[Member], engine, data: ImageData, x_all: Tensor, device: torch.device,
                  signals: "_StopSignals", capture: bool) -> None:
    """The epoch loop of ``train_members``: learning rates, the data order, ``train_one_epoch``, the
    divergence check, evaluation, the metrics log and periodic checkpoints; a signal checkpoints every
    member's exact position and raises TrainingInterrupted. The host waits for the device once per epoch
    for the statistics and the finite check, and once per evaluation."""
    t = members[0].cfg.train
    y_all = torch.from_numpy(data.y_train).to(device)  # (N,) labels of the first N rows of x_all
    iters = iterations_per_epoch(t, len(x_all))
    epoch, iteration = members[0].epoch, members[0].iteration
    for member in members:
        member.open_log()
    stats = torch.zeros(len(members), iters, len(STAT_NAMES), device=device)  # (S, I, stats), static
    runner = IterationRunner(engine, members, x_all, y_all, stats, device, capture)
    test_set = TestSet(data, device, t.data_placement)
    progress = _progress(t.epochs * iters, t.progress, _description(members))
    progress.update(epoch * iters + iteration)
    try:
        while epoch < t.epochs:
            lr_d = max(t.min_lr, lr_at(epoch, t.lr_d or t.lr, t.decay_start, t.epochs))
            lr_g = max(t.min_lr, lr_at(epoch, t.lr_g or t.lr, t.decay_start, t.epochs))
            lr_e = max(t.min_lr, lr_at(epoch, members[0].cfg.method.vi_lr or t.lr_g or t.lr, t.decay_start, t.epochs))
            for optimizer, lr in zip(engine.optimizers, (lr_d, lr_g, lr_e)):
                set_lr(optimizer, lr)
            stats.zero_()
            for s, member in enumerate(members):
                member.begin_epoch(len(x_all), iters, stats[s])
            if hasattr(engine, "begin_epoch"):
                engine.begin_epoch(epoch, iteration, iters)
            done = train_one_epoch(runner, start=iteration, stop=lambda: signals.signum is not None,
                                   progress=progress)
            if done < iters:  # stopped by a signal: every member's exact position is checkpointed
                for member in members:
                    member.iteration = done
                _checkpoint(members, engine, stats[:, :done])
                raise TrainingInterrupted(f"epoch {epoch + 1}, iteration {done}", signals.signum,
                                          f"ssgan fit --resume {_resume_dir(members)}")
            means, finite = _epoch_summary(stats, engine.finite_parameters())  # one wait for the device
            for s, member in enumerate(members):
                if not finite[s]:  # the slow path names the first bad iteration or parameter
                    _check_finite(stats[s], engine.networks(s), epoch, iters, member.run_dir,
                                  label=_label(members, s))
                if member.te is not None:
                    member.te.end_epoch()
            epoch, iteration = epoch + 1, 0
            evaluate_now = len(data.y_test) and (epoch % t.eval_every == 0 or epoch == t.epochs)
            errors = test_set.errors([engine.averaged(s) for s in range(len(members))], t.eval_batch_size) \
                if evaluate_now else None
            for s, member in enumerate(members):
                member.epoch, member.iteration, member.batches = epoch, 0, None
                record = {"epoch": epoch, "lr": lr_d, **dict(zip(STAT_NAMES, means[s]))}
                if evaluate_now:
                    member.test_error = errors[s]
                    record["test_error"] = member.test_error
                member.log_epoch(record)
                logger.debug("%s: epoch %d of %d: %s", member.run_dir or f"seed {member.cfg.seed}", epoch, t.epochs,
                             ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
            if members[0].run_dir is not None and epoch % t.checkpoint_every == 0 and epoch < t.epochs:
                _checkpoint(members, engine, stats[:, :0], checked=True)
            progress.set_postfix({k: f"{v:.3g}" for k, v in members[0].log.history[-1].items()
                                  if k in ("loss_sup", "loss_unl", "loss_g", "test_error")},
                                 refresh=False)  # redrawn at most once a second (mininterval)
    finally:
        progress.close()
        for member in members:
            member.log.close()


class TestSet:
    """The test images placed once (as the training images are) and the test error of several models with
    one wait for the device: each model's count of wrong argmax predictions stays on the device until all
    are counted. The same argmax as ``evaluate.predict_proba`` (softmax keeps the order of the logits)."""

    def __init__(self, data: ImageData, device: torch.device, placement: str) -> None:
        self.x = place_data(data.x_test, device, placement)  # (N, C, H, W)
        self.y = torch.from_numpy(data.y_test).to(device)
        self.device = device

    @torch.no_grad()
    def errors(self, models: Sequence[nn.Module], batch_size: int) -> List[float]:
        """Test error (%) of each model, in eval mode (no dropout or noise)."""
        wrong = []
        for model in models:
            was_training = model.training
            model.eval()
            count = torch.zeros((), dtype=torch.long, device=self.device)
            for start in range(0, len(self.y), batch_size):
                logits, _ = model(self.x[start:start + batch_size].to(self.device, torch.float32))
                count += (logits.argmax(dim=1) != self.y[start:start + batch_size]).sum()
            model.train(was_training)
            wrong.append(count)
        # as evaluate.error_rate computes it: 100 * mean(wrong), the mean in float64
        return [100.0 * (int(w) / len(self.y)) for w in torch.stack(wrong).cpu()]


def _epoch_summary(stats: Tensor, finite_parameters: Tensor) -> Tuple[List[List[float]], List[bool]]:
    """The mean of each statistic over the epoch's iterations, per member, and whether each member's losses
    and parameters are all finite, read from the device at once. stats: (S, iters, len(STAT_NAMES));
    finite_parameters: (S,) bool."""
    means = stats.transpose(1, 2).contiguous().mean(dim=2)  # (S, stats): each a contiguous mean over iters
    losses = stats[:, :, [STAT_NAMES.index("loss_d"), STAT_NAMES.index("loss_g")]]
    finite = torch.isfinite(losses).flatten(1).all(dim=1) & finite_parameters
    summary = torch.cat([means, finite[:, None].float()], dim=1).cpu()  # one transfer
    return summary[:, :-1].tolist(), [bool(v) for v in summary[:, -1]]


WARMUP_ITERATIONS = 3  # eager iterations on a side stream before the capture (cuDNN / cuBLAS workspaces, state)


def decide_capture(cfg: Config, device: torch.device, x_all: Tensor) -> bool:
    """Whether the iteration is captured as a CUDA graph: ``use_cuda_graph``, and the images on the device
    (``auto`` placement may have chosen host memory; ``on`` then is one line)."""
    capture = use_cuda_graph(cfg, device)
    if capture and x_all.device != device:
        if cfg.train.cuda_graph == "on":
            raise ConfigError("train.cuda_graph=on cannot capture with the images in host memory (they take more "
                              "than half of the GPU's free memory); use auto or off")
        return False
    return capture


def use_cuda_graph(cfg: Config, device: torch.device) -> bool:
    """Whether ``train.cuda_graph`` captures the iteration here; ``on`` where it cannot is a ConfigError."""
    mode = cfg.train.cuda_graph
    blockers = refused_options(cfg, "captured")
    if device.type != "cuda":
        blockers.insert(0, f"the device ({device.type})")
    if mode == "on" and blockers:
        raise ConfigError(f"train.cuda_graph=on cannot capture with {', '.join(blockers)}; use auto or off")
    return mode != "off" and not blockers


class IterationRunner:
    """One training iteration of every member on static device buffers: the batches gathered by a device
    counter from the epoch's index arrays (sent to the device once per epoch), augmentation, z, the D and G
    steps with the Polyak update (``engine.step``), the temporal ensemble's targets and records, and the stats
    row written at the counter. Nothing in it waits for the host, so it runs eagerly or, with
    ``train.cuda_graph``, is captured once as a CUDA graph and replayed (after ``WARMUP_ITERATIONS`` eager
    iterations on a side stream). From pinned host memory (``train.data_placement=host``) the batches are
    gathered on the host one iteration ahead into pinned buffers and copied without blocking (not capturable).
    """

    def __init__(self, engine, members: Sequence[Member], x_all: Tensor, y_all: Tensor, stats: Tensor,
                 device: torch.device, capture: bool) -> None:
        t = members[0].cfg.train
        self.engine, self.members, self.x_all, self.y_all, self.stats = engine, list(members), x_all, y_all, stats
        self.device, self.t, self.z_dim = device, t, members[0].cfg.model.z_dim
        self.on_device = x_all.device == device
        n_models, iters = stats.shape[:2]
        # the epoch's rows of x_all: labeled, unlabeled, feature-matching, each (S, iters, B)
        self.rows = torch.zeros(3, n_models, iters, t.batch_size, dtype=torch.long, device=device)
        self.host_rows = self.rows.cpu().pin_memory() if device.type == "cuda" else None
        self.rows_copied = None  # CUDA event of the last copy out of host_rows
        self.counter = torch.zeros((), dtype=torch.long, device=device)
        self.temporal = members[0].te is not None
        self.graph, self.warm = None, 0
        # the images must be on the device to be captured (auto placement may have chosen host memory)
        self.capture = capture and self.on_device
        self.prefetched: Optional[Tuple[int, Tuple[Tensor, ...]]] = None
        if not self.on_device:  # two sets of pinned buffers, used in turn (one is copied while one is filled)
            shape = (n_models, t.batch_size, *x_all.shape[1:])
            pin = device.type == "cuda"
            self.buffers = [[torch.empty(shape, dtype=x_all.dtype, pin_memory=pin) for _ in range(3)]
                            for _ in range(2)]
            self.copied = [None, None]  # CUDA events of the last copies out of each set

    def load_epoch(self, start: int) -> None:
        """The epoch's order (each member's ``batches``) into the static index buffer and the counter at
        ``start``. Outside a captured graph: these are host-side writes."""
        lab, unl, unl_fm = (torch.from_numpy(np.stack([m.batches[k] for m in self.members])) for k in range(3))
        # The labeled batches index the labeled subset; as rows of x_all they are the subset's train indices.
        lab_rows = torch.stack([torch.from_numpy(m.labeled_indices)[lab[s]] for s, m in enumerate(self.members)])
        rows = torch.stack([lab_rows, unl, unl_fm])  # (3, S, iters, B)
        if self.host_rows is not None:
            # the last epoch's copy out of the pinned buffer may still be queued: wait for it explicitly
            # before rewriting the buffer (not on some other wait for the device happening in between)
            if self.rows_copied is not None:
                self.rows_copied.synchronize()
            self.host_rows.copy_(rows)
            self.rows.copy_(self.host_rows, non_blocking=True)  # pinned: no wait for the copy
            self.rows_copied = torch.cuda.Event()
            self.rows_copied.record()
        else:
            self.rows.copy_(rows)
        self.host_index = rows  # the host path gathers with these
        self.counter.fill_(start)
        self.prefetched = None

    def run(self, it: int) -> None:
        """Iteration ``it`` of the epoch: replayed from the graph once captured, else eagerly."""
        if not self.capture:
            self.iteration(it)
            return
        if self.graph is None and self.warm >= WARMUP_ITERATIONS:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            return
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.iteration(it)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.warm += 1

    def _capture(self) -> None:
        """Record one iteration (nothing runs during the capture); replays then run it. The members' z
        generators are registered, so that each replay draws fresh z (the default generator's dropout, noise
        and augmentation draws are graph-safe by themselves)."""
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        for member in self.members:
            graph.register_generator_state(member.z_rng)
        with torch.cuda.graph(graph):
            self.iteration(None)
        self.graph = graph

    def _batches(self, it: Optional[int]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(x_lab, y_lab, x_unl, x_unl_fm) (S, B, ...) and the unlabeled rows (S, B) of this iteration."""
        if self.on_device:
            rows = self.rows.index_select(2, self.counter.view(1)).squeeze(2)  # (3, S, B)
            return self.x_all[rows[0]], self.y_all[rows[0]], self.x_all[rows[1]], self.x_all[rows[2]], rows[1]
        if self.prefetched is None or self.prefetched[0] != it:
            self.prefetched = (it, self._gather(it))
        batches = self.prefetched[1]
        if it + 1 < self.rows.shape[2]:
            self.prefetched = (it + 1, self._gather(it + 1))  # the next one's copy overlaps this step
        rows = self.rows.index_select(2, self.counter.view(1)).squeeze(2)
        return batches[0], self.y_all[rows[0]], batches[1], batches[2], rows[1]

    def _gather(self, it: int) -> Tuple[Tensor, ...]:
        """Gather iteration ``it``'s images on the host into a pinned buffer set and copy them without
        blocking; a set is refilled only once its previous copy has finished."""
        slot = it % 2
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()
        out = []
        for k, buffer in enumerate(self.buffers[slot]):
            torch.index_select(self.x_all, 0, self.host_index[k, :, it].reshape(-1), out=buffer.view(-1,
                               *self.x_all.shape[1:]))
            out.append(buffer.to(self.device, non_blocking=True))
        if self.device.type == "cuda":
            self.copied[slot] = torch.cuda.Event()
            self.copied[slot].record()
        return tuple(out)

    def iteration(self, it: Optional[int]) -> None:
        t, members, device = self.t, self.members, self.device
        x_lab, y_lab, x_unl, x_unl_fm, unl_rows = self._batches(it)
        if t.augment:  # (S, B, C, H, W) each
            x_lab, x_unl, x_unl_fm = (_augment_stacked(x, t.translate, t.flip) for x in (x_lab, x_unl, x_unl_fm))
        z_d = torch.stack([sample_z(t.batch_size, self.z_dim, device, m.z_rng) for m in members])  # (S, B, z)
        z_g = torch.stack([sample_z(t.batch_size, self.z_dim, device, m.z_rng) for m in members])
        targets = None
        if self.temporal:  # (S, B, K + F): each example's moving average of its earlier logits and features
            targets = torch.stack([m.te.targets(unl_rows[s]) for s, m in enumerate(members)])
        stats, outputs = self.engine.step(x_lab, y_lab, x_unl, x_unl_fm, z_d, z_g, targets)
        self.stats.index_copy_(1, self.counter.view(1), stats.unsqueeze(1).to(self.stats.dtype))
        if self.temporal:
            for s, member in enumerate(members):
                member.te.record(unl_rows[s], outputs[s])
        self.counter.add_(1)


def train_one_epoch(runner: IterationRunner, *, start: int, stop: Callable[[], bool], progress) -> int:
    """Iterations ``start``.. of the current epoch for every member at once (``IterationRunner``: gather,
    augment, z, one D step, one G step, the Polyak update, the statistics). Returns the number of finished
    iterations (fewer than all when ``stop()`` turned true)."""
    runner.engine.train()
    runner.load_epoch(start)
    iters = runner.stats.shape[1]
    for it in range(start, iters):
        if stop():
            return it
        runner.run(it)
        progress.update(1)
    return iters


def iterations_per_epoch(t, n_unlabeled: int) -> int:
    """``train.iters_per_epoch``, or one pass over the unlabeled pool (at least one iteration)."""
    return t.iters_per_epoch or max(1, n_unlabeled // t.batch_size)


def _label(members: Sequence[Member], s: int) -> str:
    """How messages name member s: nothing for a single model, its seed among several."""
    return "" if len(members) == 1 else f" (seed {members[s].cfg.seed})"


def _resume_dir(members: Sequence[Member]) -> Optional[Path]:
    """What ``ssgan fit --resume`` takes to continue: the run directory, or the folder of several."""
    run_dir = members[0].run_dir
    return run_dir if len(members) == 1 or run_dir is None else run_dir.parent


def _check_finite(stats: Tensor, networks: Networks, epoch: int, iteration: int, run_dir: Optional[Path], *,
                  label: str = "") -> None:
    """Raise TrainingDiverged naming the first iteration whose loss was not finite, or a bad parameter.

    stats: (iterations, len(STAT_NAMES)) of the epoch so far; ``epoch`` counts from 0, ``iteration`` is the
    number of finished iterations; ``label`` names the model among several.
    """
    loss_columns = stats[:, [STAT_NAMES.index("loss_d"), STAT_NAMES.index("loss_g")]]  # (I, 2)
    bad = (~torch.isfinite(loss_columns)).any(dim=1).nonzero()
    if len(bad):
        first = int(bad[0])
        raise TrainingDiverged(f"training diverged at epoch {epoch + 1}, iteration {first + 1}{label}: "
                               f"non-finite loss (loss_d={float(loss_columns[first, 0])}, "
                               f"loss_g={float(loss_columns[first, 1])})", run_dir)
    for name, module in (("discriminator", networks.disc), ("generator", networks.gen)):
        for key, p in module.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingDiverged(f"training diverged at epoch {epoch + 1}, iteration {iteration}{label}: "
                                       f"non-finite {name} parameter {key}", run_dir)


def _checkpoint(members: Sequence[Member], engine, stats: Tensor, *, checked: bool = False) -> None:
    """Write the members' checkpoints at their (common) position, after checking that nothing diverged (a
    diverged state never replaces the last good one; ``checked``: the epoch's summary has just checked it).
    Models trained together commit their checkpoints as one unit (``rundir.write_group_checkpoints``), so a
    kill between two members' writes never leaves the group at two positions.
    stats: (S, iteration, len(STAT_NAMES)), the epoch's so far."""
    items = []
    for s, member in enumerate(members):
        if member.run_dir is None:
            continue
        networks = engine.networks(s)
        if not checked:
            _check_finite(stats[s], networks, member.epoch, member.iteration, member.run_dir,
                          label=_label(members, s))
        items.append((member.run_dir, member.cfg, {**member.state_dict(stats[s]), **networks.state_dict()}))
    if items:
        write_group_checkpoints(items)


def _finish(members: Sequence[Member], engine, data: ImageData, device: torch.device) -> List[FitResult]:
    """The end of the members' training: each one's final test (and validation) error and, with a run
    directory, the final checkpoints (one commit for the group), then each one's samples.png and result.json.
    Each member's outputs draw from the random state its checkpoint holds, so a member whose outputs are
    written again on resume draws the same samples."""
    results = []
    for s, member in enumerate(members):
        networks = engine.networks(s)
        t = member.cfg.train
        test_probs = None  # (N, K): the final classifier's, computed once for result.json and the seeds' ensembles
        if len(data.y_test):
            test_probs = predict_proba(networks.disc_avg, data.x_test, t.eval_batch_size, tf32=t.tf32)
            if not member.log.history:  # no epoch was trained (train.epochs=0): no test error was recorded
                member.test_error = error_rate(test_probs, data.y_test)
        val_error = None
        if data.x_val is not None:
            val_error = error_rate(predict_proba(networks.disc_avg, data.x_val, t.eval_batch_size, tf32=t.tf32), data.y_val)
        results.append(FitResult(member.test_error, networks.disc_avg, networks.gen, member.labeled_indices,
                                 member.class_names, member.log.history, member.run_dir, val_error,
                                 member.class_values, test_probs))
    _checkpoint(members, engine, torch.zeros(len(members), 0, len(STAT_NAMES)))
    random_state = torch.get_rng_state()  # as the checkpoints hold it
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    for member, result in zip(members, results):
        if member.run_dir is not None:
            torch.set_rng_state(random_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state_all(cuda_state)
            write_outputs(result, member.cfg, data, iterations_per_epoch(member.cfg.train, len(data.x_unlabeled)),
                          device)
    return results


def write_outputs(result: FitResult, cfg: Config, data: ImageData, iters: int, device: torch.device) -> None:
    """The end of a run directory (the checkpoint is written before): samples.png, result.json with the
    per-class errors and confusion matrix of the averaged discriminator, and, with the plots extra,
    curve.png and confusion_matrix.png."""
    run_dir = result.run_dir
    title = f"{cfg.dataset.name}, {cfg.dataset.labels} labels, {cfg.method.name}, seed {cfg.seed}"
    if cfg.train.sample_grid:
        atomic_write(run_dir / SAMPLES_NAME,
                     sample_grid_png(result.generator, cfg.dataset.scaling, batch_size=cfg.train.batch_size))
    report = None
    if result.test_probs is not None:
        report = class_report(result.test_probs, data.y_test, result.class_names)
        figure = plots.confusion_matrix_png(report["confusion_matrix"], result.class_names, f"{title}: test set")
        if figure is not None:
            atomic_write(run_dir / CONFUSION_NAME, figure)
    curve = plots.curve_png(result.history, title)
    if curve is not None:
        atomic_write(run_dir / CURVE_NAME, curve)
    write_result(run_dir, {
        "test_error": result.test_error, "val_error": result.val_error, "seed": cfg.seed,
        "dataset": cfg.dataset.name, "labels": cfg.dataset.labels, "method": cfg.method.name,
        "epochs": cfg.train.epochs, "iters_per_epoch": iters, "device": str(device),
        "seconds": result.history[-1]["seconds"] if result.history else 0.0, "torch": torch.__version__,
        "versions": environment(device), "class_names": list(result.class_names),
        "class_values": list(result.class_values),
        "per_class_error": None if report is None else report["per_class_error"],
        "confusion_matrix": None if report is None else report["confusion_matrix"],
        "labeled_indices": [int(i) for i in result.labeled_indices], "config": asdict(cfg)})


def _description(members: Sequence[Member]) -> str:
    d = members[0].cfg.dataset
    who = f"seed {members[0].cfg.seed}" if len(members) == 1 else f"{len(members)} seeds"
    return f"{d.name} {d.labels} labels {who}"


def _progress(total: int, enabled: bool, description: str):
    return tqdm(total=total, disable=not enabled, desc=description, file=sys.stderr, leave=False,
                mininterval=1.0, unit="it")
