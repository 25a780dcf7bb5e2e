"""Command line: ``ssgan fit | evaluate | predict | sample | table | ensemble``.

``ssgan fit`` is a real Hydra application: its flags are rewritten into Hydra overrides
(``--dataset cifar10`` -> ``dataset=cifar10``, ``--labels 4000`` -> ``dataset.labels=4000``) before Hydra parses
them, so ``-m`` multirun and Hydra's launcher plugins work. The overrides are composed and checked once
(``config.compose``) before Hydra starts, so that a mistyped key or an impossible value gives one clear line
and exit code 2, and no run directory is created for it.

Exit codes are decided in one place, ``main``: 0 success, 2 bad input (``UsageError``, ``ConfigError``,
``DataError``, ``RunDirError``: one line, no traceback), 3 divergence (``TrainingDiverged``), 128 + N when
stopped by signal N (``TrainingInterrupted``).
"""

from __future__ import annotations

import argparse
import io
import csv
import itertools
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import hydra
import numpy as np
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import __version__, quality
from .config import (DATASETS, MAX_SEED, METHODS, PRIMARY_CONFIGS, Config, ConfigError, compose, first_line,
                     register_configs, resolve_device, resolve_paths, to_config, validate)
from .data import DataError, load_data, read_inputs
from .evaluate import (class_report, discriminator_classifier, error_rate, inception_classifier, inception_weights_path,
                       predict_proba, sample_grid_png, sample_score)
from .export import FORMATS, export_run
from .reports import (PUBLISHED, STD_KIND, SeedsResult, aggregate, group_rows, probs_on_test_set, run_seeds,
                      write_table)
from .rundir import (CHECKPOINT_NAME, RESULT_NAME, RunDirError, atomic_create, check_free, check_new_file, checkpoint_config, clear_outputs,
                     default_name, default_sweep_name, find_runs, is_used, load_checkpoint, load_run, locked, make_dir,
                     remove_unstarted, write_overrides)
from .seeds import NOT_IN_KEY, cell_directory, is_seeds_run, prepare_cell, read_plan, train_together
from .config import RESUMABLE_FIELDS as RESUME_OVERRIDABLE
from .train import TrainingDiverged, TrainingInterrupted, fit

PROG = "ssgan"
COMMANDS = {
    "fit": "train a semi-supervised GAN; the averaged discriminator is the classifier",
    "evaluate": "recompute the test error of a trained run from its checkpoint",
    "predict": "predict the classes of image files, folders or an .npz with a trained run",
    "sample": "write a grid of generator samples; --score: Inception Score (or the discriminator's score)",
    "table": "train the seeds x labels grid of a data set (resuming) and write results/<dataset>.md, .json, .png",
    "ensemble": "evaluate trained runs together: each one's test error, mean +- std and the ensemble's error",
    "export": "write a run's classifier (input scaling and softmax inside) as an ONNX or TorchScript file",
    "density": "train Bad GAN's PixelCNN++ density model on a data set's unlabeled images (method.density_model)",
}


class UsageError(Exception):
    """Bad input on the command line: one line on stderr, exit code 2."""


BAD_INPUT = (UsageError, ConfigError, DataError, RunDirError)


