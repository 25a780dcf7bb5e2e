"""What one training iteration does to the networks: one discriminator step, then one generator step, then
the Polyak update (Salimans et al. 2016, sec. 5; Wei et al. 2018), behind an ``Engine``.

The step functions call the networks, then the losses of ``losses.py``, then ``update``, the one place that
runs ``backward()`` and an optimizer step. ``SingleEngine`` runs them on one model's modules: batches are
(B, ...), nothing is stacked. ``concurrent.StackedEngine`` runs the same objectives vectorised over S models
stacked along a leading dimension, with batches (S, B, ...). ``accelerate.Captured`` wraps either one's step
as a CUDA graph. ``train.py``'s loop hands every engine the same ``Batch`` and reads back the statistics.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from . import losses
from .config import Config, MethodConfig, TrainConfig
from .data import augment
from .models import Networks, sample_z
from .optim import HistoricalAverage, polyak_update

# The per-iteration statistics, in the order of a stats row and of an epoch's record in metrics.jsonl.
STAT_NAMES = ("loss_d", "loss_sup", "loss_unl", "loss_fake", "loss_ct", "train_acc", "loss_g")

# fp16 is refused by config.validate: without gradient scaling small GAN gradients underflow silently
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """bf16 autocast for the forward passes, or nothing. Losses are float32 whatever the networks'
    precision (they cast the logits and features before logsumexp). Its cache of cast weights is off: weights
    change every step, and a CUDA graph must not keep casts made during its capture."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False)


def polyak_average(avg: nn.Module, model: nn.Module, decay: float) -> None:
    """``optim.polyak_update`` of a module's parameters; its buffers (the hidden layers' fixed scales g) are
    copied, in one foreach copy."""
    polyak_update(avg.parameters(), model.parameters(), decay)
    buffers = list(avg.buffers())
    if buffers:
        torch._foreach_copy_(buffers, list(model.buffers()))


def update(loss: Tensor, optimizer: torch.optim.Optimizer, *more: torch.optim.Optimizer, train: TrainConfig) -> None:
    """Backward of ``loss`` into the optimizer's parameters only, then one optimizer step: the one place where
    training runs ``backward()`` and ``step()``, for one model or many. ``train``: the recipe, so that an option
    of the update (a ``train.*`` field) is read here and nowhere else.

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


# ------------------------------------------------------------------------------------ the objectives

def _forward_parts(model: nn.Module, parts: List[Tensor]) -> List[Tuple[Tensor, Tensor]]:
    """Run the discriminator on several batches. Without batch-dependent layers one concatenated pass
    gives the same distribution of outputs as separate passes (dropout and noise are per example)."""
    if getattr(model, "batch_dependent", False):
        return [model(x) for x in parts]
    logits, feats = model(torch.cat(parts))
    sizes = [len(x) for x in parts]
    return list(zip(logits.split(sizes), feats.split(sizes)))


def _consistency(disc: nn.Module, x_unl: Tensor, logits_unl: Tensor, feats_unl: Tensor, method: MethodConfig,
                 targets: Optional[Tensor]) -> Tensor:
    """CT between the unlabeled pass and a second pass under fresh dropout / noise (two_pass, CT_CIFAR.py), or
    each example's moving average of its earlier logits and features (temporal, CT_CIFAR-10_TE.py)."""
    if method.ct_mode == "temporal":
        other_logits, other_feats = targets.split([logits_unl.shape[1], feats_unl.shape[1]], dim=1)
    else:
        other_logits, other_feats = disc(x_unl)
    return losses.consistency_loss(logits_unl.float().softmax(1), other_logits.float().softmax(1), feats_unl,
                                   other_feats, method.ct_feat_weight, method.ct_margin)


def _gradient_penalty(disc: nn.Module, x_unl: Tensor, x_gen: Tensor) -> Tensor:
    """(||grad log Z(x_hat)|| - 1)^2 on interpolates of real and generated images (Gulrajani et al. 2017)."""
    eps = torch.rand(len(x_gen), *([1] * (x_gen.dim() - 1)), device=x_gen.device)  # (B, 1, 1, 1)
    n = min(len(x_unl), len(x_gen))
    x_hat = losses.interpolate(x_unl[:n], x_gen[:n], eps[:n]).requires_grad_(True)
    realness = torch.logsumexp(disc(x_hat)[0].float(), dim=1)  # log Z(x_hat), the logit of D(x_hat)
    (grad,) = torch.autograd.grad(realness.sum(), x_hat, create_graph=True)
    return losses.gradient_penalty(grad)


def _history_penalty(history: HistoricalAverage, method: MethodConfig) -> Tensor:
    """The historical-averaging term of D's or G's loss (Salimans et al. 2016, sec. 3.3), weighted."""
    return method.historical_averaging * losses.historical_averaging_loss(history.params, history.means)


