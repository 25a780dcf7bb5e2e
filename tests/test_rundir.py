"""The run directory (issue "Never lose a run"): exact resume after SIGKILL and SIGINT, the divergence guard, the
atomic writes, the lock, --overwrite, and the typed records written and read side by side."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssgan import losses
from ssgan.checkpoint import load_checkpoint, load_run
from ssgan.cli import main
from ssgan.rundir import CHECKPOINT_FORMAT, RunDirError, atomic_write
from tests.conftest import TINY_OVERRIDES

# Long enough to be killed part-way (a few seconds), short enough for CI.
RESUMABLE = [o for o in TINY_OVERRIDES if not o.startswith(("train.epochs", "train.iters_per_epoch"))] + [
    "train.epochs=6", "train.iters_per_epoch=40", "train.checkpoint_every=1", "train.deterministic=true"]


def _start(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "ssgan", "fit", "--run-dir", str(run_dir), *RESUMABLE],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def _same_weights(a: Path, b: Path) -> bool:
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    keys = ("discriminator", "discriminator_avg", "generator")
    return all(torch.equal(ca[k][name], cb[k][name]) for k in keys for name in ca[k])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert main(["fit", "--run-dir", str(run_dir), *RESUMABLE]) == 0
    return run_dir


def _test_error_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_sigkill_then_resume_ends_exactly_as_an_uninterrupted_run(uninterrupted, tmp_path, capsys):
    run_dir = tmp_path / "killed"
    process = _start(run_dir)
    _wait_for(run_dir / "checkpoint.pt", process)  # the first epoch is done: kill somewhere after it
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert main(["fit", "--resume", str(run_dir)]) == 0
    resumed_line = _test_error_line(capsys)
    assert _same_weights(run_dir, uninterrupted)
    reference = (uninterrupted / "result.json").read_text()
    import json

    assert json.loads((run_dir / "result.json").read_text())["test_error"] == json.loads(reference)["test_error"]
    assert resumed_line.startswith("test error:")
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]  # work redone after the kill is logged once


def test_sigint_writes_a_checkpoint_mid_epoch_and_resume_is_exact(uninterrupted, tmp_path):
    run_dir = tmp_path / "interrupted"
    process = _start(run_dir)
    _wait_for(run_dir / "checkpoint.pt", process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT, err
    assert "interrupted by SIGINT" in err and "--resume" in err and "Traceback" not in err
    payload = load_checkpoint(run_dir / "checkpoint.pt")
    assert payload["epoch"] >= 1
    assert main(["fit", "--resume", str(run_dir)]) == 0
    assert _same_weights(run_dir, uninterrupted)


def test_resume_can_extend_the_epochs(uninterrupted, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "extended"
    shutil.copytree(uninterrupted, run_dir)
    assert main(["fit", "--resume", str(run_dir)]) == 2  # already finished
    assert "already finished" in capsys.readouterr().err
    assert main(["fit", "--resume", str(run_dir), "train.epochs=7"]) == 0
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 7
    assert "epochs: 7" in (run_dir / "config.yaml").read_text()  # the config it now trains with


def test_divergence_stops_with_epoch_and_iteration_and_keeps_the_last_good_checkpoint(tmp_path, capsys,
                                                                                       monkeypatch):
    calls = {"n": 0}
    original = losses.feature_matching_loss

    def poisoned(f_real, f_fake, p=1):
        calls["n"] += 1
        loss = original(f_real, f_fake, p)
        return loss * float("nan") if calls["n"] == 40 + 7 else loss  # epoch 2, iteration 7

    monkeypatch.setattr(losses, "feature_matching_loss", poisoned)
    run_dir = tmp_path / "diverged"
    assert main(["fit", "--run-dir", str(run_dir), *RESUMABLE]) == 3
    err = capsys.readouterr().err.strip()
    assert "diverged at epoch 2, iteration 7" in err and "last good checkpoint" in err
    assert len(err.splitlines()) == 1
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in load_checkpoint(run_dir / "checkpoint.pt")["discriminator"].values()
               if v.is_floating_point())


def test_atomic_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_write(path, b"the previous checkpoint")

    def failing_fsync(fd):  # the new content is partly written when the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(RunDirError, match="No space left on device"):
        atomic_write(path, b"a new, longer checkpoint")
    monkeypatch.undo()
    assert path.read_bytes() == b"the previous checkpoint"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left over


def test_load_run_round_trip(uninterrupted):
    run = load_run(uninterrupted)
    assert run.epoch == 6 and run.config.train.epochs == 6 and len(run.class_names) == 10
    logits, feats = run.discriminator(torch.zeros(2, 1, 8, 8))
    assert logits.shape == (2, 10)


class _Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs but finally-blocks (which write nothing)."""


