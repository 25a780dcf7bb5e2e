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
    assert [s["step"] for s in summary["steps"]] == ["setup", "a", "b", "c", "d"]
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
    assert "test error" in log  # the smoke step's evaluate
    import tarfile

    with tarfile.open(out / "table_runs.tar.gz") as archive:
        names = archive.getnames()
    assert sum(n.endswith("metrics.jsonl") for n in names) == 2 and sum(n.endswith("result.json") for n in names) == 2
