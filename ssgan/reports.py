"""Reports: the published numbers, the aggregation of seeds (mean +- std and the ensemble), and the
files that show them: a seeds run's ``summary.json`` / ``summary.md`` and a table's ``<dataset>.md``, ``.json``
and ``.png`` (docs/method.md sec. 4, 5).

The published numbers are a mean +- std over seeds (10 in Salimans et al. 2016) and the error of an ensemble
of the seeds' models. Here the std is the sample standard deviation (ddof=1, the usual report over seeds)
and the ensemble is the argmax of the mean of the models' class probabilities (not a vote; docs/method.md sec. 5).
Every error is that of a run's final Polyak-averaged discriminator, never the best one seen.
"""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import plots
from .checkpoint import load_run
from .config import fields_with
from .data import load_data
from .evaluate import class_report, ensemble_proba, error_rate, predict_proba
from .records import EnsembleRecord, RunRecord, SeedsSummary
from .rundir import RunDirError, atomic_write, environment, make_dir
from .seeds import config_differences, config_key, keyed_fields

STD_KIND = "sample std (ddof=1)"
ENSEMBLE_RULE = "the mean of the models' class probabilities, then argmax (docs/method.md sec. 5)"

# Test error in % as (mean, std) over seeds, from docs/method.md sec. 4; MNIST's errors of 10000 divided by 100.
PUBLISHED: Dict[str, Dict[int, Dict[str, Tuple[float, float]]]] = {
    "mnist": {
        20: {"improved_gan": (16.77, 4.52), "improved_gan_ensemble": (11.34, 4.45)},
        50: {"improved_gan": (2.21, 1.36), "improved_gan_ensemble": (1.42, 0.96)},
        100: {"improved_gan": (0.93, 0.065), "improved_gan_ensemble": (0.86, 0.056), "ct_gan": (0.89, 0.13),
              "bad_gan": (0.795, 0.098)},
        200: {"improved_gan": (0.90, 0.042), "improved_gan_ensemble": (0.81, 0.043)},
    },
    "cifar10": {
        1000: {"improved_gan": (21.83, 2.01), "improved_gan_ensemble": (19.22, 0.54)},
        2000: {"improved_gan": (19.61, 2.09), "improved_gan_ensemble": (17.25, 0.66)},
        4000: {"improved_gan": (18.63, 2.32), "improved_gan_ensemble": (15.59, 0.47), "ct_gan": (9.98, 0.21),
               "bad_gan": (14.41, 0.30)},
        8000: {"improved_gan": (17.72, 1.82), "improved_gan_ensemble": (14.87, 0.89)},
    },
    "svhn": {
        500: {"improved_gan": (18.44, 4.8)},
        1000: {"improved_gan": (8.11, 1.3), "improved_gan_ensemble": (5.88, 1.0), "bad_gan": (4.25, 0.03)},
        2000: {"improved_gan": (6.16, 0.58)},
    },
}
PUBLISHED_COLUMNS = {"improved_gan": "Improved GAN", "improved_gan_ensemble": "Improved GAN, ensemble of 10",
                     "ct_gan": "CT-GAN", "bad_gan": "Bad GAN"}
PUBLISHED_SOURCE = ("Salimans et al. 2016 (Improved GAN), Wei et al. 2018 (CT-GAN), Dai et al. 2017 (Bad GAN), "
                    "as listed in docs/method.md sec. 4")


# ------------------------------------------------------------------------------------------- statistics

def mean_std(test_errors: Sequence[float]) -> Tuple[float, Optional[float]]:
    """Mean and sample standard deviation (ddof=1) of the seeds' errors; the std is None for one seed."""
    errors = np.asarray(test_errors, dtype=np.float64)
    return float(errors.mean()), (float(errors.std(ddof=1)) if len(errors) > 1 else None)


def ensemble_error(probs_per_model: Sequence[np.ndarray], y_test: np.ndarray) -> float:
    """Test error (%) of the ensemble: argmax of the mean class probabilities (docs/method.md sec. 5)."""
    return error_rate(ensemble_proba(probs_per_model), y_test)



