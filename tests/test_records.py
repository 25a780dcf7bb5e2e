"""The typed records (ssgan/records.py): each written and read back side by side. That a run writes what the
records read (result.json, the figures) is checked on a real run in test_rundir.py."""

from __future__ import annotations

import json

import pytest
import torch

from ssgan.rundir import RunDirError


def test_metrics_log_starts_clean_and_a_resume_keeps_the_finished_epochs(tmp_path):
    from ssgan.records import MetricsLog
    from ssgan.rundir import METRICS_NAME

    (tmp_path / METRICS_NAME).write_text('{"epoch": 1, "loss": 9}\n')  # an old run's log
    log = MetricsLog(tmp_path)
    log.write({"epoch": 1, "loss": 1.0})
    log.write({"epoch": 2, "loss": 0.5})
    log.write({"epoch": 3, "loss": 0.2})  # lost to a kill after the checkpoint of epoch 2
    log.close()
    resumed = MetricsLog(tmp_path, resume_epoch=2)
    assert [r["loss"] for r in resumed.history] == [1.0, 0.5]
    resumed.write({"epoch": 3, "loss": 0.25})
    resumed.close()
    lines = [json.loads(line) for line in (tmp_path / METRICS_NAME).read_text().splitlines()]
    assert [(r["epoch"], r["loss"]) for r in lines] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert MetricsLog(None).history == []  # no run directory: nothing is written


# --------------------------------------------------------------- the windows of "Never lose a run, part two"

def test_a_metrics_line_cut_by_a_kill_is_dropped_on_resume(tmp_path):
    from ssgan.records import MetricsLog
    from ssgan.rundir import METRICS_NAME

    (tmp_path / METRICS_NAME).write_text('{"epoch": 1, "loss": 1.0}\n{"epoch": 2, "lo')  # killed mid-append
    log = MetricsLog(tmp_path, resume_epoch=1)
    assert log.history == [{"epoch": 1, "loss": 1.0}]
    log.close()
    (tmp_path / METRICS_NAME).write_text('{"epoch": 1}\ngarbage\n{"epoch": 2}\n')
    with pytest.raises(RunDirError, match="line 2 is not a metrics record"):
        MetricsLog(tmp_path, resume_epoch=2)


def test_the_plan_and_summary_records_round_trip(tmp_path):
    from dataclasses import asdict

    from ssgan.config import Config
    from ssgan.records import SeedsPlan, SeedsSummary
    from ssgan.rundir import PLAN_NAME, SUMMARY_MD_NAME, SUMMARY_NAME

    plan = SeedsPlan(asdict(Config()), [3, 4], "ssgan fit --seeds 2 seed=3")
    plan.write(tmp_path / "run")
    assert SeedsPlan.read(tmp_path / "run") == plan
    assert set(json.loads((tmp_path / "run" / PLAN_NAME).read_text())) == {"config", "seeds", "command"}

    summary = SeedsSummary(meta={"command": "c", "date": "d"}, dataset="digits", labels=20, method="improved_gan",
                           key="0123456789ab", seeds=[0, 1], finished=[0], test_errors={"0": 9.5}, mean=9.5,
                           std=None, ensemble_error=9.5, n_test=450, runs={"0": "seed0"}, config={"seed": 0})
    summary.write(tmp_path / "run", "# table\n")
    assert SeedsSummary.read(tmp_path / "run") == summary
    stored = json.loads((tmp_path / "run" / SUMMARY_NAME).read_text())
    assert stored["complete"] is False and list(stored)[:2] == ["command", "date"]  # provenance leads
    assert (tmp_path / "run" / SUMMARY_MD_NAME).read_text() == "# table\n"
    with pytest.raises(RunDirError, match="not a seeds plan"):
        SeedsPlan.read(tmp_path)


def test_the_ensemble_record_round_trips_and_never_replaces_a_file(tmp_path):
    from ssgan.records import EnsembleRecord

    record = EnsembleRecord(runs=["runs/a", "runs/b"], test_errors=[9.5, 10.0], mean=9.75, std=0.35,
                            std_kind="sample std (ddof=1)", ensemble_error=9.0, n_test=450, classes=["0", "1"],
                            per_class_error={"0": 8.0, "1": 10.0}, confusion_matrix=[[1, 0], [0, 1]])
    record.write(tmp_path / "e.json")
    assert EnsembleRecord.read(tmp_path / "e.json") == record
    assert list(json.loads((tmp_path / "e.json").read_text()))[:2] == ["runs", "test_errors"]
    with pytest.raises(RunDirError, match="already exists"):
        EnsembleRecord(**{**record.__dict__, "mean": 1.0}).write(tmp_path / "e.json")
    assert EnsembleRecord.read(tmp_path / "e.json").mean == 9.75
    (tmp_path / "other.json").write_text('{"runs": []}')
    with pytest.raises(RunDirError, match="not an ensemble record"):
        EnsembleRecord.read(tmp_path / "other.json")


@pytest.mark.parametrize("tabular", [False, True])
def test_the_estimator_file_record_round_trips(tabular, tmp_path):
    from ssgan.records import EstimatorFile
    from ssgan.rundir import CHECKPOINT_FORMAT, read_payload

    saved = EstimatorFile(params={"recipe": "digits", "epochs": 2}, config={"seed": 0},
                          discriminator={"w": torch.arange(6.0).reshape(2, 3)}, generator={"b": torch.ones(2)},
                          classes=["a", "b"], classes_dtype="<U1", n_features_in=64, value_max=16.0,
                          history=[{"epoch": 1, "test_error": 50.0}],
                          data_min=torch.zeros(3, dtype=torch.float64) if tabular else None,
                          data_max=torch.ones(3, dtype=torch.float64) if tabular else None)
    saved.write(tmp_path / "model.pt")
    assert EstimatorFile.is_one(tmp_path / "model.pt")
    assert read_payload(tmp_path / "model.pt")["format"] == ("ssgan-estimator-v2" if tabular else "ssgan-estimator-v1")
    again = EstimatorFile.read(tmp_path / "model.pt")
    assert again.tabular == tabular and again.classes == saved.classes and again.history == saved.history
    assert torch.equal(again.discriminator["w"], saved.discriminator["w"])
    if tabular:
        assert torch.equal(again.data_max, saved.data_max) and again.data_max.dtype == torch.float64
    torch.save({"format": CHECKPOINT_FORMAT}, tmp_path / "checkpoint.pt")
    with pytest.raises(RunDirError, match="a checkpoint of ssgan fit"):
        EstimatorFile.read(tmp_path / "checkpoint.pt")
    torch.save({"format": "ssgan-estimator-v1", "params": {}}, tmp_path / "cut.pt")
    with pytest.raises(RunDirError, match="incomplete estimator file"):
        EstimatorFile.read(tmp_path / "cut.pt")