class _Passthrough(BaseException):
    """Carries an exception of the Hydra task past Hydra (which reports any Exception as a traceback and
    exit code 1) to ``main``, which decides the exit code."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


# ------------------------------------------------------------------------------------------------ fit

FIT_FLAGS = {"dataset": "dataset", "method": "method", "labels": "dataset.labels", "seed": "seed",
             "device": "train.device", "epochs": "train.epochs", "run_dir": "run_dir"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (UsageError -> exit code 2), not usage text plus a line."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


def _fit_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"{PROG} fit", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a semi-supervised GAN (Salimans et al. 2016; Wei et al. 2018). Extra KEY=VALUE "
                    "words are Hydra overrides of configs/ (e.g. train.lr=1e-4 method.ct_weight=0.5).",
        epilog=f"data sets: {', '.join(DATASETS)} (default digits: scikit-learn's 8x8 digits, no download)\n"
               f"methods:   {', '.join(METHODS)} (default improved_gan)\n"
               "sources:   dataset.source=torchvision|folder|npz, dataset.root=DIR, dataset.path=PATH, "
               "dataset.download=true\n"
               "examples:  ssgan fit\n"
               "           ssgan fit --dataset mnist --labels 100 dataset.root=data\n"
               "           ssgan fit --dataset cifar10 --labels 4000 --method ct_gan\n"
               "           ssgan fit -m seed=0,1,2   (a Hydra multirun)\n"
               "           ssgan fit --seeds 10      (seeds 0-9 in one run directory; mean +- std, ensemble)\n"
               "           ssgan fit -m seed=0,1 dataset.labels=20,50 hydra/launcher=local   (parallel jobs)\n"
               "           ssgan fit --cfg job --dataset cifar10   (print the composed config)\n"
               f"config groups (GROUP=OPTION; recipe/ is picked for dataset + method by itself):\n{_config_groups()}")
    parser.add_argument("--dataset", choices=DATASETS, help="data set and its published recipe")
    parser.add_argument("--labels", type=int, help="number of labeled examples (balanced over classes)")
    parser.add_argument("--method", choices=METHODS, help=", ".join(METHODS))
    parser.add_argument("--seed", type=int, help="seed of the labeled subset, initialisation and data order")
    parser.add_argument("--seeds", type=int, metavar="K", help="train seeds seed .. seed+K-1 (one after another, "
                        "or together with train.concurrent_seeds=true) into one run directory (a sub-directory per seed, summary.json, summary.md); prints "
                        "each seed's test error, the ensemble's, then the mean +- sample std as the last line")
    parser.add_argument("--device", help="auto, cpu or cuda")
    parser.add_argument("--epochs", type=int, help="shorthand for train.epochs=N")
    parser.add_argument("--run-dir", dest="run_dir", help="run directory (default runs/<name>-<timestamp>)")
    parser.add_argument("--overwrite", action="store_true", help="allow reusing an existing run directory")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint "
                        "(KEY=VALUE words then change its saved config, e.g. train.epochs=600)")
    parser.add_argument("-m", "--multirun", action="store_true", help="Hydra multirun over sweeps (a=1,2)")
    hydra_flags = parser.add_argument_group("Hydra's own flags (as in any Hydra app)")
    hydra_flags.add_argument("--cfg", "-c", choices=["job", "hydra", "all"], help="print the config instead of "
                             "running [job|hydra|all]")
    hydra_flags.add_argument("--resolve", action="store_true", help="with --cfg: resolve interpolations")
    hydra_flags.add_argument("--package", "-p", help="with --cfg: the config package to print")
    hydra_flags.add_argument("--info", "-i", nargs="?", const="all", choices=HYDRA_INFO,
                             help=f"print Hydra information [{'|'.join(HYDRA_INFO)}]")
    hydra_flags.add_argument("--hydra-help", action="store_true", help="Hydra's help")
    hydra_flags.add_argument("--version", action="store_true", help="print the versions of ssgan and Hydra")
    hydra_flags.add_argument("--shell-completion", "-sc", action="store_true", help="with install=bash (or "
                             "zsh, fish) or uninstall=bash: shell completion, e.g. "
                             "eval \"$(ssgan fit -sc install=bash)\"")
    hydra_flags.add_argument("--config-path", "-cp", help="a config folder replacing ssgan's (absolute, or "
                             "pkg://package.path)")
    hydra_flags.add_argument("--config-name", "-cn", help="the root config (default: config)")
    hydra_flags.add_argument("--config-dir", "-cd", help="a folder of configs searched before ssgan's (e.g. "
                             "your own dataset/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides")
    return parser


HYDRA_INFO = ["all", "config", "defaults", "defaults-tree", "plugins", "searchpath"]


def _config_groups() -> str:
    """The config groups of the packaged configs/ and their options, for ``ssgan fit --help``."""
    root = Path(__file__).resolve().parent / "configs"
    if not root.is_dir():  # an editable install maps ssgan.configs to the repository's configs/
        import ssgan.configs

        root = Path(ssgan.configs.__file__).parent
    lines = []
    for group in sorted(p for p in root.rglob("*") if p.is_dir() and any(p.glob("*.yaml"))):
        options = ", ".join(sorted(f.stem for f in group.glob("*.yaml")))
        lines.append(f"  {group.relative_to(root).as_posix() + ':':<18}{options}")
    return "\n".join(lines)


def fit_overrides(args: argparse.Namespace) -> List[str]:
    """Rewrite the flags into Hydra overrides; the explicit KEY=VALUE words come last and win."""
    overrides = [f"{key}={_quote(str(getattr(args, flag)))}" for flag, key in FIT_FLAGS.items()
                 if getattr(args, flag) is not None]
    if args.overwrite:
        overrides.append("overwrite=true")
    for word in args.overrides:
        if "=" not in word:
            raise UsageError(f"unexpected argument {word!r}: overrides have the form KEY=VALUE")
    return overrides + list(args.overrides)


def _quote(value: str) -> str:
    """A flag's value as a Hydra override value: quoted (and escaped) unless it is a plain word, so that paths
    with spaces or other characters pass as they were typed."""
    if re.fullmatch(r"[\w./:@+-]*", value, re.ASCII):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _check_out(out: Optional[str], suffix: str) -> None:
    """An ``--out`` file: new (never overwritten), in an existing folder, with the expected extension."""
    if out is not None:
        check_new_file(out, suffix)


def _check_seeds(first: int, n_seeds: int) -> None:
    if n_seeds < 1:
        raise UsageError(f"--seeds {n_seeds}: the number of seeds must be at least 1")
    if first + n_seeds > MAX_SEED:
        raise UsageError(f"--seeds {n_seeds} from seed {first}: seeds must stay below {MAX_SEED}")


def _expand_sweeps(overrides: Sequence[str]) -> List[List[str]]:
    """Every combination of a multirun's sweep values, each as a plain override list."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as error:
        raise UsageError(first_line(error)) from None
    choices = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([f"{key}={override.get_value_element_as_str()}"])
    return [list(combo) for combo in itertools.product(*choices)]


def job_device(device: str, job_num: Optional[int], n_gpus: int) -> str:
    """``train.device=auto`` in a multirun job on a machine with several GPUs: GPU (job number mod GPUs), so
    that a joblib launcher with ``n_jobs`` = the number of GPUs spreads the jobs over them. Else unchanged."""
    if device != "auto" or job_num is None or n_gpus < 2:
        return device
    return f"cuda:{job_num % n_gpus}"


