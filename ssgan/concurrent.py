"""Several models in one process: the networks of every member stacked along a leading dimension and one
vectorised step for all of them (``torch.func.vmap`` over ``functional_call``).

Only what vectorising needs lives here: stacking the members' networks and optimizer states
(``StackedEngine.__init__``), the vectorised step (``StackedEngine.step``) and unstacking a member back into
single-model modules (``StackedEngine.networks``). Everything else (the seeds' draws, the epoch loop, the data
order and z, evaluation, logs, checkpoints, signals, outputs) is the single-run frame of ``train.py``
(``start_member``, ``train_members``), so every ``train.*`` option means the same in both paths, and those
the vectorised step cannot take are refused as the schema declares (``config.refused_options``).

Each seed keeps its own labeled subset, initialisation, data order and z stream, drawn exactly as a
single-seed ``fit`` draws them, so with the in-network noise off a concurrent run reproduces the single
runs (tested). Dropout and Gaussian noise inside the networks are drawn by vmap (``randomness="different"``)
from torch's global generator: independent for every seed, not the numbers a single run draws, and the same
again when the same seeds are resumed together. Checkpoints are written per seed in the single-run format.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from .config import Config, ConfigError, refused_options, validate
from .data import ImageData
from .optim import make_optimizer
from .train import (AMP_DTYPES, STAT_NAMES, FitResult, Networks, autocast, numerics,
                    decide_capture, discriminator_loss, g_betas, generator_loss, place_data, prepare,
                    start_member, train_members, update)

def check_supported(cfg: Config) -> None:
    """Refuse, with one line, the options the vectorised step does not cover (the schema's
    ``refused_by=("stacked",)``: they need per-model autograd, state or data)."""
    names = refused_options(cfg, "stacked")
    if names:
        raise ConfigError(f"concurrent seeds do not support {', '.join(names)}; set train.concurrent_seeds=false")


class _Bound:
    """A module called with given (stacked-slice) parameters and buffers, as the steps call a network."""

    def __init__(self, module: nn.Module, params: Dict[str, Tensor], buffers: Dict[str, Tensor]) -> None:
        self.module, self.params, self.buffers = module, params, buffers
        self.batch_dependent = getattr(module, "batch_dependent", False)

    def __call__(self, *inputs: Tensor):
        return functional_call(self.module, (self.params, self.buffers), inputs)


def _stack_optimizer_state(optimizers: Sequence[torch.optim.Optimizer], stacked: torch.optim.Optimizer) -> None:
    """Give ``stacked`` (over the stacked ``params``) the members' optimizer states, stacked along dim 0;
    scalars (the step count, the same for every member) are taken from the first member."""
    states = [o.state_dict() for o in optimizers]
    if not states[0]["state"]:
        return  # fresh optimizers: nothing to carry over
    merged = {i: {k: (torch.stack([s["state"][i][k] for s in states]) if torch.is_tensor(v) and v.dim() > 0 else v)
                  for k, v in st.items()} for i, st in states[0]["state"].items()}
    stacked.load_state_dict({"state": merged, "param_groups": stacked.state_dict()["param_groups"]})


def _slice_optimizer_state(stacked: torch.optim.Optimizer, single: torch.optim.Optimizer, s: int) -> None:
    """Load member s's slice of the stacked optimizer's state into ``single``."""
    state = stacked.state_dict()
    sliced = {i: {k: (v[s].clone() if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in st.items()}
              for i, st in state["state"].items()}
    single.load_state_dict({"state": sliced, "param_groups": state["param_groups"]})


@torch.no_grad()
def _load_slice(module: nn.Module, params: Dict[str, Tensor], buffers: Dict[str, Tensor], s: int) -> nn.Module:
    for name, p in module.named_parameters():
        p.copy_(params[name][s])
    for name, b in module.named_buffers():
        b.copy_(buffers[name][s])
    return module


class StackedEngine:
    """The members' networks stacked along a leading dimension S, and one vectorised step for all of them.

    The frame (``train.train_members``) hands it batches (S, B, ...) and z (S, B, z_dim); the losses are
    ``train``'s, called on ``_Bound`` modules under ``vmap``; ``train.update`` runs backward and the
    optimizer steps on the stacked parameters (each model's gradient lands in its own slice).
    """

    def __init__(self, networks: Sequence[Networks], cfg: Config, capture: bool = False) -> None:
        t, method = cfg.train, cfg.method
        self.members = list(networks)  # single-model holders, refilled by ``networks(s)``
        self.ema_decay = t.ema_decay
        self.amp_dtype = AMP_DTYPES[t.precision]
        self.params_d, self.buffers_d = stack_module_state([n.disc for n in networks])  # each (S, ...)
        self.params_g, self.buffers_g = stack_module_state([n.gen for n in networks])
        avg, _ = stack_module_state([n.disc_avg for n in networks])
        self.avg_d = {k: v.detach() for k, v in avg.items()}  # the Polyak averages, (S, ...)
        first, betas = networks[0], (t.beta1, t.beta2)  # capture: the optimizers in their capturable form
        self.opt_d = make_optimizer(list(self.params_d.values()), t.optimizer, t.lr_d or t.lr, betas, t.adam_eps,
                                    capture)
        self.opt_g = make_optimizer(list(self.params_g.values()), t.optimizer, t.lr_g or t.lr, g_betas(t),
                                    t.adam_eps, capture)
        _stack_optimizer_state([n.opt_d for n in networks], self.opt_d)
        _stack_optimizer_state([n.opt_g for n in networks], self.opt_g)
        self.optimizers = (self.opt_d, self.opt_g)
        template_d, template_g = copy.deepcopy(first.disc).train(), copy.deepcopy(first.gen).train()

        def d_loss(pd, bd, pg, bg, x_lab, y_lab, x_unl, z, targets):
            return discriminator_loss(_Bound(template_d, pd, bd), _Bound(template_g, pg, bg), x_lab, y_lab,
                                      x_unl, z, method, targets)

        def g_loss(pd, bd, pg, bg, x_unl, z):
            return generator_loss(_Bound(template_d, pd, bd), _Bound(template_g, pg, bg), x_unl, z, method.fm_norm,
                                  pull_away_weight=method.pull_away_weight)

        targets_dim = 0 if method.ct_mode == "temporal" else None  # (S, B, K + F), or None passed through
        self.d_loss = vmap(d_loss, in_dims=(0,) * 8 + (targets_dim,), randomness="different")
        self.g_loss = vmap(g_loss, randomness="different")

    def train(self) -> None:
        """The templates are always in training mode (dropout and noise on)."""

    def step(self, x_lab: Tensor, y_lab: Tensor, x_unl: Tensor, x_unl_fm: Tensor, z_d: Tensor, z_g: Tensor,
             targets: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """One D step, one G step and the Polyak update of every member; the stats rows (S, len(STAT_NAMES))
        and the unlabeled pass's logits and features (S, B, K + F)."""
        frozen_g = {k: v.detach() for k, v in self.params_g.items()}
        with autocast(x_lab.device, self.amp_dtype):
            loss_d, stats, outputs = self.d_loss(self.params_d, self.buffers_d, frozen_g, self.buffers_g, x_lab,
                                                 y_lab, x_unl, z_d, targets)
        update(loss_d, self.opt_d)  # (S,) losses of independent models
        frozen_d = {k: v.detach() for k, v in self.params_d.items()}
        with autocast(x_lab.device, self.amp_dtype):
            loss_g = self.g_loss(frozen_d, self.buffers_d, self.params_g, self.buffers_g, x_unl_fm, z_g)
        update(loss_g, self.opt_g)
        with torch.no_grad():
            torch._foreach_lerp_(list(self.avg_d.values()), [p.detach() for p in self.params_d.values()],
                                 1.0 - self.ema_decay)
        stats = {**stats, "loss_g": loss_g}
        return torch.stack([stats[k].detach().float() for k in STAT_NAMES], dim=1), outputs

    def networks(self, s: int) -> Networks:
        """Member s as single-model modules and optimizers (for checkpoints, evaluation and results)."""
        n = self.members[s]
        _load_slice(n.disc, self.params_d, self.buffers_d, s)
        _load_slice(n.gen, self.params_g, self.buffers_g, s)
        _load_slice(n.disc_avg, self.avg_d, self.buffers_d, s)
        _slice_optimizer_state(self.opt_d, n.opt_d, s)
        _slice_optimizer_state(self.opt_g, n.opt_g, s)
        return n

    def finite_parameters(self) -> Tensor:
        """(S,) bool: whether each member's parameters are all finite (on the device: no wait)."""
        stacked = [*self.params_d.values(), *self.params_g.values()]
        return torch.stack([torch.isfinite(p).flatten(1).all(dim=1) for p in stacked]).all(dim=0)

    def averaged(self, s: int) -> nn.Module:
        """Member s's Polyak-averaged discriminator, the classifier."""
        return _load_slice(self.members[s].disc_avg, self.avg_d, self.buffers_d, s)


def fit_concurrent(cfg: Config, seeds: Sequence[int], data: Optional[ImageData] = None,
                   run_dirs: Optional[Sequence[Path]] = None,
                   resumes: Optional[Sequence[Optional[Dict]]] = None) -> List[FitResult]:
    """Train one model per seed in ``seeds`` at once; return their FitResults in the order of ``seeds``.

    ``cfg.seed`` is ignored; ``run_dirs`` (one per seed) receive what a single run writes. ``resumes``: one
    checkpoint payload (or None) per seed; resumed seeds must all be at the same position.
    """
    return fit_grid([replace(cfg, seed=seed) for seed in seeds], data, run_dirs, resumes)


def grid_key(cfg: Config) -> Dict:
    """What models trained in one stacked step must share: the config but the seed, the label count and the
    run directory (the networks, the method, the schedule, the data set)."""
    return asdict(replace(cfg, seed=0, run_dir="", dataset=replace(cfg.dataset, labels=0)))


def fit_grid(cfgs: Sequence[Config], data: Optional[ImageData] = None, run_dirs: Optional[Sequence[Path]] = None,
             resumes: Optional[Sequence[Optional[Dict]]] = None) -> List[FitResult]:
    """Train one model per config at once, the configs differing only in the seed and the label count (a
    table's label counts x seeds); each keeps its own labeled subset, initialisation, data order and z stream.
    Returns their FitResults in order. ``run_dirs``, ``resumes``: as for ``fit_concurrent``."""
    cfgs = list(cfgs)
    for cfg in cfgs:
        validate(cfg)
        check_supported(cfg)
    if any(grid_key(cfg) != grid_key(cfgs[0]) for cfg in cfgs):
        raise ConfigError("models trained together must share their config but the seed and dataset.labels")
    resumes = list(resumes) if resumes is not None else [None] * len(cfgs)
    positions = {(int(r["epoch"]), int(r["iteration"])) if r is not None else (0, 0) for r in resumes}
    if len(positions) > 1:
        raise ConfigError(f"models trained together must start at the same position, got {sorted(positions)}")
    with numerics(cfgs[0].train):
        base, data, device = prepare(cfgs[0], data, len(cfgs))
        x_all = place_data(data.x_unlabeled, device, base.train.data_placement)  # (U, C, H, W)
        capture = decide_capture(base, device, x_all)
        members, networks = [], []
        for i, cfg in enumerate(cfgs):
            run_dir = None if run_dirs is None else Path(run_dirs[i])
            cfg = replace(cfg, dataset=replace(cfg.dataset, n_classes=data.n_classes),
                          run_dir=str(run_dir) if run_dir is not None else cfg.run_dir)
            member, net = start_member(cfg, data, x_all, device, run_dir, resume=resumes[i], capture=capture)
            members.append(member)
            networks.append(net)
        return train_members(members, StackedEngine(networks, base, capture), data, x_all, device, capture)
