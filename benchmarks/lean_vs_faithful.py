"""Is ``train.step=lean`` equivalent in distribution to the faithful step? A script, not a test (issue 32,
point 4): the same seeds trained both ways (stacked, one process per step form, the forms interleaved
nowhere: each is deterministic given its seeds), then each form's mean final test error with its standard
error, and whether each mean lies within one standard error of the other's.

    python benchmarks/lean_vs_faithful.py --seeds 10 [--epochs 100] [--out results/lean_vs_faithful.json] [KEY=VALUE ...]

Default: the digits recipe (50 labels), seeds 0..9. Rows are written to ``--out`` with the command, torch
version, machine and date.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import statistics
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import List, Optional

import torch

from ssgan.config import compose
from ssgan.data import load_data
from ssgan.rundir import atomic_write, make_dir
from ssgan.train import fit_grid


def errors_of(step: str, seeds: int, overrides: List[str]) -> dict:
    cfg = compose([*overrides, f"train.step={step}", "train.device=cpu", "train.progress=false",
                   "train.sample_grid=false", "train.concurrent_seeds=true"])
    data = load_data(cfg.dataset, 0)
    start = time.perf_counter()
    results = fit_grid([replace(cfg, seed=s) for s in range(seeds)], data)
    errors = [r.test_error for r in results]
    mean = statistics.mean(errors)
    return {"step": step, "test_errors": errors, "mean": mean,
            "standard_error": statistics.stdev(errors) / math.sqrt(len(errors)),
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/lean_vs_faithful.json")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides (default: the digits recipe)")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        print("lean_vs_faithful: --seeds must be at least 2 (a standard error needs two)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    overrides = list(args.overrides) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    rows = [errors_of(step, args.seeds, overrides) for step in ("faithful", "lean")]
    faithful, lean = rows
    within = (abs(faithful["mean"] - lean["mean"]) <= faithful["standard_error"]
              and abs(faithful["mean"] - lean["mean"]) <= lean["standard_error"])
    record = {"rows": rows, "each_mean_within_one_standard_error_of_the_other": within,
              "overrides": overrides, "torch": torch.__version__, "date": str(date.today()),
              "machine": f"{platform.machine()}, {args.threads} thread(s)",
              "command": shlex.join(["python", "benchmarks/lean_vs_faithful.py",
                                     *(argv if argv is not None else sys.argv[1:])])}
    for row in rows:
        print(f"{row['step']:9s} mean test error {row['mean']:.2f} % +- {row['standard_error']:.2f} (SE), "
              f"{len(row['test_errors'])} seeds, {row['seconds']} s")
    print(f"each mean within one standard error of the other's: {within}")
    out = Path(args.out)
    make_dir(out.parent)
    atomic_write(out, json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
