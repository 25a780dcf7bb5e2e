"""The official Polyak average (started at zero) against the debiased one (``train.ema_start=debiased``: divided by
1 - decay^n), beside the raw discriminator they average, epoch by epoch: results/ema_debiased.md and .json.

    python benchmarks/ema_debiased.py --data data/mnist.npz            # MNIST, 100 labels, 5 x 150 iterations

Both runs train the same networks on the same draws (the average never feeds back into training), so the raw
discriminator's error is the same in both and only the averaged classifier differs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mnist_runs import fit_histories, machine, write_report

ROOT = Path(__file__).resolve().parents[1]
STARTS = ("zero", "debiased")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="MNIST as an .npz (x_train, y_train, x_test, y_test)")
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--iters", type=int, default=150, help="iterations per epoch (the recipe has 600)")
    parser.add_argument("--out", default=str(ROOT / "results" / "ema_debiased"))
    args = parser.parse_args()
    started = time.time()
    common = ["--labels", str(args.labels), "--epochs", str(args.epochs), "dataset.source=npz",
              f"dataset.path={args.data}", f"train.iters_per_epoch={args.iters}"]
    histories = fit_histories({start: [f"train.ema_start={start}"] for start in STARTS}, common, parallel=False)
    rows = []
    for zero, debiased in zip(histories["zero"], histories["debiased"]):
        steps = zero["epoch"] * args.iters
        rows.append({"epoch": zero["epoch"], "steps": steps, "zero": zero["test_error"],
                     "debiased": debiased["test_error"], "raw": zero["raw_test_error"],
                     "raw_same": zero["raw_test_error"] == debiased["raw_test_error"]})
    command = (f"python benchmarks/ema_debiased.py --data {args.data} --labels {args.labels} --epochs {args.epochs} "
               f"--iters {args.iters}")
    where = machine("one torch thread per run")
    record = {"command": command, "machine": where, "seed": 0, "wall_seconds": round(time.time() - started),
              "rows": rows}
    lines = ["# The official Polyak average against the debiased one (`train.ema_start=debiased`)", "",
             f"MNIST (exact, `../shared/datasets/mnist.npz` as `dataset.source=npz`), {args.labels} labels, the "
             f"official recipe, seed 0, {args.epochs} epochs of {args.iters} iterations (the recipe has 600), "
             f"{where}; {record['wall_seconds']} s for both runs under other jobs' load (not a speed "
             f"measurement).", "", f"    {command}", "",
             "| epoch | steps | averaged, official zero start (%) | averaged, debiased (%) | raw discriminator (%) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['epoch']} | {r['steps']} | {r['zero']:.2f} | {r['debiased']:.2f} | {r['raw']:.2f}"
              f"{'' if r['raw_same'] else ' (differs between the runs)'} |" for r in rows]
    write_report(args.out, record, lines)


if __name__ == "__main__":
    main()
