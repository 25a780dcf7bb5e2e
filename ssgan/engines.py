"""What one training iteration does to the networks: one discriminator step, then one generator step, then
the Polyak update (Salimans et al. 2016, sec. 5; Wei et al. 2018): ``train_step``, one body for one model or
S models stacked along a leading dimension, behind an ``Engine``.

The step functions call an objective of ``objectives.py`` (the networks and the losses), then ``update``,
the one place that runs ``backward()`` and an optimizer step. What differs between one model and several is
only what ``train_step`` is handed (``StepModels``): ``SingleEngine`` hands it one model's modules and the
objectives as they are, batches (B, ...); ``concurrent.StackedEngine`` hands it the stacked parameters
(``concurrent.Stacked``, whose ``parameters()`` are (S, ...)) and the same objectives under ``torch.func.vmap``,
batches (S, B, ...). The objectives are written once, for one model, and vmapped for many: a single model
keeps its plain modules and kernels (no vmap, no leading dimension of one to pay for), and the stacked path
cannot drift from it. ``accelerate.Captured`` wraps either engine's step as a CUDA graph.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Optional, Protocol, Tuple

import torch
from torch import Tensor, nn

from .config import Config, MethodConfig, TrainConfig
from .layers import scale_after_product
from .models import Networks
from .objectives import compiled, discriminator_objective, generator_objective, history_penalty
from .optim import HistoricalAverage, OfficialAdam, polyak_update

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


def polyak_average(avg: nn.Module, model: nn.Module, decay: float, rate: Optional[Tensor] = None, *,
                   buffers_only: bool = False) -> None:
    """``optim.polyak_update`` of a module's parameters (``rate``: the debiased average's, else 1 - decay); its
    buffers (the hidden layers' fixed scales g) are copied, in one foreach copy. ``buffers_only``: the
    parameters' average is fused into the optimizer's update (``fuse_average``)."""
    if not buffers_only:
        polyak_update(avg.parameters(), model.parameters(), decay, rate)
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


def compile_optimizers(optimizers, train: TrainConfig) -> None:
    """Under ``train.compile``, each ``OfficialAdam``'s update compiled too (one fused loop per tensor)."""
    if train.compile == "off":
        return
    for optimizer in optimizers:
        if isinstance(optimizer, OfficialAdam):
            optimizer.compile_update(train.compile, train.compile_mode)


def fuse_average(opt_d: torch.optim.Optimizer, averages, train: TrainConfig) -> Optional[Tensor]:
    """Under ``train.compile``, D's Polyak update fused into D's compiled optimizer update
    (``OfficialAdam.average_into``: one loop per tensor steps the weights and moves their average); the
    0-d rate tensor it reads (1 - decay; ``train_step`` fills it with the debiased average's rate), or None
    where the update is not fused. The average of the D weights after D's step, as the unfused Polyak update
    after G's step takes it (G's step leaves D's weights alone): the same values, to the last bits."""
    if train.compile == "off" or not isinstance(opt_d, OfficialAdam):
        return None
    averages = list(averages)
    rate = torch.tensor(1.0 - train.ema_decay, dtype=torch.float32, device=averages[0].device)
    opt_d.average_into(averages, rate)
    return rate


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
                                                                      history=history,
                                                                      one_pass=train.step == "lean")
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
        loss = (objective or generator_objective)(disc, gen, x_unl, z, method=method, encoder=encoder,
                                                  one_pass=train.step == "lean")
    if history is not None:
        loss = loss + history_penalty(history, method)
    if density_z is not None:  # Bad GAN's low-density penalty on this iteration (density.DensityPenalty)
        loss = loss + density(gen, density_z)
    update(loss, optimizer, *([opt_e] if opt_e is not None else []), train=train)
    if history is not None:
        history.update()
    return loss.detach()


@dataclass
class StepModels:
    """What one step updates, for one model or S stacked ones: the networks (modules, or ``concurrent.Stacked``
    holders of (S, ...) parameters), their optimizers, the objectives that call them (plain, compiled or
    vmapped) and the optional parts (historical averages, Bad GAN's VI encoder and density penalty)."""

    disc: Any
    gen: Any
    disc_avg: Any  # the Polyak average of disc: ``parameters()`` (and ``buffers()``, copied) like disc's
    opt_d: torch.optim.Optimizer
    opt_g: torch.optim.Optimizer
    d_objective: Callable = discriminator_objective
    g_objective: Callable = generator_objective
    hist_d: Optional[HistoricalAverage] = None
    hist_g: Optional[HistoricalAverage] = None
    enc: Optional[nn.Module] = None
    opt_e: Optional[torch.optim.Optimizer] = None
    density: Optional[Callable] = None  # density.DensityPenalty: ``z_at(iteration)`` and ``(gen, z)``
    average_rate: Optional[Tensor] = None  # 0-d: the Polyak rate that opt_d's fused update reads (fuse_average)


