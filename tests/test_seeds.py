"""Seed runs (ssgan/seeds.py; ``ssgan fit --seeds``): the cache key, each seed's line, the summary against a
direct computation, and a seeds run continued after a seed was lost."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ssgan.cli import main
from ssgan.seeds import config_key
from tests.conftest import direct_probs


def test_config_key_ignores_seed_and_bookkeeping_only():
    from dataclasses import asdict

    from ssgan.config import Config

    base = Config()
    same = Config(seed=3, run_dir="elsewhere")
    same.train.progress, same.train.device, same.dataset.root = False, "cpu", "/data"
    other = Config()
    other.train.epochs = 3
    assert config_key(asdict(base)) == config_key(asdict(same))
    assert config_key(asdict(base)) != config_key(asdict(other))


def test_fit_seeds_prints_each_seed_the_ensemble_then_the_mean(seeds_run):
    run_dir, lines = seeds_run
    errors = [json.loads((run_dir / f"seed{s}" / "result.json").read_text())["test_error"] for s in (0, 1)]
    assert lines[0] == f"seed 0: test error {errors[0]:.2f} % ({run_dir / 'seed0'})"
    assert lines[1] == f"seed 1: test error {errors[1]:.2f} % ({run_dir / 'seed1'})"
    mean, std = np.mean(errors), np.std(errors, ddof=1)
    assert lines[-1] == f"test error: {mean:.2f} +- {std:.2f} % over 2 seeds (sample std)"
    (p0, y), (p1, _) = direct_probs(run_dir / "seed0"), direct_probs(run_dir / "seed1")
    ensemble = 100 * np.mean(np.argmax((p0 + p1) / 2, axis=1) != y)
    assert lines[-2].startswith(f"ensemble test error: {ensemble:.2f} % (2 models")

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["complete"]
    assert summary["mean"] == pytest.approx(mean) and summary["std"] == pytest.approx(std)
    assert summary["ensemble_error"] == pytest.approx(ensemble)
    for seed in (0, 1):
        assert {"config.yaml", "checkpoint.pt", "result.json"} <= {p.name for p in (run_dir / f"seed{seed}").iterdir()}
    md = (run_dir / "summary.md").read_text()
    assert "sample std (ddof=1)" in md and "- command: `ssgan fit --seeds 2" in md and "- seeds: 0-1" in md


def test_resume_of_a_seeds_run_keeps_finished_seeds(seeds_run, tmp_path, capsys):
    run_dir, lines = seeds_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "seed1" / "result.json").unlink()  # seed 1 as if killed after its last checkpoint
    mtime = (copy / "seed0" / "checkpoint.pt").stat().st_mtime_ns
    assert main(["fit", "--resume", str(copy)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "finished before, not trained again" in out[0] and "continuing from its checkpoint" in out[1]
    assert out[-1] == lines[-1]
    assert (copy / "seed0" / "checkpoint.pt").stat().st_mtime_ns == mtime