def discriminator_objective(disc: nn.Module, gen: nn.Module, x_lab: Tensor, y_lab: Tensor, x_unl: Tensor,
                            z: Tensor, *, method: MethodConfig, targets: Optional[Tensor] = None,
                            history: Optional[HistoricalAverage] = None,
                            ) -> Tuple[Tensor, Dict[str, Tensor], Tensor]:
    """L_D = L_sup + w (L_unl + L_fake + lambda CT) / 2 (+ the optional terms) and its parts, from one pass of D
    over the labeled, unlabeled and generated batches; and that unlabeled pass's logits and features
    (B, K + F), detached (what the temporal ensemble records). ``targets`` (B, K + F): the temporal
    ensemble's targets of x_unl (``method.ct_mode=temporal``)."""
    with torch.no_grad():
        x_gen = gen(z)  # (B, C, H, W)
    (logits_lab, _), (logits_unl, feats_unl), (logits_gen, _) = _forward_parts(disc, [x_lab, x_unl, x_gen])
    sup = losses.supervised_loss(logits_lab, y_lab)
    unl = losses.unlabeled_loss(logits_unl, method.label_smoothing)
    fake = losses.fake_loss(logits_gen)
    ct = torch.zeros((), device=x_lab.device)
    if method.ct_weight > 0:
        ct = _consistency(disc, x_unl, logits_unl, feats_unl, method, targets)
    loss = losses.discriminator_loss(sup, unl, fake, ct, method.unl_weight, method.ct_weight)
    if method.cond_entropy_weight > 0:  # Bad GAN (svhn_trainer.py:83, 93): outside the factor 1/2
        loss = loss + method.cond_entropy_weight * losses.conditional_entropy(logits_unl)
    if method.gradient_penalty > 0:
        loss = loss + method.gradient_penalty * _gradient_penalty(disc, x_unl, x_gen)
    if history is not None:
        loss = loss + _history_penalty(history, method)
    with torch.no_grad():
        acc = (logits_lab.argmax(1) == y_lab).float().mean()
    outputs = torch.cat([logits_unl.float(), feats_unl.float()], dim=1).detach()  # (B, K + F)
    return loss, {"loss_d": loss.detach(), "loss_sup": sup.detach(), "loss_unl": unl.detach(),
                  "loss_fake": fake.detach(), "loss_ct": ct.detach(), "train_acc": acc}, outputs


def generator_objective(disc: nn.Module, gen: nn.Module, x_unl: Tensor, z: Tensor, *, method: MethodConfig,
                        encoder: Optional[nn.Module] = None) -> Tensor:
    """Feature matching of G(z) against a real batch, both through D in training mode (the official code);
    Bad GAN's generator entropy terms where their weights are set: the pull-away term on the generated
    features (svhn_trainer.py:116-124) and the encoder's Gaussian NLL of z (cifar_trainer.py:113-123)."""
    x_gen = gen(z)  # (B, C, H, W)
    with torch.no_grad():
        _, feats_real = disc(x_unl)
    _, feats_gen = disc(x_gen)
    loss = losses.feature_matching_loss(feats_real, feats_gen, method.fm_norm)
    if method.pull_away_weight > 0:
        loss = loss + method.pull_away_weight * losses.pull_away_term(feats_gen)
    if method.vi_weight > 0:
        mu, log_sigma = encoder(x_gen)  # each (B, z_dim)
        loss = loss + method.vi_weight * losses.gaussian_nll(mu, log_sigma, z)
    return loss


def compiled_objectives(backend: str, mode: Optional[str] = None) -> Tuple[Optional[Callable], Optional[Callable]]:
    """The D and G objectives (forward passes and losses; backward follows through AOT autograd) captured
    with ``torch.compile(backend=..., mode=...)``, or (None, None) for eager. The optimizer steps and the
    Polyak update stay outside: they are already foreach kernels."""
    if backend == "off":
        return None, None
    options = {"backend": backend, **({"mode": mode} if mode else {})}
    return torch.compile(discriminator_objective, **options), torch.compile(generator_objective, **options)


# ------------------------------------------------------------------------------------------ the steps

def discriminator_step(disc: nn.Module, gen: nn.Module, optimizer: torch.optim.Optimizer, x_lab: Tensor,
                       y_lab: Tensor, x_unl: Tensor, z: Tensor, *, method: MethodConfig, train: TrainConfig,
                       targets: Optional[Tensor] = None, history: Optional[HistoricalAverage] = None,
                       objective: Optional[Callable] = None) -> Tuple[Dict[str, Tensor], Tensor]:
    """One update of D on ``discriminator_objective`` (or its torch.compile'd form, ``objective``). The steps
    take the recipe's two sections whole (``method``, ``train``), so a new option is its schema field and the
    line that reads it.

    x_lab: (B, C, H, W), y_lab: (B,), x_unl: (B, C, H, W), z: (B, z_dim). Returns the step's statistics (0-d
    tensors) and the unlabeled pass's logits and features, (B, K + F), detached.
    """
    with autocast(x_lab.device, AMP_DTYPES[train.precision]):
        loss, stats, outputs = (objective or discriminator_objective)(disc, gen, x_lab, y_lab, x_unl, z,
                                                                      method=method, targets=targets,
                                                                      history=history)
    update(loss, optimizer, train=train)
    if history is not None:
        history.update()
    return stats, outputs


