"""ssgan/fit_command.py: ``ssgan fit``'s flags become Hydra overrides (quoted where a value is not a plain word),
a multirun names the keys it sweeps, and a multirun job on several GPUs picks its own."""

from __future__ import annotations

import pytest

from ssgan.command_line import UsageError
from ssgan.fit_command import _swept_keys, fit_overrides, fit_parser, job_device


def test_flags_become_overrides_and_key_value_words_come_last():
    args = fit_parser().parse_intermixed_args(["--labels", "100", "train.lr=1e-4", "--run-dir", "my runs/a"])
    assert fit_overrides(args) == ["dataset.labels=100", "run_dir='my runs/a'", "train.lr=1e-4"]


def test_a_word_without_equals_is_a_usage_error():
    with pytest.raises(UsageError, match="overrides have the form KEY=VALUE"):
        fit_overrides(fit_parser().parse_intermixed_args(["stray"]))


def test_the_swept_keys_of_a_multirun():
    assert _swept_keys(["seed=0,1", "train.lr=1e-3", "dataset.labels=20,50"]) == ["seed", "dataset.labels"]
    assert _swept_keys(["train.lr=1e-3"]) == []


def test_a_multirun_job_on_several_gpus_takes_its_own():
    assert job_device("auto", 3, 2) == "cuda:1"
    assert job_device("auto", None, 2) == "auto" and job_device("cpu", 3, 2) == "cpu"
