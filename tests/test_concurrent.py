"""Seeds trained concurrently (stacked parameters, one vmapped step) against single-seed runs."""

from __future__ import annotations

import json
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ssgan.checkpoint import load_checkpoint
from ssgan.cli import main
from ssgan.config import ConfigError, MethodConfig, ModelConfig, TrainConfig
from ssgan.train import fit, fit_grid


@pytest.mark.parametrize("ema_start", ["init", "debiased"])
def test_two_concurrent_seeds_match_two_single_seed_runs(tiny_config, ema_start):
    """With the in-network noise off, every random draw (subset, initialisation, data order, z) is the same
    as in the single runs, so the weights agree up to float32 rounding (the debiased average's rate too)."""
    cfg = replace(tiny_config, model=replace(tiny_config.model, input_noise=0.0, hidden_noise=0.0),
                  train=replace(tiny_config.train, epochs=2, iters_per_epoch=3, ema_start=ema_start))
    concurrent = fit_grid([replace(cfg, seed=s) for s in (0, 1)])
    for seed, result in zip([0, 1], concurrent):
        single = fit(replace(cfg, seed=seed))
        assert (result.labeled_indices == single.labeled_indices).all()
        for (name, a), b in zip(result.discriminator.state_dict().items(), single.discriminator.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
        for a, b in zip(result.generator.state_dict().values(), single.generator.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert result.test_error == single.test_error
    # Different seeds: different subsets and weights.
    assert not (concurrent[0].labeled_indices == concurrent[1].labeled_indices).all()


@pytest.mark.parametrize("backend", ["eager"])
def test_compiled_stacked_seeds_train_as_the_eager_stacked_seeds(tiny_config, backend):
    """train.compile with stacked seeds: the vmapped objectives and the optimizers' update compiled (here with
    a backend that skips code generation, to stay fast on the CPU) train what the eager vmapped step trains,
    to float32 rounding. With the in-network noise off: compiled code draws random numbers in its own order."""
    cfg = replace(tiny_config, model=replace(tiny_config.model, input_noise=0.0, hidden_noise=0.0),
                  train=replace(tiny_config.train, epochs=2, iters_per_epoch=3))
    eager = fit_grid([replace(cfg, seed=s) for s in (0, 1)])
    compiled = fit_grid([replace(cfg, seed=s, train=replace(cfg.train, compile=backend)) for s in (0, 1)])
    torch._dynamo.reset()
    for a, b in zip(eager, compiled):
        for (name, x), y in zip(a.discriminator.state_dict().items(), b.discriminator.state_dict().values()):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)
        for x, y in zip(a.generator.state_dict().values(), b.generator.state_dict().values()):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_concurrent_seeds_with_noise_ct_and_options_write_resumable_run_dirs(tiny_config, tmp_path, capsys):
    cfg = replace(tiny_config, method=MethodConfig(fm_norm=1, ct_weight=1.0, label_smoothing=0.1),
                  model=replace(tiny_config.model, virtual_batch_norm=True, minibatch_discrimination=True,
                                mbd_kernels=4, mbd_kernel_dim=3),
                  train=replace(tiny_config.train, sample_grid=True))
    run_dirs = [tmp_path / "s0", tmp_path / "s1"]
    results = fit_grid([replace(cfg, seed=s) for s in (0, 1)], run_dirs=run_dirs)
    assert all(0 <= r.test_error <= 100 for r in results)
    for run_dir in run_dirs:
        assert {"checkpoint.pt", "metrics.jsonl", "result.json", "samples.png"} <= {p.name for p in run_dir.iterdir()}
    # A seed of a concurrent run continues as a single-seed run.
    assert main(["fit", "--resume", str(run_dirs[1]), "train.epochs=2"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("test error:")


@pytest.mark.parametrize("change", [
    {"model": ModelConfig(d_widths=[32, 16], g_widths=[32], z_dim=8, norm="spectral")},
    {"method": MethodConfig(gradient_penalty=1.0)},
    {"method": MethodConfig(historical_averaging=0.1)},
    {"train": TrainConfig(compile="aot_eager")},
])
def test_unsupported_options_are_config_errors(tiny_config, change):
    with pytest.raises(ConfigError, match="concurrent seeds do not support"):
        fit_grid([replace(replace(tiny_config, **change), seed=s) for s in (0, 1)])


def test_fit_seeds_trains_them_concurrently_when_asked(tmp_path, capsys):
    from tests.conftest import TINY_OVERRIDES

    run_dir = tmp_path / "seeds"
    assert main(["fit", "--seeds", "2", "--run-dir", str(run_dir), "train.concurrent_seeds=true",
                 *TINY_OVERRIDES]) == 0
    out = capsys.readouterr().out
    assert "trained concurrently" in out and out.strip().splitlines()[-1].endswith("over 2 seeds (sample std)")
    assert (run_dir / "seed0" / "result.json").is_file() and (run_dir / "seed1" / "result.json").is_file()
    assert (run_dir / "summary.json").is_file()


# ------------------------------------------------------------------ the single-run frame, for several seeds

CONCURRENT = ["train.concurrent_seeds=true", "train.deterministic=true", "train.checkpoint_every=1"]


def _assert_same_weights(run_dir: Path, reference: Path, s: int) -> None:
    """Seed s's checkpoints of two seeds runs hold equal discriminator, averaged discriminator and generator
    weights."""
    a, b = (load_checkpoint(d / f"seed{s}" / "checkpoint.pt") for d in (run_dir, reference))
    for part in ("discriminator", "discriminator_avg", "generator"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (s, part, name)


def _seeds_overrides(epochs: int, iters: int) -> list:
    from tests.conftest import TINY_OVERRIDES

    return [o for o in TINY_OVERRIDES if not o.startswith(("train.epochs", "train.iters_per_epoch"))] + [
        f"train.epochs={epochs}", f"train.iters_per_epoch={iters}", *CONCURRENT]


def test_deterministic_and_tensorboard_behave_as_in_a_single_run(tiny_config, tmp_path, monkeypatch):
    from ssgan import concurrent

    seen = []
    original = concurrent.StackedEngine.step

    def recording_step(self, *args):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return original(self, *args)

    monkeypatch.setattr(concurrent.StackedEngine, "step", recording_step)
    pytest.importorskip("tensorboard")
    cfg = replace(tiny_config, train=replace(tiny_config.train, deterministic=True, tensorboard=True))
    fit_grid([replace(cfg, seed=s) for s in (0, 1)], run_dirs=[tmp_path / "s0", tmp_path / "s1"])
    assert seen and all(seen)
    assert not torch.are_deterministic_algorithms_enabled()  # restored afterwards
    for run_dir in (tmp_path / "s0", tmp_path / "s1"):
        events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
        assert events and events[0].stat().st_size > 0


def _start_seeds(run_dir, overrides):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "ssgan", "fit", "--seeds", "2", "--run-dir", str(run_dir),
                             *overrides], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def uninterrupted_concurrent(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("concurrent") / "seeds"
    assert main(["fit", "--seeds", "2", "--run-dir", str(run_dir), *_seeds_overrides(4, 40)]) == 0
    return run_dir


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_every_seed_and_resume_finishes_them_exactly(uninterrupted_concurrent, tmp_path,
                                                                          signum, capsys, monkeypatch):
    """Noise on, as in every recipe: the seeds continue together from the same position and random states,
    so the resumed run ends with exactly the weights of the uninterrupted one. SIGTERM comes from outside (a
    real process, as SLURM sends it); SIGINT from inside, at a chosen iteration (Ctrl-C)."""
    run_dir = tmp_path / "seeds"
    if signum == signal.SIGTERM:
        process = _start_seeds(run_dir, _seeds_overrides(4, 40))
        deadline = time.time() + 120
        while not (run_dir / "seed1" / "checkpoint.pt").exists():
            assert process.poll() is None, process.communicate()
            assert time.time() < deadline
            time.sleep(0.05)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 128 + signum, err
    else:
        import os

        from ssgan import concurrent

        calls, original = {"n": 0}, concurrent.StackedEngine.step

        def interrupting_step(self, *args):
            calls["n"] += 1
            if calls["n"] == 57:  # epoch 2, iteration 17
                os.kill(os.getpid(), signum)
            return original(self, *args)

        monkeypatch.setattr(concurrent.StackedEngine, "step", interrupting_step)
        assert main(["fit", "--seeds", "2", "--run-dir", str(run_dir), *_seeds_overrides(4, 40)]) == 128 + signum
        monkeypatch.undo()
        err = capsys.readouterr().err
    assert f"interrupted by {signal.Signals(signum).name}" in err and f"--resume {run_dir}" in err
    assert "Traceback" not in err
    positions = [(load_checkpoint(run_dir / f"seed{s}" / "checkpoint.pt")["epoch"],
                  load_checkpoint(run_dir / f"seed{s}" / "checkpoint.pt")["iteration"]) for s in (0, 1)]
    assert positions[0] == positions[1]  # both seeds checkpointed at the same position

    assert main(["fit", "--resume", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("over 2 seeds (sample std)")
    for s in (0, 1):
        _assert_same_weights(run_dir, uninterrupted_concurrent, s)
        epochs = [json.loads(line)["epoch"] for line in (run_dir / f"seed{s}" / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2, 3, 4]


def test_a_non_finite_parameter_stops_with_exit_code_3(tmp_path, capsys, monkeypatch):
    from ssgan import concurrent

    calls = {"n": 0}
    original = concurrent.StackedEngine.step

    def poisoning_step(self, *args):
        calls["n"] += 1
        stats = original(self, *args)
        if calls["n"] == 7:  # epoch 2 (of 5 iterations), seed 1's discriminator
            with torch.no_grad():
                next(iter(self.params_d.values()))[1].fill_(float("nan"))
        return stats

    monkeypatch.setattr(concurrent.StackedEngine, "step", poisoning_step)
    run_dir = tmp_path / "seeds"
    assert main(["fit", "--seeds", "2", "--run-dir", str(run_dir), *_seeds_overrides(3, 5)]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "diverged at epoch 2" in err and "(seed 1)" in err
    assert "non-finite discriminator parameter" in err or "non-finite loss" in err
    assert load_checkpoint(run_dir / "seed1" / "checkpoint.pt")["epoch"] == 1  # the last good one is kept


def test_overwrite_starts_clean_logs(tmp_path):
    run_dir = tmp_path / "seeds"
    overrides = _seeds_overrides(2, 2)
    assert main(["fit", "--seeds", "2", "--run-dir", str(run_dir), *overrides]) == 0
    assert main(["fit", "--seeds", "2", "--run-dir", str(run_dir), "--overwrite", *overrides]) == 0
    for s in (0, 1):
        epochs = [json.loads(line)["epoch"] for line in (run_dir / f"seed{s}" / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2]


def test_concurrent_temporal_ensembles_match_single_runs(tiny_config):
    """method=ct_gan_te with concurrent seeds: each seed keeps its own per-example targets."""
    cfg = replace(tiny_config, model=replace(tiny_config.model, input_noise=0.0, hidden_noise=0.0),
                  method=MethodConfig(fm_norm=2, ct_weight=1.0, ct_mode="temporal"),
                  train=replace(tiny_config.train, epochs=3, iters_per_epoch=3))
    concurrent = fit_grid([replace(cfg, seed=s) for s in (0, 1)])
    for seed, result in zip([0, 1], concurrent):
        single = fit(replace(cfg, seed=seed))
        for a, b in zip(result.discriminator.state_dict().values(), single.discriminator.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert [r["loss_ct"] for r in result.history] == pytest.approx([r["loss_ct"] for r in single.history],
                                                                       rel=1e-4)


# ------------------------------------------------------------------- a whole table's grid in stacked steps

def test_a_stacked_grid_of_two_label_counts_and_two_seeds_equals_four_single_runs(tiny_config):

    base = replace(tiny_config, model=replace(tiny_config.model, input_noise=0.0, hidden_noise=0.0),
                   train=replace(tiny_config.train, epochs=2, iters_per_epoch=3))
    cfgs = [replace(base, seed=seed, dataset=replace(base.dataset, labels=labels))
            for labels in (20, 30) for seed in (0, 1)]
    stacked = fit_grid(cfgs)
    for cfg, result in zip(cfgs, stacked):
        single = fit(cfg)
        assert len(result.labeled_indices) == cfg.dataset.labels
        assert (result.labeled_indices == single.labeled_indices).all()
        for a, b in zip(result.discriminator.state_dict().values(), single.discriminator.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert result.test_error == single.test_error


def test_a_grid_of_other_networks_is_refused(tiny_config):

    other = replace(tiny_config, model=replace(tiny_config.model, d_widths=[16, 16]))
    with pytest.raises(ConfigError, match="share their config"):
        fit_grid([tiny_config, other])


def test_the_table_trains_its_label_counts_and_seeds_together_in_bounded_steps(tmp_path, capsys, monkeypatch):
    from ssgan import train
    from tests.conftest import TINY_SEEDS

    sizes, original = [], train.fit_grid

    def recording_grid(cfgs, *args, **kwargs):
        sizes.append(sorted((c.dataset.labels, c.seed) for c in cfgs))
        return original(cfgs, *args, **kwargs)

    monkeypatch.setattr(train, "fit_grid", recording_grid)
    monkeypatch.setattr("ssgan.seeds.fit_grid", recording_grid)
    table = ["table", "--dataset", "digits", "--labels", "20,30", "--seeds", "2", "--cache-dir", str(tmp_path / "c"),
             "--out-dir", str(tmp_path / "r"), *TINY_SEEDS, "train.concurrent_seeds=true", "train.max_concurrent=3"]
    assert main(table) == 0
    assert [len(s) for s in sizes] == [3] and sum(len(s) for s in sizes) == 3  # 4 models: 3 stacked, 1 alone
    out = capsys.readouterr().out
    assert out.count("trained concurrently") == 3
    rows = json.loads((tmp_path / "r" / "digits.json").read_text())["rows"]
    assert [(r["labels"], r["seeds"]) for r in rows] == [(20, [0, 1]), (30, [0, 1])]


# ------------------------------------------------- a kill between the checkpoint writes of a stacked group

class _Killed(BaseException):
    """Stands for SIGKILL: nothing of the process runs after it but the unwinding."""


_WRITES = ("checkpoint.pt", ".checkpoint.pt.staged", ".group-commit.json", "result.json")


def _killed_at(k: int, monkeypatch):
    """Make the k-th rename into a run's checkpoint, staged checkpoint, commit record or result fail as a
    kill would, before it happens (the run's files are left as a SIGKILL at that instant leaves them)."""
    import os

    original, count = os.replace, {"n": 0}

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) in _WRITES:
            count["n"] += 1
            if count["n"] == k:
                raise _Killed(dst)
        return original(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return count


KILL_ARGS = ["--seeds", "3", *_seeds_overrides(2, 2)]


@pytest.fixture(scope="module")
def uninterrupted_three(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("three") / "ref"
    assert main(["fit", "--run-dir", str(run_dir), *KILL_ARGS]) == 0
    return run_dir


# The renames of 3 seeds x 2 epochs, checkpoint_every=1: at epoch 1, the group's staged checkpoints (1-3), its
# commit record (4) and the switches (5-7); the same at the end (8-14); the results (15-17).
@pytest.mark.parametrize("k", [2, 4, 6, 9, 11, 13, 16])
def test_a_kill_between_the_seeds_checkpoint_writes_resumes_exactly(uninterrupted_three, tmp_path, monkeypatch, k):
    """Models trained together commit their checkpoints as one unit: wherever a kill cuts the writes (a
    staged file of seed 1, after the commit record, between two switches, between two results), the resume
    continues every seed from one position and ends with the uninterrupted run's weights."""
    run_dir = tmp_path / "cut"
    count = _killed_at(k, monkeypatch)
    with pytest.raises(_Killed):
        main(["fit", "--run-dir", str(run_dir), *KILL_ARGS])
    monkeypatch.undo()
    assert count["n"] == k
    assert main(["fit", "--resume", str(run_dir)]) == 0
    for s in range(3):
        _assert_same_weights(run_dir, uninterrupted_three, s)
        assert json.loads((run_dir / f"seed{s}" / "result.json").read_text())["test_error"] == \
            json.loads((uninterrupted_three / f"seed{s}" / "result.json").read_text())["test_error"]
        assert not list((run_dir / f"seed{s}").glob(".checkpoint.pt.staged")), s


def test_a_run_copied_mid_group_commit_resumes_exactly_and_leaves_the_original_alone(uninterrupted_three, tmp_path,
                                                                                    monkeypatch):
    """A run directory is relocatable: the group commit record names its members relative to itself, so a copy
    made while the commit was pending (k=6: seed 0 switched, seeds 1 and 2 staged) resumes to the uninterrupted
    run's weights, and the original's files stay as they were (no lock of theirs is held by the resume)."""
    import shutil

    original = tmp_path / "cut"
    _killed_at(6, monkeypatch)
    with pytest.raises(_Killed):
        main(["fit", "--run-dir", str(original), *KILL_ARGS])
    monkeypatch.undo()
    record = json.loads((original / "seed0" / ".group-commit.json").read_text())
    assert not any(Path(m).is_absolute() for m in record["members"]), record
    before = {p: p.read_bytes() for p in original.rglob("*") if p.is_file()}
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, copy)
    assert main(["fit", "--resume", str(copy)]) == 0
    assert {p: p.read_bytes() for p in original.rglob("*") if p.is_file()} == before
    for s in range(3):
        _assert_same_weights(copy, uninterrupted_three, s)


def test_a_group_commit_record_touches_no_folder_outside_its_group(tmp_path):
    """A record naming a folder elsewhere (absolute, or ../ beyond the seeds run or table cache) is refused
    with one line, and nothing there is switched."""
    from ssgan.checkpoint import recover_group_checkpoints
    from ssgan.rundir import RunDirError

    victim = tmp_path / "other" / "run"
    victim.mkdir(parents=True)
    (victim / "checkpoint.pt").write_text("theirs")
    (victim / ".checkpoint.pt.staged").write_text("forged")
    member = tmp_path / "cache" / "digits" / "key" / "seed0"
    member.mkdir(parents=True)
    for named in (str(victim), "../../../../other/run"):
        (member / ".group-commit.json").write_text(json.dumps({"members": [".", named]}))
        with pytest.raises(RunDirError, match="outside"):
            recover_group_checkpoints([member])
        assert (victim / "checkpoint.pt").read_text() == "theirs"


def test_a_cut_group_commit_is_recovered_when_the_seeds_resume_one_at_a_time(tmp_path, monkeypatch, capsys):
    """train.concurrent_seeds may change on resume: a group commit cut between its switches (k=6: seed 0
    switched, seeds 1 and 2 staged) is finished by the one-seed-at-a-time path too, so every seed continues
    from the group's position and no staged file or commit record is left behind."""
    run_dir = tmp_path / "cut"
    _killed_at(6, monkeypatch)
    with pytest.raises(_Killed):
        main(["fit", "--run-dir", str(run_dir), *KILL_ARGS])
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["fit", "--resume", str(run_dir), "train.concurrent_seeds=false"]) == 0
    assert capsys.readouterr().out.count("continuing from its checkpoint at epoch 1") == 3
    for s in range(3):
        assert (run_dir / f"seed{s}" / "result.json").is_file()
        assert not list((run_dir / f"seed{s}").glob(".checkpoint.pt.staged")), s
        assert not list((run_dir / f"seed{s}").glob(".group-commit.json")), s
