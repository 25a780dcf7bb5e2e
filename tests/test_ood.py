"""ssgan.ood: the OOD metrics against scikit-learn, ECE on a constructed case, temperature scaling, the
calibration record read defensively, and the commands (evaluate --ood, predict --ood-score / --calibrated,
export --calibrated) with their bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ssgan import ood
from ssgan.cli import main
from ssgan.rundir import CALIBRATION_NAME, OOD_NAME, RunDirError
from tests.conftest import TINY_OVERRIDES

# Fixed scores with ties inside each set and across the two.
IN_SCORES = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.55, 0.5, 0.3, 0.95, 0.8, 0.2, 0.65])
OUT_SCORES = np.array([0.1, 0.5, 0.8, 0.3, 0.4, 0.05, 0.6, 0.2])


def _sklearn(in_scores, out_scores):
    y = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    s = np.r_[in_scores, out_scores]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return roc_auc_score(y, s), average_precision_score(y, s), fpr[np.argmax(tpr >= 0.95)]


@pytest.mark.parametrize("seed", [None, 0, 1])
def test_metrics_agree_with_scikit_learn(seed):
    a, b = IN_SCORES, OUT_SCORES
    if seed is not None:  # rounded random scores: many ties
        rng = np.random.RandomState(seed)
        a, b = np.round(rng.normal(1, 1, 200), 1), np.round(rng.normal(0, 1, 150), 1)
    auc, ap, fpr95 = _sklearn(a, b)
    assert ood.auroc(a, b) == pytest.approx(auc, abs=1e-12)
    assert ood.aupr_in(a, b) == pytest.approx(ap, abs=1e-12)
    assert ood.fpr_at_tpr(a, b) == pytest.approx(fpr95, abs=1e-12)


def test_metrics_known_values():
    assert ood.ood_metrics(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == {"auroc": 1.0, "aupr_in": 1.0,
                                                                           "fpr95": 0.0}
    same = ood.ood_metrics(np.ones(4), np.ones(4))
    assert same["auroc"] == 0.5 and same["fpr95"] == 1.0 and same["aupr_in"] == 0.5


def test_metrics_refuse_empty_or_non_finite_scores():
    with pytest.raises(ValueError):
        ood.auroc(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError):
        ood.aupr_in(np.array([np.nan]), np.array([1.0]))


def test_ece_of_a_constructed_case():
    """Four images at confidence 0.9 of which 3 are right (gap 0.15) and two at 0.55 both right (gap 0.45):
    ECE = 4/6 * 0.15 + 2/6 * 0.45 = 0.25; a confidence of exactly 1 or 0.5 falls in the last / 8th bin."""
    probs = np.array([[0.9, 0.1]] * 4 + [[0.55, 0.45]] * 2)
    y = np.array([0, 0, 0, 1, 0, 0])
    assert ood.expected_calibration_error(probs, y) == pytest.approx(0.25)
    counts, confidence, accuracy = ood.reliability_bins(probs, y)
    assert counts[13] == 4 and counts[8] == 2 and counts.sum() == 6
    assert confidence[13] == pytest.approx(0.9) and accuracy[13] == 0.75
    perfect = np.array([[1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])  # right at 1; one of two right at 0.5
    assert ood.expected_calibration_error(perfect, np.array([0, 0, 1])) == pytest.approx(0.0)
    assert ood.reliability_bins(perfect, np.array([0, 0, 1]))[0][[14, 7]].tolist() == [1, 2]


def test_nll_and_brier_known_values():
    probs = np.array([[0.5, 0.5], [0.8, 0.2]])
    y = np.array([0, 1])
    assert ood.negative_log_likelihood(probs, y) == pytest.approx(-(math.log(0.5) + math.log(0.2)) / 2)
    assert ood.brier_score(probs, y) == pytest.approx((0.25 + 0.25 + 0.64 + 0.64) / 2)
    assert ood.brier_score(np.eye(3), np.arange(3)) == 0.0


def test_scores_are_stable_at_extreme_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4]])
    scores = ood.scores_from_logits(logits)
    assert np.allclose(scores["log_z"], [1e4, -1e4 + math.log(3)])
    assert np.allclose(scores["msp"], [1.0, 1 / 3])
    # log Z against a (K+1)-way softmax with the fake logit at 0: D(x) = Z / (Z + 1)
    small = np.array([[0.3, -1.2, 2.0]])
    d_real = 1 - np.exp(0 - np.log(np.exp(small).sum() + 1))
    assert ood.log_z(small)[0] == pytest.approx(math.log(d_real / (1 - d_real)))


def test_temperature_scaling_recovers_the_temperature_that_made_the_labels():
    rng = np.random.RandomState(0)
    logits = rng.normal(0, 3, size=(4000, 5))
    probs = ood.softmax(logits, 2.0)
    y = np.array([rng.choice(5, p=p) for p in probs])
    temperature = ood.fit_temperature(logits, y)
    assert temperature == pytest.approx(2.0, rel=0.1)
    record = ood.calibrate(logits, y)
    assert record.nll_after < record.nll_before


def test_the_calibration_record_round_trips_and_refuses_what_it_did_not_write(tmp_path):
    assert ood.TemperatureRecord.read(tmp_path) is None
    ood.TemperatureRecord(1.5, 100, 0.6, 0.5).write(tmp_path)
    assert ood.read_temperature(tmp_path) == 1.5
    good = json.loads((tmp_path / CALIBRATION_NAME).read_text())
    bad = [{**good, "temperature": "NaN"}, {**good, "temperature": True}, {**good, "temperature": 1e9},
           {**good, "n_val": -3}, {**good, "extra": 1}, {**good, "format": "other"}, [1, 2]]
    for payload in bad:
        (tmp_path / CALIBRATION_NAME).write_text(json.dumps(payload))
        with pytest.raises(RunDirError):
            ood.TemperatureRecord.read(tmp_path)
    for text in ['{"temperature": NaN}', '{"format": "ssgan-temperature-v1", "temperature": Infinity}',
                 " " * 5000, "\xff\xfe"]:
        (tmp_path / CALIBRATION_NAME).write_text(text, encoding="latin-1")
        with pytest.raises(RunDirError):
            ood.TemperatureRecord.read(tmp_path)
    (tmp_path / CALIBRATION_NAME).unlink()
    (tmp_path / CALIBRATION_NAME).mkdir()
    with pytest.raises(RunDirError):
        ood.TemperatureRecord.read(tmp_path)


# ------------------------------------------------------------------------------------------- commands

@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """A tiny digits run with a validation split: calibration.json and result.json's calibration entry."""
    run_dir = tmp_path_factory.mktemp("ood") / "run"
    assert main(["fit", "--run-dir", str(run_dir), *TINY_OVERRIDES, "dataset.val_size=0.2"]) == 0
    return run_dir


