"""Tables as library calls (ssgan/table.py): ``ssgan.make_table`` trains and writes what ``ssgan table`` does,
``collect_table`` aggregates what ``ssgan table --from`` does, and ``fit_seeds`` is ``ssgan fit --seeds``; on
the digits data with tiny models."""

from __future__ import annotations

import json
import logging

import pytest

import ssgan
from ssgan.cli import main
from ssgan.config import ConfigError
from ssgan.table import Progress, collect_table, fit_seeds
from tests.conftest import TINY_SEEDS

PROVENANCE = ("command", "date", "runs")  # what differs between two tables of the same numbers


def _rows(path):
    """A table's JSON rows without what names the call (command, date) or where the runs live."""
    table = json.loads(path.read_text())
    return [{k: v for k, v in row.items() if k not in PROVENANCE} for row in table["rows"]]


def test_make_table_writes_what_ssgan_table_writes(tmp_path, capsys, caplog):
    assert main(["table", "--dataset", "digits", "--labels", "20", "--seeds", "2", "--cache-dir",
                 str(tmp_path / "cli-cache"), "--out-dir", str(tmp_path / "cli"), *TINY_SEEDS]) == 0
    cli_lines = capsys.readouterr().out.splitlines()

    with caplog.at_level(logging.INFO, logger="ssgan"):
        table = ssgan.make_table("digits", labels=[20], seeds=2, overrides=TINY_SEEDS,
                                 cache_dir=tmp_path / "cache", out_dir=tmp_path / "lib")
    assert [p.name for p in table.files] == ["digits.md", "digits.json", "digits.png"]
    assert _rows(tmp_path / "lib" / "digits.json") == _rows(tmp_path / "cli" / "digits.json")  # trained alike
    (row,) = table.rows
    assert row.seeds == [0, 1] and row.labels == 20 and len(row.test_errors) == 2
    # the lines the command printed while training, from the library's default Progress (the ssgan logger)
    logged = [r.getMessage() for r in caplog.records if r.name == "ssgan.table"]
    assert [line.split(":")[0] for line in logged] == [line.split(":")[0] for line in cli_lines[:len(logged)]]
    assert logged[-1] == cli_lines[len(logged) - 1]  # "test error: mean +- std ..." of the cell

    again = ssgan.make_table("digits", labels=[20], seeds=2, overrides=TINY_SEEDS,
                             cache_dir=tmp_path / "cli-cache", out_dir=None)  # the command's cache: nothing trains
    assert again.files == [] and again.rows[0].test_errors == row.test_errors
    assert not (tmp_path / "results").exists()


def test_collect_table_is_table_from(tmp_path, capsys):
    table = ssgan.make_table("digits", labels=[20], seeds=1, overrides=TINY_SEEDS, cache_dir=tmp_path / "cache",
                             out_dir=None, progress=Progress(lambda line: None))
    assert main(["table", "--from", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "cli"),
                 "--device", "cpu"]) == 0
    collected = collect_table([tmp_path / "cache"], device="cpu", out_dir=tmp_path / "lib")
    assert _rows(tmp_path / "lib" / "digits.json") == _rows(tmp_path / "cli" / "digits.json")
    assert collected.rows[0].ensemble_error == table.rows[0].ensemble_error


def test_fit_seeds_is_ssgan_fit_seeds(seeds_run, tmp_path):
    from ssgan.config import compose

    run_dir, lines = seeds_run
    printed = []
    cfg = compose([*TINY_SEEDS, "dataset.labels=20"])
    summary = fit_seeds(cfg, [0, 1], tmp_path / "run", command="test", progress=Progress(printed.append))
    assert printed[-1] == lines[-1] and printed[-2] == lines[-2]  # the same numbers as the command's
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["mean"] == summary.mean


