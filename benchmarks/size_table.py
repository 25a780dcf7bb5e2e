"""Which rows of a table one GPU call can finish, from the measured speed: step d of
``benchmarks/gpu_session.sh`` trains the rows it prints.

A table's rows (label counts) train together, ``--seeds`` models per row stacked into one step, so k rows take
``epochs x iterations_per_epoch x ms(k x seeds)`` plus a fixed start (data, initialisation, compile, capture)
and the per-epoch evaluations (``--margin``). ``ms(S)``, milliseconds per iteration of S stacked models, comes
from ``benchmarks/bench_step.py``'s rows of the recipe and mode (``--bench``): interpolated between measured
model counts, extrapolated from the last two beyond them (from one row: proportional to S above it, flat
below, the cautious readings). The rows are taken in ``--labels`` order (100 labels first: the row the
published comparison starts with) as long as they fit in ``--seconds``; the whole table where it fits. Where
not even the first row fits, it is trained all the same (the session checkpoints at its limit and a later call
on the same machine continues it), and ``fits`` says so.

    python benchmarks/size_table.py --bench OUT/bench.json --recipe mnist --mode graph_tf32 --seconds 400
        --epochs 300 --iterations-per-epoch 600 --seeds 10 --labels 100,50,20,200 [--explain OUT/sizing.json]

Prints one line, ``LABELS MODE``: the label counts to train (comma-separated, in training order) and the mode
whose speed was used (the first of ``--mode``'s comma-separated candidates that has rows); ``--explain``
writes the prediction per number of rows. Exit 2 with one line when no candidate mode has rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ssgan.rundir import atomic_write


def ms_at(points: Sequence[Tuple[int, float]], models: int) -> float:
    """Milliseconds per iteration of ``models`` stacked models from measured (models, ms) points: linear
    between them, extrapolated from the last two above them (never below the largest measured), flat below
    the first; from one point, proportional above it."""
    points = sorted(points)
    if len(points) == 1:
        (m0, t0), = points
        return t0 * max(1.0, models / m0)
    if models <= points[0][0]:
        return points[0][1]
    for (m0, t0), (m1, t1) in zip(points, points[1:]):
        if models <= m1:
            return t0 + (t1 - t0) * (models - m0) / (m1 - m0)
    (m0, t0), (m1, t1) = points[-2], points[-1]
    slope = max((t1 - t0) / (m1 - m0), t1 / m1)  # at least proportional beyond the last measured count
    return t1 + slope * (models - m1)


def rows_of(bench: Dict, recipe: str, mode: str) -> List[Tuple[int, float]]:
    """(models, ms per iteration) of the bench file's timed rows of ``recipe`` and ``mode``."""
    return [(int(r["models"]), float(r["ms_per_iteration"])) for r in bench.get("rows", [])
            if r.get("recipe") == recipe and r.get("mode") == mode and r.get("ms_per_iteration")]


def size(points: Sequence[Tuple[int, float]], labels: Sequence[int], seeds: int, epochs: int,
         iterations_per_epoch: int, seconds: float, startup: float, margin: float) -> Dict:
    """The rows (a prefix of ``labels``) that finish within ``seconds``, and the prediction for each prefix."""
    predictions = []
    for k in range(1, len(labels) + 1):
        ms = ms_at(points, k * seeds)
        predicted = startup + margin * epochs * iterations_per_epoch * ms / 1000.0
        predictions.append({"rows": list(labels[:k]), "models": k * seeds, "ms_per_iteration": round(ms, 3),
                            "predicted_s": round(predicted, 1)})
    fitting = [p for p in predictions if p["predicted_s"] <= seconds]
    chosen = fitting[-1] if fitting else predictions[0]
    return {"labels": chosen["rows"], "fits": bool(fitting), "predicted_s": chosen["predicted_s"],
            "seconds": seconds, "predictions": predictions}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", required=True, help="bench_step.py's --out file")
    parser.add_argument("--recipe", default="mnist")
    parser.add_argument("--mode", default="graph_tf32", help="candidate modes in order of preference")
    parser.add_argument("--seconds", type=float, required=True, help="the time the table may take")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--iterations-per-epoch", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--labels", default="100,50,20,200", help="the rows in order of priority")
    parser.add_argument("--startup", type=float, default=90.0, help="seconds before the first iteration")
    parser.add_argument("--margin", type=float, default=1.1, help="factor for evaluations and checkpoints")
    parser.add_argument("--explain", help="write the prediction per number of rows here (JSON)")
    args = parser.parse_args(argv)
    try:
        bench = json.loads(Path(args.bench).read_text())
        labels = [int(n) for n in args.labels.split(",")]
    except (OSError, ValueError) as error:
        print(f"size_table: {error}", file=sys.stderr)
        return 2
    for mode in args.mode.split(","):
        points = rows_of(bench, args.recipe, mode)
        if points:
            break
    else:
        print(f"size_table: {args.bench} has no timed {args.recipe} rows of mode {args.mode}", file=sys.stderr)
        return 2
    plan = size(points, labels, args.seeds, args.epochs, args.iterations_per_epoch, args.seconds, args.startup,
                args.margin)
    plan.update(mode=mode, measured=points)
    print(",".join(str(n) for n in plan["labels"]), mode, flush=True)  # the plan first: the explanation is extra
    if args.explain:
        Path(args.explain).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(args.explain), json.dumps(plan, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