def generator_step(disc: nn.Module, gen: nn.Module, optimizer: torch.optim.Optimizer, x_unl: Tensor,
                   z: Tensor, *, method: MethodConfig, train: TrainConfig,
                   history: Optional[HistoricalAverage] = None, objective: Optional[Callable] = None,
                   encoder: Optional[nn.Module] = None, opt_e: Optional[torch.optim.Optimizer] = None,
                   density: Optional[Callable] = None, density_z: Optional[Tensor] = None) -> Tensor:
    """One update of G by feature matching against a second, independently drawn unlabeled batch (plus
    Bad GAN's pull-away and VI terms where their weights are set; the encoder is stepped with G).

    x_unl: (B, C, H, W), z: (B, z_dim). ``objective``: ``generator_objective`` or its torch.compile'd form.
    Returns the loss (0-d).
    """
    with autocast(x_unl.device, AMP_DTYPES[train.precision]):
        loss = (objective or generator_objective)(disc, gen, x_unl, z, method=method, encoder=encoder)
    if history is not None:
        loss = loss + _history_penalty(history, method)
    if density_z is not None:  # Bad GAN's low-density penalty on this iteration (density.DensityPenalty)
        loss = loss + density(gen, density_z)
    update(loss, optimizer, *([opt_e] if opt_e is not None else []), train=train)
    if history is not None:
        history.update()
    return loss.detach()


# ------------------------------------------------------------------------------------ batch and engines

@dataclass
class Batch:
    """One iteration's inputs: (B, ...) for one model, (S, B, ...) for S stacked models.

    ``x_fm``: the second unlabeled batch, G's feature-matching target; ``targets``: the temporal ensemble's
    targets of x_unl, (…, B, K + F), or None; ``iteration``: the iteration's index in the whole run (the
    density penalty's schedule; not part of a captured graph's inputs).
    """

    x_lab: Tensor
    y_lab: Tensor
    x_unl: Tensor
    x_fm: Tensor
    z_d: Tensor
    z_g: Tensor
    targets: Optional[Tensor] = None
    iteration: int = 0

    def tensors(self) -> Dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if torch.is_tensor(getattr(self, f.name))}


class Batches:
    """Each iteration's ``Batch`` from the members' (``train.Member``) epoch order: the images and labels of
    the rows (``gather``: ``accelerate.gatherer``, plain indexing on the CPU), the augmentation
    (``train.augment``), z from each member's stream, and the temporal ensemble's targets. One model:
    (B, ...); stacked models: (S, B, ...)."""

    def __init__(self, members: Sequence, x_all: Tensor, y_train: np.ndarray, device: torch.device, *,
                 stacked: bool, gather: Callable[[Tensor], Tensor]) -> None:
        self.members, self.stacked, self.device = list(members), stacked, device
        self.t, self.z_dim, self.n_unlabeled = members[0].cfg.train, members[0].cfg.model.z_dim, len(x_all)
        self.gather, self.on_device = gather, x_all.device == device
        self.y_all = torch.from_numpy(y_train).to(device)  # (N,) labels of the first N rows of x_all
        self.temporal = members[0].te is not None

    def begin_epoch(self, iters: int, stats: Tensor) -> int:
        """The epoch's rows, (3, [S,] iters, B); returns the iteration to start from (after a resume)."""
        rows = [m.begin_epoch(self.n_unlabeled, iters, s) for m, s in zip(self.members, self._split(stats))]
        self.rows_host = torch.stack(rows, dim=1) if self.stacked else rows[0]
        self.rows = self.rows_host.to(self.device)
        return self.members[0].iteration

    def _split(self, x: Tensor) -> Sequence[Tensor]:
        """Each member's part of ``x``: ([S,] ...) -> S tensors (...)."""
        return x.unbind(0) if self.stacked else (x,)

    def _each(self, fn: Callable, rows: Tensor) -> Tensor:
        if not self.stacked:
            return fn(self.members[0], rows)
        return torch.stack([fn(m, rows[s]) for s, m in enumerate(self.members)])

    def _z(self, member, rows: Tensor) -> Tensor:
        return sample_z(self.t.batch_size, self.z_dim, self.device, member.z_rng)  # (B, z_dim)

    def get(self, it: int, iteration: int) -> Batch:
        """Iteration ``it`` of the epoch (``iteration``: its index in the whole run)."""
        t, rows = self.t, self.rows.select(-2, it)  # (3, [S,] B): labeled, unlabeled, feature-matching
        x_lab, x_unl, x_fm = (self.gather(r) for r in (rows if self.on_device else self.rows_host.select(-2, it)))
        if t.augment:  # ([S,] B, C, H, W) each
            x_lab, x_unl, x_fm = (augment(x.flatten(0, -4), t.translate, t.flip).view_as(x)
                                  for x in (x_lab, x_unl, x_fm))
        z_d = self._each(self._z, rows[0])
        z_g = self._each(self._z, rows[0])
        targets = self._each(lambda m, r: m.te.targets(r), rows[1]) if self.temporal else None
        self.unl_rows = rows[1]
        return Batch(x_lab, self.y_all[rows[0]], x_unl, x_fm, z_d, z_g, targets, iteration)

    def record(self, outputs: Tensor) -> None:
        """The temporal ensemble's latest values of the last batch's unlabeled rows: ([S,] B, K + F)."""
        if not self.temporal:
            return
        for member, rows, values in zip(self.members, self._split(self.unl_rows), self._split(outputs)):
            member.te.record(rows, values)


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
        self.correction = torch.ones((), device=device)  # 1 - decay^epochs (1 before the first epoch)

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


