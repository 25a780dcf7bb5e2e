"""Non-GAN baselines on the digits default task, on exactly the labeled subsets ``ssgan fit`` draws.

    python benchmarks/digits_baselines.py [--seeds 0-9] [--out results/digits_baselines.md]

For each seed: the balanced 50-label subset of ``ssgan.data.balanced_labeled_subset`` on the 1347-image
train split, then (a) logistic regression on the 50 labeled images only (supervised), (b) scikit-learn's
LabelSpreading on the whole train split with the other images unlabeled. Test error on the 450 test images.
"""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.semi_supervised import LabelSpreading

from ssgan.config import DataConfig
from ssgan.data import balanced_labeled_subset, load_data
from ssgan.rundir import atomic_write, make_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0-9", help="a range a-b or a comma list")
    parser.add_argument("--labels", type=int, default=50)
    parser.add_argument("--out", default="results/digits_baselines.md")
    args = parser.parse_args()
    if "-" in args.seeds:
        first, last = (int(v) for v in args.seeds.split("-"))
        seeds = list(range(first, last + 1))
    else:
        seeds = [int(v) for v in args.seeds.split(",")]
    data = load_data(DataConfig())
    x_train = data.x_train.reshape(len(data.x_train), -1)
    x_test = data.x_test.reshape(len(data.x_test), -1)
    errors = {"logistic regression (50 labels only)": [], "LabelSpreading (50 labels + unlabeled)": []}
    for seed in seeds:
        lab = balanced_labeled_subset(data.y_train, args.labels, data.n_classes, seed)
        supervised = LogisticRegression(max_iter=5000).fit(x_train[lab], data.y_train[lab])
        errors["logistic regression (50 labels only)"].append(100 * np.mean(supervised.predict(x_test) != data.y_test))
        y = np.full(len(x_train), -1)
        y[lab] = data.y_train[lab]
        spreading = LabelSpreading().fit(x_train, y)
        errors["LabelSpreading (50 labels + unlabeled)"].append(100 * np.mean(spreading.predict(x_test) != data.y_test))
    lines = ["# Digits default task: non-GAN baselines", "",
             f"Command: `python benchmarks/digits_baselines.py --seeds {args.seeds}` ({date.today()}, CPU, "
             f"scikit-learn {sklearn.__version__}, default hyperparameters). Same split (1347 train / 450 test) and "
             f"the same balanced {args.labels}-label subsets as `ssgan fit --seed N`. Test error (%), mean +- "
             f"sample std (ddof=1) over seeds {seeds[0]}..{seeds[-1]}.", "",
             "| method | mean +- std | per seed |", "|---|---|---|"]
    for name, values in errors.items():
        lines.append(f"| {name} | {np.mean(values):.2f} +- {np.std(values, ddof=1):.2f} | "
                     + ", ".join(f"{v:.2f}" for v in values) + " |")
    make_dir(Path(args.out).parent)
    atomic_write(Path(args.out), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
