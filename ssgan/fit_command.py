"""The ``ssgan fit`` command (and ``--resume``): its flags and the Hydra app it is (the basics every command
shares are in ``command_line``).

``ssgan fit`` is a real Hydra application: its flags are rewritten into Hydra overrides
(``--dataset cifar10`` -> ``dataset=cifar10``, ``--labels 4000`` -> ``dataset.labels=4000``) before Hydra parses
them, so ``-m`` multirun and Hydra's launcher plugins work. The overrides are composed and checked once
(``config.compose``) before Hydra starts, so that a mistyped key or an impossible value gives one clear line
and exit code 2, and no run directory is created for it. Hydra's global state is set and restored by
``hydra_state.hydra_globals``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import shlex
from pathlib import Path
from typing import List, Optional, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import __version__
from .command_line import (PROG, CommandParser, Passthrough, UsageError, add_network_flags, add_threads_flag,
                           is_bad_input, named_networks, use_threads)
from .config import (CONFIGS, DATASETS, METHODS, PRIMARY_CONFIGS, RESUMABLE_FIELDS, Config, check_seeds, compose,
                     first_line, override_message, register_configs, resolve_paths, to_config, validate)
from .hydra_state import hydra_globals
from .rundir import (CHECKPOINT_NAME, RESULT_NAME, check_free, clear_outputs, default_name,
                     default_sweep_name, is_used, locked, make_dir, remove_unstarted, removed_on_failure,
                     write_overrides)

# torch and the modules that load it (checkpoint, data, seeds, table, train) are imported where a run needs them,
# so that `ssgan fit --help` and a usage error answer in well under a second

# ------------------------------------------------------------------------------------------------ fit

FIT_FLAGS = {"dataset": "dataset", "method": "method", "labels": "dataset.labels", "seed": "seed",
             "device": "train.device", "epochs": "train.epochs", "run_dir": "run_dir"}


def _fit_epilog() -> str:
    """The examples and choices under ``ssgan fit --help``."""
    return (f"data sets: {', '.join(DATASETS)} (default digits: scikit-learn's 8x8 digits, no download)\n"
            f"methods:   {', '.join(METHODS)} (default improved_gan)\n"
            "sources:   dataset.source=torchvision|folder|npz, dataset.root=DIR, dataset.path=PATH, "
            "dataset.download=true\n"
            "examples:  ssgan fit\n"
            "           ssgan fit --dataset mnist --labels 100 dataset.root=data\n"
            "           ssgan fit --dataset cifar10 --labels 4000 --method ct_gan\n"
            "           ssgan fit --dataset mnist --epochs 1 train.iters_per_epoch=20 dataset.root=data\n"
            "                     (a smoke run: MNIST's 600 iterations per epoch take minutes each on a CPU)\n"
            "           ssgan fit -m seed=0,1,2   (a Hydra multirun)\n"
            "           ssgan fit --seeds 10      (seeds 0-9 in one run directory; mean +- std, ensemble)\n"
            "           ssgan fit -m seed=0,1 dataset.labels=20,50 hydra/launcher=local   (parallel jobs)\n"
            "           ssgan fit --cfg job --dataset cifar10   (print the composed config)\n"
            f"config groups (GROUP=OPTION; recipe/ is picked for dataset + method by itself):\n{_config_groups()}")


def fit_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog=f"{PROG} fit", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a semi-supervised GAN (Salimans et al. 2016; Wei et al. 2018). Extra KEY=VALUE "
                    "words are Hydra overrides of configs/ (e.g. train.lr=1e-4 method.ct_weight=0.5).",
        epilog=_fit_epilog())
    parser.add_argument("--dataset", choices=DATASETS, help="data set and its published recipe")
    parser.add_argument("--labels", type=int, help="number of labeled examples (balanced over classes)")
    parser.add_argument("--method", choices=METHODS, help=", ".join(METHODS))
    parser.add_argument("--seed", type=int, help="seed of the labeled subset, initialisation and data order")
    parser.add_argument("--seeds", type=int, metavar="K", help="train seeds seed .. seed+K-1 (one after another, "
                        "or together with train.concurrent_seeds=true) into one run directory (a sub-directory per seed, summary.json, summary.md); prints "
                        "each seed's test error, the ensemble's, then the mean +- sample std as the last line")
    _run_flags(parser)
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


def _run_flags(parser: argparse.ArgumentParser) -> None:
    """Where and how a run trains: device, epochs, threads, its directory, --resume."""
    parser.add_argument("--device", help="auto, cpu or cuda")
    parser.add_argument("--epochs", type=int, help="shorthand for train.epochs=N")
    add_threads_flag(parser)
    parser.add_argument("--run-dir", dest="run_dir", help="run directory (default runs/<name>-<timestamp>)")
    parser.add_argument("--overwrite", action="store_true", help="allow reusing an existing run directory")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint "
                        "(KEY=VALUE words then change its saved config, e.g. train.epochs=600)")
    add_network_flags(parser)  # (with --resume: a run of one's own networks)


HYDRA_INFO = ["all", "config", "defaults", "defaults-tree", "plugins", "searchpath"]


def _config_groups() -> str:
    """The config groups of the packaged configs/ and their options, for ``ssgan fit --help``."""
    root = CONFIGS
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
        flag = next((f for f, key in FIT_FLAGS.items() if key == word.split("=", 1)[0].lstrip("+~")), None)
        if flag is not None and getattr(args, flag) is not None:  # which one wins would be a guess: refuse
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)} and {word} set the same field; "
                             f"give one")
    return overrides + list(args.overrides)


def _quote(value: str) -> str:
    """A flag's value as a Hydra override value: quoted (and escaped) unless it is a plain word, so that paths
    with spaces or other characters pass as they were typed."""
    if re.fullmatch(r"[\w./:@+-]*", value, re.ASCII):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _expand_sweeps(overrides: Sequence[str]) -> List[List[str]]:
    """Every combination of a multirun's sweep values, each as a plain override list."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as error:
        raise UsageError(override_message(error)) from None
    choices = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([f"{key}={override.get_value_element_as_str()}"])
    return [list(combo) for combo in itertools.product(*choices)]