@pytest.mark.parametrize("kwargs, message", [
    ({"labels": None}, "no published label counts"),
    ({"labels": [20], "seeds": 0}, "at least 1"),
    ({"labels": [20], "overrides": ["dataset.labels=30"]}, "the table sets this"),
])
def test_make_table_refuses_bad_input_before_anything_is_written(kwargs, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        ssgan.make_table("digits", cache_dir=tmp_path / "cache", out_dir=tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ signals outside the loop

@pytest.fixture
def sigterm_guard():
    """A SIGTERM handler of the test's own (pytest has none): what reaches it, ssgan did not take."""
    import signal

    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    yield received
    signal.signal(signal.SIGTERM, previous)


def _stray_temporaries(root):
    return [p for p in root.rglob("*.tmp")]


def test_sigterm_between_seeds_stops_with_the_command_that_continues(tmp_path, monkeypatch, capsys, sigterm_guard):
    """SIGTERM while seed 0's summary is written (between two seeds): the summary is completed, seed 1 does not
    start, and the command stops with one line naming the --resume that continues, exit 128 + 15."""
    import os
    import signal

    from ssgan import table

    original, calls = table.write_summary, []

    def signalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(table, "write_summary", signalled)
    run_dir = tmp_path / "run"
    code = main(["fit", "--seeds", "2", "--run-dir", str(run_dir), *TINY_SEEDS, "dataset.labels=20"])
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM and not sigterm_guard, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "interrupted by SIGTERM" in err and f"ssgan fit --resume {run_dir}" in err
    assert (run_dir / "seed0" / "result.json").is_file() and not (run_dir / "seed1" / "result.json").exists()
    assert json.loads((run_dir / "summary.json").read_text())["finished"] == [0]
    assert _stray_temporaries(run_dir) == []
    monkeypatch.undo()
    assert main(["fit", "--resume", str(run_dir)]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["finished"] == [0, 1]


def test_sigterm_during_the_table_writes_completes_them_first(tmp_path, monkeypatch, capsys, sigterm_guard):
    """SIGTERM while results/<dataset>.md is written: the table's files are all completed (never an .md
    without its .json, no stray temporary file), then one line and exit 128 + 15."""
    import os
    import signal

    from ssgan import reports

    original = reports.atomic_write

    def signalled(path, content):
        if path.name == "digits.md":
            os.kill(os.getpid(), signal.SIGTERM)
        return original(path, content)

    monkeypatch.setattr(reports, "atomic_write", signalled)
    out = tmp_path / "out"
    code = main(["table", "--dataset", "digits", "--labels", "20", "--seeds", "1", "--cache-dir",
                 str(tmp_path / "cache"), "--out-dir", str(out), *TINY_SEEDS])
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM and not sigterm_guard, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "interrupted by SIGTERM" in err
    assert json.loads((out / "digits.json").read_text())["rows"][0]["labels"] == 20
    assert (out / "digits.md").is_file() and _stray_temporaries(tmp_path) == []


def test_a_table_goes_where_the_users_runs_go_unless_told_results(tmp_path, monkeypatch, capsys):
    """ssgan table never writes into the checkout's results/ by default (a 5-epoch table once overwrote the
    committed one): runs/table/<dataset>.* beside its runs; the maintainers' results/ only with --out-dir."""
    monkeypatch.chdir(tmp_path)
    assert main(["table", "--dataset", "digits", "--labels", "20", "--seeds", "1", *TINY_SEEDS]) == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "table").glob("digits.*")) == [
        "digits.json", "digits.md", "digits.png"]
    assert not (tmp_path / "results").exists()
    assert main(["table", "--from", "runs/table/digits", "--device", "cpu", "--out-dir", "results"]) == 0
    assert (tmp_path / "results" / "digits.md").is_file()


def test_table_epochs_is_train_epochs(tmp_path, capsys):
    tiny = [o for o in TINY_SEEDS if not o.startswith("train.epochs=")]
    assert main(["table", "--dataset", "digits", "--labels", "20", "--seeds", "1", "--epochs", "2", "--cache-dir",
                 str(tmp_path / "cache"), "--out-dir", str(tmp_path / "out"), *tiny]) == 0
    (result,) = (tmp_path / "cache").rglob("result.json")
    assert json.loads(result.read_text())["config"]["train"]["epochs"] == 2
    assert main(["table", "--from", str(tmp_path / "cache"), "--epochs", "3"]) == 2  # --from trains nothing
    assert "drop --epochs" in capsys.readouterr().err
