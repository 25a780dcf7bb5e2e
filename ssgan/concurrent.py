"""Several seeds in one process: the training of ``train.fit`` for each seed, with the seeds' parameters
stacked along a leading dimension and one vectorised step for all of them (``torch.func.vmap`` over
``functional_call``).

Each seed keeps its own labeled subset, initialisation, data order and z stream, drawn exactly as a
single-seed ``fit`` draws them, so with the in-network noise off a concurrent run reproduces the single runs
(tested). Dropout and Gaussian noise inside the networks are drawn by vmap (``randomness="different"``):
independent for every seed, but not the same numbers as a single run draws from torch's global generator.
The losses and the steps are those of ``train.py``; this module only stacks, vectorises and unstacks.
Mid-run checkpoints are written per seed in the single-run format, so any seed can be continued with
``ssgan fit --resume SEED_DIR``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_NAME, write_checkpoint
from .config import Config, ConfigError, validate
from .data import ImageData, augment, balanced_labeled_subset, epoch_order, load_data
from .evaluate import error_rate, predict_proba
from .optim import make_optimizer
from .train import (AMP_DTYPES, FitResult, TrainingDiverged, TrainState, _discriminator_loss, _epoch_means, _generator_loss,
                    _progress, autocast, init_networks, lr_at, resolve_device, write_outputs)


class _Bound:
    """A module called with given (stacked-slice) parameters and buffers, as the steps call a network."""

    def __init__(self, module: nn.Module, params: Dict[str, Tensor], buffers: Dict[str, Tensor]) -> None:
        self.module, self.params, self.buffers = module, params, buffers
        self.batch_dependent = getattr(module, "batch_dependent", False)

    def __call__(self, *inputs: Tensor):
        return functional_call(self.module, (self.params, self.buffers), inputs)


def check_supported(cfg: Config) -> None:
    """The options that the vectorised step does not cover (they need per-seed autograd or state)."""
    unsupported = [(cfg.model.norm == "spectral", "model.norm=spectral"),
                   (cfg.method.gradient_penalty > 0, "method.gradient_penalty"),
                   (cfg.method.historical_averaging > 0, "method.historical_averaging"),
                   (cfg.dataset.val_size > 0, "dataset.val_size"),
                   (cfg.train.channels_last, "train.channels_last"),
                   (cfg.train.data_placement == "host", "train.data_placement=host"),
                   (cfg.train.compile != "off", "train.compile")]
    names = [name for bad, name in unsupported if bad]
    if names:
        raise ConfigError(f"concurrent seeds do not support {', '.join(names)}; set train.concurrent_seeds=false")


def _load_slice(module: nn.Module, params: Dict[str, Tensor], buffers: Dict[str, Tensor], s: int) -> nn.Module:
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(params[name][s])
        for name, b in module.named_buffers():
            b.copy_(buffers[name][s])
    return module


def _slice_optimizer(optimizer: torch.optim.Optimizer, params: List[Tensor], s: int,
                     kind: str, lr: float, betas, eps: float) -> torch.optim.Optimizer:
    """A single-model optimizer over ``params`` holding seed s's slice of the stacked optimizer's state."""
    single = make_optimizer(params, kind, lr, betas, eps)
    stacked = optimizer.state_dict()
    sliced = {i: {k: (v[s].clone() if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in st.items()}
              for i, st in stacked["state"].items()}
    single.load_state_dict({"state": sliced, "param_groups": stacked["param_groups"]})
    return single


def fit_concurrent(cfg: Config, seeds: Sequence[int], data: Optional[ImageData] = None,
                   run_dirs: Optional[Sequence[Path]] = None) -> List[FitResult]:
    """Train one model per seed in ``seeds`` at once; return their FitResults in the order of ``seeds``.

    ``cfg.seed`` is ignored; ``run_dirs`` (one per seed) receive what a single run writes.
    """
    validate(cfg)
    check_supported(cfg)
    seeds = list(seeds)
    device = resolve_device(cfg.train.device)
    if data is None:
        data = load_data(cfg.dataset, seeds[0])
    cfg = replace(cfg, dataset=replace(cfg.dataset, n_classes=data.n_classes))
    t, method = cfg.train, cfg.method
    n_seeds = len(seeds)
    x_unl_all = torch.from_numpy(data.x_unlabeled).to(device)  # (U, C, H, W)
    iters = t.iters_per_epoch or max(1, len(x_unl_all) // t.batch_size)

    # Per seed, exactly as train.fit draws them: subset, initialisation (global generator), order, z.
    cfgs, lab_idx, discs, gens, order_rngs, z_rngs = [], [], [], [], [], []
    for i, seed in enumerate(seeds):
        cfg_s = replace(cfg, seed=seed, run_dir=str(run_dirs[i]) if run_dirs is not None else cfg.run_dir)
        torch.manual_seed(seed)
        cfgs.append(cfg_s)
        order_rngs.append(np.random.RandomState([seed, 1]))
        z_rngs.append(torch.Generator(device).manual_seed(seed))
        lab_idx.append(balanced_labeled_subset(data.y_train, cfg.dataset.labels, data.n_classes, seed))
        disc, gen = init_networks(cfg_s, x_unl_all, device)
        discs.append(disc)
        gens.append(gen)
    x_lab_all = torch.from_numpy(np.stack([data.x_train[i] for i in lab_idx])).to(device)  # (S, L, C, H, W)
    y_lab_all = torch.from_numpy(np.stack([data.y_train[i] for i in lab_idx])).to(device)  # (S, L)

    params_d, buffers_d = stack_module_state(discs)  # each (S, ...)
    params_g, buffers_g = stack_module_state(gens)
    avg_d = {k: v.detach().clone() for k, v in params_d.items()}  # Polyak average from the initial weights
    betas = (t.beta1, t.beta2)
    opt_d = make_optimizer(list(params_d.values()), t.optimizer, t.lr_d or t.lr, betas, t.adam_eps)
    opt_g = make_optimizer(list(params_g.values()), t.optimizer, t.lr_g or t.lr, betas, t.adam_eps)
    template_d, template_g = copy.deepcopy(discs[0]), copy.deepcopy(gens[0])
    amp_dtype = AMP_DTYPES[t.precision]

    def d_loss(pd, bd, pg, bg, x_lab, y_lab, x_unl, z):
        return _discriminator_loss(_Bound(template_d, pd, bd), _Bound(template_g, pg, bg), x_lab, y_lab, x_unl,
                                   z, method, None)

    def g_loss(pd, bd, pg, bg, x_unl, z):
        return _generator_loss(_Bound(template_d, pd, bd), _Bound(template_g, pg, bg), x_unl, z, method.fm_norm)

    d_step = vmap(d_loss, randomness="different")
    g_step = vmap(g_loss, randomness="different")
    seed_axis = torch.arange(n_seeds, device=device)[:, None]  # (S, 1) for per-seed gathers

    def state_of(s: int, epoch: int) -> TrainState:
        """Seed s as a single-run TrainState (fresh modules holding its slices)."""
        disc = _load_slice(discs[s], params_d, buffers_d, s)
        gen = _load_slice(gens[s], params_g, buffers_g, s)
        disc_avg = _load_slice(copy.deepcopy(discs[s]), avg_d, buffers_d, s).eval()
        return TrainState(disc, disc_avg, gen,
                          _slice_optimizer(opt_d, list(disc.parameters()), s, t.optimizer, t.lr_d or t.lr, betas,
                                           t.adam_eps),
                          _slice_optimizer(opt_g, list(gen.parameters()), s, t.optimizer, t.lr_g or t.lr, betas,
                                           t.adam_eps),
                          order_rngs[s], z_rngs[s], epoch=epoch)

    def save(s: int, epoch: int) -> None:
        state = state_of(s, epoch)
        write_checkpoint(Path(run_dirs[s]) / CHECKPOINT_NAME,
                         {"format": CHECKPOINT_FORMAT, "config": asdict(cfgs[s]), **state.state_dict(),
                          "labeled_indices": torch.from_numpy(lab_idx[s]), "class_names": list(data.class_names)})

    if run_dirs is not None:
        for run_dir in run_dirs:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
    histories: List[List[Dict[str, float]]] = [[] for _ in seeds]
    test_errors = [float("nan")] * n_seeds
    eval_models = [copy.deepcopy(d).eval() for d in discs]
    progress = _progress(t.epochs * iters, t.progress, f"{cfg.dataset.name} {cfg.dataset.labels} labels "
                                                         f"{n_seeds} seeds")
    start = time.time()
    try:
        for epoch in range(t.epochs):
            for group in opt_d.param_groups:
                group["lr"] = lr_at(epoch, t.lr_d or t.lr, t.decay_start, t.epochs)
            for group in opt_g.param_groups:
                group["lr"] = lr_at(epoch, t.lr_g or t.lr, t.decay_start, t.epochs)
            orders = [epoch_order(rng, len(lab_idx[0]), len(x_unl_all), iters, t.batch_size) for rng in order_rngs]
            lab, unl, unl_fm = (torch.from_numpy(np.stack([o[k] for o in orders])).to(device) for k in range(3))
            stats = []
            for it in range(iters):
                x_lab = x_lab_all[seed_axis, lab[:, it]]  # (S, B, C, H, W)
                y_lab = y_lab_all[seed_axis, lab[:, it]]  # (S, B)
                x_unl, x_unl_fm = x_unl_all[unl[:, it]], x_unl_all[unl_fm[:, it]]  # (S, B, C, H, W)
                if t.augment:
                    x_lab, x_unl, x_unl_fm = (augment(x.flatten(0, 1), t.translate, t.flip).view_as(x)
                                              for x in (x_lab, x_unl, x_unl_fm))
                z = torch.stack([gens[s].sample_z(t.batch_size, device, z_rngs[s]) for s in range(n_seeds)])
                frozen_g = {k: v.detach() for k, v in params_g.items()}
                with autocast(device, amp_dtype):
                    loss, step = d_step(params_d, buffers_d, frozen_g, buffers_g, x_lab, y_lab, x_unl, z)
                opt_d.zero_grad(set_to_none=True)
                loss.sum().backward()  # the seeds' losses are independent: each gradient is its own seed's
                opt_d.step()
                z = torch.stack([gens[s].sample_z(t.batch_size, device, z_rngs[s]) for s in range(n_seeds)])
                frozen_d = {k: v.detach() for k, v in params_d.items()}
                with autocast(device, amp_dtype):
                    loss_g = g_step(frozen_d, buffers_d, params_g, buffers_g, x_unl_fm, z)
                opt_g.zero_grad(set_to_none=True)
                loss_g.sum().backward()
                opt_g.step()
                with torch.no_grad():
                    torch._foreach_lerp_(list(avg_d.values()), [p.detach() for p in params_d.values()],
                                         1.0 - t.ema_decay)
                stats.append({**{k: v.detach() for k, v in step.items()}, "loss_g": loss_g.detach()})
                progress.update(1)
            for s in range(n_seeds):
                record = {"epoch": epoch + 1, "lr": opt_d.param_groups[0]["lr"],
                          **_epoch_means([{k: v[s] for k, v in st.items()} for st in stats])}
                if not all(np.isfinite(v) for v in record.values()):
                    raise TrainingDiverged(f"training diverged at epoch {epoch + 1} (seed {seeds[s]}): non-finite "
                                           f"loss; the seeds' last good checkpoints are kept")
                if len(data.y_test) and ((epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs):
                    model = _load_slice(eval_models[s], avg_d, buffers_d, s)
                    test_errors[s] = error_rate(predict_proba(model, data.x_test, t.eval_batch_size), data.y_test)
                    record["test_error"] = test_errors[s]
                record["seconds"] = round(time.time() - start, 3)
                histories[s].append(record)
                if run_dirs is not None:
                    with open(Path(run_dirs[s]) / "metrics.jsonl", "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(record) + "\n")
                    if (epoch + 1) % t.checkpoint_every == 0 or epoch + 1 == t.epochs:
                        save(s, epoch + 1)
    finally:
        progress.close()

    results = []
    for s in range(n_seeds):
        state = state_of(s, t.epochs)
        result = FitResult(test_errors[s], state.disc_avg, state.gen, lab_idx[s], data.class_names, histories[s],
                           None if run_dirs is None else Path(run_dirs[s]))
        if run_dirs is not None:
            if t.epochs == 0:
                save(s, 0)
            write_outputs(result, cfgs[s], iters, device)
        results.append(result)
    return results