def _fit_task(dict_cfg, n_seeds: Optional[int] = None) -> float:
    """The Hydra task: one training run into Hydra's output directory, or with ``n_seeds`` (``--seeds K``)
    K seeds into sub-directories of it. Errors travel to ``main`` past Hydra (``_Passthrough``)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)  # however it was named: run_dir=, hydra.run.dir=, a sweep
    created = not is_used(run_dir)
    try:
        # Checked in full before Hydra started (compose), and again by train.fit: here only converted.
        cfg = resolve_paths(to_config(dict_cfg, check_values=False))
        check_free(run_dir, cfg.overwrite)  # a finished run is never overwritten silently
        with locked(run_dir):  # one process at a time, from the clearing of --overwrite on
            if cfg.overwrite:
                clear_outputs(run_dir)
            cfg.run_dir = str(run_dir)
            multirun = hydra_cfg.mode == RunMode.MULTIRUN
            cfg.train.device = job_device(cfg.train.device, hydra_cfg.job.num if multirun else None,
                                          torch.cuda.device_count())
            write_overrides(run_dir, hydra_cfg.overrides.task)
            if n_seeds is not None:  # (already cleared above: no second clearing by the seeds run)
                command = shlex.join([PROG, "fit", "--seeds", str(n_seeds), *hydra_cfg.overrides.task])
                return _train_and_print(cfg, list(range(cfg.seed, cfg.seed + n_seeds)), run_dir, command).mean
            return _fit_and_print(cfg, run_dir).test_error
    except (*BAD_INPUT, KeyboardInterrupt) as error:
        if created:
            remove_unstarted(run_dir)  # bad input or Ctrl-C at start-up: no trace left
        if isinstance(error, KeyboardInterrupt):
            raise
        raise _Passthrough(error) from None
    except (TrainingDiverged, TrainingInterrupted) as error:
        raise _Passthrough(error) from None


def _fit_and_print(cfg: Config, run_dir: Path, resume=None):
    """``train.fit`` into ``run_dir``; the last line printed is the test error of the averaged weights."""
    result = fit(cfg, run_dir=run_dir, resume=resume)
    print(f"run directory: {run_dir}")
    if result.val_error is not None:
        print(f"validation error: {result.val_error:.2f} %")
    if math.isfinite(result.test_error):
        print(f"test error: {result.test_error:.2f} %")
    else:
        print("test error: none (the data set has no test images)")
    return result


def _train_and_print(cfg: Config, seeds: Sequence[int], run_dir: Path, command: str, fresh: bool = False,
                     data=None, trained=None) -> SeedsResult:
    """Train the seeds (``reports.run_seeds``) and print, after one line per seed, the ensemble's test error
    and, as the last line, the mean +- sample std of the seeds' test errors."""
    for outcome, summary in run_seeds(cfg, seeds, run_dir, command, fresh=fresh, data=data, trained=trained):
        how = "" if outcome.how in ("trained", "continued from its checkpoint") else f"; {outcome.how}"
        print(f"seed {outcome.seed}: test error {outcome.record.test_error:.2f} % ({outcome.record.path}{how})")
    print(f"run directory: {run_dir}")
    print(f"ensemble test error: {summary.ensemble_error:.2f} % ({len(summary.runs)} models: mean of their class "
          f"probabilities, then argmax)")
    if summary.std is None:
        print(f"test error: {summary.mean:.2f} % over 1 seed (no std)")
    else:
        print(f"test error: {summary.mean:.2f} +- {summary.std:.2f} % over {len(summary.runs)} seeds (sample std)")
    return summary


def cmd_resume(run_dir: str, overrides: Sequence[str]) -> int:
    """Continue a run from its checkpoint, exactly where it was written; KEY=VALUE words change its config.
    A seeds run continues with its saved config: finished seeds are kept, the others trained or continued."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UsageError(f"--resume {run_dir}: no such run directory")
    if is_seeds_run(path):
        cfg, seeds, command = read_plan(path)
        # only what leaves every seed's config key as it is (how the seeds run and report), so that finished
        # seeds stay valid and unfinished ones continue exactly
        allowed = tuple(k for k in RESUME_OVERRIDABLE if k in NOT_IN_KEY)
        cfg = _resume_overrides(cfg, overrides, allowed, f"{run_dir} is a run of several seeds: its seeds")
        validate(cfg)
        _train_and_print(cfg, seeds, path, command)
        return 0
    payload = load_checkpoint(path / CHECKPOINT_NAME)
    cfg = checkpoint_config(payload, path / CHECKPOINT_NAME)
    cfg = _resume_overrides(cfg, overrides, RESUME_OVERRIDABLE, "the checkpoint")
    cfg = resolve_paths(cfg)
    validate(cfg)
    finished = payload["epoch"] >= cfg.train.epochs and not payload["iteration"]
    if finished and (path / RESULT_NAME).is_file():
        raise UsageError(f"{run_dir} already finished its {cfg.train.epochs} epochs; pass train.epochs=N "
                         f"to train on")
    # (finished without result.json: a kill during the final writes; the resume writes them)
    _fit_and_print(cfg, path, resume=payload)
    return 0


def _resume_overrides(cfg: Config, overrides: Sequence[str], allowed: Sequence[str], what: str) -> Config:
    """``cfg`` with the KEY=VALUE words of ``--resume``, each of ``allowed``; one line otherwise."""
    if not overrides:
        return cfg
    fixed = sorted({o.split("=", 1)[0].lstrip("+~") for o in overrides} - set(allowed))
    if fixed:
        raise UsageError(f"--resume cannot change {', '.join(fixed)}: {what} trained with its own "
                         f"(allowed: {', '.join(allowed)})")
    try:
        # Hydra's parser, as for ssgan fit: values such as off stay strings (a YAML dotlist reads False)
        merged = OmegaConf.structured(cfg)
        for override in OverridesParser.create().parse_overrides(list(overrides)):
            OmegaConf.update(merged, override.key_or_group, override.value(), merge=True)
        return OmegaConf.to_object(merged)
    except Exception as error:  # OmegaConf's validation errors
        raise UsageError(first_line(error)) from None


def _run_hydra(overrides: List[str], multirun: bool, n_seeds: Optional[int] = None,
               hydra_flags: Sequence[str] = ()) -> None:
    """Run ``ssgan fit`` as the Hydra app it is, with Hydra's own flags passed on. Hydra's errors come back as
    exceptions (HYDRA_FULL_ERROR), for ``main`` to report in one line."""
    def fit_seeds_task(dict_cfg) -> float:
        return _fit_task(dict_cfg, n_seeds)

    register_configs()
    GlobalHydra.instance().clear()
    task = hydra.main(config_path=PRIMARY_CONFIGS, config_name="config", version_base=None)(
        _fit_task if n_seeds is None else fit_seeds_task)
    saved, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    root = logging.getLogger()
    saved_logging = list(root.handlers), root.level  # --info adds a handler to the root logger: undone below
    sys.argv = [PROG, *(["--multirun"] if multirun else []), *hydra_flags, *overrides]  # PROG: completion
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        task()
    finally:
        root.handlers[:] = saved_logging[0]
        root.setLevel(saved_logging[1])
        sys.argv = saved
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
        GlobalHydra.instance().clear()


def _hydra_flags(args: argparse.Namespace) -> List[str]:
    """Hydra's own flags of the command line, to pass on (config folders made absolute: Hydra would read a
    relative -cp against ssgan's package, the user means the working directory)."""
    flags: List[str] = []
    if args.config_path:
        path = args.config_path
        flags += ["-cp", path if path.startswith("pkg://") else os.path.abspath(path)]
    if args.config_dir:
        flags += ["-cd", os.path.abspath(args.config_dir)]
    if args.config_name:
        flags += ["-cn", args.config_name]
    if args.cfg:
        flags += ["--cfg", args.cfg] + (["--resolve"] if args.resolve else []) + (
            ["--package", args.package] if args.package else [])
    if args.info:
        flags += ["--info", args.info]
    if args.hydra_help:
        flags.append("--hydra-help")
    if args.shell_completion:
        flags.append("--shell-completion")
    return flags


