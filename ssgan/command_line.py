"""What every command of the command line shares: its name, the parser whose usage errors are one line, bad
input and the exit codes, and the torch threads of a command that trains. ``cli`` and ``fit_command`` import it;
the library never does.

Exit codes: 0 success, 2 bad input (``UsageError``, ``ConfigError``, ``DataError``, ``RunDirError``: one line
on stderr, no traceback), 3 divergence (``TrainingDiverged``), 128 + N when stopped by signal N
(``TrainingInterrupted``). Nothing here loads torch until a run asks for it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from .config import ConfigError
from .rundir import RunDirError

PROG = "ssgan"


class UsageError(Exception):
    """Bad input on the command line: one line on stderr, exit code 2."""


def is_bad_input(error: BaseException) -> bool:
    """Bad input (one line, exit code 2): a ``UsageError``, ``ConfigError``, ``RunDirError`` or ``DataError``.
    ``data`` is imported only when the error is none of the first three (it loads torch; a ``DataError`` can only
    come from a process that has loaded it)."""
    if isinstance(error, (UsageError, ConfigError, RunDirError)):
        return True
    from .data import DataError

    return isinstance(error, DataError)


class Passthrough(BaseException):
    """Carries an exception of the Hydra task past Hydra (which reports any Exception as a traceback and
    exit code 1) to ``main``, which decides the exit code."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


class CommandParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (UsageError -> exit code 2), not usage text plus a line."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


def add_network_flags(parser: argparse.ArgumentParser) -> None:
    """``--discriminator`` / ``--generator``: the builders of a run of one's own networks (``model.arch=custom``),
    named by the person running the command; a run directory's own specs are never imported (docs/security.md)."""
    for name in ("discriminator", "generator"):
        parser.add_argument(f"--{name}", metavar="MODULE:BUILDER", help=f"a run of your own networks: its "
                            f"{name}'s class or function (the run's stored arguments are passed to it)")


def named_networks(args: argparse.Namespace) -> Optional[tuple]:
    """The (discriminator, generator) builders named on the command line, or None; both or neither."""
    if (args.discriminator is None) != (args.generator is None):
        raise UsageError("--discriminator and --generator come together: name both builders")
    return None if args.discriminator is None else (args.discriminator, args.generator)


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """``--threads N``, the torch threads of a command that trains (``use_threads``)."""
    parser.add_argument("--threads", type=_at_least_one, metavar="N",
                        help="torch threads on the CPU (default 1: on 2 cores the small recipes gain little from a "
                             "second, and lose most of their speed when another process is busy; see "
                             "benchmarks/threads.py)")


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number, at least 1")
    return int(text)


def use_threads(requested: Optional[int]) -> int:
    """Set torch's thread count for a run: ``requested`` (``--threads N``), else 1; the progress bar says it.

    One thread by default: measured on the 2-core machine (results/threads.json, ``benchmarks/threads.py``), the
    default job ran at 48-82 iterations a second with one thread and 1-6 with two while other processes were
    busy (torch's default, one thread per core, spins threads for cores they do not get). A user with free
    cores and a larger recipe passes ``--threads N``."""
    import torch

    threads = requested or 1
    torch.set_num_threads(threads)
    return threads


def exit_code(error: Exception) -> int:
    """One line on stderr and the exit code of a library exception; any other exception is re-raised."""
    if is_bad_input(error):
        return fail(str(error))
    from .train import TrainingDiverged, TrainingInterrupted  # (loaded already by a run that raised them)

    if isinstance(error, TrainingInterrupted):
        print(f"{PROG}: {error}", file=sys.stderr)
        return 128 + error.signum
    if isinstance(error, TrainingDiverged):
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 3
    raise error


def fail(message: str) -> int:
    """One line on stderr; exit code 2 (bad input)."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2
