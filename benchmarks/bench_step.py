"""Time one training iteration (one D step, one G step, the Polyak update) of each recipe.

A script, not a test: each recipe runs on its own so that one command stays within a few minutes.

    python benchmarks/bench_step.py --recipe cifar10 [--method ct_gan] [--iters 50] [--device cuda]

For the recipe's real networks and batch sizes (100 labeled + 100 unlabeled + 100 generated), on random
inputs of the recipe's shape, it prints ms per iteration and seconds per epoch for
  plain: eager float32, the reference implementation of the step,
  fast:  the options that make it faster on this device (bf16 autocast and channels_last on CUDA),
next to their ratio, the FLOPs of one iteration (torch.utils.flop_counter) and the achieved TFLOP/s.
The last line is a Markdown table row for results/benchmarks.md.

With ``--seeds S`` it also times whole training iterations of S seeds trained concurrently
(``ssgan.concurrent.fit_concurrent``) against one seed (``ssgan.train.fit``), on random data of the recipe's
shape: the time of a run of n2 iterations minus that of n1 iterations, over n2 - n1, so that set-up and
evaluation cancel.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from dataclasses import replace
from datetime import date

import torch

from ssgan.config import compose, resolve_device
from ssgan.layers import data_dependent_init
from ssgan.models import build_models
from ssgan.optim import make_optimizer
from ssgan.train import compiled_losses, discriminator_step, generator_step, polyak_update

RECIPES = {"digits": [], "mnist": ["dataset=mnist"], "cifar10": ["dataset=cifar10"],
           "cifar10_ct_gan": ["dataset=cifar10", "method=ct_gan"], "svhn": ["dataset=svhn"]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(cfg, device, channels_last: bool):
    torch.manual_seed(0)
    disc, gen = build_models(cfg.dataset, cfg.model)
    disc, gen = disc.to(device), gen.to(device)
    shape = tuple(cfg.dataset.image_shape)
    x = torch.rand(cfg.train.batch_size * 3, *shape, device=device)
    data_dependent_init(disc, x)
    data_dependent_init(gen, gen.sample_z(cfg.train.batch_size, device))
    if channels_last:
        disc, gen = disc.to(memory_format=torch.channels_last), gen.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    disc_avg = copy.deepcopy(disc)
    betas = (cfg.train.beta1, cfg.train.beta2)
    opt_d = make_optimizer(disc.parameters(), cfg.train.optimizer, cfg.train.lr, betas, cfg.train.adam_eps)
    opt_g = make_optimizer(gen.parameters(), cfg.train.optimizer, cfg.train.lr, betas, cfg.train.adam_eps)
    return disc, gen, disc_avg, opt_d, opt_g, x


def make_step(cfg, device, amp_dtype, channels_last, compile_backend="off", compile_mode=None):
    disc, gen, disc_avg, opt_d, opt_g, x = build(cfg, device, channels_last)
    d_loss_fn, g_loss_fn = compiled_losses(compile_backend, compile_mode)
    b = cfg.train.batch_size
    y = torch.arange(b, device=device) % cfg.dataset.n_classes

    def step():
        z = gen.sample_z(b, device)
        discriminator_step(disc, gen, opt_d, x[:b], y, x[b:2 * b], z, method=cfg.method, amp_dtype=amp_dtype,
                           loss_fn=d_loss_fn)
        z = gen.sample_z(b, device)
        generator_step(disc, gen, opt_g, x[2 * b:], z, fm_norm=cfg.method.fm_norm, amp_dtype=amp_dtype,
                       loss_fn=g_loss_fn)
        polyak_update(disc_avg, disc, cfg.train.ema_decay)

    return step


def time_step(step, device, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (time.perf_counter() - start) / iters * 1000.0  # ms per iteration


def count_flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def time_fit_iterations(cfg, seeds: int, n1: int, n2: int) -> float:
    """ms per training iteration of ``seeds`` concurrent models (1: the single-seed fit), by differencing."""
    import numpy as np

    from ssgan.concurrent import fit_concurrent
    from ssgan.data import ImageData
    from ssgan.train import fit

    rng = np.random.RandomState(0)
    n, shape = max(2000, cfg.dataset.labels), tuple(cfg.dataset.image_shape)
    data = ImageData(rng.rand(n, *shape).astype(np.float32), np.arange(n) % cfg.dataset.n_classes,
                     rng.rand(10, *shape).astype(np.float32), np.arange(10) % cfg.dataset.n_classes,
                     [str(k) for k in range(cfg.dataset.n_classes)])
    elapsed = []
    for iters in (n1, n2):
        run_cfg = replace(cfg, train=replace(cfg.train, epochs=1, iters_per_epoch=iters, progress=False,
                                             sample_grid=False))
        start = time.perf_counter()
        if seeds == 1:
            fit(run_cfg, data=data)
        else:
            fit_concurrent(run_cfg, list(range(seeds)), data=data)
        elapsed.append(time.perf_counter() - start)
    return (elapsed[1] - elapsed[0]) / (n2 - n1) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=RECIPES, required=True)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", type=int, default=0, help="also time S concurrent seeds against one")
    parser.add_argument("--compile", default="off", help="torch.compile backend of the fast step (e.g. inductor)")
    parser.add_argument("--compile-mode", help="torch.compile mode of the fast step (e.g. reduce-overhead)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    cfg = compose(RECIPES[args.recipe])
    iters_per_epoch = cfg.train.iters_per_epoch or {"digits": 13, "svhn": 732}[cfg.dataset.name]
    cnn = cfg.model.arch == "cnn"
    fast_amp = torch.bfloat16 if device.type == "cuda" else None
    fast_cl = cnn and device.type == "cuda"

    plain = make_step(cfg, device, None, False)
    flops = count_flops(plain)
    ms_plain = time_step(plain, device, args.iters, args.warmup)
    fast_label = "+".join([n for n, on in (("bf16", fast_amp), ("channels_last", fast_cl),
                                           (f"compile={args.compile}/{args.compile_mode or 'default'}",
                                            args.compile != "off")) if on]) or "same as plain"
    fast = make_step(cfg, device, fast_amp, fast_cl, args.compile, args.compile_mode)
    ms_fast = ms_plain if fast_label == "same as plain" else time_step(fast, device, args.iters, args.warmup)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'x86-64'}, {torch.get_num_threads()} threads)"
    print(f"recipe {args.recipe}: {flops / 1e9:.2f} GFLOP per iteration, {iters_per_epoch} iterations per epoch")
    print(f"plain fp32 eager: {ms_plain:.2f} ms/it, {ms_plain * iters_per_epoch / 1000:.2f} s/epoch, "
          f"{flops / ms_plain / 1e9:.3f} TFLOP/s")
    print(f"fast ({fast_label}): {ms_fast:.2f} ms/it, {ms_fast * iters_per_epoch / 1000:.2f} s/epoch, "
          f"{flops / ms_fast / 1e9:.3f} TFLOP/s, {ms_plain / ms_fast:.2f}x")
    print(f"| {args.recipe} | 1 | {flops / 1e9:.2f} | {ms_plain:.2f} | {ms_fast:.2f} ({fast_label}) | "
          f"{ms_plain / ms_fast:.2f} | {ms_fast * iters_per_epoch / 1000:.2f} | {flops / ms_fast / 1e9:.3f} | "
          f"{name} | torch {torch.__version__} | {date.today()} |")
    if args.seeds > 1:
        cfg = replace(cfg, train=replace(cfg.train, device=str(device)))
        one = time_fit_iterations(cfg, 1, args.warmup, args.warmup + args.iters)
        many = time_fit_iterations(cfg, args.seeds, args.warmup, args.warmup + args.iters)
        print(f"training iteration, 1 seed: {one:.2f} ms; {args.seeds} seeds concurrently: {many:.2f} ms "
              f"({many / one:.2f}x one seed, {one * args.seeds / many:.2f}x faster than one after another)")
        print(f"| {args.recipe} | {args.seeds} | - | {one:.2f} (1 seed, whole iteration) | {many:.2f} | "
              f"{many / one:.2f}x one seed | {many * iters_per_epoch / 1000:.2f} | - | {name} | "
              f"torch {torch.__version__} | {date.today()} |")


if __name__ == "__main__":
    main()
