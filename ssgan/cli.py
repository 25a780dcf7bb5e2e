"""Command line: ``ssgan fit | evaluate | predict | sample | table | ensemble``.

``ssgan fit`` is a real Hydra application: its flags are rewritten into Hydra overrides
(``--dataset cifar10`` -> ``dataset=cifar10``, ``--labels 4000`` -> ``dataset.labels=4000``) before Hydra parses
them, so ``-m`` multirun and Hydra's launcher plugins work. The overrides are composed and checked once
before Hydra starts, so that a mistyped key or an impossible value gives one clear line and exit code 2,
and no run directory is created for it. Only this module sees a DictConfig.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import shlex
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .config import DATASETS, METHODS, Config, ConfigError, register_configs, validate

PROG = "ssgan"
COMMANDS = {
    "fit": "train a semi-supervised GAN; the averaged discriminator is the classifier",
    "evaluate": "recompute the test error of a trained run from its checkpoint",
    "predict": "predict the classes of image files, folders or an .npz with a trained run",
    "sample": "write a grid of generator samples; --score: Inception Score (or the discriminator's score)",
    "table": "train the seeds x labels grid of a data set (resuming) and write results/<dataset>.md, .json, .png",
    "ensemble": "evaluate trained runs together: each one's test error, mean +- std and the ensemble's error",
}


class UsageError(Exception):
    """Bad input on the command line: one line on stderr, exit code 2."""


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _known_errors() -> tuple:
    from .checkpoint import CheckpointError
    from .data import DataError
    from .tables import RunsError

    return (UsageError, ConfigError, DataError, CheckpointError, RunsError)


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
               "           ssgan fit -m seed=0,1 dataset.labels=20,50 hydra/launcher=local   (parallel jobs)")
    parser.add_argument("--dataset", choices=DATASETS, help="data set and its published recipe")
    parser.add_argument("--labels", type=int, help="number of labeled examples (balanced over classes)")
    parser.add_argument("--method", choices=METHODS, help="improved_gan or ct_gan")
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
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides")
    return parser


def fit_overrides(args: argparse.Namespace) -> List[str]:
    """Rewrite the flags into Hydra overrides; the explicit KEY=VALUE words come last and win."""
    overrides = [f"{key}={getattr(args, flag)}" for flag, key in FIT_FLAGS.items()
                 if getattr(args, flag) is not None]
    if args.overwrite:
        overrides.append("overwrite=true")
    for word in args.overrides:
        if "=" not in word:
            raise UsageError(f"unexpected argument {word!r}: overrides have the form KEY=VALUE")
    return overrides + list(args.overrides)


def compose_config(overrides: Sequence[str]):
    """Compose configs/ with the overrides (no Hydra run); return the DictConfig."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("ssgan.configs", version_base=None):
            return compose("config", overrides=list(overrides))
    except Exception as error:  # Hydra and OmegaConf raise many types; all mean a bad override here
        message = _first_line(error)
        if "Could not find 'hydra/launcher/" in message:  # local, slurm: configs/hydra/launcher/
            message += (" (ssgan's launcher configs: local, slurm; they extend Hydra's joblib and submitit "
                        "plugins: pip install 'ssgan[launchers]')")
        raise UsageError(message) from None
    finally:
        GlobalHydra.instance().clear()


def to_config(dict_cfg) -> Config:
    """DictConfig -> typed Config, with the range checks of config.validate."""
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.to_object(dict_cfg)
    except Exception as error:
        raise UsageError(_first_line(error)) from None
    validate(cfg)
    return cfg


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    # Hydra puts the useful part first and a hint ("To append ... use +key") second.
    return " ".join(lines[:2]) if len(lines) > 1 and lines[1].startswith("To append") else lines[0]