def _swept_keys(overrides: Sequence[str]) -> List[str]:
    """The keys a multirun sweeps over (``seed=0,1`` -> ``seed``)."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # (reported by Hydra itself)
        return []
    return [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]


def job_device(device: str, job_num: Optional[int], n_gpus: int) -> str:
    """``train.device=auto`` in a multirun job on a machine with several GPUs: GPU (job number mod GPUs), so
    that a joblib launcher with ``n_jobs`` = the number of GPUs spreads the jobs over them. Else unchanged."""
    if device != "auto" or job_num is None or n_gpus < 2:
        return device
    return f"cuda:{job_num % n_gpus}"


def _fit_task(dict_cfg, n_seeds: Optional[int] = None, swept: Sequence[str] = ()) -> float:
    """The Hydra task: one training run into Hydra's output directory, or with ``n_seeds`` (``--seeds K``)
    K seeds into sub-directories of it. Errors travel to ``main`` past Hydra (``Passthrough``)."""
    import torch

    from .table import Progress, fit_seeds
    from .train import TrainingDiverged, TrainingInterrupted

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
                error = fit_seeds(cfg, check_seeds(cfg.seed, n_seeds), run_dir, command=command,
                                  progress=Progress(print)).mean
            else:
                error = _fit_and_print(cfg, run_dir).test_error
            if multirun:  # one line per job naming its swept values, so the sweep's output reads as a table
                values = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept]
                print(f"job {hydra_cfg.job.num} ({' '.join(values)}): test error "
                      f"{'(mean) ' * (n_seeds is not None)}{error:.2f} %, {run_dir}")
            return error
    except (TrainingDiverged, TrainingInterrupted) as error:
        raise Passthrough(error) from None
    except (Exception, KeyboardInterrupt) as error:
        if not (isinstance(error, KeyboardInterrupt) or is_bad_input(error)):
            raise
        if created:
            remove_unstarted(run_dir)  # bad input or Ctrl-C at start-up: no trace left
        if isinstance(error, KeyboardInterrupt):
            raise
        raise Passthrough(error) from None


def _fit_and_print(cfg: Config, run_dir: Path, resume=None):
    """``train.fit`` into ``run_dir``; the last line printed is the test error of the averaged weights."""
    from .train import fit

    result = fit(cfg, run_dir=run_dir, resume=resume)
    print(f"run directory: {run_dir}")
    if result.val_error is not None:
        print(f"validation error: {result.val_error:.2f} %")
    if math.isfinite(result.test_error):
        print(f"test error: {result.test_error:.2f} %")
    else:
        print("test error: none (the data set has no test images)")
    return result


def cmd_resume(run_dir: str, overrides: Sequence[str], networks: Optional[tuple] = None,
               threads: Optional[int] = None) -> int:
    """Continue a run from its checkpoint, exactly where it was written; KEY=VALUE words change its config.
    A seeds run continues with its saved config: finished seeds are kept, the others trained or continued.
    ``networks``: the builders of a run of one's own networks (``--discriminator``, ``--generator``)."""
    from .checkpoint import check_config_record, check_weight_shapes, checkpoint_config, load_checkpoint
    from .seeds import in_key, is_seeds_run, read_plan
    from .table import Progress, fit_seeds
    from .trust import networks_for

    path = Path(run_dir)
    if path.is_file():
        raise UsageError(f"--resume takes the run directory, not a file in it: --resume {path.parent}")
    if not path.is_dir():
        raise UsageError(f"--resume {run_dir}: no such run directory")
    if is_seeds_run(path):
        cfg, seeds, command = read_plan(path)
        cfg, _ = networks_for(cfg, networks, run_dir)
        # only what leaves every seed's config key as it is (how the seeds run and report), so that finished
        # seeds stay valid and unfinished ones continue exactly
        allowed = tuple(k for k in RESUMABLE_FIELDS if not in_key(k))
        cfg = _resume_overrides(cfg, overrides, allowed, f"{run_dir} is a run of several seeds: its seeds")
        validate(cfg)
        use_threads(threads)
        fit_seeds(cfg, seeds, path, command=command, progress=Progress(print))
        return 0
    payload = load_checkpoint(path / CHECKPOINT_NAME)
    cfg = checkpoint_config(payload, path / CHECKPOINT_NAME)
    cfg, _ = networks_for(cfg, networks, run_dir)  # (a checkpoint naming code is refused as such, first)
    check_config_record(path, cfg, overrides, RESUMABLE_FIELDS)
    if cfg.model.arch != "custom":  # the sizes it names against its weights, before anything is allocated
        check_weight_shapes(cfg, payload["discriminator"], payload["generator"], path / CHECKPOINT_NAME)
    cfg = _resume_overrides(cfg, overrides, RESUMABLE_FIELDS, "the checkpoint")
    cfg = resolve_paths(cfg)
    validate(cfg)
    use_threads(threads)
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
    try:  # values read as Hydra reads them at the start of a run (train.cuda_graph=off is "off", not False)
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
    swept = _swept_keys(overrides) if multirun else []

    def task(dict_cfg) -> float:
        return _fit_task(dict_cfg, n_seeds, swept)

    register_configs()
    argv = [PROG, *(["--multirun"] if multirun else []), *hydra_flags, *overrides]  # PROG: shell completion
    with hydra_globals(argv):
        hydra.main(config_path=PRIMARY_CONFIGS, config_name="config", version_base=None)(
            task)()


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
        args, _ = fit_parser().parse_known_args(words)
        kept = fit_overrides(args)
    except (UsageError, SystemExit):
        kept = [w for w in words if "=" in w]
    return " ".join([PROG, *kept, *partial]) + ending


