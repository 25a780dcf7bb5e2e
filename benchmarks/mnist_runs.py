"""What benchmarks/ema_debiased.py and lean_vs_faithful_mnist.py share: train MNIST runs that differ in a few
overrides with ``ssgan fit`` (one torch thread each) and read their metrics.jsonl, then write a results table as
Markdown and JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from ssgan.rundir import atomic_write


def fit_histories(variants: Dict[str, Sequence[str]], common: Sequence[str], *, parallel: bool) -> Dict[str, list]:
    """Each variant's metrics.jsonl records: ``ssgan fit --dataset mnist --threads 1`` with the ``common`` words
    and the variant's own, all at once (``parallel``) or one after another, in a folder removed afterwards."""
    with tempfile.TemporaryDirectory() as where:
        runs = {name: Path(where) / name for name in variants}
        commands = [[sys.executable, "-m", "ssgan", "fit", "--dataset", "mnist", "--threads", "1", "--run-dir",
                     str(run), "train.progress=false", "train.sample_grid=false", *common, *variants[name]]
                    for name, run in runs.items()]
        if parallel:
            jobs = [subprocess.Popen(command, stdout=subprocess.DEVNULL) for command in commands]
            if any(job.wait() for job in jobs):
                raise SystemExit("a run failed")
        else:
            for command in commands:
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return {name: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                for name, run in runs.items()}


def machine(how: str) -> str:
    """The machine line of a results file: the CPU, ``how`` the runs shared it, torch, the date."""
    return (f"{platform.machine()} CPU with {os.cpu_count()} cores, {how}, torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d')}")


def write_report(out: str, record: dict, lines: List[str]) -> None:
    """``out``.json (the record) and ``out``.md (the lines), each written whole; the lines printed."""
    path = Path(out)
    atomic_write(path.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    atomic_write(path.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
