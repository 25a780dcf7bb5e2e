"""Compare variants of the digits default recipe over seeds, two single-threaded processes at a time.

    python benchmarks/digits_sweep.py [--seeds 0,1,2,3,4] [--out results/digits_sweep.md]

Each variant is a list of Hydra overrides on top of the default `ssgan fit` (digits, 50 labels,
improved_gan), trained over the seeds as one ``ssgan.make_table`` row (its runs kept in ``--cache-dir``, so a
rerun trains nothing twice); each (variant, seed) is one full default-length run. Writes a Markdown table of test error
mean +- sample std (ddof=1) per variant, with the command, versions, date and machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from datetime import date
from pathlib import Path
from multiprocessing import Pool

import numpy as np

VARIANTS = {
    "default (input noise 0.2, hidden 0.3)": [],
    "MNIST noise (input 0.3, hidden 0.5)": ["model.input_noise=0.3", "model.hidden_noise=0.5"],
    "input 0.1, hidden 0.2": ["model.input_noise=0.1", "model.hidden_noise=0.2"],
    "ct_gan (lambda 1, feature weight 0.1)": ["method=ct_gan"],
}


def run(job):
    """One variant over the seeds, in a process of one thread: its table row's test error per seed."""
    name, overrides, seeds, cache_dir = job
    import torch

    torch.set_num_threads(1)
    import ssgan
    from ssgan.table import Progress

    start = time.time()
    table = ssgan.make_table("digits", labels=[50], seeds=len(seeds), cache_dir=cache_dir, out_dir=None,
                             overrides=[*overrides, f"seed={seeds[0]}", "train.progress=false"],
                             progress=Progress(lambda line: print(f"{name}: {line}", flush=True)))
    return name, {r.seed: r.test_error for r in table.rows[0].runs}, time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", default="results/digits_sweep.md")
    parser.add_argument("--cache-dir", default="runs/table", help="where the runs are kept (ssgan table's cache)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise SystemExit(f"--seeds {args.seeds}: seeds must be consecutive (a table row trains seed .. seed+K-1)")
    jobs = [(name, overrides, seeds, args.cache_dir) for name, overrides in VARIANTS.items()]
    errors = {}
    with Pool(2) as pool:
        for name, by_seed, seconds in pool.imap_unordered(run, jobs):
            errors[name] = by_seed
            print(f"{name}: {len(by_seed)} seeds ({seconds:.0f} s)", flush=True)
    import torch

    from ssgan.rundir import atomic_write, make_dir

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = ["# Digits default recipe: variants over seeds", "",
             f"Command: `python benchmarks/digits_sweep.py --seeds {args.seeds}` (commit {commit}, {date.today()}, "
             f"CPU: {platform.machine()}, {os.cpu_count()} cores, one thread per run, torch {torch.__version__}).",
             "Each run: `ssgan fit seed=N` plus the variant's overrides (digits, 50 labels, 300 epochs of 13 "
             "iterations). Test error (%) of the averaged discriminator after the last epoch; mean +- sample std "
             "(ddof=1) over the seeds.", "",
             "| variant | overrides | " + " | ".join(f"seed {s}" for s in seeds) + " | mean +- std |",
             "|---|---|" + "---|" * len(seeds) + "---|"]
    for name, overrides in VARIANTS.items():
        values = [errors[name][s] for s in seeds]
        lines.append(f"| {name} | `{' '.join(overrides) or '-'}` | " + " | ".join(f"{v:.2f}" for v in values)
                     + f" | {np.mean(values):.2f} +- {np.std(values, ddof=1):.2f} |")
    make_dir(Path(args.out).parent)
    atomic_write(Path(args.out), "\n".join(lines) + "\n")  # a kill leaves the previous table, never half of one
    print("\n".join(lines))


if __name__ == "__main__":
    main()