def _where(args: argparse.Namespace) -> dict:
    """compose()'s view of -cp / -cd / -cn, so that the checks before Hydra starts compose what Hydra will."""
    where = {}
    if args.config_path:
        where["config_path"] = (args.config_path if args.config_path.startswith("pkg://")
                                else os.path.abspath(args.config_path))
    if args.config_dir:
        where["config_dir"] = os.path.abspath(args.config_dir)
    if args.config_name:
        where["config_name"] = args.config_name
    return where


def _completion_line(line: str) -> str:
    """``ssgan fit --dataset mnist dataset.labels=1`` as Hydra's completion reads an app's line:
    ``ssgan dataset=mnist dataset.labels=1`` (the command word dropped, ssgan's flags as overrides)."""
    words = line.split()
    ending = " " if line.endswith(" ") else ""
    words = words[1:]
    if words and words[0] == "fit":
        words = words[1:]
    partial = [] if ending or not words else [words.pop()]
    try:
        args, _ = _fit_parser().parse_known_args(words)
        kept = fit_overrides(args)
    except (UsageError, SystemExit):
        kept = [w for w in words if "=" in w]
    return " ".join([PROG, *kept, *partial]) + ending


def cmd_fit(argv: Sequence[str]) -> int:
    args = _fit_parser().parse_intermixed_args(argv)  # KEY=VALUE words may come between flags
    if args.version:
        print(f"{PROG} {__version__} (Hydra {hydra.__version__})")
        return 0
    if args.seeds is not None and args.seeds < 1:
        raise UsageError(f"--seeds {args.seeds}: the number of seeds must be at least 1")
    hydra_flags = _hydra_flags(args)
    if args.resume:
        fixed = [f"--{flag.replace('_', '-')}" for flag in FIT_FLAGS if getattr(args, flag) is not None]
        fixed += ["--seeds"] if args.seeds is not None else []
        if fixed or args.multirun or args.overwrite or hydra_flags:
            raise UsageError(f"--resume continues a run with its saved config; drop "
                             f"{' '.join(fixed + hydra_flags) or '-m'} (KEY=VALUE overrides such as "
                             f"train.epochs=N are allowed)")
        return cmd_resume(args.resume, fit_overrides(args))
    if args.shell_completion or args.cfg or args.info or args.hydra_help:  # Hydra answers; nothing runs
        overrides = [o for o in args.overrides] if args.shell_completion else fit_overrides(args)
        if args.shell_completion and "COMP_LINE" in os.environ:
            os.environ["COMP_LINE"] = _completion_line(os.environ["COMP_LINE"])
        _run_hydra(overrides, args.multirun, hydra_flags=hydra_flags)
        return 0
    overrides = fit_overrides(args)
    if args.multirun:
        for combo in _expand_sweeps(overrides):
            compose(combo, **_where(args))
        if not any(o.startswith("hydra.sweep.dir=") for o in overrides):
            overrides.append(f"hydra.sweep.dir={_quote(default_sweep_name())}")
        sweep_dir = Path(next(o for o in overrides if o.startswith("hydra.sweep.dir=")).split("=", 1)[1].strip("'"))
        created = [p for p in (sweep_dir.absolute(), *sweep_dir.absolute().parents) if not p.exists()]
        try:
            _run_hydra(overrides, multirun=True, n_seeds=args.seeds, hydra_flags=hydra_flags)
        except BaseException as error:
            if created and not any(sweep_dir.glob(f"**/{RESULT_NAME}")):  # no job finished: leave no trace
                shutil.rmtree(sweep_dir, ignore_errors=True)
                for path in created[1:]:
                    if path.is_dir() and not any(path.iterdir()):
                        path.rmdir()
            if isinstance(error, Exception) and not isinstance(error, (HydraException, OmegaConfBaseException)) \
                    and os.environ.get("HYDRA_FULL_ERROR") != "1":  # a launcher that cannot start (SLURM's
                raise UsageError(f"the sweep could not be launched: {type(error).__name__}: "  # off a cluster)
                                 f"{first_line(error)} (HYDRA_FULL_ERROR=1 shows the traceback)") from None
            raise
        return 0
    cfg = compose(overrides, **_where(args))
    if args.seeds is not None:
        _check_seeds(cfg.seed, args.seeds)
    if args.run_dir is None and not any(o.startswith("run_dir=") for o in overrides):
        cfg.run_dir = default_name(cfg, args.seeds)
        overrides.append(f"run_dir={_quote(cfg.run_dir)}")
    check_free(cfg.run_dir, cfg.overwrite)
    run_dir = Path(cfg.run_dir).absolute()
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    try:
        make_dir(run_dir)  # here, so that a read-only or missing place is one line, before Hydra starts
        _run_hydra(overrides, multirun=False, n_seeds=args.seeds, hydra_flags=hydra_flags)
    except BaseException:
        for path in created:  # deepest first: leave nothing behind for a run that could not start
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise
    return 0


