"""Reports (ssgan/reports.py; ``ssgan table``, ``ssgan ensemble``), on the CPU with the digits data and tiny
models: the numbers against a direct computation, an ensemble of identical models equals one model, a rerun
of a table skips finished seeds, the table files carry the published columns and their provenance, and a
sweep through Hydra's joblib launcher is aggregated job by job."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssgan.checkpoint import content_digest
from ssgan.cli import main
from ssgan.records import EnsembleRecord, RunRecord
from ssgan.reports import PUBLISHED, PUBLISHED_COLUMNS, SeedsResult, aggregate, ensemble_error, plot_table, write_table
from tests.conftest import TINY_OVERRIDES, direct_probs

TINY = [o for o in TINY_OVERRIDES if not o.startswith("dataset.labels=")]  # the tests choose the labels


def _record(seed: int, test_error: float, labels: int = 20, dataset: str = "digits") -> RunRecord:
    return RunRecord(Path(f"run{seed}"), seed, dataset, labels, "improved_gan", test_error, 1, 2, "cpu",
                     torch.__version__, {})


# ------------------------------------------------------------------------------------------- numbers

def test_published_numbers_are_those_of_method_md():
    assert sorted(PUBLISHED) == ["cifar10", "mnist", "svhn"]
    assert sorted(PUBLISHED["mnist"]) == [20, 50, 100, 200]
    assert sorted(PUBLISHED["cifar10"]) == [1000, 2000, 4000, 8000]
    assert sorted(PUBLISHED["svhn"]) == [500, 1000, 2000]
    # MNIST: errors of 10000 in docs/method.md, % here
    assert PUBLISHED["mnist"][20]["improved_gan"] == (16.77, 4.52)
    assert PUBLISHED["mnist"][100] == {"improved_gan": (0.93, 0.065), "improved_gan_ensemble": (0.86, 0.056),
                                       "ct_gan": (0.89, 0.13), "bad_gan": (0.795, 0.098)}
    assert PUBLISHED["cifar10"][4000]["ct_gan"] == (9.98, 0.21)
    assert PUBLISHED["svhn"][1000]["improved_gan_ensemble"] == (5.88, 1.0)
    names = {name for rows in PUBLISHED.values() for row in rows.values() for name in row}
    assert names == set(PUBLISHED_COLUMNS)


def test_aggregate_against_a_direct_computation():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=60)
    probs = [rng.dirichlet(np.ones(4), size=60) for _ in range(3)]  # (N, K) each
    result = aggregate([_record(s, e) for s, e in enumerate([10.0, 12.0, 17.0])], probs, y)
    assert result.mean == pytest.approx(13.0)
    assert result.std == pytest.approx(np.sqrt((9 + 1 + 16) / 2))  # sample std, ddof=1
    direct = 100 * np.mean(np.argmax(probs[0] + probs[1] + probs[2], axis=1) != y)
    assert result.ensemble_error == pytest.approx(direct)
    assert aggregate([_record(0, 10.0)], probs[:1], y).std is None  # no std from one seed


# ------------------------------------------------------------------------------------- fit --seeds

# -------------------------------------------------------------------------------------------- ensemble

def test_ensemble_of_identical_models_equals_one_model(seeds_run, tmp_path, capsys):
    run_dir, _ = seeds_run
    twin = tmp_path / "twin"
    shutil.copytree(run_dir / "seed0", twin)
    probs, y = direct_probs(twin)
    assert ensemble_error([probs, probs, probs], y) == pytest.approx(100 * np.mean(np.argmax(probs, 1) != y))

    out_file = tmp_path / "ensemble.json"
    assert main(["ensemble", str(run_dir / "seed0"), str(twin), "--device", "cpu", "--out", str(out_file)]) == 0
    error = json.loads((run_dir / "seed0" / "result.json").read_text())["test_error"]
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"ensemble test error: {error:.2f} % (2 models)"
    written = EnsembleRecord.read(out_file)
    assert written.ensemble_error == pytest.approx(error) and written.std == 0.0 and len(written.runs) == 2
    assert main(["ensemble", str(twin), "--out", str(out_file)]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err


def test_ensemble_refuses_other_data_sets_and_classes(seeds_run, tmp_path, capsys):
    run_dir, _ = seeds_run
    other = tmp_path / "other"
    shutil.copytree(run_dir / "seed0", other)
    result = json.loads((other / "result.json").read_text())
    result["dataset"] = result["config"]["dataset"]["name"] = "mnist"
    (other / "result.json").write_text(json.dumps(result))
    assert main(["ensemble", str(run_dir / "seed0"), str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different data sets" in err[0]

    renamed = tmp_path / "renamed"
    shutil.copytree(run_dir / "seed1", renamed)
    payload = torch.load(renamed / "checkpoint.pt", weights_only=True)
    payload["class_names"] = [f"c{k}" for k in range(10)]
    payload["sha256"] = content_digest(payload)  # a run of other classes, not a corrupt file
    torch.save(payload, renamed / "checkpoint.pt")
    assert main(["ensemble", str(run_dir / "seed0"), str(renamed), "--device", "cpu"]) == 2
    assert "different classes" in capsys.readouterr().err
    assert main(["ensemble", str(tmp_path / "missing")]) == 2


# ----------------------------------------------------------------------------------------------- table

def test_table_skips_finished_seeds_and_writes_the_published_columns(tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "results"
    table = ["table", "--dataset", "digits", "--labels", "20", "--cache-dir", str(cache), "--out-dir", str(out),
             *TINY]
    assert main([*table, "--seeds", "1"]) == 0
    (cell,) = (cache / "digits").iterdir()
    mtime = (cell / "seed0" / "checkpoint.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*table, "--seeds", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("seed 0:") and "not trained again" in line for line in lines)
    assert any(line.startswith("seed 1:") and "not trained again" not in line for line in lines)
    assert (cell / "seed0" / "checkpoint.pt").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (cache / "digits").iterdir()) == [cell.name]  # one cell, keyed by config

    errors = [json.loads((cell / f"seed{s}" / "result.json").read_text())["test_error"] for s in (0, 1)]
    row = json.loads((out / "digits.json").read_text())["rows"][0]
    assert row["labels"] == 20 and row["seeds"] == [0, 1] and row["key"] == cell.name
    assert row["mean"] == pytest.approx(np.mean(errors)) and row["std"] == pytest.approx(np.std(errors, ddof=1))
    assert row["config"]["train"]["epochs"] == 1 and row["published"] == {}
    md = (out / "digits.md").read_text()
    assert "| Improved GAN | Improved GAN, ensemble of 10 | CT-GAN | Bad GAN |" in md
    assert f"| 20 | 2 | {np.mean(errors):.2f} +- {np.std(errors, ddof=1):.2f} | " in md and "| - | - | - | - |" in md
    for fact in ("- command: `ssgan table --dataset digits --labels 20", "- date: ", "device the runs trained on: cpu",
                 f"torch {torch.__version__}", "ssgan 0.1.0", "- epochs: 1 epochs of 2 iterations", "- seeds: 0-1",
                 "sample std (ddof=1)"):
        assert fact in md
    assert (out / "digits.png").stat().st_size > 0


def test_table_row_of_mnist_sits_next_to_the_published_numbers(tmp_path):
    rows = [SeedsResult([_record(s, e, 100, "mnist") for s, e in enumerate([0.9, 1.1])], 1.0, 0.141, 0.85, 10000)]
    write_table(tmp_path, "mnist", rows, "ssgan table --dataset mnist --labels 100 --seeds 2")
    md = (tmp_path / "mnist.md").read_text()
    assert "| 100 | 2 | 1.00 +- 0.141 | 0.85 | 0.93 +- 0.065 | 0.86 +- 0.056 | 0.89 +- 0.13 | 0.795 +- 0.098 |" in md
    published = json.loads((tmp_path / "mnist.json").read_text())["rows"][0]["published"]
    assert published["improved_gan"] == [0.93, 0.065]


def test_no_matplotlib_means_no_plot_and_no_error(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib... raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    rows = [SeedsResult([_record(0, 10.0)], 10.0, None, 10.0, 450)]
    written = write_table(tmp_path, "digits", rows, "ssgan table")
    assert [p.name for p in written] == ["digits.md", "digits.json"]
    assert "pip install 'ssgan[plots]'" in caplog.text  # logged (logging.getLogger("ssgan.plots"))
    assert plot_table(tmp_path / "x.png", "digits", rows) is False


@pytest.mark.parametrize("argv, message", [
    (["table", "--dataset", "nope"], "invalid choice"),
    (["table", "--dataset", "mnist", "--labels", "2x"], "--labels"),
    (["table", "--dataset", "digits"], "no published label counts"),
    (["table", "--dataset", "digits", "--labels", "20", "dataset.labels=30"], "use --dataset and --labels"),
    (["table", "--dataset", "digits", "--labels", "20", "train.nope=1"], "nope"),
    (["table", "--dataset", "digits", "--labels", "20", "--seeds", "0"], "at least 1"),
    (["table", "--from", "missing"], "no such run directory"),
    (["table", "--from", "."], "no finished runs"),
    (["fit", "--seeds", "0"], "at least 1"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert list(tmp_path.iterdir()) == []  # nothing created


# ------------------------------------------------------------------------------------------- scale-out

def test_joblib_launcher_sweep_is_aggregated_job_by_job(tmp_path, monkeypatch, capsys):
    """seeds x labels through a real launcher (joblib, 2 processes), then ``ssgan table --from``."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    assert main(["fit", "-m", "seed=0,1", "dataset.labels=20,30", "hydra/launcher=local",
                 "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", *TINY]) == 0
    assert "JoblibLauncher" in (sweep / "multirun.yaml").read_text()
    jobs = sorted(p.parent for p in sweep.rglob("result.json"))
    assert len(jobs) == 4

    assert main(["table", "--from", str(sweep), "--out-dir", str(tmp_path / "results"), "--device", "cpu"]) == 0
    rows = json.loads((tmp_path / "results" / "digits.json").read_text())["rows"]
    assert [(r["labels"], r["seeds"]) for r in rows] == [(20, [0, 1]), (30, [0, 1])]
    assert sorted(Path(run) for r in rows for run in r["runs"]) == jobs
    for row in rows:
        errors = [json.loads((Path(run) / "result.json").read_text())["test_error"] for run in row["runs"]]
        assert row["mean"] == pytest.approx(np.mean(errors))
    md = (tmp_path / "results" / "digits.md").read_text()
    assert "| 20 | 2 |" in md and "| 30 | 2 |" in md


def test_the_tables_markdown_links_the_method_documentation(tmp_path):
    from ssgan.reports import _linked

    repository = Path(__file__).resolve().parent.parent
    text = "the ensemble (docs/method.md sec. 5), published as in docs/method.md sec. 4."
    assert _linked(text, repository / "results") == ("the ensemble ([docs/method.md sec. 5](../docs/method.md)), "
                                                     "published as in [docs/method.md sec. 4](../docs/method.md).")
    assert _linked(text, tmp_path) == text  # outside the repository: no link that would not resolve