def _kill_after_first_checkpoint(monkeypatch):
    from ssgan import train

    original = train._checkpoint

    def checkpoint_then_die(*args, **kwargs):
        original(*args, **kwargs)
        raise _Killed

    monkeypatch.setattr(train, "_checkpoint", checkpoint_then_die)


def test_a_kill_in_the_final_writes_is_finished_by_resume(uninterrupted, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "final"
    shutil.copytree(uninterrupted, run_dir)
    for name in ("result.json", "samples.png"):  # killed after the last checkpoint, before these
        (run_dir / name).unlink()
    assert main(["ensemble", str(run_dir), "--device", "cpu"]) == 2
    assert f"ssgan fit --resume {run_dir}" in capsys.readouterr().err  # ensemble sends the user to --resume ...
    assert main(["fit", "--resume", str(run_dir)]) == 0  # ... which finishes the run instead of refusing
    assert (run_dir / "samples.png").is_file()
    assert json.loads((run_dir / "result.json").read_text())["test_error"] == \
        json.loads((uninterrupted / "result.json").read_text())["test_error"]
    assert main(["ensemble", str(run_dir), "--device", "cpu"]) == 0


def test_a_signal_during_the_final_writes_completes_them_first(tmp_path, monkeypatch):
    from ssgan import train

    received = []
    guard = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))  # if ssgan had none
    original = train.write_outputs

    def signalled_write(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "write_outputs", signalled_write)
    try:
        code = main(["fit", "--run-dir", str(tmp_path / "run"), *TINY_OVERRIDES])
    finally:
        signal.signal(signal.SIGTERM, guard)
    assert code == 128 + signal.SIGTERM and not received  # ssgan's handler took it
    assert (tmp_path / "run" / "result.json").is_file() and (tmp_path / "run" / "samples.png").is_file()


def test_a_hangup_stops_a_run_as_sigterm_does_with_a_checkpoint_at_the_stop(tmp_path, monkeypatch, capsys):
    """SIGHUP (a closed terminal, a dropped ssh session) mid-run: a checkpoint of the position, one line saying
    how to continue, exit code 128 + SIGHUP; the resume finishes the run."""
    from ssgan.records import MetricsLog

    received = []
    guard = signal.signal(signal.SIGHUP, lambda signum, frame: received.append(signum))  # if ssgan had none
    original = MetricsLog.write

    def hung_up(self, record):
        original(self, record)
        if record["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGHUP)

    monkeypatch.setattr(MetricsLog, "write", hung_up)
    run_dir = tmp_path / "run"
    try:
        code = main(["fit", "--run-dir", str(run_dir), *TINY_OVERRIDES, "train.epochs=2"])
    finally:
        signal.signal(signal.SIGHUP, guard)
    monkeypatch.undo()
    assert code == 128 + signal.SIGHUP and not received  # ssgan's handler took it
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"ssgan fit --resume {run_dir}" in err, err
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "result.json").exists()
    assert main(["fit", "--resume", str(run_dir)]) == 0


