"""benchmarks/gpu_session.sh, the script a lent GPU runs, in its CPU dry run: the same steps and flags at tiny
sizes, so that its paths cannot rot between GPU sessions. What only a GPU shows (the capture, CUDA timings,
kernel counts) is what the script is for; here every step must run and return its files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_the_gpu_session_dry_run_runs_every_step_and_returns_its_files(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    # --total 1: the dry run ignores every wall-clock budget (a slow or busy machine must not fail it), so even a
    # one-second total runs every step to its end
    done = subprocess.run(["bash", "benchmarks/gpu_session.sh", "--dry-run", "--total", "1",
                           "--work", str(tmp_path / "runs")],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    log = (out / "session.log").read_text() if (out / "session.log").exists() else ""
    assert done.returncode == 0, done.stderr + log[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bench.json", "compare.json", "digits.json", "digits.md", "session.log", "summary.json",
                     "table_progress.json", "table_runs.tar.gz"]  # a finished table comes back whole
    assert len(files) <= 8  # what a GPU session may return
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["setup", "a", "b", "c", "p", "d"]
    assert all(s["status"] == "ok" for s in summary["steps"]), summary
    assert summary["ok"] and summary["dry_run"]
    compare = json.loads((out / "compare.json").read_text())
    assert compare["ok"] and set(compare["cases"]) == {"noise_off", "resumed"}
    for case in compare["cases"].values():  # on a CPU nothing is captured: both sides run the same eager loop
        assert case["identical"] and {"weights", "optimizer", "rng", "position"} <= set(case["parts"])
    bench = json.loads((out / "bench.json").read_text())["rows"]
    assert bench and all(r["ms_per_iteration"] > 0 and r["ops_per_iteration"] > 0 for r in bench)
    progress = json.loads((out / "table_progress.json").read_text())
    assert progress["all_finished"] and [s["epochs_done"] for s in progress["seeds"].values()] == [2, 2]
    # step d trained the rows size_table chose from step c's speed (p found it measured)
    assert progress["sizing"]["labels"] == [20] and progress["sizing"]["fits"] and progress["sizing"]["measured"]
    assert "speed already measured" in log and "=== step d: labels 20, mode eager_fp32" in log
    assert "test error" in log  # the smoke step's evaluate
    import tarfile

    with tarfile.open(out / "table_runs.tar.gz") as archive:
        names = archive.getnames()
    assert sum(n.endswith("metrics.jsonl") for n in names) == 2 and sum(n.endswith("result.json") for n in names) == 2
    # A later call on the same machine continues the first call's plan (the table's mode is part of its cache
    # key, so it is not sized anew): its rows and mode, without a probe.
    assert progress["plan"] == ["20", "eager_fp32"]
    again = subprocess.run(["bash", "benchmarks/gpu_session.sh", "--dry-run", "--skip", "a,b,c", "--work",
                            str(tmp_path / "runs")], cwd=ROOT, env={**env, "OUT": str(tmp_path / "out2")},
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    steps = json.loads((tmp_path / "out2" / "summary.json").read_text())["steps"]
    assert [s["step"] for s in steps if s["status"] != "skipped"] == ["setup", "d"]
    assert "continues the plan of an earlier call: 20 eager_fp32" in (tmp_path / "out2" / "session.log").read_text()
    progress = json.loads((tmp_path / "out2" / "table_progress.json").read_text())
    assert progress["plan"] == ["20", "eager_fp32"] and progress["sizing"] is None and progress["all_finished"]


def _size_table():
    import importlib.util

    spec = importlib.util.spec_from_file_location("size_table", ROOT / "benchmarks" / "size_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_speed_between_and_beyond_measured_model_counts():
    ms_at = _size_table().ms_at
    points = [(10, 4.0), (40, 10.0)]
    assert ms_at(points, 10) == 4.0 and ms_at(points, 40) == 10.0
    assert ms_at(points, 20) == 6.0  # linear between
    assert ms_at(points, 1) == 4.0  # flat below: never faster than measured
    assert ms_at(points, 80) == 20.0  # beyond: at least proportional (10 / 40 per model > the slope 0.2)
    assert ms_at([(10, 4.0)], 40) == 16.0 and ms_at([(10, 4.0)], 5) == 4.0


@pytest.mark.parametrize("seconds, expected, fits", [
    (10_000, [100, 50, 20, 200], True),  # the whole table
    (450, [100, 50], True),  # the rows that fit, 100 labels first
    (100, [100], False),  # not even one row: it is trained all the same, and said
])
def test_the_table_is_sized_to_the_time_left(seconds, expected, fits):
    plan = _size_table().size([(10, 1.0), (40, 2.5)], [100, 50, 20, 200], seeds=10, epochs=300,
                              iterations_per_epoch=600, seconds=seconds, startup=90, margin=1.1)
    # 10 models: 90 + 1.1 * 180,000 * 1.0 ms = 288 s; 20: 90 + 1.1 * 180 * 1.5 = 387 s; 40: 585 s
    assert plan["labels"] == expected and plan["fits"] == fits
    assert [p["predicted_s"] for p in plan["predictions"]] == [288.0, 387.0, 486.0, 585.0]


def test_size_table_without_rows_of_the_mode_says_so_in_one_line(tmp_path, capsys):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"rows": [{"recipe": "mnist", "mode": "graph_tf32", "models": 10,
                                           "ms_per_iteration": 3.0}]}))
    module = _size_table()
    assert module.main(["--bench", str(bench), "--mode", "graph_bf16", "--seconds", "500"]) == 2
    assert "has no timed mnist rows of mode graph_bf16" in capsys.readouterr().err
    assert module.main(["--bench", str(bench), "--mode", "graph_tf32_compiled,graph_tf32", "--seconds", "500",
                        "--explain", str(tmp_path / "plan.json")]) == 0
    assert capsys.readouterr().out.split() == ["100", "graph_tf32"]  # 90 + 1.1 * 180 * 3.0 = 684 s > 500: one row
    assert json.loads((tmp_path / "plan.json").read_text())["fits"] is False

