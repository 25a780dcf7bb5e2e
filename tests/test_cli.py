"""The command line, called in-process: flags become overrides, bad input is one line and exit code 2,
runs never overwrite each other, evaluate and predict read a trained run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ssgan.cli import main
from ssgan.fit_command import fit_overrides, fit_parser, job_device
from tests.conftest import TINY_OVERRIDES


def test_labels_flag_lands_on_dataset_labels():
    args = fit_parser().parse_args(["--dataset", "cifar10", "--labels", "4000", "--seed", "3",
                                     "--method", "ct_gan", "train.lr=1e-4"])
    overrides = fit_overrides(args)
    assert "dataset.labels=4000" in overrides and "dataset=cifar10" in overrides
    assert "seed=3" in overrides and "method=ct_gan" in overrides
    assert overrides[-1] == "train.lr=1e-4"  # explicit overrides come last and win


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    assert main(["fit", "--run-dir", str(run_dir), *TINY_OVERRIDES]) == 0
    return run_dir


def test_fit_writes_the_run_directory(trained_run, capsys):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "checkpoint.pt", "metrics.jsonl", "result.json", "samples.png"} <= names
    result = json.loads((trained_run / "result.json").read_text())
    assert result["labels"] == 20 and len(result["labeled_indices"]) == 20
    assert "labels: 20" in (trained_run / "config.yaml").read_text()


def test_fit_prints_the_test_error_last(tmp_path, capsys):
    assert main(["fit", "--run-dir", str(tmp_path / "r"), *TINY_OVERRIDES]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("test error: ") and last.endswith(" %")
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert last == f"test error: {result['test_error']:.2f} %"


def test_a_run_never_overwrites_another(trained_run, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in trained_run.iterdir()}
    assert main(["fit", "--run-dir", str(trained_run), *TINY_OVERRIDES]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in trained_run.iterdir()} == before


def test_overwrite_flag_allows_reuse(tmp_path):
    run_dir = tmp_path / "r"
    assert main(["fit", "--run-dir", str(run_dir), *TINY_OVERRIDES]) == 0
    assert main(["fit", "--run-dir", str(run_dir), "--overwrite", *TINY_OVERRIDES]) == 0


def test_default_run_directories_do_not_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *TINY_OVERRIDES]) == 0
    assert main(["fit", *TINY_OVERRIDES]) == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(r.name.startswith("digits-20-improved_gan-seed0-") for r in runs)


def test_evaluate_recomputes_the_test_error(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads((trained_run / "result.json").read_text())
    assert line == f"test error: {result['test_error']:.2f} %"


def test_predict_npz_and_csv(trained_run, tmp_path, capsys):
    from sklearn.datasets import load_digits

    images = load_digits().images[:5] / 16.0  # floats in [0, 1]
    np.savez(tmp_path / "x.npz", x=images)
    assert main(["predict", str(trained_run), str(tmp_path / "x.npz"), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and all(line.split("\t")[1] in [str(k) for k in range(10)] for line in lines)
    out = tmp_path / "p.csv"
    assert main(["predict", str(trained_run), str(tmp_path / "x.npz"), "--proba", "--out", str(out)]) == 0
    rows = out.read_text().strip().splitlines()
    assert rows[0].startswith("input,class,p_0") and len(rows) == 6
    probs = np.array([[float(v) for v in row.split(",")[2:]] for row in rows[1:]])
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def test_help_lists_commands_and_options(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("fit", "evaluate", "predict", "cifar10"))
    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--labels" in out and "--dataset" in out and "svhn" in out
    assert "train.iters_per_epoch=" in out  # how to make a quick smoke run of a long recipe


def test_multirun_runs_every_job(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "-m", "seed=0,1", *TINY_OVERRIDES]) == 0
    jobs = sorted(p.name for p in next((tmp_path / "runs").glob("multirun-*")).iterdir() if p.is_dir())
    assert jobs == ["digits-20-improved_gan-seed0-job0", "digits-20-improved_gan-seed1-job1"]


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "ssgan", "--help"], capture_output=True, text=True, check=True)
    assert "usage: ssgan" in out.stdout


@pytest.mark.slow
def test_default_fit_beats_supervised_baseline(tmp_path, capsys):
    """The real default job (`ssgan fit`: digits, 50 labels) against logistic regression on the same
    50 labeled images."""
    from sklearn.linear_model import LogisticRegression

    from ssgan.config import DataConfig
    from ssgan.data import load_data

    assert main(["fit", "--run-dir", str(tmp_path / "default")]) == 0
    result = json.loads((tmp_path / "default" / "result.json").read_text())
    assert result["labels"] == 50 and result["method"] == "improved_gan"
    data = load_data(DataConfig())
    lab = np.asarray(result["labeled_indices"])
    baseline = LogisticRegression(max_iter=2000).fit(data.x_train[lab].reshape(50, -1), data.y_train[lab])
    baseline_error = 100 * np.mean(baseline.predict(data.x_test.reshape(len(data.x_test), -1)) != data.y_test)
    assert result["test_error"] < baseline_error
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"test error: {result['test_error']:.2f} %"


def test_job_device_spreads_multirun_jobs_over_gpus():
    assert job_device("auto", 5, 4) == "cuda:1"
    assert [job_device("auto", j, 2) for j in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert job_device("auto", None, 4) == "auto"  # not a multirun
    assert job_device("auto", 3, 1) == "auto" and job_device("cpu", 3, 4) == "cpu"


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_sweep_into_a_used_sweep_directory_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    argv = ["fit", "-m", "seed=0,1", f"hydra.sweep.dir={sweep}", *TINY_OVERRIDES]
    assert main(argv) == 0
    before = _mtimes(sweep)
    capsys.readouterr()
    assert main(argv) == 2  # the same sweep again: its finished jobs are not overwritten
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already exists" in err and "--overwrite" in err
    assert {p: t for p, t in _mtimes(sweep).items() if p.name != "multirun.yaml"} == \
        {p: t for p, t in before.items() if p.name != "multirun.yaml"}


def test_hydra_run_dir_onto_a_finished_run_is_refused(trained_run, capsys):
    before = _mtimes(trained_run)
    assert main(["fit", f"hydra.run.dir={trained_run}", *TINY_OVERRIDES]) == 2
    assert "already exists" in capsys.readouterr().err
    assert _mtimes(trained_run) == before


def test_a_run_directory_with_spaces_and_non_ascii_characters(tmp_path, capsys):
    run_dir = tmp_path / "my runs" / "première"
    assert main(["fit", "--run-dir", str(run_dir), *TINY_OVERRIDES]) == 0
    assert (run_dir / "result.json").is_file()
    assert f"run directory: {run_dir}" in capsys.readouterr().out


def test_ctrl_c_at_start_up_exits_130_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    from ssgan import train

    def interrupted_load(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train, "load_data", interrupted_load)
    assert main(["fit", *TINY_OVERRIDES]) == 130
    assert capsys.readouterr().err.strip() == "ssgan: interrupted"
    assert list(tmp_path.iterdir()) == []


def test_relative_data_paths_are_stored_as_absolute_ones(tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    rng = np.random.RandomState(0)
    np.savez("data.npz", x_train=rng.randint(0, 255, (20, 8, 8), dtype=np.uint8), y_train=np.arange(20) % 2,
             x_test=rng.randint(0, 255, (4, 8, 8), dtype=np.uint8), y_test=np.arange(4) % 2)
    assert main(["fit", "--run-dir", "run", *TINY_OVERRIDES, "dataset.source=npz", "dataset.path=data.npz",
                 "dataset.labels=2"]) == 0
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["dataset"]
    assert stored["path"] == str(tmp_path / "data.npz") and stored["root"] == str(tmp_path / "data")
    assert json.loads((tmp_path / "run" / "result.json").read_text())["config"]["dataset"]["path"] == stored["path"]


# ------------------------------------------------------------------- Hydra's own flags, as in any Hydra app

def test_cfg_prints_the_composed_config_and_runs_nothing(tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--cfg", "job", "--dataset", "mnist", "train.lr=0.01"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["dataset"]["name"] == "mnist" and printed["train"]["lr"] == 0.01
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, fragment", [
    (["--info", "searchpath"], "pkg://ssgan.configs"),
    (["--hydra-help"], "Hydra"),
    (["--version"], "ssgan 0.1.0 (Hydra 1."),
    (["-sc", "install=bash"], "complete -o nospace -o default -F hydra_bash_completion ssgan"),
])
def test_hydras_flags_work(flags, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *flags]) == 0
    assert fragment in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_shell_completion_completes_config_groups_after_the_fit_command(monkeypatch, capsys):
    monkeypatch.setenv("COMP_LINE", "ssgan fit --dataset mnist method=")
    assert main(["-sc", "query=bash"]) == 0  # what the installed bash function calls
    assert set(capsys.readouterr().out.split()) == {"method=bad_gan", "method=ct_gan", "method=ct_gan_te",
                                                    "method=improved_gan"}


def test_a_config_dir_and_name_of_ones_own(tmp_path, capsys):
    """-cd adds a folder searched before ssgan's configs (a data set of one's own); -cn picks the root."""
    (tmp_path / "conf" / "dataset").mkdir(parents=True)
    (tmp_path / "conf" / "dataset" / "tiny_digits.yaml").write_text(
        "# @package _global_\ndefaults:\n  - digits\ndataset:\n  labels: 30\n")
    (tmp_path / "conf" / "mine.yaml").write_text("defaults:\n  - config\n  - _self_\nseed: 7\n")
    run_dir = tmp_path / "run"
    assert main(["fit", "-cd", str(tmp_path / "conf"), "-cn", "mine", "dataset=tiny_digits", "--run-dir",
                 str(run_dir), *[o for o in TINY_OVERRIDES if not o.startswith("dataset.labels")]]) == 0
    result = json.loads((run_dir / "result.json").read_text())
    assert (result["labels"], result["seed"]) == (30, 7)


@pytest.mark.parametrize("override", ["+foo=1", "+train.foo=2"])
def test_an_unknown_added_key_is_one_line_and_exit_2(override, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", override, *TINY_OVERRIDES]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown config key" in err
    assert list(tmp_path.iterdir()) == []


def test_a_launcher_that_cannot_start_is_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "-m", "seed=0,1", "hydra/launcher=slurm", *TINY_OVERRIDES]) == 2  # no SLURM here
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "could not be launched" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # the sweep folder it had started is gone


def test_fit_help_lists_the_config_groups(capsys):
    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    for line in ("dataset:", "cifar10, digits, mnist, svhn", "method:", "ct_gan, ct_gan_te, improved_gan",
                 "model:", "hydra/launcher:", "--cfg", "--info", "-sc"):
        assert line in out


def test_each_run_records_its_overrides_and_versions(trained_run):
    import yaml

    assert yaml.safe_load((trained_run / "overrides.yaml").read_text())[-len(TINY_OVERRIDES):] == TINY_OVERRIDES
    versions = json.loads((trained_run / "result.json").read_text())["versions"]
    for name in ("ssgan", "torch", "torchvision", "numpy", "scikit-learn", "hydra-core", "python", "device"):
        assert versions[name]
    assert "git_commit" in versions  # the tests run from a checkout


def test_a_folder_runs_labels_are_its_folder_names(tmp_path):
    from PIL import Image

    import ssgan

    rng = np.random.RandomState(0)
    for split, n in (("train", 10), ("test", 3)):
        for name in ("cat", "dog"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.randint(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / "data" / split / name / f"{i}.png")
    run_dir = tmp_path / "run"
    assert main(["fit", "--run-dir", str(run_dir), *TINY_OVERRIDES, "dataset.source=folder",
                 f"dataset.path={tmp_path / 'data'}", "dataset.labels=4"]) == 0
    classifier = ssgan.load(run_dir)
    assert list(classifier.classes_) == ["cat", "dog"] and classifier.class_names_ == ["cat", "dog"]
    assert json.loads((run_dir / "result.json").read_text())["class_values"] == ["cat", "dog"]


def test_a_run_reports_per_class_errors_and_its_confusion_matrix(trained_run, capsys):
    pytest.importorskip("matplotlib")  # the plots extra (dev installs it)
    result = json.loads((trained_run / "result.json").read_text())
    matrix = np.array(result["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 450  # the digits test split
    assert 100 * (1 - np.trace(matrix) / matrix.sum()) == pytest.approx(result["test_error"])
    assert list(result["per_class_error"]) == [str(k) for k in range(10)]
    for name in ("curve.png", "confusion_matrix.png"):
        assert (trained_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate", str(trained_run), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("per-class test error (%)") and lines[1].startswith("confusion matrix")
    assert [int(v) for v in lines[3].split()[1:]] == result["confusion_matrix"][0]


def test_a_sweep_over_any_key_gives_each_job_its_own_folder(tmp_path, capsys):
    """Not only dataset, labels, method and seed: two learning rates are two jobs in two folders."""
    sweep = tmp_path / "sw"
    assert main(["fit", "-m", "train.lr=0.001,0.003", *TINY_OVERRIDES, f"hydra.sweep.dir={sweep}"]) == 0
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2 and all((job / "result.json").is_file() for job in jobs)
    assert sorted(json.loads((job / "result.json").read_text())["config"]["train"]["lr"] for job in jobs) == \
        [0.001, 0.003]
    # each job's lines say which override it had (the sweep prints them one after another)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("job ")]
    assert [line.split(":")[0] for line in lines] == ["job 0 (train.lr=0.001)", "job 1 (train.lr=0.003)"]
    assert all("test error" in line for line in lines), lines


# ------------------------------------------------------------ full and read-only disks: one line, no trace

def _disk_fails(monkeypatch, errno_name: str, on: str):
    """Make the disk fail as a full (ENOSPC, on fsync) or read-only (EROFS, on creating a file) one would."""
    import errno
    import os

    error = OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)))
    if on == "fsync":
        def failing(*args, **kwargs):
            raise error
        monkeypatch.setattr(os, "fsync", failing)
    else:
        original = os.open

        def failing_open(path, flags, *args, **kwargs):
            if flags & os.O_CREAT:
                raise error
            return original(path, flags, *args, **kwargs)
        monkeypatch.setattr(os, "open", failing_open)


OUT_COMMANDS = [
    ("predict", lambda run, out: ["predict", str(run), str(out.parent / "x.npz"), "--out", str(out / "p.csv")]),
    ("ensemble", lambda run, out: ["ensemble", str(run), "--out", str(out / "e.json")]),
    ("sample", lambda run, out: ["sample", str(run), "--out", str(out / "g.png"), "--device", "cpu"]),
]


@pytest.mark.parametrize("errno_name, on", [("ENOSPC", "fsync"), ("EROFS", "open")])
@pytest.mark.parametrize("name, argv", OUT_COMMANDS, ids=[c[0] for c in OUT_COMMANDS])
def test_an_output_on_a_full_or_read_only_disk_is_one_line_and_leaves_nothing(trained_run, tmp_path, monkeypatch,
                                                                             capsys, name, argv, errno_name, on):
    out = tmp_path / "out"
    out.mkdir()
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 8, 8), np.uint8))
    _disk_fails(monkeypatch, errno_name, on)
    assert main(argv(trained_run, out)) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "cannot write" in err, err
    assert list(out.iterdir()) == []  # no truncated, empty or temporary file
    monkeypatch.undo()
    assert main(argv(trained_run, out)) == 0  # nothing blocks the next try


def test_sample_interrupted_while_drawing_leaves_no_empty_png(trained_run, tmp_path, monkeypatch):
    from ssgan import evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluate, "sample_grid_png", interrupted)  # (cli imports it when sample runs)
    assert main(["sample", str(trained_run), "--out", str(tmp_path / "g.png"), "--device", "cpu"]) == 130
    assert list(tmp_path.iterdir()) == []


def test_resume_and_table_on_a_read_only_disk_are_one_line(trained_run, tmp_path, monkeypatch, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    (run_dir / ".lock").unlink(missing_ok=True)
    _disk_fails(monkeypatch, "EROFS", "open")
    assert main(["fit", "--resume", str(run_dir), "train.epochs=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "Read-only" in err, err
    assert main(["table", "--from", str(run_dir), "--out-dir", str(tmp_path / "tab"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "Read-only" in err, err


def test_predict_to_stdout_keeps_one_row_per_image_whatever_the_names(trained_run, tmp_path, capsys):
    import csv
    import io

    from PIL import Image

    names = [tmp_path / "tab\there.png", tmp_path / "new\nline.png", tmp_path / 'plain "q".png']
    for path in names:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(path, format="PNG")
    assert main(["predict", str(trained_run), *map(str, names), "--device", "cpu"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out), delimiter="\t"))
    assert sorted(row[0] for row in rows) == sorted(map(str, names)) and all(len(row) == 2 for row in rows)


def test_ctrl_c_while_the_command_imports_is_exit_130_without_a_traceback():
    """KeyboardInterrupt raised by the import of Hydra (what every command loads at start; torch comes later, inside
    the command, where main reports Ctrl-C) stands for Ctrl-C during start-up."""
    code = ("import builtins\n"
            "original = builtins.__import__\n"
            "def interrupted(name, *args, **kwargs):\n"
            "    if name.split('.')[0] == 'hydra':\n"
            "        raise KeyboardInterrupt\n"
            "    return original(name, *args, **kwargs)\n"
            "builtins.__import__ = interrupted\n"
            "import runpy\n"
            "runpy.run_module('ssgan', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_fit_says_its_thread_count_and_threads_changes_it(tmp_path, capsys):
    import torch

    try:  # the progress bar (train.progress, off in the other tests) names the thread count
        assert main(["fit", "--run-dir", str(tmp_path / "a"), *TINY_OVERRIDES, "train.progress=true"]) == 0
        assert "(1 CPU thread)" in capsys.readouterr().err and torch.get_num_threads() == 1
        assert main(["fit", "--threads", "2", "--run-dir", str(tmp_path / "b"), *TINY_OVERRIDES,
                     "train.progress=true"]) == 0
        assert "(2 CPU threads)" in capsys.readouterr().err and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest.one_thread)
    assert main(["fit", "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip() == ("ssgan: error: ssgan fit: argument --threads: '0': expected a whole "
                                               "number, at least 1")
