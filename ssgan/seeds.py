"""Seed runs: one config trained with seeds s .. s+K-1 (``ssgan fit --seeds K``, the cells of ``ssgan table``).

A seeds run is a folder ``DIR/`` holding ``seeds.json`` (the plan: config, seeds, command; written before the
first seed starts, so that a run stopped at any point can be continued) and one run directory per seed,
``DIR/seed<N>/``, each written by ``train.fit`` (or, with ``train.concurrent_seeds``, by
``train.fit_grid`` for the seeds that train together). ``train_seeds`` yields each seed's
outcome; the summary over the seeds (mean +- std, ensemble) is ``reports``' business.

The *cache key* of a config is a hash of it without the seed and the bookkeeping fields (``NOT_IN_KEY``):
a table keeps each cell in ``CACHE/<dataset>/<key>/``, so that a rerun trains only the seeds that have not
finished. Every error is that of a run's final Polyak-averaged discriminator (docs/method.md sec. 5).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .checkpoint import load_checkpoint, load_run, recover_group_checkpoints
from .concurrent import check_supported
from .config import Config, ConfigError, config_from_dict, fields_with, resolve_device
from .data import DataError, ImageData, load_data
from .evaluate import predict_proba
from .records import RunRecord, SeedsPlan
from .rundir import (CHECKPOINT_NAME, PLAN_NAME, RESULT_NAME, RunDirError, RunLock, clear_outputs, is_used,
                     remove_unstarted)
from .train import TrainingInterrupted, fit, fit_grid
from .trust import UntrustedError, check_stored, stored_config

logger = logging.getLogger(__name__)

NOT_IN_KEY = frozenset(fields_with("keyed", False))  # the schema's execution, reporting and identity fields


# ------------------------------------------------------------------------------------------------ keys

def in_key(name: str) -> bool:
    """Whether a config field (dotted name, e.g. ``train.device``) is part of a cell's key: its role in the
    schema (``config.fields_with``). Where a run lives, how it executes (device, seeds one after another or
    stacked, how many at once) and how it reports are left out, so that moving the data or switching the
    progress bar off retrains nothing, and a table can be continued on another machine or another way."""
    return name not in NOT_IN_KEY


def config_key(config: Dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of a resolved config (nested dicts as ``dataclasses.asdict`` gives)
    without the fields that are not keyed (``in_key``), serialised as JSON with sorted keys."""
    text = json.dumps(keyed_fields(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def keyed_fields(config: Dict[str, Any]) -> Dict[str, Any]:
    """The config as the current schema reads it (a field added since a run was trained gets its default),
    without the fields that are not keyed (``in_key``): what ``config_key`` hashes."""
    try:
        check_stored(config, "config")  # a record's config is data: an interpolation in it is never resolved
        config = asdict(config_from_dict(config))
    except ConfigError:  # a field this version no longer knows (or not plain values): keep the config as it is
        pass
    return _keyed(json.loads(json.dumps(config)), "")  # (through JSON: plain values only)


def _keyed(node: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    return {name: _keyed(value, f"{prefix}{name}.") if isinstance(value, dict) else value
            for name, value in node.items() if in_key(prefix + name)}


def config_differences(a: Dict[str, Any], b: Dict[str, Any], prefix: str = "") -> List[str]:
    """The dotted names of the fields in which two configs differ."""
    names = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            names += config_differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            names.append(f"{prefix}{key}")
    return names


def cell_directory(cache_dir: Path, cfg: Config) -> Path:
    """``cache_dir/<dataset>/<key>``, the seeds run of a table cell. A cell written under another key whose
    stored config now gives the same key (a field added to the schema since, defaulting to the old behaviour)
    is found and reused, so that no finished seed is trained again."""
    key = config_key(asdict(cfg))
    root = Path(cache_dir) / cfg.dataset.name
    if not (root / key).exists() and root.is_dir():
        for plan in sorted(root.glob(f"*/{PLAN_NAME}")):
            try:
                stored = SeedsPlan.read(plan.parent).config
            except RunDirError:
                continue
            if config_key(stored) == key:
                return plan.parent
    return root / key


# ------------------------------------------------------------------------------------------------ plan

def is_seeds_run(path: Path) -> bool:
    return (Path(path) / PLAN_NAME).is_file()


def read_plan(run_dir: Path) -> Tuple[Config, List[int], str]:
    """The config, seeds and command of a seeds run (to continue it), from its ``seeds.json``."""
    plan = SeedsPlan.read(run_dir)
    try:
        return stored_config(plan.config, Path(run_dir) / PLAN_NAME), plan.seeds, plan.command
    except UntrustedError:
        raise
    except ConfigError as error:
        raise RunDirError(f"{Path(run_dir) / PLAN_NAME}: not a seeds plan (ConfigError: {error})") from None


# ------------------------------------------------------------------------------------------- training

@dataclass
class SeedOutcome:
    """A finished seed: its run's record, its class probabilities on the test set (N, K) and how it came
    about (trained now, continued, trained concurrently, or finished before)."""

    record: RunRecord
    probs: np.ndarray
    y_test: np.ndarray
    how: str
    class_names: Optional[List[str]] = None

    @property
    def seed(self) -> int:
        return self.record.seed


@dataclass
class Cell:
    """A seeds run to train: its config (its data's number of classes set), seeds and folder."""

    cfg: Config
    seeds: List[int]
    out_dir: Path

    @property
    def key(self) -> str:
        return config_key(asdict(self.cfg))


def prepare_cell(cfg: Config, seeds: Sequence[int], out_dir: Path, *, command: str, data: ImageData,
                 fresh: bool = False) -> Cell:
    """A seeds run about to train: with ``fresh`` (``--overwrite``) its old outputs are cleared first, so that
    no old result stands beside a new checkpoint; its plan ``seeds.json`` is written before anything trains."""
    cfg = replace(cfg, dataset=replace(cfg.dataset, n_classes=data.n_classes), run_dir=str(out_dir))
    if cfg.train.concurrent_seeds:
        check_supported(cfg)
    if fresh:
        clear_outputs(out_dir)
    SeedsPlan(asdict(cfg), list(seeds), command).write(out_dir)
    return Cell(cfg, list(seeds), Path(out_dir))


def train_seeds(cfg: Config, seeds: Sequence[int], out_dir: Path, *, command: str, fresh: bool = False,
                data: Optional[ImageData] = None, trained: Optional[Dict[Path, Any]] = None) -> Iterator[SeedOutcome]:
    """Train ``cfg`` with each of ``seeds`` into ``out_dir/seed<N>/``; yield each seed's outcome.

    A seed whose ``result.json`` exists is not trained again (unless ``fresh``, which first clears the old
    outputs); one with a checkpoint but no result continues from it exactly. With ``train.concurrent_seeds``
    the seeds that start at the same position (not started, or checkpointed together) train together
    (``train_together``), which also makes an interrupted concurrent run continue exactly as it would have
    gone on; ``trained`` holds results that a table already trained together, by seed directory. A seed that
    another process is training (its run directory's lock is held) is left for last and then waited for, so
    two processes on one seeds run share the work. Raises TrainingDiverged or TrainingInterrupted (naming
    ``out_dir`` to resume) from the training.
    """
    data = data if data is not None else load_data(cfg.dataset, seeds[0])  # one test split for every seed
    cell = prepare_cell(cfg, seeds, out_dir, command=command, data=data, fresh=fresh)
    if trained is None:
        trained = train_together([cell], data, f"ssgan fit --resume {out_dir}") if cell.cfg.train.concurrent_seeds \
            else {}
    waiting = []
    for seed in seeds:
        lock = RunLock(out_dir / f"seed{seed}")
        if not lock.acquire(wait=False):
            logger.info(f"seed {seed}: another process is training it ({lock.holder()}); coming back to it after "
                        f"the other seeds")
            waiting.append(seed)
            continue
        try:
            yield _seed_outcome(cell, seed, data=data, trained=trained)
        finally:
            lock.release()
    for seed in waiting:
        lock = RunLock(out_dir / f"seed{seed}")
        lock.acquire(wait=True)
        try:
            yield _seed_outcome(cell, seed, data=data, trained=trained, finished_how="finished by another process")
        finally:
            lock.release()


def _seed_outcome(cell: Cell, seed: int, *, data: ImageData, trained: Dict[Path, Any],
                  finished_how: str = "finished before, not trained again") -> SeedOutcome:
    """One seed's outcome, its lock held: read if finished, else trained (or continued from its checkpoint)."""
    cfg, seed_dir = cell.cfg, cell.out_dir / f"seed{seed}"
    seed_data = data if cfg.dataset.val_size == 0 else load_data(cfg.dataset, seed)  # val split: per seed
    batch = cfg.train.eval_batch_size
    if seed_dir in trained:
        probs = _probs(trained[seed_dir], seed_data, batch, cfg.train.tf32)
        return SeedOutcome(RunRecord.read(seed_dir), probs, seed_data.y_test, "trained concurrently", seed_data.class_names)
    if (seed_dir / RESULT_NAME).is_file():
        _check_key(seed_dir, cfg, cell.key)
        run = load_run(seed_dir, resolve_device(cfg.train.device))
        probs = predict_proba(run.discriminator, seed_data.x_test, batch, tf32=run.config.train.tf32)
        return SeedOutcome(RunRecord.read(seed_dir), probs, seed_data.y_test, finished_how, seed_data.class_names)
    recover_group_checkpoints([seed_dir])  # a commit of seeds once trained together, cut by a kill
    resume = _resume_payload(seed_dir, cell.key)  # read when its turn comes: one checkpoint in memory
    result = _train_one(replace(cfg, seed=seed, run_dir=str(seed_dir)), seed_dir, resume=resume, data=seed_data,
                        out_dir=cell.out_dir)
    probs = _probs(result, seed_data, batch, cfg.train.tf32)
    return SeedOutcome(RunRecord.read(seed_dir), probs, seed_data.y_test,
                       "continued from its checkpoint" if resume is not None else "trained", seed_data.class_names)


def _probs(result: Any, data: ImageData, batch_size: int, tf32: bool) -> np.ndarray:
    """A trained seed's test probabilities: those its training computed, else computed here."""
    if result.test_probs is not None:
        return result.test_probs
    return predict_proba(result.discriminator, data.x_test, batch_size, tf32=tf32)


def train_together(cells: Sequence[Cell], data: ImageData, how_to_continue: str) -> Dict[Path, Any]:
    """With ``train.concurrent_seeds``: the unfinished seeds of every cell (a table's label counts x seeds, or
    one seeds run) that start at the same position train together, at most ``train.max_concurrent`` models
    at a time (``concurrent.fit_grid``), their locks held (waiting for another process that holds one).
    Returns the FitResults by seed directory; a lone seed is left to the one-at-a-time path."""
    pending = [(cell, seed) for cell in cells for seed in cell.seeds
               if not (cell.out_dir / f"seed{seed}" / RESULT_NAME).is_file()]
    trained: Dict[Path, Any] = {}
    with contextlib.ExitStack() as held:
        for cell, seed in pending:
            lock = RunLock(cell.out_dir / f"seed{seed}")
            lock.acquire(wait=True)
            held.callback(lock.release)
        pending = [(c, s) for c, s in pending if not (c.out_dir / f"seed{s}" / RESULT_NAME).is_file()]
        recover_group_checkpoints([c.out_dir / f"seed{s}" for c, s in pending])  # one position per cut group
        groups: Dict[Tuple[int, int], List[Tuple[Cell, int]]] = {}
        for cell, seed in pending:  # only the positions are kept: a chunk's checkpoints are read when it trains
            payload = _resume_payload(cell.out_dir / f"seed{seed}", cell.key)
            position = (0, 0) if payload is None else (int(payload["epoch"]), int(payload["iteration"]))
            groups.setdefault(position, []).append((cell, seed))
        bound = cells[0].cfg.train.max_concurrent or len(pending)
        for group in groups.values():
            for start in range(0, len(group), bound):
                chunk = group[start:start + bound]
                if len(chunk) < 2:
                    continue
                run_dirs = [c.out_dir / f"seed{s}" for c, s in chunk]
                resumes = [_resume_payload(run_dir, c.key) for (c, _), run_dir in zip(chunk, run_dirs)]
                for run_dir, payload in zip(run_dirs, resumes):
                    if payload is not None:
                        logger.info(f"{run_dir}: continuing from its checkpoint at epoch {int(payload['epoch'])}")
                try:
                    results = fit_grid([replace(c.cfg, seed=s) for c, s in chunk], data, run_dirs, resumes)
                except TrainingInterrupted as stop:
                    raise stop.resume_with(how_to_continue) from None
                trained.update(zip(run_dirs, results))
    return trained


def _resume_payload(seed_dir: Path, key: str) -> Optional[Dict]:
    """The checkpoint of an unfinished seed, if it has one (and belongs to this config)."""
    if (seed_dir / RESULT_NAME).is_file() or not (seed_dir / CHECKPOINT_NAME).is_file():
        return None
    payload = load_checkpoint(seed_dir / CHECKPOINT_NAME)
    if config_key(payload["config"]) != key:
        raise RunDirError(f"{seed_dir}/{CHECKPOINT_NAME} belongs to another config; move it away to train "
                          f"this seed again")
    return payload


def _check_key(seed_dir: Path, cfg: Config, key: str) -> None:
    record = RunRecord.read(seed_dir)
    if config_key(record.config) != key:
        fields = config_differences(keyed_fields(asdict(cfg)), keyed_fields(record.config))
        raise RunDirError(f"{seed_dir} was trained with another config (it differs in {', '.join(fields)}); "
                          f"move it away to train seed {record.seed} again")


def _train_one(cfg: Config, seed_dir: Path, *, resume: Optional[Dict], data: ImageData, out_dir: Path):
    """One seed with ``train.fit``; a seed that could not start leaves nothing behind."""
    if resume is not None:
        logger.info(f"seed {cfg.seed}: continuing from its checkpoint at epoch {int(resume['epoch'])} ({seed_dir})")
    created = not is_used(seed_dir)  # (its lock file aside)
    try:
        return fit(cfg, data=data, run_dir=seed_dir, resume=resume)
    except (ConfigError, DataError, RunDirError):
        if created:
            remove_unstarted(seed_dir)
        raise
    except TrainingInterrupted as stop:
        raise stop.resume_with(f"ssgan fit --resume {out_dir}") from None