class Engine(Protocol):
    """What the loop needs of an engine. ``name``: how the config's roles name it (``refused_by``);
    ``stacked``: whether batches and statistics carry a leading model dimension S."""

    name: str
    stacked: bool
    optimizers: Tuple[torch.optim.Optimizer, ...]  # D, G (, the VI encoder): the loop sets their rates

    def step(self, batch: Batch) -> Tuple[Tensor, Tensor]:
        """One D step, one G step and the Polyak update: the stats ([S,] len(STAT_NAMES)) and the unlabeled
        pass's logits and features ([S,] B, K + F)."""

    def state_dict(self, index: int = 0) -> Dict: ...

    def load_state_dict(self, payload: Dict, index: int = 0) -> None: ...

    def networks(self, index: int = 0) -> Networks:
        """Model ``index`` as single-model modules and optimizers (checkpoints, results)."""

    def averaged(self, index: int = 0) -> nn.Module:
        """Model ``index``'s Polyak-averaged discriminator, the classifier (evaluation)."""

    def finite(self) -> Tensor:
        """(S,) bool, or (1,) for one model: whether each model's parameters are all finite (no wait)."""


class SingleEngine:
    """One model: the steps on the modules themselves, batches (B, ...). Runs every option of the schema."""

    name, stacked = "single", False

    def __init__(self, networks: Networks, cfg: Config) -> None:
        self.net, self.method, self.ema_decay = networks, cfg.method, cfg.train.ema_decay
        self.train = cfg.train
        self.d_objective, self.g_objective = compiled_objectives(cfg.train.compile, cfg.train.compile_mode)
        self.optimizers = (networks.opt_d, networks.opt_g, *([networks.opt_e] if networks.opt_e else []))
        self.density = None
        if cfg.method.density_weight > 0:
            from .density import DensityPenalty
            self.density = DensityPenalty(cfg, next(networks.gen.parameters()).device)

    def step(self, batch: Batch) -> Tuple[Tensor, Tensor]:
        n, recipe = self.net, {"method": self.method, "train": self.train}
        density_z = None if self.density is None else self.density.z_at(batch.iteration)
        stats, outputs = discriminator_step(n.disc, n.gen, n.opt_d, batch.x_lab, batch.y_lab, batch.x_unl,
                                            batch.z_d, **recipe, targets=batch.targets, history=n.hist_d,
                                            objective=self.d_objective)
        stats["loss_g"] = generator_step(n.disc, n.gen, n.opt_g, batch.x_fm, batch.z_g, **recipe, history=n.hist_g,
                                         objective=self.g_objective, encoder=n.enc, opt_e=n.opt_e,
                                         density=self.density, density_z=density_z)
        polyak_average(n.disc_avg, n.disc, self.ema_decay)
        return torch.stack([stats[k].float() for k in STAT_NAMES]), outputs

    def state_dict(self, index: int = 0) -> Dict:
        return self.net.state_dict()

    def load_state_dict(self, payload: Dict, index: int = 0) -> None:
        self.net.load_state_dict(payload)

    def networks(self, index: int = 0) -> Networks:
        return self.net

    def averaged(self, index: int = 0) -> nn.Module:
        return self.net.disc_avg

    def finite(self) -> Tensor:
        params = [p for module in (self.net.disc, self.net.gen) for p in module.parameters()]
        return torch.stack([torch.isfinite(p).all() for p in params]).all().view(1)
