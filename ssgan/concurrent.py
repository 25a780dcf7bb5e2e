"""Several models in one process: the networks of every member stacked along a leading dimension and one
vectorised step for all of them (``torch.func.vmap`` over ``functional_call``), ``StackedEngine``.

Only what vectorising needs lives here: stacking the members' networks and optimizer states, the vectorised
step (the objectives of ``objectives.py`` under vmap, run by ``engines.train_step``) and unstacking a member
back into single-model modules.
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
from .engines import Batch, StepModels, compile_optimizers, fuse_average, train_step
from .layers import scale_after_product
from .models import Networks, g_betas
from .objectives import compiled, discriminator_objective, generator_objective
from .optim import make_optimizer

def check_supported(cfg: Config) -> None:
    """Refuse, with one line, the options the vectorised step does not cover (the schema's
    ``refused_by=("stacked",)``: they need per-model autograd, state or data)."""
    names = refused_options(cfg, "stacked")
    if names:
        raise ConfigError(f"concurrent seeds do not support {', '.join(names)}; set train.concurrent_seeds=false")


class _Bound:
    """A module called with given (stacked-slice) parameters and buffers, as the objectives call a network."""

    def __init__(self, module: nn.Module, params: Dict[str, Tensor], buffers: Dict[str, Tensor]) -> None:
        self.module, self.params, self.buffers = module, params, buffers
        self.batch_dependent = getattr(module, "batch_dependent", False)

    def __call__(self, *inputs: Tensor):
        return functional_call(self.module, (self.params, self.buffers), inputs)

    def modules(self):
        return self.module.modules()


class Stacked:
    """S models' parameters stacked along a leading dimension, (S, ...) each, as ``engines.train_step`` sees a
    network: ``parameters()`` for the optimizer and the Polyak update, ``buffers()`` for what the Polyak update
    copies (none for the average: the stacked buffers are the networks', shared)."""

    def __init__(self, params: Dict[str, Tensor], buffers: Dict[str, Tensor], *, own_buffers: bool = True) -> None:
        self.params, self.buffer_dict, self.own_buffers = params, buffers, own_buffers

    def parameters(self):
        return iter(self.params.values())

    def buffers(self):
        return iter(self.buffer_dict.values() if self.own_buffers else ())

    def detached(self) -> Dict[str, Tensor]:
        """The parameters as constants (the network that the other's step does not train)."""
        return {k: v.detach() for k, v in self.params.items()}


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

    The loop (``train.py``) hands it batches (S, B, ...) and z (S, B, z_dim); its step is ``engines.train_step``,
    the one step body, handed ``Stacked`` networks and the objectives of ``objectives.py`` called on ``_Bound``
    modules under ``vmap``; ``engines.update`` runs backward and the optimizer steps on the stacked parameters
    (each model's gradient lands in its own slice).
    """

    name, stacked = "stacked", True

    def __init__(self, networks: Sequence[Networks], cfg: Config, *, capturable: bool = False) -> None:
        t, method = cfg.train, cfg.method
        self.members = list(networks)  # single-model holders, refilled by ``networks(s)``
        self.train = t  # the recipe, for engines.train_step
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
        self.method = method
        template_d, template_g = copy.deepcopy(first.disc).train(), copy.deepcopy(first.gen).train()
        for template in (template_d, template_g):
            scale_after_product(template, t.step == "lean")

        def d_loss(pd, bd, pg, bg, x_lab, y_lab, x_unl, z, targets):
            return discriminator_objective(_Bound(template_d, pd, bd), _Bound(template_g, pg, bg), x_lab, y_lab,
                                           x_unl, z, method=method, targets=targets, one_pass=t.step == "lean")

        def g_loss(pd, bd, pg, bg, x_unl, z):
            return generator_objective(_Bound(template_d, pd, bd), _Bound(template_g, pg, bg), x_unl, z,
                                       method=method, one_pass=t.step == "lean")

        targets_dim = 0 if method.ct_mode == "temporal" else None  # (S, B, K + F), or None passed through
        d_vmapped = compiled(vmap(d_loss, in_dims=(0,) * 8 + (targets_dim,), randomness="different"), t)
        g_vmapped = compiled(vmap(g_loss, randomness="different"), t)
        compile_optimizers(self.optimizers, t)

        # The objectives' signatures over Stacked holders: the network a step does not train enters as constants.
        def d_objective(disc: Stacked, gen: Stacked, x_lab, y_lab, x_unl, z, *, method, targets=None, history=None,
                        one_pass=False):
            return d_vmapped(disc.params, disc.buffer_dict, gen.detached(), gen.buffer_dict, x_lab, y_lab, x_unl, z,
                             targets)

        def g_objective(disc: Stacked, gen: Stacked, x_unl, z, *, method, encoder=None, one_pass=False):
            return g_vmapped(disc.detached(), disc.buffer_dict, gen.params, gen.buffer_dict, x_unl, z)

        self.models = StepModels(Stacked(self.params_d, self.buffers_d), Stacked(self.params_g, self.buffers_g),
                                 Stacked(self.avg_d, self.buffers_d, own_buffers=False), self.opt_d, self.opt_g,
                                 d_objective, g_objective,
                                 average_rate=fuse_average(self.opt_d, self.avg_d.values(), t))

    def step(self, batch: Batch) -> Tuple[Tensor, Tensor]:
        """``engines.train_step`` of every member at once, on batches (S, B, ...); the stats rows
        (S, len(STAT_NAMES)) and the unlabeled pass's logits and features (S, B, K + F)."""
        return train_step(self.models, batch, method=self.method, train=self.train)

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

    def discriminator(self, s: int = 0) -> nn.Module:
        """Member s's discriminator being trained (its slice only: no generator, no optimizer state)."""
        return _load_slice(self.members[s].disc, self.params_d, self.buffers_d, s)