def _resume_args(args: argparse.Namespace, hydra_flags: Sequence[str]) -> int:
    """``ssgan fit --resume RUN_DIR``: only KEY=VALUE words (and the builders of one's own networks) go with it."""
    fixed = [f"--{flag.replace('_', '-')}" for flag in FIT_FLAGS if getattr(args, flag) is not None]
    fixed += ["--seeds"] if args.seeds is not None else []
    if fixed or args.multirun or args.overwrite or hydra_flags:
        raise UsageError(f"--resume continues a run with its saved config; drop "
                         f"{' '.join(fixed + list(hydra_flags)) or '-m'} (KEY=VALUE overrides such as "
                         f"train.epochs=N are allowed)")
    return cmd_resume(args.resume, fit_overrides(args), named_networks(args), args.threads)


def _fit_multirun(args: argparse.Namespace, overrides: List[str], hydra_flags: List[str]) -> int:
    """``ssgan fit -m``: every job's config checked before Hydra starts, then the sweep; a sweep that could not
    start leaves no folder."""
    for combo in _expand_sweeps(overrides):
        compose(combo, **_where(args))
    use_threads(args.threads)  # after the checks: a usage error loads no torch
    if not any(o.startswith("hydra.sweep.dir=") for o in overrides):
        overrides.append(f"hydra.sweep.dir={_quote(default_sweep_name())}")
    sweep_dir = Path(next(o for o in overrides if o.startswith("hydra.sweep.dir=")).split("=", 1)[1].strip("'"))
    try:
        with removed_on_failure(runs=[sweep_dir]):  # no job started: no trace left
            _run_hydra(overrides, multirun=True, n_seeds=args.seeds, hydra_flags=hydra_flags)
    except Exception as error:
        if not isinstance(error, (HydraException, OmegaConfBaseException)) \
                and os.environ.get("HYDRA_FULL_ERROR") != "1":  # a launcher that cannot start (SLURM's
            raise UsageError(f"the sweep could not be launched: {type(error).__name__}: "  # off a cluster)
                             f"{first_line(error)} (HYDRA_FULL_ERROR=1 shows the traceback)") from None
        raise
    return 0