@dataclass
class SeedsResult:
    """The runs of one config over several seeds and what they give together (one row of a table)."""

    runs: List[RunRecord]
    mean: float
    std: Optional[float]  # sample std (ddof=1) over the seeds; None for one seed
    ensemble_error: float
    n_test: int
    ensemble_report: Optional[Dict[str, Any]] = None  # evaluate.class_report of the ensemble

    @property
    def seeds(self) -> List[int]:
        return [r.seed for r in self.runs]

    @property
    def test_errors(self) -> List[float]:
        return [r.test_error for r in self.runs]

    @property
    def labels(self) -> int:
        return self.runs[0].labels

    @property
    def method(self) -> str:
        return self.runs[0].method

    @property
    def config(self) -> Dict[str, Any]:
        """The runs' resolved config, without the seed and the run directory."""
        return {k: v for k, v in self.runs[0].config.items() if k not in ("seed", "run_dir")}

    @property
    def key(self) -> str:
        return config_key(self.runs[0].config)


def aggregate(records: Sequence[RunRecord], probs: Sequence[np.ndarray], y_test: np.ndarray,
              class_names: Optional[Sequence[str]] = None) -> SeedsResult:
    """Mean +- sample std of the recorded test errors and the ensemble error of ``probs`` (one per run), with
    the ensemble's per-class errors and confusion matrix when the class names are given."""
    mean, std = mean_std([r.test_error for r in records])
    ensemble = ensemble_proba(probs)
    report = None if class_names is None else class_report(ensemble, y_test, class_names)
    return SeedsResult(list(records), mean, std, error_rate(ensemble, y_test), len(y_test), report)


def ensemble_record(result: SeedsResult, class_names: Sequence[str]) -> EnsembleRecord:
    """What ``ssgan ensemble --out`` writes: ``aggregate``'s numbers for runs evaluated together."""
    report = result.ensemble_report or {}
    return EnsembleRecord(runs=[str(r.path) for r in result.runs], test_errors=result.test_errors, mean=result.mean,
                          std=result.std, std_kind=STD_KIND, ensemble_error=result.ensemble_error,
                          n_test=result.n_test, classes=list(class_names),
                          per_class_error=report.get("per_class_error"), confusion_matrix=report.get("confusion_matrix"))


def evaluate_runs(records: Sequence[RunRecord], device: str = "cpu", data_root: Optional[str] = None,
                  networks: Optional[Sequence] = None) -> SeedsResult:
    """``aggregate`` over finished runs, with their probabilities recomputed from their checkpoints."""
    probs, y_test, class_names = probs_on_test_set(records, device, data_root, networks)
    return aggregate(records, probs, y_test, class_names)



# -------------------------------------------------------------------------------------- finished runs

# data fields that leave the test images as they are, from their role in the schema (labels, val_size, root, ...)
NOT_TEST_SET = frozenset(name.split(".", 1)[1] for name in fields_with("test_set", False) if name.startswith("dataset."))


def fixes_test_set(name: str) -> bool:
    """Whether a data field (e.g. ``root``) decides which test images a run is evaluated on."""
    return name not in NOT_TEST_SET


def _test_set_identity(dataset: Dict[str, Any]) -> str:
    """What fixes a data set's test images: the data fields but those of ``NOT_TEST_SET`` (the same data may
    live under another root on another machine; the test labels are compared after loading)."""
    return json.dumps({k: v for k, v in dataset.items() if fixes_test_set(k)}, sort_keys=True)


def check_same_data(records: Sequence[RunRecord]) -> None:
    """Runs evaluated together must share the data set (checked from their configs, before any loading)."""
    first = records[0]
    for record in records[1:]:
        if record.dataset != first.dataset:
            raise RunDirError(f"runs of different data sets: {first.path} is {first.dataset}, {record.path} is "
                            f"{record.dataset}")
        if _test_set_identity(record.config["dataset"]) != _test_set_identity(first.config["dataset"]):
            fields = config_differences(first.config["dataset"], record.config["dataset"])
            fields = [f for f in fields if fixes_test_set(f)]
            raise RunDirError(f"runs of different data: {first.path} and {record.path} differ in "
                            f"{', '.join('dataset.' + f for f in fields)}")


