"""A run's per-epoch test error beside the log published with CT-GAN's official CIFAR-10 code
(``CT-GANs/Theano_classifier/LOG_10-``: test error at epochs 0, 5, 10, 20, 50, 100), as JSON and a PNG.

The official script counts epochs from 0 and prints the test error after each epoch; ssgan's metrics.jsonl
counts from 1, so the official epoch k is ssgan's epoch k + 1. At each official epoch the run has reached,
the JSON gives both errors, their difference and whether they agree within ``--within`` points.

    python benchmarks/curve_vs_official.py results/runs/cifar10_ct_gan/metrics.jsonl \\
        --json results/cifar10_ct_gan_curve.json --png results/cifar10_ct_gan_curve.png --label "..."

The PNG needs matplotlib (the ``plots`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

from ssgan.plots import new_figure, png_bytes
from ssgan.rundir import atomic_write

# CT-GAN's official log, CIFAR-10 with 4000 labels (official epoch -> test error, %)
OFFICIAL = {0: 67.4, 5: 53.0, 10: 41.2, 20: 30.8, 50: 25.4, 100: 18.8}


def read_metrics(path: Path) -> Dict[int, float]:
    """ssgan epoch -> test error (%) of the epochs that were evaluated."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {int(r["epoch"]): float(r["test_error"]) for r in rows if r.get("test_error") is not None}


def compare(ours: Dict[int, float], within: float) -> List[Dict]:
    """One row per official epoch: both errors where the run reached it."""
    rows = []
    for epoch, official in OFFICIAL.items():
        mine: Optional[float] = ours.get(epoch + 1)
        row = {"official_epoch": epoch, "ssgan_epoch": epoch + 1, "official": official, "ssgan": mine}
        if mine is not None:
            row["difference"] = round(mine - official, 2)
            row["agree"] = abs(mine - official) <= within
        rows.append(row)
    return rows


def plot(ours: Dict[int, float], label: str, path: Path) -> None:
    fig = new_figure(6.4, 4.0)
    if fig is None:  # matplotlib missing: logged by new_figure
        return
    ax = fig.subplots()
    ax.plot([e - 1 for e in ours], list(ours.values()), label=label)
    ax.plot(list(OFFICIAL), list(OFFICIAL.values()), "o--", label="CT-GAN official log (LOG_10-)")
    ax.set_xlabel("epoch (counted from 0, as the official log)")
    ax.set_ylabel("test error (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    atomic_write(path, png_bytes(fig))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", type=Path)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--png", type=Path)
    parser.add_argument("--within", type=float, default=2.0, help="points of test error that count as agreeing")
    parser.add_argument("--label", default="ssgan")
    parser.add_argument("--note", default="", help="what the run was (command, device, mode, data)")
    args = parser.parse_args(argv)
    ours = read_metrics(args.metrics)
    rows = compare(ours, args.within)
    out = {"label": args.label, "note": args.note, "within_points": args.within, "official": OFFICIAL,
           "comparison": rows, "ssgan_curve": {str(e): v for e, v in ours.items()}}
    atomic_write(args.json, json.dumps(out, indent=1) + "\n")
    if args.png:
        plot(ours, args.label, args.png)
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