def cmd_fit(argv: Sequence[str]) -> int:
    args = fit_parser().parse_intermixed_args(argv)  # KEY=VALUE words may come between flags
    if args.version:
        print(f"{PROG} {__version__} (Hydra {hydra.__version__})")
        return 0
    if args.seeds is not None:
        check_seeds(0, args.seeds)  # (before anything else; the range once the config gives the first seed)
    hydra_flags = _hydra_flags(args)
    if args.resume:
        return _resume_args(args, hydra_flags)
    if named_networks(args) is not None:
        raise UsageError("--discriminator / --generator name the networks of a run to --resume; a new run names "
                         "them as model=custom model.discriminator._target_=... model.generator._target_=...")
    if args.shell_completion or args.cfg or args.info or args.hydra_help:  # Hydra answers; nothing runs
        overrides = [o for o in args.overrides] if args.shell_completion else fit_overrides(args)
        if args.shell_completion and "COMP_LINE" in os.environ:
            os.environ["COMP_LINE"] = _completion_line(os.environ["COMP_LINE"])
        _run_hydra(overrides, args.multirun, hydra_flags=hydra_flags)
        return 0
    overrides = fit_overrides(args)
    if args.multirun:
        return _fit_multirun(args, overrides, hydra_flags)
    cfg = compose(overrides, **_where(args))
    if args.seeds is not None:
        check_seeds(cfg.seed, args.seeds)
    use_threads(args.threads)
    if args.run_dir is None and not any(o.startswith("run_dir=") for o in overrides):
        cfg.run_dir = default_name(cfg, args.seeds)
        overrides.append(f"run_dir={_quote(cfg.run_dir)}")
    check_free(cfg.run_dir, cfg.overwrite)
    with removed_on_failure(folders=[cfg.run_dir]):  # a run that could not start leaves no empty folders
        make_dir(Path(cfg.run_dir))  # here, so that a read-only or missing place is one line, before Hydra starts
        _run_hydra(overrides, multirun=False, n_seeds=args.seeds, hydra_flags=hydra_flags)
    return 0
