"""Command line: ``ssgan fit | evaluate | predict | sample``.

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
}


class UsageError(Exception):
    """Bad input on the command line: one line on stderr, exit code 2."""


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _known_errors() -> tuple:
    from .checkpoint import CheckpointError
    from .data import DataError

    return (UsageError, ConfigError, DataError, CheckpointError)


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
               "           ssgan fit -m seed=0,1,2   (a Hydra multirun)")
    parser.add_argument("--dataset", choices=DATASETS, help="data set and its published recipe")
    parser.add_argument("--labels", type=int, help="number of labeled examples (balanced over classes)")
    parser.add_argument("--method", choices=METHODS, help="improved_gan or ct_gan")
    parser.add_argument("--seed", type=int, help="seed of the labeled subset, initialisation and data order")
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
        raise UsageError(_first_line(error)) from None
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


def _default_run_dir(cfg: Config) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return (f"runs/{cfg.dataset.name}-{cfg.dataset.labels}-{cfg.method.name}-seed{cfg.seed}-{stamp}")


def _check_run_dir(run_dir: str, overwrite: bool) -> None:
    path = Path(run_dir)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise UsageError(f"run directory {run_dir} already exists; choose another --run-dir or pass "
                         f"--overwrite")


def _fit_task(dict_cfg) -> float:
    """The Hydra task: one training run into Hydra's output directory."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    created = not run_dir.exists() or not any(run_dir.iterdir())
    try:
        cfg = to_config(dict_cfg)
        cfg.run_dir = str(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)), encoding="utf-8")
        result = _fit_reporting(cfg, run_dir)
    except _known_errors() as error:
        if created and run_dir.exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        print(f"{PROG}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return result.test_error


def _fit_reporting(cfg: Config, run_dir: Path, resume=None):
    """Run ``train.fit`` and print its outcome; the last line is the test error of the averaged weights.

    A diverged run exits with code 3 and an interrupted one with 128 + the signal number, each with one line
    that says where the checkpoint is.
    """
    from .train import TrainingDiverged, TrainingInterrupted, fit

    try:
        result = fit(cfg, run_dir=run_dir, resume=resume)
    except TrainingDiverged as error:
        kept = run_dir / "checkpoint.pt"
        where = f"the last good checkpoint is {kept}" if kept.exists() else "no checkpoint was written yet"
        print(f"{PROG}: error: {error}; {where}", file=sys.stderr)
        raise SystemExit(3) from None
    except TrainingInterrupted as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        raise SystemExit(128 + error.signum) from None
    print(f"run directory: {run_dir}")
    if result.val_error is not None:
        print(f"validation error: {result.val_error:.2f} %")
    print(f"test error: {result.test_error:.2f} %")
    return result


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


def _run_hydra(overrides: List[str], multirun: bool) -> None:
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    task = hydra.main(config_path="pkg://ssgan.configs", config_name="config", version_base=None)(_fit_task)
    saved = sys.argv
    sys.argv = [f"{PROG}-fit", *(["--multirun"] if multirun else []), *overrides]
    try:
        task()
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()


def cmd_fit(argv: Sequence[str]) -> int:
    args = _fit_parser().parse_args(argv)
    if args.resume:
        fixed = [f"--{flag.replace('_', '-')}" for flag in FIT_FLAGS if getattr(args, flag) is not None]
        if fixed or args.multirun or args.overwrite:
            raise UsageError(f"--resume continues a run with its saved config; drop {' '.join(fixed) or '-m'} "
                             f"(KEY=VALUE overrides such as train.epochs=N are allowed)")
        return cmd_resume(args.resume, fit_overrides(args))
    overrides = fit_overrides(args)
    if args.multirun:
        for combo in _expand_sweeps(overrides):
            to_config(compose_config(combo))
        _run_hydra(overrides, multirun=True)
        return 0
    cfg = to_config(compose_config(overrides))
    if args.run_dir is None and not any(o.startswith("run_dir=") for o in overrides):
        overrides.append(f"run_dir={_default_run_dir(cfg)}")
        cfg.run_dir = overrides[-1].split("=", 1)[1]
    _check_run_dir(cfg.run_dir, cfg.overwrite)
    run_dir = Path(cfg.run_dir).absolute()
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    try:
        _run_hydra(overrides, multirun=False)
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


HANDLERS = {"fit": cmd_fit, "evaluate": cmd_evaluate, "predict": cmd_predict, "sample": cmd_sample}


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