def _expand_sweeps(overrides: Sequence[str]) -> List[List[str]]:
    """Every combination of a multirun's sweep values, each as a plain override list."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as error:
        raise UsageError(_first_line(error)) from None
    choices = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([f"{key}={override.get_value_element_as_str()}"])
    return [list(combo) for combo in itertools.product(*choices)]


def _default_run_dir(cfg: Config, n_seeds: Optional[int] = None) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    seeds = f"seed{cfg.seed}" if n_seeds is None else f"seeds{cfg.seed}-{cfg.seed + n_seeds - 1}"
    return f"runs/{cfg.dataset.name}-{cfg.dataset.labels}-{cfg.method.name}-{seeds}-{stamp}"


def _check_run_dir(run_dir: str, overwrite: bool) -> None:
    path = Path(run_dir)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise UsageError(f"run directory {run_dir} already exists; choose another --run-dir or pass "
                         f"--overwrite")


def job_device(device: str, job_num: Optional[int], n_gpus: int) -> str:
    """``train.device=auto`` in a multirun job on a machine with several GPUs: GPU (job number mod GPUs), so
    that a joblib launcher with ``n_jobs`` = the number of GPUs spreads the jobs over them. Else unchanged."""
    if device != "auto" or job_num is None or n_gpus < 2:
        return device
    return f"cuda:{job_num % n_gpus}"


def _fit_task(dict_cfg, n_seeds: Optional[int] = None) -> float:
    """The Hydra task: one training run into Hydra's output directory, or with ``n_seeds`` (``--seeds K``)
    K seeds one after another into sub-directories of it."""
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .checkpoint import write_config
    from .tables import SUMMARY_NAME

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    created = not run_dir.exists() or not any(run_dir.iterdir())
    try:
        cfg = to_config(dict_cfg)
        cfg.run_dir = str(run_dir)
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        cfg.train.device = job_device(cfg.train.device, hydra_cfg.job.num if multirun else None,
                                      torch.cuda.device_count())
        if n_seeds is not None:
            command = shlex.join([PROG, "fit", "--seeds", str(n_seeds), *hydra_cfg.overrides.task])
            seeds = list(range(cfg.seed, cfg.seed + n_seeds))
            return _fit_seeds_reporting(cfg, run_dir, seeds, command, fresh=cfg.overwrite).mean
        write_config(run_dir, cfg)
        result = _fit_reporting(cfg, run_dir)
    except _known_errors() as error:
        if created and run_dir.exists() and not (run_dir / SUMMARY_NAME).exists():  # no seed has finished
            shutil.rmtree(run_dir, ignore_errors=True)
        print(f"{PROG}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return result.test_error


def _fit_checked(cfg: Config, run_dir: Path, resume=None, data=None):
    """``train.fit`` into ``run_dir``; a diverged run exits with code 3 and an interrupted one with 128 + the
    signal number, each with one line that says where the checkpoint is."""
    from .train import TrainingDiverged, TrainingInterrupted, fit

    try:
        return fit(cfg, data=data, run_dir=run_dir, resume=resume)
    except TrainingDiverged as error:
        kept = run_dir / "checkpoint.pt"
        where = f"the last good checkpoint is {kept}" if kept.exists() else "no checkpoint was written yet"
        print(f"{PROG}: error: {error}; {where}", file=sys.stderr)
        raise SystemExit(3) from None
    except TrainingInterrupted as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        raise SystemExit(128 + error.signum) from None


def _fit_reporting(cfg: Config, run_dir: Path, resume=None):
    """Run ``train.fit`` and print its outcome; the last line is the test error of the averaged weights."""
    result = _fit_checked(cfg, run_dir, resume)
    print(f"run directory: {run_dir}")
    if result.val_error is not None:
        print(f"validation error: {result.val_error:.2f} %")
    print(f"test error: {result.test_error:.2f} %")
    return result


def _fit_seeds_reporting(cfg: Config, run_dir: Path, seeds: Sequence[int], command: str, fresh: bool = False):
    """Train the seeds (``tables.run_seeds``: one after another, or together with train.concurrent_seeds) and print, after one line per seed, the
    ensemble's test error and, as the last line, the mean +- sample std of the seeds' test errors."""
    from .tables import run_seeds

    try:
        result = run_seeds(cfg, seeds, run_dir, command, fresh=fresh, fit_fn=_fit_checked)
    except SystemExit as stop:
        if isinstance(stop.code, int) and stop.code >= 128:
            print(f"{PROG}: the remaining seeds continue with: {PROG} fit --resume {run_dir}", file=sys.stderr)
        raise
    print(f"run directory: {run_dir}")
    print(f"ensemble test error: {result.ensemble_error:.2f} % ({len(result.runs)} models: mean of their class "
          f"probabilities, then argmax)")
    if result.std is None:
        print(f"test error: {result.mean:.2f} % over 1 seed (no std)")
    else:
        print(f"test error: {result.mean:.2f} +- {result.std:.2f} % over {len(result.runs)} seeds (sample std)")
    return result


def cmd_resume_seeds(run_dir: str, overrides: Sequence[str]) -> int:
    """Continue a ``--seeds K`` run: seeds with a result are kept, an interrupted one continues from its
    checkpoint, the others are trained; the summary is then complete."""
    from .tables import read_seeds_plan

    if overrides:
        raise UsageError(f"{run_dir} is a run of several seeds; it continues with its saved config, without "
                         f"KEY=VALUE overrides")
    cfg, seeds, command = read_seeds_plan(Path(run_dir))
    validate(cfg)
    _fit_seeds_reporting(cfg, Path(run_dir), seeds, command)
    return 0


def cmd_resume(run_dir: str, overrides: Sequence[str]) -> int:
    """Continue a run from its checkpoint, exactly where it was written; KEY=VALUE words change its config."""
    from omegaconf import OmegaConf

    from .checkpoint import CHECKPOINT_NAME, config_from_dict, load_checkpoint

    path = Path(run_dir)
    if not path.is_dir():
        raise UsageError(f"--resume {run_dir}: no such run directory")
    payload = load_checkpoint(path / CHECKPOINT_NAME)
    cfg = config_from_dict(payload["config"])
    if overrides:
        try:
            merged = OmegaConf.merge(OmegaConf.structured(cfg), OmegaConf.from_dotlist(list(overrides)))
            cfg = OmegaConf.to_object(merged)
        except Exception as error:
            raise UsageError(_first_line(error)) from None
    validate(cfg)
    if payload["epoch"] >= cfg.train.epochs and not payload["iteration"]:
        raise UsageError(f"{run_dir} already finished its {cfg.train.epochs} epochs; pass train.epochs=N "
                         f"to train on")
    _fit_reporting(cfg, path, resume=payload)
    return 0


def _run_hydra(overrides: List[str], multirun: bool, n_seeds: Optional[int] = None) -> None:
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    def fit_seeds_task(dict_cfg) -> float:
        return _fit_task(dict_cfg, n_seeds)

    register_configs()
    GlobalHydra.instance().clear()
    task = hydra.main(config_path="pkg://ssgan.configs", config_name="config", version_base=None)(
        _fit_task if n_seeds is None else fit_seeds_task)
    saved = sys.argv
    sys.argv = [f"{PROG}-fit", *(["--multirun"] if multirun else []), *overrides]
    try:
        task()
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()


def cmd_fit(argv: Sequence[str]) -> int:
    from .tables import SUMMARY_NAME

    args = _fit_parser().parse_intermixed_args(argv)  # KEY=VALUE words may come between flags
    if args.seeds is not None and args.seeds < 1:
        raise UsageError(f"--seeds {args.seeds}: the number of seeds must be at least 1")
    if args.resume:
        fixed = [f"--{flag.replace('_', '-')}" for flag in FIT_FLAGS if getattr(args, flag) is not None]
        fixed += ["--seeds"] if args.seeds is not None else []
        if fixed or args.multirun or args.overwrite:
            raise UsageError(f"--resume continues a run with its saved config; drop {' '.join(fixed) or '-m'} "
                             f"(KEY=VALUE overrides such as train.epochs=N are allowed)")
        if (Path(args.resume) / SUMMARY_NAME).is_file():
            return cmd_resume_seeds(args.resume, fit_overrides(args))
        return cmd_resume(args.resume, fit_overrides(args))
    overrides = fit_overrides(args)
    if args.multirun:
        for combo in _expand_sweeps(overrides):
            to_config(compose_config(combo))
        _run_hydra(overrides, multirun=True, n_seeds=args.seeds)
        return 0
    cfg = to_config(compose_config(overrides))
    if args.run_dir is None and not any(o.startswith("run_dir=") for o in overrides):
        overrides.append(f"run_dir={_default_run_dir(cfg, args.seeds)}")
        cfg.run_dir = overrides[-1].split("=", 1)[1]
    _check_run_dir(cfg.run_dir, cfg.overwrite)
    run_dir = Path(cfg.run_dir).absolute()
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    try:
        _run_hydra(overrides, multirun=False, n_seeds=args.seeds)
    except SystemExit:
        for path in created:  # deepest first: leave nothing behind for a run that could not start
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise
    return 0


# ------------------------------------------------------------------------------------ evaluate, predict

def cmd_evaluate(argv: Sequence[str]) -> int:
    from .checkpoint import load_run
    from .data import load_data
    from .evaluate import error_rate, predict_proba
    from .train import resolve_device

    parser = _Parser(prog=f"{PROG} evaluate", description=COMMANDS["evaluate"])
    parser.add_argument("run_dir", help="a run directory written by ssgan fit")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    run = load_run(args.run_dir, resolve_device(args.device))
    data = load_data(run.config.dataset, run.config.seed)
    probs = predict_proba(run.discriminator, data.x_test, run.config.train.eval_batch_size)
    print(f"test error: {error_rate(probs, data.y_test):.2f} %")
    return 0


def read_inputs(inputs: Sequence[str], cfg) -> tuple[List[str], np.ndarray]:
    """Image files, folders of images, or .npz files (array x, x_test or the only array) -> names and
    (N, C, H, W) images scaled as the run's recipe scales them."""
    from .data import IMAGE_SUFFIXES, DataError, input_value_max, prepare_images, read_images, scale_images

    names, batches = [], []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise DataError(f"{item}: no such file or folder")
        if path.suffix.lower() == ".npz":
            try:
                with np.load(path, allow_pickle=False) as archive:
                    key = next((k for k in ("x", "x_test") if k in archive.files),
                               archive.files[0] if len(archive.files) == 1 else None)
                    if key is None:
                        raise DataError(f"{item}: expected an array named x or x_test")
                    x = archive[key]
            except (OSError, ValueError, EOFError) as error:
                if isinstance(error, DataError):
                    raise
                raise DataError(f"{item}: not a readable .npz ({error})") from None
            if not np.issubdtype(x.dtype, np.number):
                raise DataError(f"{item}: array {key} has dtype {x.dtype}, expected pixel values")
            x = prepare_images(x, cfg, item)
            names += [f"{item}[{i}]" for i in range(len(x))]
            # uint8: 0..255; floats in [0, 1]; else the source's range (0..16 for the builtin digits)
            batches.append(scale_images(x, cfg.scaling, input_value_max(x, cfg)))
            continue
        files = ([p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
                 if path.is_dir() else [path])
        if not files:
            raise DataError(f"{item}: no images found")
        names += [str(p) for p in files]
        batches.append(scale_images(read_images(files, cfg), cfg.scaling))
    return names, np.concatenate(batches)


def cmd_predict(argv: Sequence[str]) -> int:
    from .checkpoint import load_run
    from .evaluate import predict_proba
    from .train import resolve_device

    parser = _Parser(prog=f"{PROG} predict", description=COMMANDS["predict"])
    parser.add_argument("run_dir", help="a run directory written by ssgan fit")
    parser.add_argument("inputs", nargs="+", help="image files, folders or .npz files")
    parser.add_argument("--proba", action="store_true", help="also print the class probabilities")
    parser.add_argument("--out", help="write a CSV file instead of printing")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.out and Path(args.out).exists():
        raise UsageError(f"{args.out} already exists; choose another --out")
    run = load_run(args.run_dir, resolve_device(args.device))
    names, x = read_inputs(args.inputs, run.config.dataset)
    probs = predict_proba(run.discriminator, x, args.batch_size)
    header = ["input", "class"] + ([f"p_{c}" for c in run.class_names] if args.proba else [])
    rows = [[name, run.class_names[int(np.argmax(p))]] + ([f"{v:.6f}" for v in p] if args.proba else [])
            for name, p in zip(names, probs)]
    if args.out:
        out = Path(args.out)
        with open(out, "x", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([header] + rows)
        print(f"wrote {len(rows)} predictions to {out}")
    else:
        for row in rows:
            print("\t".join(row))
    return 0


def cmd_sample(argv: Sequence[str]) -> int:
    """Generator samples as a PNG grid; with --score, exp(E_x KL(p(y|x) || p(y))) over --n-score samples in
    --splits splits (Salimans et al. 2016, sec. 4: 50,000 samples, 10 splits), with torchvision's Inception-v3
    when its weights are in the torch hub cache, else the run's own discriminator (a classifier score)."""
    import torch

    from .checkpoint import load_run
    from .evaluate import (discriminator_classifier, inception_classifier, inception_weights_path,
                           sample_score, save_sample_grid)
    from .train import resolve_device

    parser = _Parser(prog=f"{PROG} sample", description=COMMANDS["sample"])
    parser.add_argument("run_dir", help="a run directory written by ssgan fit")
    parser.add_argument("--n", type=int, default=100, help="samples in the grid (default 100: 10 x 10)")
    parser.add_argument("--out", help="PNG file of the grid (default RUN_DIR/grid.png); never overwritten")
    parser.add_argument("--no-grid", action="store_true", help="write no grid (with --score)")
    parser.add_argument("--score", action="store_true", help="compute the Inception Score of the samples")
    parser.add_argument("--n-score", type=int, default=50000, help="samples scored (default 50000)")
    parser.add_argument("--splits", type=int, default=10, help="splits of the score's mean +- std (default 10)")
    parser.add_argument("--classifier", choices=("auto", "inception", "discriminator"), default="auto",
                        help="auto: Inception-v3 if its weights are cached locally, else the discriminator")
    parser.add_argument("--batch-size", type=int, help="generator batch (default: the run's train.batch_size)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise z")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    for name in ("n", "n_score", "splits", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be positive")
    if args.no_grid and not args.score:
        raise UsageError("--no-grid writes nothing without --score")
    run_path = Path(args.run_dir)
    out = Path(args.out) if args.out else (run_path if run_path.is_dir() else run_path.parent) / "grid.png"
    if not args.no_grid and out.exists():
        raise UsageError(f"{out} already exists; choose another --out")
    device = resolve_device(args.device)
    run = load_run(run_path, device)
    batch_size = args.batch_size or run.config.train.batch_size
    noise = torch.Generator(device=device).manual_seed(args.seed)
    if not args.no_grid:
        save_sample_grid(run.generator, out, run.config.dataset.scaling, args.n, batch_size, noise)
        print(f"wrote {args.n} samples to {out}")
    if args.score:
        classify = None
        if args.classifier != "discriminator":
            classify = inception_classifier(run.config.dataset.scaling, device)
            if classify is None and args.classifier == "inception":
                raise UsageError(f"no Inception-v3 weights in {Path(torch.hub.get_dir()) / 'checkpoints'}; "
                                 f"copy torchvision's inception_v3_google-*.pth there (nothing is downloaded)")
        name, source = "Inception Score (torchvision Inception-v3)", f"Inception-v3 ({inception_weights_path()})"
        if classify is None:
            classify = discriminator_classifier(run.discriminator)
            name = "classifier score (the run's own discriminator, not the Inception Score)"
            source = "the run's discriminator" + ("" if args.classifier == "discriminator" else
                                                  f" (no Inception-v3 weights in {torch.hub.get_dir()})")
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
    from .tables import PUBLISHED, cell_directory, find_runs, group_rows, run_seeds, write_table
    from .train import resolve_device

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
    parser.add_argument("--method", choices=METHODS, help="improved_gan (default) or ct_gan")
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
        cells = [to_config(compose_config([*base, f"dataset.labels={n}"])) for n in labels]
        rows = []
        for cfg in cells:
            cell_dir = cell_directory(Path(args.cache_dir), cfg)
            seeds = list(range(cfg.seed, cfg.seed + n_seeds))
            which = f"seeds {seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}"
            print(f"{dataset}, {cfg.dataset.labels} labels, {which}: {cell_dir}")
            created = [p for p in (cell_dir.absolute(), *cell_dir.absolute().parents) if not p.exists()]
            try:
                rows.append(run_seeds(cfg, seeds, cell_dir, command, fit_fn=_fit_checked))
            except BaseException as stop:
                for path in created:  # deepest first: no empty cache folders for a cell that could not start
                    if path.is_dir() and not any(path.iterdir()):
                        path.rmdir()
                if isinstance(stop, SystemExit) and isinstance(stop.code, int) and stop.code >= 128:
                    print(f"{PROG}: finished seeds are kept; rerun the same command to continue", file=sys.stderr)
                raise
    for row in rows:
        spread = " (1 seed)" if row.std is None else f" +- {row.std:.2f} % over {len(row.runs)} seeds (sample std)"
        print(f"{row.labels} labels: test error {row.mean:.2f}{spread}, ensemble {row.ensemble_error:.2f} %")
    written = write_table(out_dir, dataset, rows, command)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def cmd_ensemble(argv: Sequence[str]) -> int:
    """Evaluate finished runs together: the ensemble averages their class probabilities (METHOD.md sec. 5)."""
    import json

    from .tables import STD_KIND, find_runs, probs_on_test_set, aggregate
    from .train import resolve_device

    parser = _Parser(prog=f"{PROG} ensemble", description=COMMANDS["ensemble"] + ". The runs must share the "
                     "data set and its classes; the ensemble's prediction is the argmax of the mean of the "
                     "models' class probabilities. The last line printed is the ensemble's test error.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run directories, or folders of them (a --seeds run, a multirun)")
    parser.add_argument("--out", help="also write the numbers to this JSON file (never overwritten)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", help="where the test images are (default: each run's dataset.root)")
    args = parser.parse_args(argv)
    if args.out and Path(args.out).exists():
        raise UsageError(f"{args.out} already exists; choose another --out")
    records = find_runs(args.run_dirs)
    probs, y_test, class_names = probs_on_test_set(records, resolve_device(args.device), args.data_root)
    result = aggregate(records, probs, y_test)
    for record in records:
        print(f"{record.path}: test error {record.test_error:.2f} % ({record.dataset}, {record.labels} labels, "
              f"{record.method}, seed {record.seed})")
    if result.std is not None:
        print(f"mean +- std: {result.mean:.2f} +- {result.std:.2f} % over {len(records)} runs (sample std)")
    print(f"ensemble test error: {result.ensemble_error:.2f} % ({len(records)} model{'s' * (len(records) > 1)})")
    if args.out:
        payload = {"runs": [str(r.path) for r in records], "test_errors": result.test_errors,
                   "mean": result.mean, "std": result.std, "std_kind": STD_KIND,
                   "ensemble_error": result.ensemble_error, "n_test": result.n_test, "classes": class_names}
        with open(args.out, "x", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=1)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


HANDLERS = {"fit": cmd_fit, "evaluate": cmd_evaluate, "predict": cmd_predict, "sample": cmd_sample,
            "table": cmd_table, "ensemble": cmd_ensemble}


def _usage() -> str:
    lines = [f"usage: {PROG} COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, text in COMMANDS.items()]
    lines += ["", f"data sets: {', '.join(DATASETS)}; methods: {', '.join(METHODS)}",
              f"'{PROG} COMMAND --help' lists a command's options."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``ssgan`` command; returns the exit code (2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["fit"]  # `ssgan` alone runs the default job
    if argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V"):
        from . import __version__

        print(f"{PROG} {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in HANDLERS:
        return _fail(f"unknown command {command!r}; expected one of {', '.join(HANDLERS)}")
    try:
        return HANDLERS[command](rest)
    except _known_errors() as error:
        return _fail(str(error))
    except SystemExit as stop:  # argparse and the Hydra task exit this way
        return int(stop.code) if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    except KeyboardInterrupt:
        return _fail("interrupted")


def entry_point() -> None:
    sys.exit(main())
