"""Seeds runs and tables as library calls: what ``ssgan fit --seeds K`` and ``ssgan table`` do, callable from
Python (a notebook, the benchmarks) with the same files and numbers.

    fit_seeds(cfg, seeds, out_dir)        one config over several seeds into one folder (summary.json, .md)
    make_table("digits", labels=[20])     one seeds run per label count, then runs/table/<dataset>.md, .json, .png
    collect_table(["runs/multirun-..."])  the same table from finished runs trained elsewhere

Each cell of a table is kept in ``cache_dir/<dataset>/<key>/`` (``seeds.cell_directory``), so that a rerun
trains only the seeds that have not finished. What the calls say while they train goes to a ``Progress``
(by default the ``ssgan`` logger; the command line prints it).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from .config import Config, ConfigError, check_seeds, compose, resolve_device, resolve_paths
from .data import load_data
from .records import find_runs
from .reports import PUBLISHED, SeedsResult, aggregate, group_rows, write_summary, write_table
from .rundir import TABLE_DIR, RunDirError, removed_on_failure
from .seeds import SeedOutcome, cell_directory, prepare_cell, train_seeds, train_together
from .signals import StopSignals
from .train import TrainingInterrupted

logger = logging.getLogger(__name__)

TABLE_SETS = ("dataset", "dataset.labels", "run_dir")  # what make_table sets in every cell itself


class Progress:
    """The lines a seeds run or a table writes while it trains, each passed to ``write`` (default: the
    ``ssgan`` logger at INFO)."""

    def __init__(self, write: Optional[Callable[[str], None]] = None) -> None:
        self.write = write or logger.info

    def cell(self, cfg: Config, seeds: Sequence[int], out_dir: Path) -> None:
        which = f"seeds {seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}"
        self.write(f"{cfg.dataset.name}, {cfg.dataset.labels} labels, {which}: {out_dir}")

    def seed(self, outcome: SeedOutcome) -> None:
        how = "" if outcome.how in ("trained", "continued from its checkpoint") else f"; {outcome.how}"
        self.write(f"seed {outcome.seed}: test error {outcome.record.test_error:.2f} % ({outcome.record.path}{how})")

    def done(self, summary: SeedsResult, out_dir: Path) -> None:
        """The seeds run's ensemble error and, last, the mean +- sample std of its seeds' errors."""
        self.write(f"run directory: {out_dir}")
        self.write(f"ensemble test error: {summary.ensemble_error:.2f} % ({len(summary.runs)} models: mean of "
                   f"their class probabilities, then argmax)")
        if summary.std is None:
            self.write(f"test error: {summary.mean:.2f} % over 1 seed (no std)")
        else:
            self.write(f"test error: {summary.mean:.2f} +- {summary.std:.2f} % over {len(summary.runs)} seeds "
                       f"(sample std)")


@dataclass
class Table:
    """A table's rows (one seeds run per label count) and the files written for it."""

    dataset: str
    rows: List[SeedsResult]
    files: List[Path]


def fit_seeds(cfg: Config, seeds: Sequence[int], out_dir: Path, *, command: str, fresh: bool = False,
              progress: Optional[Progress] = None, data=None, trained=None) -> SeedsResult:
    """Train ``cfg`` with each of ``seeds`` into ``out_dir/seed<N>/`` (``seeds.train_seeds``: finished seeds
    are kept, interrupted ones continue) and rewrite ``summary.json`` / ``summary.md`` after each seed.
    Returns the summary over every seed. ``data`` and ``trained`` come from a table that loaded the data and
    trained its seeds together."""
    progress = progress or Progress()
    outcomes: List[SeedOutcome] = []
    # SIGINT / SIGTERM between seeds (or while the summary is written) stops after the summary, never inside it
    with StopSignals() as signals, \
            contextlib.closing(train_seeds(cfg, seeds, out_dir, command=command, fresh=fresh, data=data,
                                           trained=trained)) as trainings:
        for outcome in trainings:
            outcomes = sorted([*outcomes, outcome], key=lambda o: o.seed)  # seed order, however they finished
            summary = aggregate([o.record for o in outcomes], [o.probs for o in outcomes], outcome.y_test,
                                outcome.class_names)
            write_summary(out_dir, summary, list(seeds), command)
            progress.seed(outcome)
            if signals.signum is not None and len(outcomes) < len(seeds):
                raise TrainingInterrupted(None, signals.signum, f"ssgan fit --resume {out_dir}",
                                          after=f"seed {outcome.seed} and {out_dir / 'summary.json'} were written")
        progress.done(summary, out_dir)
    if signals.signum is not None:  # after the last seed: the run is complete
        raise TrainingInterrupted(None, signals.signum, None, after=f"the last seed and {out_dir} were written")
    return summary