# ------------------------------------------------------------------------------------ evaluate, predict

def cmd_evaluate(argv: Sequence[str]) -> int:
    parser = _Parser(prog=f"{PROG} evaluate", description=COMMANDS["evaluate"])
    parser.add_argument("run_dir", help="a run directory written by ssgan fit")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    run = load_run(args.run_dir, resolve_device(args.device))
    data = load_data(run.config.dataset, run.config.seed)
    if len(data.y_test) == 0:
        raise DataError(f"{args.run_dir}: its data set has no test images to evaluate on")
    probs = predict_proba(run.discriminator, data.x_test, run.config.train.eval_batch_size,
                          tf32=run.config.train.tf32)
    report = class_report(probs, data.y_test, run.class_names)
    _print_report(report, "its")
    print(f"test error: {report['test_error']:.2f} %")
    return 0


def _print_report(report: dict, whose: str) -> None:
    """Per-class errors and the confusion matrix (rows: true class, columns: predicted), as text."""
    names = report["class_names"]
    errors = ", ".join(f"{name}: {error:.2f}" for name, error in report["per_class_error"].items())
    print(f"per-class test error (%), {whose} predictions: {errors}")
    width = max(5, *(len(str(n)) for n in names), *(len(str(c)) for row in report["confusion_matrix"] for c in row))
    print(f"confusion matrix (rows: true class, columns: predicted class):")
    print(" " * (width + 1) + " ".join(f"{str(n)[:width]:>{width}}" for n in names))
    for name, row in zip(names, report["confusion_matrix"]):
        print(f"{str(name)[:width]:>{width}} " + " ".join(f"{c:>{width}}" for c in row))


def cmd_predict(argv: Sequence[str]) -> int:
    parser = _Parser(prog=f"{PROG} predict", description=COMMANDS["predict"])
    parser.add_argument("run_dir", help="a run directory written by ssgan fit")
    parser.add_argument("inputs", nargs="+", help="image files, folders or .npz files")
    parser.add_argument("--proba", action="store_true", help="also print the class probabilities")
    parser.add_argument("--out", help="write a CSV file instead of printing")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.batch_size <= 0:
        raise UsageError(f"--batch-size={args.batch_size}: must be positive")
    _check_out(args.out, ".csv")
    run = load_run(args.run_dir, resolve_device(args.device))
    names, x = read_inputs(args.inputs, run.config.dataset)
    probs = predict_proba(run.discriminator, x, args.batch_size, tf32=run.config.train.tf32)
    header = ["input", "class"] + ([f"p_{c}" for c in run.class_names] if args.proba else [])
    rows = [[name, run.class_names[int(np.argmax(p))]] + ([f"{v:.6f}" for v in p] if args.proba else [])
            for name, p in zip(names, probs)]
    if args.out:
        out, table = Path(args.out), io.StringIO(newline="")
        csv.writer(table).writerows([header] + rows)
        atomic_create(out, table.getvalue())  # whole or not at all, never over another file
        print(f"wrote {len(rows)} predictions to {out}")
    else:  # tab-separated; a name holding a tab, a newline or a quote is quoted (csv), so rows stay rows
        csv.writer(sys.stdout, delimiter="\t", lineterminator="\n").writerows(rows)
    return 0


