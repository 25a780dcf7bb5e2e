"""Issue 32 point 4's second check: MNIST, 100 labels, one seed, the faithful step against ``train.step=lean``,
test error epoch by epoch side by side (the two runs in parallel, one torch thread each): results/
lean_vs_faithful_mnist.md and .json.

    python benchmarks/lean_vs_faithful_mnist.py --data data/mnist.npz [--epochs 10] [--seed 0]
    python benchmarks/lean_vs_faithful_mnist.py --summarize   # every seed's last epoch: results/..._summary.md

The lean step draws its random numbers differently (one z draw, noise across a concatenated batch), so the
runs are compared in distribution, not bitwise: one seed per form shows whether the curves track each other.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from mnist_runs import fit_histories, machine, write_report

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("faithful", "lean")
COLUMNS = ("faithful", "lean", "faithful_raw", "lean_raw")  # the test errors of a row, in the tables' order


def table_row(first, row: dict) -> str:
    """A markdown row: ``first`` (the epoch or the seed), then ``row``'s test errors."""
    return "| " + " | ".join([str(first)] + [f"{row[k]:.2f}" for k in COLUMNS]) + " |"


def summarize() -> None:
    """The last epoch of every seed's results/lean_vs_faithful_mnist*.json side by side: per form the mean and
    its standard error over the seeds, and the paired difference lean - faithful with its standard error."""
    records = sorted((json.loads(p.read_text()) for p in (ROOT / "results").glob("lean_vs_faithful_mnist*.json")
                      if not p.stem.endswith("_summary")), key=lambda r: r["seed"])
    last = [r["rows"][-1] for r in records]
    if len({row["epoch"] for row in last}) != 1 or len(last) < 2:
        raise SystemExit("lean_vs_faithful_mnist --summarize: needs two or more seeds run for the same epochs")

    def mean_se(values):
        return statistics.mean(values), statistics.stdev(values) / len(values) ** 0.5

    lines = [f"# The faithful step against `train.step=lean`: MNIST, 100 labels, {len(last)} seeds after "
             f"{last[0]['epoch']} epochs", "", "Each seed's run: `results/lean_vs_faithful_mnist*.md` (its command, "
             "machine and date); this summary:", "", "    python benchmarks/lean_vs_faithful_mnist.py --summarize", "",
             "| seed | faithful, averaged (%) | lean, averaged (%) | faithful, raw D (%) | lean, raw D (%) |",
             "|---|---|---|---|---|"]
    lines += [table_row(r["seed"], row) for r, row in zip(records, last)]
    summary = {key: mean_se([row[key] for row in last]) for key in COLUMNS}
    for kind in ("", "_raw"):
        summary["lean - faithful" + kind] = mean_se([row["lean" + kind] - row["faithful" + kind] for row in last])
    cell = {k: f"{m:.2f} +- {se:.2f}" for k, (m, se) in summary.items()}
    lines += [f"| mean +- standard error | {cell['faithful']} | {cell['lean']} | {cell['faithful_raw']} | "
              f"{cell['lean_raw']} |", "", f"Paired difference lean - faithful: averaged classifier "
              f"{cell['lean - faithful']} points, raw discriminator {cell['lean - faithful_raw']} points."]
    record = {"seeds": [r["seed"] for r in records], "epochs": last[0]["epoch"], "last_epoch": last,
              "mean_and_standard_error": summary, "command": "python benchmarks/lean_vs_faithful_mnist.py --summarize"}
    write_report(str(ROOT / "results" / "lean_vs_faithful_mnist_summary"), record, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summarize", action="store_true", help="every seed's last epoch, side by side")
    parser.add_argument("--data", help="MNIST as an .npz (x_train, y_train, x_test, y_test)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="default results/lean_vs_faithful_mnist (seed 0) or ..._seed<N>")
    args = parser.parse_args()
    if args.summarize:
        return summarize()
    if not args.data:
        parser.error("--data is required (or --summarize)")
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
    lines += [table_row(r["epoch"], r) for r in rows]
    write_report(args.out, record, lines)


if __name__ == "__main__":
    main()
