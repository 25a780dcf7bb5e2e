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


class _Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs but finally-blocks (which write nothing)."""


@pytest.mark.parametrize("concurrent", [False, True])
def test_a_seeds_run_killed_in_its_first_seed_continues_with_resume(tmp_path, monkeypatch, capsys, concurrent):
    from ssgan import train
    from tests.conftest import TINY_SEEDS

    original, calls = train._checkpoint, {"n": 0}

    def checkpoint_then_die(*args, **kwargs):
        original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == (2 if concurrent else 1):  # the first checkpoint of seed 0 (of both, concurrently)
            raise _Killed

    run_dir = tmp_path / "seeds"
    overrides = [o for o in TINY_SEEDS if not o.startswith("train.epochs")] + [
        "train.epochs=2", "train.checkpoint_every=1", "dataset.labels=20", f"train.concurrent_seeds={concurrent}"]
    monkeypatch.setattr(train, "_checkpoint", checkpoint_then_die)
    with pytest.raises(_Killed):
        main(["fit", "--seeds", "2", "--run-dir", str(run_dir), *overrides])
    monkeypatch.undo()
    assert not (run_dir / "summary.json").exists()  # no seed finished
    assert main(["fit", "--resume", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["finished"] == [0, 1]
    for seed in (0, 1):
        epochs = [json.loads(line)["epoch"] for line in (run_dir / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2]


def test_two_processes_on_one_table_share_its_seeds(tmp_path, capsys):
    """A second ``ssgan table`` on the same cache leaves the seed that the first is training to it, trains
    another, then waits for the first; every seed is trained once and both tables are complete."""
    import os
    import subprocess
    import sys
    import time

    from tests.conftest import TINY_SEEDS

    overrides = [o for o in TINY_SEEDS if not o.startswith(("train.epochs", "train.iters_per_epoch"))] + [
        "train.epochs=3", "train.iters_per_epoch=40", "train.checkpoint_every=1"]
    table = ["table", "--dataset", "digits", "--labels", "20", "--seeds", "2", "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([sys.executable, "-m", "ssgan", *table, "--out-dir", str(tmp_path / "a"), *overrides],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((tmp_path / "cache").glob("digits/*/seed0/checkpoint.pt")):
        assert first.poll() is None, first.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    assert main([*table, "--out-dir", str(tmp_path / "b"), *overrides]) == 0
    out_first, err_first = first.communicate(timeout=120)
    assert first.returncode == 0, err_first
    assert "Traceback" not in err_first
    out = capsys.readouterr().out
    assert "seed 0: another process is training it" in out and "finished by another process" in out
    (cell,) = (tmp_path / "cache" / "digits").iterdir()
    for seed in (0, 1):
        epochs = [json.loads(line)["epoch"] for line in (cell / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2, 3]  # trained once, by one of the two
    rows = [json.loads((tmp_path / side / "digits.json").read_text())["rows"][0] for side in ("a", "b")]
    assert rows[0]["test_errors"] == rows[1]["test_errors"] and rows[0]["seeds"] == [0, 1]


def test_overwrite_of_a_seeds_run_keeps_its_overrides_record(tmp_path):
    from tests.conftest import TINY_SEEDS

    run_dir = tmp_path / "seeds"
    argv = ["fit", "--seeds", "2", "--run-dir", str(run_dir), *TINY_SEEDS, "dataset.labels=20"]
    assert main(argv) == 0
    assert main([*argv, "--overwrite"]) == 0
    assert (run_dir / "overrides.yaml").is_file() and (run_dir / "seed1" / "result.json").is_file()


def test_a_seeds_run_resumes_with_overrides_that_keep_its_key(seeds_run, tmp_path, capsys):
    """As a single run does: how the seeds run and report may change on --resume, what they train may not."""
    run_dir = tmp_path / "run"
    shutil.copytree(seeds_run[0], run_dir)
    shutil.rmtree(run_dir / "seed1")  # an unfinished seed, trained by the resume
    assert main(["fit", "--resume", str(run_dir), "train.progress=false", "train.eval_every=2"]) == 0
    assert (run_dir / "seed1" / "result.json").is_file()
    capsys.readouterr()
    assert main(["fit", "--resume", str(run_dir), "train.lr=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot change train.lr" in err