def make_table(dataset: str, *, labels: Optional[Sequence[int]] = None, seeds: int = 10,
               method: Optional[str] = None, overrides: Sequence[str] = (), device: Optional[str] = None,
               data_root: Optional[str] = None, cache_dir: Path | str = TABLE_DIR,
               out_dir: Optional[Path | str] = TABLE_DIR, command: Optional[str] = None,
               progress: Optional[Progress] = None) -> Table:
    """Train ``seeds`` seeds for each label count of ``dataset`` (default: those with published numbers) and
    write ``out_dir/<dataset>.md``, ``.json`` and ``.png`` (none with ``out_dir=None``).

    ``overrides`` are Hydra overrides of every cell (part of its key); ``device`` and ``data_root`` set
    ``train.device`` and ``dataset.root``. Every cell is composed and checked before the first one trains; a
    cell that could not start leaves nothing behind. With ``train.concurrent_seeds`` every label count x seed
    trains in stacked steps. ``command`` is recorded in the plans and the table (default: this call).
    """
    labels = sorted(set(labels or PUBLISHED.get(dataset, {})))
    if not labels:
        raise ConfigError(f"{dataset} has no published label counts; pass --labels, e.g. --labels 20,50,100")
    _check_out_dir(out_dir)
    for word in overrides:
        if word.split("=", 1)[0].lstrip("+~") in TABLE_SETS:
            raise ConfigError(f"{word}: the table sets this; use --dataset and --labels")
    command = command or (f"ssgan.make_table({dataset!r}, labels={labels}, seeds={seeds}, method={method!r}, "
                          f"overrides={list(overrides)})")
    base = [f"dataset={dataset}"] + ([f"method={method}"] if method else []) + list(overrides)
    base += [f"train.device={device}"] if device else []
    base += [f"dataset.root={data_root}"] if data_root else []
    cells = [resolve_paths(compose([*base, f"dataset.labels={n}"])) for n in labels]
    check_seeds(cells[0].seed, seeds)
    cell_dirs = [cell_directory(Path(cache_dir), cfg) for cfg in cells]
    progress = progress or Progress()
    how_to_continue = "the same ssgan table command (finished seeds are kept)"
    with StopSignals():  # a signal between the cells or seeds: what is under way finishes first
        rows = _train_cells(cells, cell_dirs, seeds, command, progress, how_to_continue)
        return Table(dataset, rows, _write_table(out_dir, dataset, rows, command))


def _train_cells(cells: List[Config], cell_dirs: List[Path], seeds: int, command: str, progress: Progress,
                 how_to_continue: str) -> List[SeedsResult]:
    """make_table's seeds runs, one per cell (every cell's seeds stacked with ``train.concurrent_seeds``)."""
    try:
        with removed_on_failure(runs=cell_dirs):  # (a cell's plan goes with it if no seed started)
            data, trained = None, None
            if cells[0].train.concurrent_seeds:  # every label count x seed of the table in stacked steps
                data = load_data(cells[0].dataset, cells[0].seed)
                grid = [prepare_cell(cfg, check_seeds(cfg.seed, seeds), cell_dir, command=command, data=data)
                        for cfg, cell_dir in zip(cells, cell_dirs)]
                trained = train_together(grid, data, how_to_continue)
            rows = []
            for cfg, cell_dir in zip(cells, cell_dirs):
                cell_seeds = check_seeds(cfg.seed, seeds)
                progress.cell(cfg, cell_seeds, cell_dir)
                rows.append(fit_seeds(cfg, cell_seeds, cell_dir, command=command, progress=progress, data=data,
                                      trained=trained))
    except TrainingInterrupted as stop:
        raise stop.resume_with(how_to_continue) from None
    return rows


def _write_table(out_dir: Optional[Path | str], dataset: str, rows: List[SeedsResult], command: str) -> List[Path]:
    """``reports.write_table`` (nothing with ``out_dir=None``), SIGINT / SIGTERM held until every file of the
    table is written (also one received before, by an enclosing guard); then TrainingInterrupted."""
    with StopSignals() as signals:
        files = [] if out_dir is None else write_table(Path(out_dir), dataset, rows, command)
    if signals.signum is not None:
        raise TrainingInterrupted(None, signals.signum, None,
                                  after=f"the table {files[0].with_suffix('')}.* was written" if files
                                  else "the table's seeds were trained")
    return files


def collect_table(paths: Sequence[Path | str], *, dataset: Optional[str] = None,
                  labels: Optional[Sequence[int]] = None, device: str = "auto", data_root: Optional[str] = None,
                  out_dir: Optional[Path | str] = TABLE_DIR, command: Optional[str] = None,
                  networks: Optional[Sequence] = None) -> Table:
    """The table of finished runs (run directories or folders of them, e.g. a multirun's sweep directory),
    trained elsewhere: one row per config, their test probabilities recomputed on ``device``; ``data_root``
    is where the test images are (default: each run's ``dataset.root``); ``networks``: those of runs of one's
    own networks (``checkpoint.load_run``)."""
    _check_out_dir(out_dir)
    records = find_runs(paths)
    found = records[0].dataset
    if dataset is not None and dataset != found:
        raise ConfigError(f"--dataset {dataset}: the runs in --from are of {found}")
    if labels:
        records = [r for r in records if r.labels in labels]
        if not records:
            raise RunDirError(f"no runs of {','.join(map(str, labels))} labels in --from")
    rows = group_rows(records, resolve_device(device), data_root, networks)
    command = command or f"ssgan.collect_table({[str(p) for p in paths]})"
    return Table(found, rows, _write_table(out_dir, found, rows, command))


def _check_out_dir(out_dir: Optional[Path | str]) -> None:
    """Before anything trains: the table's folder must be a folder (it is created when the table is written)."""
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise RunDirError(f"--out-dir {out_dir} is a file")