def test_overwrite_clears_the_old_outputs_before_it_trains(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("train.epochs")] + ["train.epochs=2"]
    assert main(["fit", "--run-dir", str(run_dir), *overrides]) == 0
    _kill_after_first_checkpoint(monkeypatch)
    with pytest.raises(_Killed):
        main(["fit", "--run-dir", str(run_dir), "--overwrite", *overrides])
    assert (run_dir / "checkpoint.pt").is_file()
    assert not (run_dir / "result.json").exists() and not (run_dir / "samples.png").exists()
    assert main(["ensemble", str(run_dir)]) == 2
    assert f"an unfinished run: continue it with ssgan fit --resume {run_dir}" in capsys.readouterr().err


def test_a_run_that_another_process_trains_is_refused(uninterrupted, tmp_path, capsys):
    import fcntl
    import shutil

    run_dir = tmp_path / "busy"
    shutil.copytree(uninterrupted, run_dir)
    (run_dir / "result.json").unlink()
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT)  # another process's lock on the run
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert main(["fit", "--resume", str(run_dir)]) == 2
    finally:
        os.close(fd)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "being trained by another process" in err
    assert not (run_dir / "result.json").exists()


def test_flipped_bytes_in_a_checkpoint_are_refused(uninterrupted, tmp_path):
    """torch.load does not check its zip records' CRCs: without the checksum a flipped byte loads as a
    wrong weight."""
    import struct
    import zipfile

    path = tmp_path / "checkpoint.pt"
    data = bytearray((uninterrupted / "checkpoint.pt").read_bytes())
    with zipfile.ZipFile(uninterrupted / "checkpoint.pt") as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_length, extra_length = struct.unpack("<HH", data[record.header_offset + 26:record.header_offset + 30])
    data[record.header_offset + 30 + name_length + extra_length + record.file_size // 2] ^= 0x40
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["format"] == CHECKPOINT_FORMAT  # torch reads it without a word
    with pytest.raises(RunDirError, match="does not match its checksum"):
        load_checkpoint(path)


def test_a_failed_write_in_training_keeps_the_run_and_its_checkpoint(tmp_path, monkeypatch, capsys):
    """A full disk at epoch 2 (a RunDirError, exit code 2) must not remove the run directory it started."""
    from ssgan import train

    original, calls = train.write_group_checkpoints, {"n": 0}

    def failing_second_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RunDirError("cannot write checkpoint.pt: No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "write_group_checkpoints", failing_second_write)
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("train.epochs")] + [
        "train.epochs=3", "train.checkpoint_every=1"]
    assert main(["fit", "--run-dir", str(run_dir), *overrides]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1  # kept, and resumable
    monkeypatch.undo()
    assert main(["fit", "--resume", str(run_dir)]) == 0


def test_overwrite_of_a_run_another_process_trains_is_refused_and_removes_nothing(uninterrupted, tmp_path, capsys):
    import fcntl
    import shutil

    run_dir = tmp_path / "busy"
    shutil.copytree(uninterrupted, run_dir)
    before = sorted(p.name for p in run_dir.iterdir())
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT)  # another process trains it
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert main(["fit", "--run-dir", str(run_dir), "--overwrite", *TINY_OVERRIDES]) == 2
    finally:
        os.close(fd)
    assert "being trained by another process" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_overwrite_removes_only_files_a_run_wrote(tmp_path):
    """A seed<N>/ folder is not a run because of its name: --overwrite removes the run files in it (and the
    folder once empty), never a user's file."""
    run_dir = tmp_path / "u"
    (run_dir / "seed3").mkdir(parents=True)
    (run_dir / "seed3" / "important.csv").write_text("x\n")
    (run_dir / "seed4").mkdir()
    (run_dir / "seed4" / "result.json").write_text("{}")
    (run_dir / "seed4" / "checkpoint.pt").write_bytes(b"old")
    assert main(["fit", "--run-dir", str(run_dir), "--overwrite", *TINY_OVERRIDES]) == 0
    assert (run_dir / "seed3" / "important.csv").read_text() == "x\n"
    assert not (run_dir / "seed4").exists()  # only run files: they go, and the folder with them
    assert (run_dir / "result.json").is_file()


def test_a_run_without_test_images_writes_valid_json_and_says_so(tmp_path, capsys):
    """No NaN in result.json (not JSON) and no "nan %" printed: the test error is null, in words."""
    import numpy as np

    rng = np.random.RandomState(0)
    np.savez(tmp_path / "no_test.npz", x_train=rng.randint(0, 255, (20, 8, 8), dtype=np.uint8),
             y_train=np.arange(20) % 2, x_test=np.zeros((0, 8, 8), np.uint8), y_test=np.zeros(0, np.int64))
    run_dir = tmp_path / "run"
    assert main(["fit", "--run-dir", str(run_dir), *TINY_OVERRIDES, "dataset.source=npz",
                 f"dataset.path={tmp_path / 'no_test.npz'}", "dataset.labels=2"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "test error: none (the data set has no test images)"

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    assert json.loads((run_dir / "result.json").read_text(), parse_constant=refuse)["test_error"] is None


def test_resume_removes_the_checkpoint_temporaries_a_sigkill_left(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("train.epochs")] + ["train.epochs=2",
                                                                                   "train.checkpoint_every=1"]
    _kill_after_first_checkpoint(monkeypatch)
    with pytest.raises(_Killed):
        main(["fit", "--run-dir", str(run_dir), *overrides])
    monkeypatch.undo()
    stale = [run_dir / ".checkpoint.pt.k1ll3d.tmp", run_dir / "..checkpoint.pt.staged.k1ll3d.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    assert main(["fit", "--resume", str(run_dir)]) == 0
    assert not any(path.exists() for path in stale)


# --------------------------------------------------------------------------------------- typed records

def test_the_result_record_round_trips_and_is_what_a_run_writes(uninterrupted, tmp_path):
    from ssgan.records import RunRecord
    from ssgan.rundir import RESULT_NAME

    record = RunRecord.read(uninterrupted)  # what train.fit wrote
    assert list(json.loads((uninterrupted / RESULT_NAME).read_text())) == list(RunRecord.FILE_FIELDS)
    assert record.path == uninterrupted and record.epochs == 6 and len(record.labeled_indices) == 20
    record.write(tmp_path)
    again = RunRecord.read(tmp_path)
    assert {**vars(again), "path": None} == {**vars(record), "path": None}
    assert (tmp_path / RESULT_NAME).read_text() == (uninterrupted / RESULT_NAME).read_text()

    no_test = RunRecord(None, 0, "npz", 20, "improved_gan", float("nan"), 1, 2, "cpu", torch.__version__, {})
    no_test.write(tmp_path)  # NaN is null in the file and NaN again when read
    assert json.loads((tmp_path / RESULT_NAME).read_text())["test_error"] is None
    assert RunRecord.read(tmp_path).test_error != RunRecord.read(tmp_path).test_error
    (tmp_path / RESULT_NAME).write_text(json.dumps({"test_error": 1.0}))
    with pytest.raises(RunDirError, match="not a result.json"):
        RunRecord.read(tmp_path)


def test_the_figures_record_round_trips_and_is_what_a_run_writes(uninterrupted, tmp_path):
    from ssgan.records import RunFigures
    from ssgan.rundir import CONFUSION_NAME, CURVE_NAME, SAMPLES_NAME

    written = RunFigures.read(uninterrupted)
    assert written.samples == (uninterrupted / SAMPLES_NAME).read_bytes() and written.samples[:4] == b"\x89PNG"
    assert (written.curve is None) == (not (uninterrupted / CURVE_NAME).exists())
    figures = RunFigures(samples=b"\x89PNG samples", curve=None, confusion=b"\x89PNG confusion")
    figures.write(tmp_path)
    assert RunFigures.read(tmp_path) == figures
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([SAMPLES_NAME, CONFUSION_NAME])  # no empty curve
