"""Milliseconds per training iteration of several variants, paired: the variants' runs interleaved round by
round on the same machine (one thread each, the same torch), so that the load of a shared machine falls on
all of them alike. A script, not a test. Each run is one ``benchmarks/bench_step.py --repeats 1`` of the
variant's own checkout (its own timing hooks inside the loop); the table gives each variant's median over
the rounds and its ratio to the first variant's median, with the per-round ratios.

    python benchmarks/paired_step_time.py --recipe mnist --rounds 3 --iters 30 \\
        --variant main=/work/main --variant faithful=. --variant lean=.:train.step=lean

A variant is NAME=CHECKOUT[:OVERRIDE,...]: the checkout's .venv/bin/python runs its benchmarks/bench_step.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional


def run_once(checkout: Path, recipe: str, models: int, warmup: int, iters: int, overrides: List[str]) -> float:
    with tempfile.TemporaryDirectory(prefix="ssgan_paired_") as tmp:
        out = Path(tmp) / "rows.json"
        command = [str(checkout / ".venv/bin/python"), "benchmarks/bench_step.py", "--threads", "1", "--recipe",
                   recipe, "--models", str(models), "--modes", "eager_fp32", "--warmup", str(warmup), "--iters",
                   str(iters), "--repeats", "1", "--profile-iters", "1", "--out", str(out), *overrides]
        result = subprocess.run(command, cwd=checkout, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"{checkout}: bench_step failed:\n{result.stderr[-2000:]}")
        return json.loads(out.read_text())["rows"][0]["ms_per_iteration"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="mnist")
    parser.add_argument("--models", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--variant", action="append", required=True, help="NAME=CHECKOUT[:OVERRIDE,...]")
    args = parser.parse_args(argv)
    variants = []
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        checkout, _, overrides = rest.partition(":")
        if not name or not (Path(checkout) / ".venv/bin/python").exists():
            print(f"paired_step_time: bad --variant {spec!r} (NAME=CHECKOUT with a .venv)", file=sys.stderr)
            return 2
        variants.append((name, Path(checkout).resolve(), [o for o in overrides.split(",") if o]))
    times = {name: [] for name, _, _ in variants}
    for round_index in range(args.rounds):
        for name, checkout, overrides in variants:
            ms = run_once(checkout, args.recipe, args.models, args.warmup, args.iters, overrides)
            times[name].append(ms)
            print(f"round {round_index + 1}: {name} {ms:.1f} ms", file=sys.stderr, flush=True)
    first = variants[0][0]
    base = statistics.median(times[first])
    print(f"| variant | ms / iteration (median of {args.rounds}) | runs | ratio to {first} | per-round ratios |")
    print("|---|---|---|---|---|")
    for name, _, overrides in variants:
        ratios = [t / b for t, b in zip(times[name], times[first])]
        print(f"| {name} {' '.join(overrides)} | {statistics.median(times[name]):.1f} | "
              f"{', '.join(f'{t:.1f}' for t in times[name])} | {statistics.median(times[name]) / base:.2f} | "
              f"{', '.join(f'{r:.2f}' for r in ratios)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
