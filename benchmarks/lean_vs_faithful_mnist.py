"""Issue 32 point 4's second check: MNIST, 100 labels, one seed, the faithful step against ``train.step=lean``,
test error epoch by epoch side by side (the two runs in parallel, one torch thread each): results/
lean_vs_faithful_mnist.md and .json.

    python benchmarks/lean_vs_faithful_mnist.py --data data/mnist.npz [--epochs 10] [--seed 0]

The lean step draws its random numbers differently (one z draw, noise across a concatenated batch), so the
runs are compared in distribution, not bitwise: one seed per form shows whether the curves track each other.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mnist_runs import fit_histories, machine, write_report

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("faithful", "lean")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="MNIST as an .npz (x_train, y_train, x_test, y_test)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="default results/lean_vs_faithful_mnist (seed 0) or ..._seed<N>")
    args = parser.parse_args()
    name = "lean_vs_faithful_mnist" + (f"_seed{args.seed}" if args.seed else "")
    args.out = args.out or str(ROOT / "results" / name)
    started = time.time()
    common = ["--labels", "100", "--epochs", str(args.epochs), "--seed", str(args.seed), "dataset.source=npz",
              f"dataset.path={args.data}"]
    histories = fit_histories({step: [f"train.step={step}"] for step in STEPS}, common, parallel=True)
    rows = [{"epoch": f["epoch"], "faithful": f["test_error"], "lean": l["test_error"],
             "faithful_raw": f["raw_test_error"], "lean_raw": l["raw_test_error"],
             "faithful_seconds": f["seconds"], "lean_seconds": l["seconds"]}
            for f, l in zip(histories["faithful"], histories["lean"])]
    command = (f"python benchmarks/lean_vs_faithful_mnist.py --data {args.data} --epochs {args.epochs}"
               + (f" --seed {args.seed}" if args.seed else ""))
    where = machine("the two runs in parallel with one torch thread each")
    record = {"command": command, "machine": where, "seed": args.seed, "labels": 100,
              "wall_seconds": round(time.time() - started), "rows": rows}
    lines = [f"# The faithful step against `train.step=lean`: MNIST, 100 labels, seed {args.seed}", "",
             f"Exact MNIST (`../shared/datasets/mnist.npz` as `dataset.source=npz`), the official recipe (600 "
             f"iterations per epoch, Polyak average from zero), {args.epochs} epochs, {where}; "
             f"{record['wall_seconds']} s wall.", "", f"    {command}", "",
             "| epoch | faithful, averaged (%) | lean, averaged (%) | faithful, raw D (%) | lean, raw D (%) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['epoch']} | {r['faithful']:.2f} | {r['lean']:.2f} | {r['faithful_raw']:.2f} | "
              f"{r['lean_raw']:.2f} |" for r in rows]
    write_report(args.out, record, lines)


if __name__ == "__main__":
    main()
