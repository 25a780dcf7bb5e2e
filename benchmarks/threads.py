"""Iterations per second of the default job (``ssgan fit``: digits, improved_gan) on the CPU with N torch
threads, each measurement in a fresh process, the settings interleaved (1, 2, 1, 2, ...) so that a change in the
machine's load falls on both; records the load average, the cores and the versions beside the numbers.

    python benchmarks/threads.py [--threads 1,2] [--epochs 4] [--repeats 3] [--out results/threads.json]

The rate counts the epochs after the first (which holds the start-up and the data-dependent initialisation):
iterations per epoch x (epochs - 1) / (seconds at the last epoch - seconds at the first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE_RUN = """
import json, sys
import torch
torch.set_num_threads(int(sys.argv[1]))
from ssgan.cli import main
code = main(["fit", "--threads", sys.argv[1], "--epochs", sys.argv[2], "--run-dir", sys.argv[3],
             "train.progress=false", "train.device=cpu"])
assert code == 0, code
"""


def measure(threads: int, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        subprocess.run([sys.executable, "-c", ONE_RUN, str(threads), str(epochs), str(run_dir)], cwd=ROOT,
                       check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
        seconds = [json.loads(line)["seconds"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        iters = json.loads((run_dir / "result.json").read_text())["iters_per_epoch"]
    return iters * (epochs - 1) / (seconds[-1] - seconds[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    counts = [int(word) for word in args.threads.split(",")]
    load_before = os.getloadavg()
    rates = {n: [] for n in counts}
    for _ in range(args.repeats):
        for n in counts:
            rates[n].append(round(measure(n, args.epochs), 2))
            print(f"{n} thread{'s' * (n > 1)}: {rates[n][-1]:.2f} it/s", flush=True)
    import torch

    record = {"command": " ".join(["python", "benchmarks/threads.py", *sys.argv[1:]]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "cores": os.cpu_count(), "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
              "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
              "epochs": args.epochs, "iterations_per_second": {str(n): r for n, r in rates.items()}}
    print(json.dumps(record, indent=1))
    if args.out:
        from ssgan.rundir import atomic_write

        atomic_write(Path(args.out), json.dumps(record, indent=1) + "\n")  # whole or not at all


if __name__ == "__main__":
    main()