def cmd_sample(argv: Sequence[str]) -> int:
    """Generator samples as a PNG grid; with --score, the Inception Score exp(E_x KL(p(y|x) || p(y))) over
    --n-score samples in --splits splits (Salimans et al. 2016, sec. 4: 50,000 samples, 10 splits) and, with
    --fid, the Frechet Inception Distance to the training images (Heusel et al. 2017), through torch-fidelity's
    Inception-v3 when its weights are local (the quality extra); else, named as such, the run's own
    discriminator's classifier score."""
    parser = _Parser(prog=f"{PROG} sample", description=COMMANDS["sample"])
    parser.add_argument("run_dir", help="a run directory written by ssgan fit")
    parser.add_argument("--n", type=int, default=100, help="samples in the grid (default 100: 10 x 10)")
    parser.add_argument("--out", help="PNG file of the grid (default RUN_DIR/grid.png); never overwritten")
    parser.add_argument("--no-grid", action="store_true", help="write no grid (with --score)")
    parser.add_argument("--score", action="store_true", help="compute the Inception Score of the samples")
    parser.add_argument("--fid", action="store_true", help="with --score: also the FID to the run's training "
                        "images (needs the Inception weights)")
    parser.add_argument("--n-score", type=int, default=50000, help="samples scored (default 50000)")
    parser.add_argument("--splits", type=int, default=10, help="splits of the score's mean +- std (default 10)")
    parser.add_argument("--classifier", choices=("auto", "inception", "torchvision", "discriminator"),
                        default="auto", help="auto: torch-fidelity's Inception-v3 if the quality extra and its "
                        "weights are here, else the run's discriminator; torchvision: torchvision's ImageNet "
                        "Inception-v3 from the torch hub cache")
    parser.add_argument("--batch-size", type=int, help="generator batch (default: the run's train.batch_size)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise z")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    for name in ("n", "n_score", "splits", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be positive")
    if args.no_grid and not args.score:
        raise UsageError("--no-grid writes nothing without --score")
    if args.fid and not args.score:
        raise UsageError("--fid comes with --score")
    if args.score and args.splits > args.n_score:
        raise UsageError(f"--splits {args.splits}: more splits than the {args.n_score} samples scored")
    reason = quality.unavailable_reason()
    if reason is not None and (args.fid or args.classifier == "inception"):
        raise UsageError(f"{'--fid' if args.fid else '--classifier inception'} needs the Inception weights: "
                         f"{reason}")
    run_path = Path(args.run_dir)
    out = Path(args.out) if args.out else (run_path if run_path.is_dir() else run_path.parent) / "grid.png"
    if not args.no_grid:
        _check_out(str(out), ".png")
    device = resolve_device(args.device)
    run = load_run(run_path, device)
    batch_size = args.batch_size or run.config.train.batch_size
    noise = torch.Generator(device=device).manual_seed(args.seed)
    if not args.no_grid:
        grid = sample_grid_png(run.generator, run.config.dataset.scaling, args.n, batch_size, noise)
        atomic_create(out, grid)  # drawn first, then written whole; never over another file
        print(f"wrote {args.n} samples to {out}")
    if not args.score:
        return 0
    scaling = run.config.dataset.scaling
    if args.classifier in ("auto", "inception") and reason is None:
        real = load_data(run.config.dataset, run.config.seed).x_train if args.fid else None
        print(f"scoring {args.n_score} samples in {args.splits} splits with torch-fidelity's Inception-v3 "
              f"({quality.inception_weights_available()})", file=sys.stderr)
        scores = quality.sample_quality(run.generator, scaling, args.n_score, batch_size, real_images=real,
                                        splits=args.splits, generator_seed=args.seed)
        print(f"{quality.INCEPTION_SCORE_NAME}: {scores[quality.IS_MEAN]:.3f} +- {scores[quality.IS_STD]:.3f}")
        if args.fid:
            print(f"{quality.FID_NAME}: {scores[quality.FID]:.3f} (against {scores['n_real']} training images)")
        return 0
    classify = inception_classifier(scaling, device) if args.classifier == "torchvision" else None
    if classify is None and args.classifier == "torchvision":
        raise UsageError(f"no torchvision Inception-v3 weights in {Path(torch.hub.get_dir()) / 'checkpoints'}; "
                         f"copy torchvision's inception_v3_google-*.pth there (nothing is downloaded)")
    if classify is not None:
        name, source = "Inception Score (torchvision's ImageNet Inception-v3)", str(inception_weights_path())
    else:
        classify, name = discriminator_classifier(run.discriminator), quality.CLASSIFIER_SCORE_NAME
        source = "the run's discriminator" + ("" if args.classifier == "discriminator" else f" ({reason})")
    print(f"scoring {args.n_score} samples in {args.splits} splits with {source}", file=sys.stderr)
    mean, std = sample_score(run.generator, classify, args.n_score, args.splits, batch_size, noise)
    print(f"{name}: {mean:.3f} +- {std:.3f}")
    return 0


# ------------------------------------------------------------------------------------- table, ensemble

def _label_counts(text: str) -> List[int]:
    """'20,50,100' -> [20, 50, 100] (sorted, without repeats)."""
    try:
        counts = sorted({int(word) for word in text.split(",") if word.strip()})
    except ValueError:
        counts = []
    if not counts or counts[0] <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive label counts separated by commas, "
                                         f"e.g. 20,50,100")
    return counts