def probs_on_test_set(records: Sequence[RunRecord], device: str = "cpu", data_root: Optional[str] = None,
                      networks: Optional[Sequence] = None) -> Tuple[List[np.ndarray], np.ndarray, List[str]]:
    """Each run's class probabilities on the test set, from its checkpoint's averaged discriminator.

    Checks that the runs share the data set, the class names and the test labels. ``data_root`` replaces
    the runs' ``dataset.root`` (runs trained on another machine); ``networks``: those of runs of one's own
    networks (``checkpoint.load_run``). Returns the (N, K) probabilities of every
    run, the (N,) test labels and the class names.
    """
    check_same_data(records)
    probs, y_test, class_names, test_sets = [], None, None, {}
    for record in records:
        run = load_run(record.path, device, networks)
        if class_names is not None and list(run.class_names) != class_names:
            raise RunDirError(f"runs with different classes: {records[0].path} has {class_names}, {record.path} "
                            f"has {list(run.class_names)}")
        data_cfg = run.config.dataset if data_root is None else replace(run.config.dataset, root=data_root)
        identity = _test_set_identity(asdict(data_cfg))
        if identity not in test_sets:  # the test split does not depend on the seed: load it once
            test_sets[identity] = load_data(data_cfg, run.config.seed)
        data = test_sets[identity]
        if len(data.y_test) == 0:
            raise RunDirError(f"{record.path}: its data set has no test images to evaluate on")
        if y_test is not None and not np.array_equal(data.y_test, y_test):
            raise RunDirError(f"runs with different test sets: {records[0].path} and {record.path}")
        y_test, class_names = data.y_test, list(run.class_names)
        probs.append(predict_proba(run.discriminator, data.x_test, run.config.train.eval_batch_size,
                                    tf32=run.config.train.tf32))
    return probs, y_test, class_names



# ---------------------------------------------------------------------------------------------- files

