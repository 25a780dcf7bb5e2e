"""Several models in one process: the networks of every member stacked along a leading dimension and one
vectorised step for all of them (``torch.func.vmap`` over ``functional_call``), ``StackedEngine``.

Only what vectorising needs lives here: stacking the members' networks and optimizer states, the vectorised
step (the objectives of ``engines.py`` under vmap) and unstacking a member back into single-model modules.
Everything else (the seeds' draws, the epoch loop, the data order and z, evaluation, logs, checkpoints,
signals, outputs) is ``train.py``'s loop, the same for one model and for several, so every ``train.*`` option
means the same in both paths; those the vectorised step cannot take are declared in the schema
(``refused_by=("stacked",)``) and refused by ``check_supported``.

Each seed keeps its own labeled subset, initialisation, data order and z stream, drawn exactly as a
single-seed ``fit`` draws them, so with the in-network noise off a concurrent run reproduces the single
runs (tested). Dropout and Gaussian noise inside the networks are drawn by vmap (``randomness="different"``)
from torch's global generator: independent for every seed, not the numbers a single run draws, and the same
again when the same seeds are resumed together. Checkpoints are written per seed in the single-run format.
"""

from __future__ import annotations

import copy
from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from .config import Config, ConfigError, refused_options
from .engines import AMP_DTYPES, STAT_NAMES, Batch, autocast, discriminator_objective, generator_objective, update
from .models import Networks, g_betas
from .optim import make_optimizer, polyak_update

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

    The loop (``train.py``) hands it batches (S, B, ...) and z (S, B, z_dim); the objectives are ``engines``',
    called on ``_Bound`` modules under ``vmap``; ``engines.update`` runs backward and the optimizer steps on
    the stacked parameters (each model's gradient lands in its own slice).
    """

    name, stacked = "stacked", True

    def __init__(self, networks: Sequence[Networks], cfg: Config, *, capturable: bool = False) -> None:
        t, method = cfg.train, cfg.method
        self.members = list(networks)  # single-model holders, refilled by ``networks(s)``
        self.ema_decay = t.ema_decay
        self.train = t  # the recipe, for engines.update
        self.amp_dtype = AMP_DTYPES[t.precision]
        self.params_d, self.buffers_d = stack_module_state([n.disc for n in networks])  # each (S, ...)
        self.params_g, self.buffers_g = stack_module_state([n.gen for n in networks])
        avg, _ = stack_module_state([n.disc_avg for n in networks])
        self.avg_d = {k: v.detach() for k, v in avg.items()}  # the Polyak averages, (S, ...)
        first, betas = networks[0], (t.beta1, t.beta2)  # the optimizers in their capturable form for a capture
        self.opt_d = make_optimizer(list(self.params_d.values()), t.optimizer, t.lr_d or t.lr, betas, t.adam_eps,
                                    capturable)
        self.opt_g = make_optimizer(list(self.params_g.values()), t.optimizer, t.lr_g or t.lr, g_betas(t),
                                    t.adam_eps, capturable)
        _stack_optimizer_state([n.opt_d for n in networks], self.opt_d)
        _stack_optimizer_state([n.opt_g for n in networks], self.opt_g)
        self.optimizers = (self.opt_d, self.opt_g)
        template_d, template_g = copy.deepcopy(first.disc).train(), copy.deepcopy(first.gen).train()

        def d_loss(pd, bd, pg, bg, x_lab, y_lab, x_unl, z, targets):
            return discriminator_objective(_Bound(template_d, pd, bd), _Bound(template_g, pg, bg), x_lab, y_lab,
                                           x_unl, z, method=method, targets=targets)

        def g_loss(pd, bd, pg, bg, x_unl, z):
            return generator_objective(_Bound(template_d, pd, bd), _Bound(template_g, pg, bg), x_unl, z,
                                       method=method)

        targets_dim = 0 if method.ct_mode == "temporal" else None  # (S, B, K + F), or None passed through
        self.d_loss = vmap(d_loss, in_dims=(0,) * 8 + (targets_dim,), randomness="different")
        self.g_loss = vmap(g_loss, randomness="different")

    def step(self, batch: Batch) -> Tuple[Tensor, Tensor]:
        """One D step, one G step and the Polyak update of every member, on batches (S, B, ...); the stats
        rows (S, len(STAT_NAMES)) and the unlabeled pass's logits and features (S, B, K + F)."""
        b = batch
        frozen_g = {k: v.detach() for k, v in self.params_g.items()}
        with autocast(b.x_lab.device, self.amp_dtype):
            loss_d, stats, outputs = self.d_loss(self.params_d, self.buffers_d, frozen_g, self.buffers_g, b.x_lab,
                                                 b.y_lab, b.x_unl, b.z_d, b.targets)
        update(loss_d, self.opt_d, train=self.train)  # (S,) losses of independent models
        frozen_d = {k: v.detach() for k, v in self.params_d.items()}
        with autocast(b.x_lab.device, self.amp_dtype):
            loss_g = self.g_loss(frozen_d, self.buffers_d, self.params_g, self.buffers_g, b.x_fm, b.z_g)
        update(loss_g, self.opt_g, train=self.train)
        polyak_update(self.avg_d.values(), self.params_d.values(), self.ema_decay)
        stats = {**stats, "loss_g": loss_g}
        return torch.stack([stats[k].detach().float() for k in STAT_NAMES], dim=1), outputs

    def state_dict(self, index: int = 0) -> Dict:
        return self.networks(index).state_dict()

    def load_state_dict(self, payload: Dict, index: int = 0) -> None:
        """Member ``index``'s checkpoint into its slice of the stacked networks and optimizers."""
        n = self.networks(index)
        n.load_state_dict(payload)
        with torch.no_grad():
            for stacked, module in ((self.params_d, n.disc), (self.params_g, n.gen), (self.avg_d, n.disc_avg)):
                for name, p in module.named_parameters():
                    stacked[name][index].copy_(p)
            for stacked, module in ((self.buffers_d, n.disc), (self.buffers_g, n.gen)):
                for name, b in module.named_buffers():
                    stacked[name][index].copy_(b)
        _stack_optimizer_state([m.opt_d for m in self.members], self.opt_d)
        _stack_optimizer_state([m.opt_g for m in self.members], self.opt_g)

    def networks(self, s: int = 0) -> Networks:
        """Member s as single-model modules and optimizers (for checkpoints, evaluation and results)."""
        n = self.members[s]
        _load_slice(n.disc, self.params_d, self.buffers_d, s)
        _load_slice(n.gen, self.params_g, self.buffers_g, s)
        _load_slice(n.disc_avg, self.avg_d, self.buffers_d, s)
        _slice_optimizer_state(self.opt_d, n.opt_d, s)
        _slice_optimizer_state(self.opt_g, n.opt_g, s)
        return n

    def finite(self) -> Tensor:
        """(S,) bool: whether each member's parameters are all finite (on the device: no wait)."""
        stacked = [*self.params_d.values(), *self.params_g.values()]
        return torch.stack([torch.isfinite(p).flatten(1).all(dim=1) for p in stacked]).all(dim=0)

    def averaged(self, s: int = 0) -> nn.Module:
        """Member s's Polyak-averaged discriminator, the classifier."""
        return _load_slice(self.members[s].disc_avg, self.avg_d, self.buffers_d, s)