def train_step(models: StepModels, batch: "Batch", *, method: MethodConfig, train: TrainConfig
               ) -> Tuple[Tensor, Tensor]:
    """One iteration: the D step, the G step and the Polyak update of D. ``batch``: (B, ...) for one model,
    (S, B, ...) for S stacked ones. Returns the statistics ([S,] len(STAT_NAMES)) and the unlabeled pass's
    logits and features ([S,] B, K + F), detached."""
    m, recipe = models, {"method": method, "train": train}
    if m.average_rate is not None and batch.ema_rate is not None:
        m.average_rate.copy_(batch.ema_rate)
    density_z = None if m.density is None else m.density.z_at(batch.iteration)
    stats, outputs = discriminator_step(m.disc, m.gen, m.opt_d, batch.x_lab, batch.y_lab, batch.x_unl, batch.z_d,
                                        **recipe, targets=batch.targets, history=m.hist_d, objective=m.d_objective)
    stats["loss_g"] = generator_step(m.disc, m.gen, m.opt_g, batch.x_fm, batch.z_g, **recipe, history=m.hist_g,
                                     objective=m.g_objective, encoder=m.enc, opt_e=m.opt_e, density=m.density,
                                     density_z=density_z)
    polyak_average(m.disc_avg, m.disc, train.ema_decay, batch.ema_rate, buffers_only=m.average_rate is not None)
    return torch.stack([stats[k].float() for k in STAT_NAMES], dim=-1), outputs


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
    ema_rate: Optional[Tensor] = None  # 0-d: the debiased average's rate this step (train.ema_start=debiased)

    def tensors(self) -> Dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if torch.is_tensor(getattr(self, f.name))}


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

    def discriminator(self, index: int = 0) -> nn.Module:
        """Model ``index``'s discriminator being trained, the average's source (evaluation)."""

    def finite(self) -> Tensor:
        """(S,) bool, or (1,) for one model: whether each model's parameters are all finite (no wait)."""


class SingleEngine:
    """One model: ``train_step`` on the modules themselves, batches (B, ...). Runs every option of the schema."""

    name, stacked = "single", False

    def __init__(self, networks: Networks, cfg: Config) -> None:
        self.net, self.method, self.train = networks, cfg.method, cfg.train
        self.optimizers = (networks.opt_d, networks.opt_g, *([networks.opt_e] if networks.opt_e else []))
        compile_optimizers(self.optimizers, cfg.train)
        if cfg.train.step == "lean":
            scale_after_product(networks.disc)
            scale_after_product(networks.gen)
        density = None
        if cfg.method.density_weight > 0:
            from .density import DensityPenalty
            density = DensityPenalty(cfg, next(networks.gen.parameters()).device)
        n = networks
        objectives = compiled(discriminator_objective, self.train), compiled(generator_objective, self.train)
        self.models = StepModels(n.disc, n.gen, n.disc_avg, n.opt_d, n.opt_g, *objectives, n.hist_d, n.hist_g, n.enc,
                                 n.opt_e, density, fuse_average(n.opt_d, n.disc_avg.parameters(), self.train))

    def step(self, batch: Batch) -> Tuple[Tensor, Tensor]:
        return train_step(self.models, batch, method=self.method, train=self.train)

    def state_dict(self, index: int = 0) -> Dict:
        return self.net.state_dict()

    def load_state_dict(self, payload: Dict, index: int = 0) -> None:
        self.net.load_state_dict(payload)

    def networks(self, index: int = 0) -> Networks:
        return self.net

    def averaged(self, index: int = 0) -> nn.Module:
        return self.net.disc_avg

    def discriminator(self, index: int = 0) -> nn.Module:
        return self.net.disc

    def finite(self) -> Tensor:
        params = [p for module in (self.net.disc, self.net.gen) for p in module.parameters()]
        return torch.stack([torch.isfinite(p).all() for p in params]).all().view(1)