def _pct(value: Optional[float]) -> str:
    """An error in %: two decimals, three significant digits below 1 (MNIST's 0.065 stays 0.065)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def _pm(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None:
        return "-"
    return _pct(mean) + ("" if std is None else f" +- {_pct(std)}")


def _seed_ranges(seeds: Sequence[int]) -> str:
    """0, 1, 2, 5 -> '0-2, 5'."""
    seeds, parts, start = sorted(seeds), [], None
    for i, seed in enumerate(seeds):
        if start is None:
            start = seed
        if i + 1 == len(seeds) or seeds[i + 1] != seed + 1:
            parts.append(str(start) if start == seed else f"{start}-{seed}")
            start = None
    return ", ".join(parts)


def provenance(results: Sequence[SeedsResult], command: str) -> Dict[str, Any]:
    """Command, date, devices, versions, epochs and seeds behind a set of results."""
    runs = [r for result in results for r in result.runs]
    here = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "command": command,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "devices": sorted({r.device for r in runs}),
        "machine": f"{platform.system()} {platform.machine()}",
        "versions": {**environment(here), "torch_of_runs": sorted({r.torch for r in runs})},
        "epochs": sorted({f"{r.epochs} epochs of {r.iters_per_epoch} iterations" for r in runs}),
        "seeds": _seed_ranges(sorted({r.seed for r in runs})),
        "std": f"{STD_KIND} over the seeds",
        "ensemble": ENSEMBLE_RULE,
    }


def _provenance_lines(meta: Dict[str, Any]) -> List[str]:
    versions = meta["versions"]
    packages = ", ".join(f"{name} {versions[name]}" for name in ("ssgan", "torch", "torchvision", "numpy",
                                                                 "scikit-learn", "hydra-core", "python"))
    return [
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- device the runs trained on: {', '.join(meta['devices'])}; this file written on {meta['machine']}, "
        f"{versions['device']}",
        f"- versions: {packages} (torch of the runs: {', '.join(versions['torch_of_runs'])})",
        f"- git commit: {versions.get('git_commit', 'not run from a git checkout')}",
        f"- epochs: {'; '.join(meta['epochs'])}",
        f"- seeds: {meta['seeds']}",
        f"- std: {meta['std']}; ensemble: {meta['ensemble']}",
        "- every error is that of a run's final Polyak-averaged discriminator, never the best one seen",
    ]


def _linked(text: str, out_dir: Path) -> str:
    """Mentions of docs/method.md as Markdown links, relative to ``out_dir`` when it lies in the repository
    that holds the docs (results/ does), else left as text."""
    docs = Path(__file__).resolve().parent.parent / "docs" / "method.md"
    if not docs.is_file():
        return text
    try:
        target = Path(os.path.relpath(docs, out_dir.resolve()))
    except ValueError:  # another drive
        return text
    if ".." in target.parts[:-2] and len(target.parts) > 3:  # out_dir is outside the repository
        return text
    return re.sub(r"docs/method\.md sec\. (\d+(?:\.\d+)?(?:, \d+(?:\.\d+)?)*)", lambda m: f"[{m.group(0)}]({target.as_posix()})",
                  text)


def write_summary(out_dir: Path, result: SeedsResult, seeds: Sequence[int], command: str) -> None:
    """``summary.json`` and ``summary.md`` of a seeds run (``records.SeedsSummary``), rewritten after every
    seed."""
    report = result.ensemble_report
    summary = SeedsSummary(
        meta=provenance([result], command), dataset=result.runs[0].dataset, labels=result.labels,
        method=result.method, key=result.key, seeds=list(seeds), finished=result.seeds,
        test_errors={str(r.seed): r.test_error for r in result.runs}, mean=result.mean, std=result.std,
        ensemble_error=result.ensemble_error, n_test=result.n_test, runs={str(r.seed): r.path.name for r in result.runs},
        config={**result.config, "seed": seeds[0]},
        ensemble_per_class_error=None if report is None else report["per_class_error"],
        ensemble_confusion_matrix=None if report is None else report["confusion_matrix"])
    summary.write(out_dir, _summary_markdown(summary, result))


def _summary_markdown(summary: SeedsSummary, result: SeedsResult) -> str:
    title = f"# {summary.dataset}, {result.labels} labels, {result.method}: seeds {_seed_ranges(summary.finished)}"
    if not summary.complete:
        title += f" ({len(summary.finished)} of {len(summary.seeds)} planned seeds finished)"
    lines = [title, "", "| seed | test error (%) | run |", "|---|---|---|"]
    lines += [f"| {r.seed} | {_pct(r.test_error)} | {r.path.name} |" for r in result.runs]
    lines += [f"| mean +- std | {_pm(result.mean, result.std)} | {STD_KIND} |",
              f"| ensemble | {_pct(result.ensemble_error)} | {len(summary.finished)} models |", "",
              f"Test set: {result.n_test} images. Config key {result.key}.", ""]
    lines += _provenance_lines(summary.meta)
    return "\n".join(lines) + "\n"


def write_table(out_dir: Path, dataset: str, rows: Sequence[SeedsResult], command: str) -> List[Path]:
    """``<dataset>.md``, ``<dataset>.json`` and (with matplotlib) ``<dataset>.png`` in ``out_dir``: a row per
    label count with our mean +- std and ensemble next to the published numbers. Regenerated on every call.
    Returns the files written."""
    rows = sorted(rows, key=lambda r: r.labels)
    published = PUBLISHED.get(dataset, {})
    meta = provenance(rows, command)
    make_dir(out_dir)  # a read-only or full disk: one line
    methods = sorted({r.method for r in rows})
    header = (["labels", "seeds", f"ours ({', '.join(methods)}): mean +- std", "ours: ensemble"]
              + list(PUBLISHED_COLUMNS.values()))
    lines = [f"# {dataset}: test error (%) against the number of labeled examples", "",
             f"Ours: mean +- {STD_KIND} over the seeds, and the ensemble of the seeds' models: {ENSEMBLE_RULE}. "
             f"Published: {PUBLISHED_SOURCE}"
             + (", MNIST's errors of 10000 given here in %." if dataset == "mnist" else ".")
             + ("" if published else f" There are no published numbers for {dataset}."), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    json_rows = []
    for row in rows:
        numbers = published.get(row.labels, {})
        cells = [str(row.labels), str(len(row.runs)), _pm(row.mean, row.std), _pct(row.ensemble_error)]
        cells += [_pm(*numbers[name]) if name in numbers else "-" for name in PUBLISHED_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
        json_rows.append({"labels": row.labels, "method": row.method, "key": row.key, "seeds": row.seeds,
                          "test_errors": row.test_errors, "mean": row.mean, "std": row.std,
                          "ensemble_error": row.ensemble_error, "n_test": row.n_test,
                          "epochs": sorted({r.epochs for r in row.runs}),
                          "devices": sorted({r.device for r in row.runs}),
                          "runs": [str(r.path) for r in row.runs],
                          "published": {name: list(numbers[name]) for name in PUBLISHED_COLUMNS if name in numbers},
                          "config": row.config})
    lines += ["", "## How these numbers were made", ""] + _provenance_lines(meta)
    lines += [f"- each row's resolved config, key, runs and per-seed errors: {dataset}.json"]
    md_path, json_path = out_dir / f"{dataset}.md", out_dir / f"{dataset}.json"
    # the .json first: a kill between the two never leaves an .md whose numbers have no record behind them
    atomic_write(json_path, json.dumps({"dataset": dataset, **meta, "unit": "test error in %",
                                         "published_source": PUBLISHED_SOURCE,
                                         "published_columns": PUBLISHED_COLUMNS, "rows": json_rows}, indent=1))
    atomic_write(md_path, _linked("\n".join(lines) + "\n", out_dir))
    written = [md_path, json_path]
    png_path = out_dir / f"{dataset}.png"
    if plot_table(png_path, dataset, rows):
        written.append(png_path)
    return written


def plot_table(path: Path, dataset: str, rows: Sequence[SeedsResult]) -> bool:
    """Error against labels (log-log): ours (mean +- std, ensemble) and the published points.

    Needs matplotlib (the ``plots`` extra); without it, says so and returns False.
    """
    figure = plots.new_figure()
    if figure is None:  # (logged, with the extra to install)
        return False
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    rows = sorted(rows, key=lambda r: r.labels)
    labels = [r.labels for r in rows]
    ax = figure.subplots()
    ax.errorbar(labels, [r.mean for r in rows], yerr=[r.std or 0.0 for r in rows], marker="o", capsize=3,
                label="ours, mean +- std over seeds")
    ax.plot(labels, [r.ensemble_error for r in rows], marker="s", linestyle="--", label="ours, ensemble")
    published = PUBLISHED.get(dataset, {})
    for name, title in PUBLISHED_COLUMNS.items():
        points = sorted((n, published[n][name]) for n in published if name in published[n])
        if points:
            ax.errorbar([n for n, _ in points], [m for _, (m, _) in points], yerr=[s for _, (_, s) in points],
                        marker="x", linestyle=":", capsize=3, label=f"{title} (published)")
    values = [r.mean for r in rows] + [r.ensemble_error for r in rows]
    values += [v[0] for n in published for v in published[n].values()]
    ticks = sorted(set(labels) | set(published))
    ax.set_xscale("log")
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(n) for n in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    if min(values) > 0 and max(values) > 10 * min(values):  # MNIST: 0.8 % to 17 %
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("labeled examples")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{dataset}: test error against labels")
    ax.legend(fontsize="small")
    atomic_write(path, plots.png_bytes(figure))
    return True


def group_rows(records: Sequence[RunRecord], device: str = "cpu", data_root: Optional[str] = None,
               networks: Optional[Sequence] = None) -> List[SeedsResult]:
    """Finished runs -> one row per config (without the seed): one label count each, seeds not repeated."""
    check_same_data(records)
    groups: Dict[str, List[RunRecord]] = {}
    for record in records:
        groups.setdefault(config_key(record.config), []).append(record)
    by_labels: Dict[int, List[RunRecord]] = {}
    for group in groups.values():
        labels = group[0].labels
        if labels in by_labels:
            other = by_labels[labels][0]
            fields = config_differences(keyed_fields(other.config), keyed_fields(group[0].config))
            raise RunDirError(f"runs of {labels} labels with different configs ({other.path} and {group[0].path} "
                            f"differ in {', '.join(fields)}); pass the runs of one config per label count")
        seeds = [r.seed for r in group]
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            paths = [str(r.path) for r in group if r.seed == repeated[0]]
            raise RunDirError(f"seed {repeated[0]} of {labels} labels appears more than once: {', '.join(paths)}")
        by_labels[labels] = sorted(group, key=lambda r: r.seed)
    return [evaluate_runs(by_labels[n], device, data_root, networks) for n in sorted(by_labels)]
