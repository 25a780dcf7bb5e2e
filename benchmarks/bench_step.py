"""Time the real training loop of each recipe: milliseconds per training iteration (one D step, one G step and
the Polyak update of every model, with the batch gathers, augmentation and z draws of the loop).

A script, not a test. Each row runs ``train.fit`` (one model) or ``concurrent.fit_grid`` (stacked models) on
random data of the recipe's shape, twice, for n1 and n2 iterations, and takes (t2 - t1) / (n2 - n1), so that
set-up and the end-of-epoch work cancel.

    python benchmarks/bench_step.py --recipe mnist --models 1,10,40 [--modes eager_fp32,graph_fp32,graph_bf16]
        [--iters 20] [--device cuda] [--out results/benchmarks.json]

Modes (every row also carries the eager float32 figure of the same recipe and model count, from the same run):
  eager_fp32  train.precision=fp32, train.tf32=false (true float32), train.cuda_graph=off
  graph_fp32  the same with train.cuda_graph=on (CUDA only)
  graph_bf16  train.precision=bf16 (+ train.channels_last for one CNN model), train.cuda_graph=on (CUDA only)
  eager_tf32  train.tf32=true, otherwise eager_fp32 (CUDA only: TF32 against true float32)
The backend flags are set explicitly for every row (train.numerics: TF32 off for the fp32 rows). Rows are
merged into ``--out`` (results/benchmarks.json) by (recipe, device, mode, models):
    {"rows": [{"recipe", "device", "mode", "models", "ms_per_iteration", "eager_fp32_ms_per_iteration",
               "tflops", "torch", "date", "command"}]}
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import torch

from ssgan.concurrent import fit_grid
from ssgan.config import compose, resolve_device
from ssgan.data import ImageData
from ssgan.train import fit

RECIPES = {"digits": [], "mnist": ["dataset=mnist"], "cifar10": ["dataset=cifar10"],
           "cifar10_ct_gan": ["dataset=cifar10", "method=ct_gan"], "svhn": ["dataset=svhn"]}
MODES = {"eager_fp32": dict(precision="fp32", tf32=False, cuda_graph="off"),
         "graph_fp32": dict(precision="fp32", tf32=False, cuda_graph="on"),
         "graph_bf16": dict(precision="bf16", tf32=False, cuda_graph="on"),
         "eager_tf32": dict(precision="fp32", tf32=True, cuda_graph="off")}
CUDA_ONLY = {"graph_fp32", "graph_bf16", "eager_tf32"}


def random_data(cfg, n_models: int) -> ImageData:
    """Random images of the recipe's shape and range; enough for every model's labeled subset."""
    rng = np.random.RandomState(0)
    shape, k = tuple(cfg.dataset.image_shape), cfg.dataset.n_classes
    n = max(2 * cfg.train.batch_size, cfg.dataset.labels, 1000)
    low = 0.0 if cfg.dataset.scaling == "unit" else -1.0
    x = rng.uniform(low, 1.0, (n, *shape)).astype(np.float32)
    return ImageData(x, np.arange(n) % k, x[:10], np.arange(10) % k, [str(c) for c in range(k)])


def run_seconds(cfg, n_models: int, iters: int, data: ImageData) -> float:
    """Wall seconds of one epoch of ``iters`` iterations of ``n_models`` models (stacked when several)."""
    cfg = replace(cfg, train=replace(cfg.train, epochs=1, iters_per_epoch=iters, progress=False,
                                     sample_grid=False, concurrent_seeds=n_models > 1))
    if cfg.train.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    if n_models == 1:
        fit(cfg, data=data)
    else:
        fit_grid([replace(cfg, seed=s) for s in range(n_models)], data)
    if cfg.train.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def ms_per_iteration(cfg, n_models: int, n1: int, n2: int, data: ImageData) -> float:
    t1, t2 = run_seconds(cfg, n_models, n1, data), run_seconds(cfg, n_models, n2, data)
    return (t2 - t1) / (n2 - n1) * 1000.0


def flops_per_iteration(cfg, data: ImageData) -> int:
    """FLOPs of one model's training iteration (torch.utils.flop_counter: matrix products and convolutions,
    forward and backward): those of a 2-iteration run less those of a 1-iteration run, so that the init
    and the evaluation cancel."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    for iters in (1, 2):
        counter = FlopCounterMode(display=False)
        run_cfg = replace(cfg, train=replace(cfg.train, epochs=1, iters_per_epoch=iters, progress=False,
                                             sample_grid=False))
        with counter:
            fit(run_cfg, data=data)
        counts.append(counter.get_total_flops())
    return counts[1] - counts[0]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=RECIPES, required=True)
    parser.add_argument("--models", default="1", help="model counts, e.g. 1,10,40 (stacked when > 1)")
    parser.add_argument("--modes", default="eager_fp32,graph_fp32,graph_bf16", help=", ".join(MODES))
    parser.add_argument("--iters", type=int, default=20, help="n2 - n1 iterations timed")
    parser.add_argument("--warmup", type=int, default=5, help="n1 iterations (include CUDA graph warm-up)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/benchmarks.json")
    args = parser.parse_args()

    device = resolve_device(args.device)
    base = compose(RECIPES[args.recipe] + [f"train.device={device}"])
    data = random_data(base, 1)
    flops = flops_per_iteration(base, data)
    rows = []
    for n_models in (int(v) for v in args.models.split(",")):
        eager = None
        for mode in args.modes.split(","):
            if mode in CUDA_ONLY and device.type != "cuda":
                print(f"{args.recipe}, {n_models} model(s), {mode}: skipped (needs CUDA)", file=sys.stderr)
                continue
            options = dict(MODES[mode])
            if mode == "graph_bf16" and n_models == 1 and base.model.arch == "cnn":
                options["channels_last"] = True
            cfg = replace(base, train=replace(base.train, **options))
            if eager is None:
                eager = ms_per_iteration(replace(base, train=replace(base.train, **MODES["eager_fp32"])), n_models,
                                         args.warmup, args.warmup + args.iters, data)
            ms = eager if mode == "eager_fp32" else ms_per_iteration(cfg, n_models, args.warmup,
                                                                     args.warmup + args.iters, data)
            row = {"recipe": args.recipe, "device": device_name(device), "mode": mode, "models": n_models,
                   "ms_per_iteration": round(ms, 3), "eager_fp32_ms_per_iteration": round(eager, 3),
                   "tflops": round(flops * n_models / ms / 1e9, 4), "torch": torch.__version__,
                   "date": str(date.today()), "command": shlex.join(["python", *sys.argv])}
            rows.append(row)
            print(json.dumps(row))
    out = Path(args.out)
    existing = json.loads(out.read_text())["rows"] if out.is_file() else []
    key = lambda r: (r["recipe"], r["device"], r["mode"], r["models"])  # noqa: E731
    merged = {key(r): r for r in existing}
    merged.update({key(r): r for r in rows})
    out.write_text(json.dumps({"rows": sorted(merged.values(), key=key)}, indent=1) + "\n")
    print(f"{len(rows)} rows into {out}; {flops / 1e9:.2f} GFLOP per iteration of one model")


if __name__ == "__main__":
    main()