def cmd_table(argv: Sequence[str]) -> int:
    """Train (or, with --from, collect) one seeds run per label count and write the table next to the
    published numbers; a rerun trains only the seeds that have not finished."""
    parser = _Parser(
        prog=f"{PROG} table", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train seeds seed .. seed+K-1 for each label count of a data set, one after another, and write "
                    "OUT_DIR/<dataset>.md, .json and .png (the PNG needs matplotlib, the plots extra): per label "
                    "count our mean +- sample std (ddof=1) over the seeds, our ensemble (mean of the class "
                    "probabilities, then argmax) and the published numbers. These three files are regenerated "
                    "on every call. Runs are kept in CACHE_DIR/<dataset>/<key>/seed<N>/, the key a hash of the "
                    "resolved config without the seed and bookkeeping (paths, device, progress): a rerun trains "
                    "only the seeds that have no result.json yet, and an interrupted seed continues from its "
                    "checkpoint. KEY=VALUE words are overrides of every cell (part of the key).",
        epilog="examples:  ssgan table --dataset mnist dataset.root=data          (4 x 10 runs of 300 epochs)\n"
               "           ssgan table --dataset mnist --labels 100 --seeds 3 train.epochs=10\n"
               "           ssgan table --from runs/multirun-*/   (the jobs of a multirun, trained elsewhere)")
    parser.add_argument("--dataset", choices=DATASETS, help="data set and its published recipe")
    parser.add_argument("--labels", type=_label_counts, help="label counts, e.g. 20,50,100 (default: those "
                        "with published numbers)")
    parser.add_argument("--seeds", type=int, metavar="K", help="seeds per label count (default 10)")
    parser.add_argument("--method", choices=METHODS, help="improved_gan (default), ct_gan, ct_gan_te (CT with the temporal ensemble) or bad_gan")
    parser.add_argument("--device", help="train.device for training; the device that evaluates --from runs")
    parser.add_argument("--data-root", help="dataset.root for training; where --from runs' test images are "
                        "(default: each run's own dataset.root)")
    parser.add_argument("--out-dir", default="results", help="where the table goes (default results/)")
    parser.add_argument("--cache-dir", default="runs/table", help="where the runs go (default runs/table/)")
    parser.add_argument("--from", dest="from_dirs", nargs="+", metavar="DIR",
                        help="train nothing: aggregate the finished runs in these directories (run directories "
                             "or folders of them, e.g. a multirun's sweep directory)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides of every cell")
    args = parser.parse_intermixed_args(argv)
    command = shlex.join([PROG, "table", *argv])
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out-dir {args.out_dir} is a file")
    if args.from_dirs:
        given = [f"--{name}" for name in ("seeds", "method") if getattr(args, name) is not None]
        if given or args.overrides:
            raise UsageError(f"--from aggregates finished runs as they are; drop {' '.join(given + args.overrides)}")
        records = find_runs(args.from_dirs)
        dataset = records[0].dataset
        if args.dataset is not None and args.dataset != dataset:
            raise UsageError(f"--dataset {args.dataset}: the runs in --from are of {dataset}")
        if args.labels:
            records = [r for r in records if r.labels in args.labels]
            if not records:
                raise UsageError(f"no runs of {','.join(map(str, args.labels))} labels in --from")
        rows = group_rows(records, resolve_device(args.device or "auto"), args.data_root)
    else:
        if args.dataset is None:
            raise UsageError("--dataset is needed (or --from DIR... to aggregate finished runs)")
        dataset = args.dataset
        labels = args.labels or sorted(PUBLISHED.get(dataset, {}))
        if not labels:
            raise UsageError(f"{dataset} has no published label counts; pass --labels, e.g. --labels 20,50,100")
        n_seeds = 10 if args.seeds is None else args.seeds
        if n_seeds < 1:
            raise UsageError(f"--seeds {n_seeds}: the number of seeds must be at least 1")
        for word in args.overrides:
            if "=" not in word:
                raise UsageError(f"unexpected argument {word!r}: overrides have the form KEY=VALUE")
            if word.split("=", 1)[0].lstrip("+~") in ("dataset", "dataset.labels", "run_dir"):
                raise UsageError(f"{word}: the table sets this; use --dataset and --labels")
        base = [f"dataset={dataset}"] + ([f"method={args.method}"] if args.method else []) + list(args.overrides)
        base += [f"train.device={args.device}"] if args.device else []
        base += [f"dataset.root={args.data_root}"] if args.data_root else []
        # Every cell is composed and checked before the first one trains.
        cells = [resolve_paths(compose([*base, f"dataset.labels={n}"])) for n in labels]
        _check_seeds(cells[0].seed, n_seeds)
        rows, trained, data = [], None, None
        cell_dirs = [cell_directory(Path(args.cache_dir), cfg) for cfg in cells]
        created = [p for d in cell_dirs for p in (d.absolute(), *d.absolute().parents) if not p.exists()]
        created = sorted(set(created), key=lambda p: len(p.parts), reverse=True)  # deepest first
        try:
            if cells[0].train.concurrent_seeds:  # every label count x seed of the table in stacked steps
                data = load_data(cells[0].dataset, cells[0].seed)
                grid = [prepare_cell(cfg, list(range(cfg.seed, cfg.seed + n_seeds)), cell_dir, command, data)
                        for cfg, cell_dir in zip(cells, cell_dirs)]
                trained = train_together(grid, data, "the same ssgan table command (finished seeds are kept)")
            for cfg, cell_dir in zip(cells, cell_dirs):
                seeds = list(range(cfg.seed, cfg.seed + n_seeds))
                which = f"seeds {seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}"
                print(f"{dataset}, {cfg.dataset.labels} labels, {which}: {cell_dir}")
                rows.append(_train_and_print(cfg, seeds, cell_dir, command, data=data, trained=trained))
        except TrainingInterrupted as stop:
            raise stop.resume_with("the same ssgan table command (finished seeds are kept)") from None
        except BaseException:
            for cell_dir in cell_dirs:  # a cell this command created and no seed started: its plan goes too
                if cell_dir.absolute() in created:
                    remove_unstarted(cell_dir)
            for path in created:  # no empty cache folders for cells that could not start
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
            raise
    for row in rows:
        spread = " (1 seed)" if row.std is None else f" +- {row.std:.2f} % over {len(row.runs)} seeds (sample std)"
        print(f"{row.labels} labels: test error {row.mean:.2f}{spread}, ensemble {row.ensemble_error:.2f} %")
    written = write_table(out_dir, dataset, rows, command)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def cmd_ensemble(argv: Sequence[str]) -> int:
    """Evaluate finished runs together: the ensemble averages their class probabilities (docs/method.md sec. 5)."""
    parser = _Parser(prog=f"{PROG} ensemble", description=COMMANDS["ensemble"] + ". The runs must share the "
                     "data set and its classes; the ensemble's prediction is the argmax of the mean of the "
                     "models' class probabilities. The last line printed is the ensemble's test error.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run directories, or folders of them (a --seeds run, a multirun)")
    parser.add_argument("--out", help="also write the numbers to this JSON file (never overwritten)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", help="where the test images are (default: each run's dataset.root)")
    args = parser.parse_args(argv)
    _check_out(args.out, ".json")
    records = find_runs(args.run_dirs)
    probs, y_test, class_names = probs_on_test_set(records, resolve_device(args.device), args.data_root)
    result = aggregate(records, probs, y_test, class_names)
    for record in records:
        print(f"{record.path}: test error {record.test_error:.2f} % ({record.dataset}, {record.labels} labels, "
              f"{record.method}, seed {record.seed})")
    if result.std is not None:
        print(f"mean +- std: {result.mean:.2f} +- {result.std:.2f} % over {len(records)} runs (sample std)")
    _print_report(result.ensemble_report, "the ensemble's")
    print(f"ensemble test error: {result.ensemble_error:.2f} % ({len(records)} model{'s' * (len(records) > 1)})")
    if args.out:
        payload = {"runs": [str(r.path) for r in records], "test_errors": result.test_errors,
                   "mean": result.mean, "std": result.std, "std_kind": STD_KIND,
                   "ensemble_error": result.ensemble_error, "n_test": result.n_test, "classes": class_names,
                   "per_class_error": result.ensemble_report["per_class_error"],
                   "confusion_matrix": result.ensemble_report["confusion_matrix"]}
        atomic_create(args.out, json.dumps(payload, indent=1))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0



