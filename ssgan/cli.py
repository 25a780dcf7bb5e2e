"""Command line: ``ssgan fit | evaluate | predict``.

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


def _fit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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

    from .train import fit

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    created = not run_dir.exists() or not any(run_dir.iterdir())
    try:
        cfg = to_config(dict_cfg)
        cfg.run_dir = str(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)), encoding="utf-8")
        result = fit(cfg, run_dir=run_dir)
    except _known_errors() as error:
        if created and run_dir.exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        print(f"{PROG}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"run directory: {run_dir}")
    if result.val_error is not None:
        print(f"validation error: {result.val_error:.2f} %")
    print(f"test error: {result.test_error:.2f} %")
    return result.test_error


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

    parser = argparse.ArgumentParser(prog=f"{PROG} evaluate", description=COMMANDS["evaluate"])
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
    from .data import IMAGE_SUFFIXES, DataError, _check_size, _to_nchw, read_images, scale_images

    names, batches = [], []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise DataError(f"{item}: no such file or folder")
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                key = next((k for k in ("x", "x_test") if k in archive.files),
                           archive.files[0] if len(archive.files) == 1 else None)
                if key is None:
                    raise DataError(f"{item}: expected an array named x or x_test")
                x = archive[key]
            if np.issubdtype(x.dtype, np.floating) and x.size and float(x.max()) <= 1.0:
                x = x * 255.0
            x = _check_size(_to_nchw(x, cfg.image_shape[0], item), cfg, item)
            names += [f"{item}[{i}]" for i in range(len(x))]
            batches.append(scale_images(x, cfg.scaling))
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

    parser = argparse.ArgumentParser(prog=f"{PROG} predict", description=COMMANDS["predict"])
    parser.add_argument("run_dir", help="a run directory written by ssgan fit")
    parser.add_argument("inputs", nargs="+", help="image files, folders or .npz files")
    parser.add_argument("--proba", action="store_true", help="also print the class probabilities")
    parser.add_argument("--out", help="write a CSV file instead of printing")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    run = load_run(args.run_dir, resolve_device(args.device))
    names, x = read_inputs(args.inputs, run.config.dataset)
    probs = predict_proba(run.discriminator, x, args.batch_size)
    header = ["input", "class"] + ([f"p_{c}" for c in run.class_names] if args.proba else [])
    rows = [[name, run.class_names[int(np.argmax(p))]] + ([f"{v:.6f}" for v in p] if args.proba else [])
            for name, p in zip(names, probs)]
    if args.out:
        out = Path(args.out)
        if out.exists():
            raise UsageError(f"{out} already exists; choose another --out")
        with open(out, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([header] + rows)
        print(f"wrote {len(rows)} predictions to {out}")
    else:
        for row in rows:
            print("\t".join(row))
    return 0


HANDLERS = {"fit": cmd_fit, "evaluate": cmd_evaluate, "predict": cmd_predict}


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
