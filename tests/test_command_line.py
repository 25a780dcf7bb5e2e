"""ssgan/command_line.py: what every command shares. A usage error is one line (exit code 2), bad input is known
by its type, and each library exception has its exit code; anything else is re-raised (a bug shows its
traceback)."""

from __future__ import annotations

import signal

import pytest

from ssgan.command_line import CommandParser, UsageError, exit_code, fail, is_bad_input, use_threads
from ssgan.config import ConfigError
from ssgan.data import DataError
from ssgan.rundir import RunDirError
from ssgan.train import TrainingDiverged, TrainingInterrupted


def test_a_parser_error_is_a_usage_error_of_one_line():
    parser = CommandParser(prog="ssgan probe")
    parser.add_argument("--n", type=int)
    with pytest.raises(UsageError, match=r"^ssgan probe: argument --n: invalid int value: 'x'$"):
        parser.parse_args(["--n", "x"])


@pytest.mark.parametrize("error", [UsageError("u"), ConfigError("c"), DataError("d"), RunDirError("r")])
def test_bad_input_is_exit_code_2_and_one_line(error, capsys):
    assert is_bad_input(error) and exit_code(error) == 2
    assert capsys.readouterr().err == f"ssgan: error: {error}\n"


def test_divergence_is_3_a_signal_128_plus_n_and_a_bug_is_raised(capsys):
    assert exit_code(TrainingDiverged("loss is nan at epoch 3")) == 3
    assert exit_code(TrainingInterrupted("epoch 2", signal.SIGTERM, "ssgan fit --resume R")) == 128 + signal.SIGTERM
    assert len(capsys.readouterr().err.splitlines()) == 2
    bug = KeyError("a bug")
    assert not is_bad_input(bug)
    with pytest.raises(KeyError):
        exit_code(bug)


def test_fail_is_one_line_and_exit_code_2(capsys):
    assert fail("no such run") == 2 and capsys.readouterr().err == "ssgan: error: no such run\n"


def test_use_threads_sets_torch(capsys):
    import torch

    try:
        assert use_threads(None) == 1 and torch.get_num_threads() == 1
        assert use_threads(2) == 2 and torch.get_num_threads() == 2
        assert capsys.readouterr().err == ""  # (the progress bar says it)
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest.one_thread)