def test_fit_with_a_validation_split_keeps_a_temperature_and_reports_calibration(calibrated_run):
    result = json.loads((calibrated_run / "result.json").read_text())
    entry = result["calibration"]
    assert entry["bins"] == 15 and 0 <= entry["ece"] <= 1 and entry["nll"] > 0 and 0 <= entry["brier"] <= 2
    assert entry["temperature"] == ood.read_temperature(calibrated_run)
    assert entry["calibrated"]["nll"] > 0


def test_evaluate_ood_prints_and_writes_the_metrics(calibrated_run, tmp_path, capsys):
    np.savez(tmp_path / "blobs.npz", x=np.full((30, 8, 8), 16.0))
    assert main(["evaluate", str(calibrated_run), "--ood", "uniform", str(tmp_path / "blobs.npz")]) == 0
    out = capsys.readouterr().out
    assert "calibration (test set, 15 bins): ECE" in out and "calibrated (T = " in out
    assert "uniform (450 images)" in out and "log_z " in out and "AUROC" in out
    written = json.loads((calibrated_run / OOD_NAME).read_text())
    assert [s["name"] for s in written["sets"]] == ["uniform", str(tmp_path / "blobs.npz")]
    assert set(written["sets"][0]["metrics"]) == {"msp", "log_z"}


@pytest.mark.parametrize("array, extra, fragment", [
    (np.zeros((5, 28, 28), np.uint8), [], "pass dataset.resize=true"),
    (np.zeros((0, 8, 8), np.uint8), [], "an empty set"),
    (np.zeros((5, 8, 8, 3), np.uint8), [], "3 channels"),
    (np.zeros((5, 8, 8, 3), np.uint8), ["--convert-channels"], None),
    (np.zeros((5, 28, 28), np.uint8), ["dataset.resize=true"], None),
])
def test_bad_foreign_sets_are_one_line_and_exit_2(calibrated_run, tmp_path, capsys, array, extra, fragment):
    np.savez(tmp_path / "x.npz", x=array)
    code = main(["evaluate", str(calibrated_run), "--ood", str(tmp_path / "x.npz"), *extra])
    err = capsys.readouterr().err
    if fragment is None:
        assert code == 0, err
    else:
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1