def cmd_export(argv: Sequence[str]) -> int:
    """The averaged discriminator of a run, raw pixels in and class probabilities out (``ssgan.export``)."""
    parser = _Parser(prog=f"{PROG} export", description=COMMANDS["export"] + ". The file takes float32 images "
                     "(N, C, H, W) of raw pixel values (0..255; 0..16 for the builtin digits) and returns (N, K) "
                     "class probabilities; the class names travel inside it.")
    parser.add_argument("run_dir", help="a run directory written by ssgan fit")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="onnx (needs the export "
                        "extra) or torchscript")
    parser.add_argument("--out", help="the file to write (default RUN_DIR/model.onnx or RUN_DIR/model.pt); "
                        "never overwritten")
    args = parser.parse_args(argv)
    exported = export_run(args.run_dir, args.format, args.out)
    print(f"wrote {exported.path} ({exported.fmt}): float32 (N, {', '.join(map(str, exported.input_shape))}) raw "
          f"pixels 0..{exported.input_value_max:g} -> (N, {len(exported.class_names)}) class probabilities")
    return 0


def cmd_density(argv: Sequence[str]) -> int:
    """Fit the PixelCNN++ on the train split's images (the unlabeled pool; never the test set), compute the
    threshold as the official code does (the value at int(0.1 N) of the partitioned log-likelihoods) and
    write both to --out, the file method.density_model names."""
    from .density import density_threshold, log_likelihoods, save_density, to_unit_range, train_density

    parser = _Parser(prog=f"{PROG} density", description=COMMANDS["density"] + ". Official MNIST sizes by "
                     "default (160 filters, 3 resnet blocks, 10 logistics, 2 resolutions, Adam 2e-4, batch 40).")
    parser.add_argument("--dataset", choices=DATASETS, default="mnist")
    parser.add_argument("--out", required=True, help="the file to write (refused if it exists)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--filters", type=int, default=160)
    parser.add_argument("--resnet", type=int, default=3)
    parser.add_argument("--mix", type=int, default=10)
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-images", type=int, help="train on the first N images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides (e.g. dataset.root=data)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise UsageError(f"--out {out}: exists; choose another file (no file is overwritten)")
    if min(args.epochs, args.filters, args.resnet, args.mix, args.stages, args.batch_size) < 1 or args.lr <= 0:
        raise UsageError("--epochs, --filters, --resnet, --mix, --stages, --batch-size and --lr must be positive")
    cfg = compose([f"dataset={args.dataset}", *args.overrides])
    if cfg.dataset.image_shape[0] != 1:
        raise UsageError(f"--dataset {args.dataset}: the density model takes one-channel images")
    if cfg.dataset.scaling not in ("unit", "symmetric"):
        raise UsageError(f"dataset.scaling={cfg.dataset.scaling}: the density model reads unit or symmetric images")
    data = load_data(cfg.dataset, args.seed)
    x = to_unit_range(torch.from_numpy(data.x_unlabeled[:args.max_images]).float(), cfg.dataset.scaling)
    fitted = train_density(x, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                           nr_filters=args.filters, nr_resnet=args.resnet, nr_mix=args.mix, stages=args.stages,
                           log=lambda line: print(line, flush=True))
    threshold = density_threshold(log_likelihoods(fitted["model"], x).numpy())
    out.parent.mkdir(parents=True, exist_ok=True)
    save_density(out, fitted["model"], threshold, cfg.dataset.scaling, cfg.dataset.image_shape,
                 {"dataset": args.dataset, "images": len(x), "epochs": args.epochs, "seconds": fitted["seconds"],
                  "bits_per_dim": fitted["bits_per_dim"]})
    print(f"density model: {out} ({len(x)} images, {fitted['bits_per_dim']:.4f} bits per dim, threshold "
          f"{threshold:.2f} nats)")
    return 0


HANDLERS = {"fit": cmd_fit, "evaluate": cmd_evaluate, "predict": cmd_predict, "sample": cmd_sample,
            "table": cmd_table, "ensemble": cmd_ensemble, "export": cmd_export, "density": cmd_density}


def _usage() -> str:
    lines = [f"usage: {PROG} COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, text in COMMANDS.items()]
    lines += ["", f"data sets: {', '.join(DATASETS)}; methods: {', '.join(METHODS)}",
              f"'{PROG} COMMAND --help' lists a command's options."]
    return "\n".join(lines)


class _Console(logging.Handler):
    """The library's log messages (``logging.getLogger("ssgan")``) as plain lines on the current stdout,
    while the command line runs."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stdout)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``ssgan`` command; returns the exit code. The one place where exceptions become
    exit codes: 2 for bad input, 3 for divergence, 128 + N for signal N."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["fit"]  # `ssgan` alone runs the default job
    if argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V"):
        print(f"{PROG} {__version__}")
        return 0
    if argv[0] in ("-sc", "--shell-completion"):  # Hydra's shell completion calls `ssgan -sc query=bash`
        argv = ["fit", *argv]
    command, rest = argv[0], argv[1:]
    if command not in HANDLERS:
        return _fail(f"unknown command {command!r}; expected one of {', '.join(HANDLERS)}")
    library_log = logging.getLogger("ssgan")
    console = _Console()
    library_log.addHandler(console)
    level = library_log.level
    library_log.setLevel(logging.INFO)
    try:
        return HANDLERS[command](rest)
    except _Passthrough as carried:
        return _exit_code(carried.error)
    except (*BAD_INPUT, TrainingDiverged, TrainingInterrupted) as error:
        return _exit_code(error)
    except (HydraException, OmegaConfBaseException) as error:  # Hydra's own errors (HYDRA_FULL_ERROR)
        return _fail(first_line(error))
    except SystemExit as stop:  # argparse and Hydra exit this way
        return int(stop.code) if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    except KeyboardInterrupt:  # Ctrl-C outside training (start-up): nothing was left behind
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        library_log.removeHandler(console)
        library_log.setLevel(level)


def _exit_code(error: Exception) -> int:
    """One line on stderr and the exit code of a library exception."""
    if isinstance(error, TrainingInterrupted):
        print(f"{PROG}: {error}", file=sys.stderr)
        return 128 + error.signum
    if isinstance(error, TrainingDiverged):
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 3
    if isinstance(error, BAD_INPUT):
        return _fail(str(error))
    raise error


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def entry_point() -> None:
    sys.exit(main())
