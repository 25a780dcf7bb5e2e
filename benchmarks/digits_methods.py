"""Improved GAN, CT-GAN, Bad GAN and the best combination of their terms side by side on the digits default
task, on the same seeds and labeled subsets, with LabelSpreading beside them.

    python benchmarks/digits_methods.py [--seeds 0-9] [--select-seeds 0,1,2] [--out results/digits.md]

1. Selection, on a validation split of the training data only: every candidate of ``CANDIDATES`` is trained
   with ``dataset.val_size=0.2`` (a stratified 20 % of the 1347 train images held out, the labeled subset drawn
   from the rest) on the selection seeds; the candidate with the lowest mean validation error is "best". The
   test set is never looked at for this choice.
2. Test: improved_gan, ct_gan, bad_gan and the chosen combination, each on ``--seeds`` (50 labels, the default
   300 epochs), each row one ``ssgan.make_table`` call (its runs kept in ``--cache-dir``, so a rerun trains
   nothing twice), seeds trained concurrently (``train.concurrent_seeds``) where the options allow it;
   LabelSpreading on the same balanced
   subsets (``ssgan.data.balanced_labeled_subset`` with the same seed, as ``ssgan fit --seed N`` draws them).

Writes a Markdown table (mean +- sample std, ddof=1, per-seed errors) with the command, versions, date and
machine, and the selection's validation errors. Partial results are never written: the file is written once,
at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

METHODS = {
    "improved_gan": ["method=improved_gan"],
    "ct_gan": ["method=ct_gan"],
    "bad_gan (conditional entropy 0.1 + pull-away 0.8)": ["method=bad_gan"],
}
# Combinations of the three families' terms on the digits recipe (each a list of overrides).
CANDIDATES = {
    "ct_gan + entropy 0.1 + pull-away 0.8": ["method=ct_gan", "method.cond_entropy_weight=0.1",
                                             "method.pull_away_weight=0.8"],
    "ct_gan + pull-away 0.8": ["method=ct_gan", "method.pull_away_weight=0.8"],
    "ct_gan + entropy 0.1": ["method=ct_gan", "method.cond_entropy_weight=0.1"],
    "ct_gan + entropy 0.1 + pull-away 0.8 + VI 0.01": ["method=ct_gan", "method.cond_entropy_weight=0.1",
                                                       "method.pull_away_weight=0.8", "method.vi_weight=0.01"],
}


def _seeds(text: str):
    if "-" in text:
        first, last = (int(v) for v in text.split("-"))
        return list(range(first, last + 1))
    seeds = [int(v) for v in text.split(",")]
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise SystemExit(f"{text}: seeds must be consecutive (a table cell trains seed .. seed+K-1)")
    return seeds


def _fit_seeds(overrides, seeds, cache_dir, extra=()):
    """The runs of one row (digits, 50 labels), as ``ssgan.make_table`` trains them: the seeds together where
    the options allow it (``train.concurrent_seeds``), else one after another."""
    import ssgan
    from ssgan.config import compose, refused_options
    from ssgan.table import Progress

    words = [*overrides, *extra, f"seed={seeds[0]}", "train.progress=false", "train.sample_grid=false"]
    # an option the stacked step does not support (the schema's refused_by): one seed after another
    together = [] if refused_options(compose(words), "stacked") else ["train.concurrent_seeds=true"]
    table = ssgan.make_table("digits", labels=[50], seeds=len(seeds), overrides=[*words, *together],
                             cache_dir=cache_dir, out_dir=None, progress=Progress(lambda line: None))
    return table.rows[0].runs


def label_spreading(seeds, labels=50):
    from sklearn.semi_supervised import LabelSpreading

    from ssgan.config import DataConfig
    from ssgan.data import balanced_labeled_subset, load_data

    data = load_data(DataConfig())
    x_train, x_test = data.x_train.reshape(len(data.x_train), -1), data.x_test.reshape(len(data.x_test), -1)
    errors = []
    for seed in seeds:
        lab = balanced_labeled_subset(data.y_train, labels, data.n_classes, seed)
        y = np.full(len(x_train), -1)
        y[lab] = data.y_train[lab]
        errors.append(100 * float(np.mean(LabelSpreading().fit(x_train, y).predict(x_test) != data.y_test)))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--select-seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the recipe's 300)")
    parser.add_argument("--out", default="results/digits_methods.md")
    parser.add_argument("--cache-dir", default="runs/table", help="where the runs are kept (ssgan table's cache)")
    args = parser.parse_args()
    seeds, select_seeds = _seeds(args.seeds), _seeds(args.select_seeds)
    extra = [f"train.epochs={args.epochs}"] if args.epochs else []
    start = time.time()

    validation = {}
    for name, overrides in CANDIDATES.items():
        results = _fit_seeds(overrides, select_seeds, args.cache_dir, [*extra, "dataset.val_size=0.2"])
        validation[name] = [r.val_error for r in results]
        print(f"selection {name}: val {np.mean(validation[name]):.2f} %", flush=True)
    best = min(validation, key=lambda name: np.mean(validation[name]))

    rows = {**METHODS, f"best: {best}": CANDIDATES[best]}
    test = {}
    for name, overrides in rows.items():
        test[name] = [r.test_error for r in _fit_seeds(overrides, seeds, args.cache_dir, extra)]
        print(f"{name}: {np.mean(test[name]):.2f} +- {np.std(test[name], ddof=1):.2f} %", flush=True)
    test["LabelSpreading (scikit-learn defaults)"] = label_spreading(seeds)

    import sklearn
    import torch

    from ssgan.rundir import atomic_write, make_dir

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    command = "python benchmarks/digits_methods.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None)
    lines = ["# Digits, 50 labels: Improved GAN, CT-GAN, Bad GAN and the best combination, same seeds and subsets",
             "",
             f"Command: `{command}` (commit {commit}, {datetime.now(timezone.utc).isoformat(timespec='seconds')}, "
             f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
             f"scikit-learn "
             f"{sklearn.__version__}; {time.time() - start:.0f} s). Epochs: {args.epochs or 300}; seeds {args.seeds}.",
             "Test error (%) of each run's final Polyak-averaged discriminator; mean +- sample std (ddof=1). Every "
             "row uses the same balanced labeled subsets (seed N draws the subset of `ssgan fit --seed N`).",
             f"The combination was chosen on a validation split of the training data (`dataset.val_size=0.2`, "
             f"seeds {args.select_seeds}), never on the test set.", "",
             "| method | overrides | mean +- std | per seed |", "|---|---|---|---|"]
    for name, values in test.items():
        overrides = " ".join(rows.get(name, [])) or "-"
        lines.append(f"| {name} | `{overrides}` | {np.mean(values):.2f} +- {np.std(values, ddof=1):.2f} | "
                     + ", ".join(f"{v:.2f}" for v in values) + " |")
    lines += ["", "Selection (validation error %, mean over the selection seeds):", "",
              "| candidate | overrides | validation error |", "|---|---|---|"]
    for name, values in validation.items():
        lines.append(f"| {name} | `{' '.join(CANDIDATES[name])}` | {np.mean(values):.2f} |")
    make_dir(Path(args.out).parent)
    atomic_write(Path(args.out), "\n".join(lines) + "\n")  # a kill leaves the previous table, never half of one
    print("\n".join(lines))


if __name__ == "__main__":
    main()