def test_predict_ood_score_column_and_calibrated_probabilities(calibrated_run, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", x=np.random.RandomState(0).randint(0, 17, size=(4, 8, 8)).astype(np.float32))
    assert main(["predict", str(calibrated_run), str(tmp_path / "x.npz"), "--proba", "--ood-score"]) == 0
    header, *plain = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert header[-1] == "msp" and len(plain) == 4 and all(len(row) == 2 + 10 + 1 for row in plain)
    assert main(["predict", str(calibrated_run), str(tmp_path / "x.npz"), "--proba", "--calibrated"]) == 0
    calibrated = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()][1:]
    assert [row[2:12] for row in calibrated] != [row[2:12] for row in plain]  # T != 1
    assert [row[1] for row in calibrated] == [row[1] for row in plain]  # the classes stay


def test_calibrated_without_a_validation_split_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "plain"
    assert main(["fit", "--run-dir", str(run_dir), *TINY_OVERRIDES]) == 0
    assert not (run_dir / CALIBRATION_NAME).exists()
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 8, 8), np.float32))
    capsys.readouterr()
    assert main(["predict", str(run_dir), str(tmp_path / "x.npz"), "--calibrated"]) == 2
    assert "dataset.val_size" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--format", "torchscript", "--calibrated"]) == 2


def test_export_calibrated_divides_the_logits_by_the_temperature(calibrated_run, tmp_path):
    import torch

    from ssgan.export import export_run

    exported = export_run(calibrated_run, "torchscript", tmp_path / "m.pt", calibrated=True)
    model = torch.jit.load(str(exported.path))
    x = torch.rand(3, 1, 8, 8) * 16
    from ssgan.checkpoint import load_run

    run = load_run(calibrated_run)
    logits = ood.predict_logits(run.discriminator, (x / 16).numpy())
    expected = ood.softmax(logits, ood.read_temperature(calibrated_run))
    assert np.allclose(model(x).numpy(), expected, atol=1e-5)


def test_estimator_score_samples_and_calibrated_predict_proba(calibrated_run):
    import ssgan

    estimator = ssgan.load(calibrated_run)
    x = np.random.RandomState(0).randint(0, 17, size=(5, 8, 8)).astype(np.float64)
    scores = estimator.score_samples(x)
    assert scores.shape == (5,) and np.isfinite(scores).all()
    estimator.calibrated = True
    calibrated = estimator.predict_proba(x)
    estimator.calibrated = False
    plain = estimator.predict_proba(x)
    assert np.allclose(calibrated.sum(axis=1), 1) and not np.allclose(calibrated, plain)
    assert (calibrated.argmax(axis=1) == plain.argmax(axis=1)).all()


def test_the_estimator_fits_a_temperature_on_a_validation_split_and_saves_it(tmp_path):
    from sklearn.datasets import load_digits

    from ssgan import SSGANClassifier

    digits = load_digits()
    x, y = digits.images[:300], digits.target[:300].copy()
    y[100:] = -1  # 100 labeled rows, 20 of them held out for the temperature
    tiny = dict(epochs=1, iters_per_epoch=2, batch_size=20, device="cpu",
                overrides=("model.d_widths=[32,16]", "model.g_widths=[32]", "model.z_dim=8", "train.init_batch=50",
                           "dataset.val_size=20"))
    estimator = SSGANClassifier(calibrated=True, **tiny).fit(x, y)
    assert ood.TEMPERATURE_BOUNDS[0] <= estimator.temperature_ <= ood.TEMPERATURE_BOUNDS[1]
    probs = estimator.predict_proba(x[:5])
    estimator.save(tmp_path / "e.pt")
    loaded = SSGANClassifier.load(tmp_path / "e.pt")
    assert loaded.temperature_ == estimator.temperature_ and np.allclose(loaded.predict_proba(x[:5]), probs)
    assert estimator.score_samples(x[:5]).shape == (5,)
    with pytest.raises(ValueError, match="val_size"):
        SSGANClassifier(calibrated=True, **{**tiny, "overrides": tiny["overrides"][:-1]}).fit(x, y).predict_proba(x)
