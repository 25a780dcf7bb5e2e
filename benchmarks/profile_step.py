"""Where an iteration's CPU time goes: torch.profiler's operators by self CPU time over ``--iters`` iterations
of the real training loop (``bench_step.run_loop``, random data of the recipe's shape), after an unprofiled
first run (the compile, if any). A script, not a test.

    python benchmarks/profile_step.py --recipe mnist [--iters 6] [--top 8] [KEY=VALUE ...]

Prints each operator's share of the profiled self CPU time, and the share of the matrix products
(``aten::mm``, ``aten::addmm``, ``aten::bmm``, ``aten::baddbmm``) together.
"""

from __future__ import annotations

import argparse
import platform

import torch
from torch.profiler import ProfilerActivity, profile

from bench_step import RECIPES, random_data, run_loop
from ssgan.config import compose

PRODUCTS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="mnist", choices=sorted(RECIPES))
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE, e.g. train.compile=inductor")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = compose(RECIPES[args.recipe] + ["train.device=cpu", *args.overrides])
    data = random_data(cfg, 1)
    run_loop(cfg, 1, args.iters + 2, data)  # unprofiled: the compile and every one-time cost
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_loop(cfg, 1, args.iters, data)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    products = sum(e.self_cpu_time_total for e in events if e.key in PRODUCTS)
    print(f"{args.recipe} {' '.join(args.overrides)}: {args.iters} iterations (a whole fit of them, initialisation "
          f"and evaluation included), {platform.machine()} CPU, 1 thread, torch {torch.__version__}")
    for event in events[:args.top]:
        print(f"  {100 * event.self_cpu_time_total / total:5.1f} %  {event.key[:70]}")
    print(f"matrix products: {100 * products / total:.1f} % of the self CPU time")


if __name__ == "__main__":
    main()
