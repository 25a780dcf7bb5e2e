"""Tests of ssgan/evaluate.py: class probabilities, error rate, the ensemble (mean of probabilities, not of
votes; docs/method.md sec. 5) and the Inception Score (Salimans et al. 2016, sec. 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ssgan.evaluate import ensemble_proba, error_rate, inception_score, predict_proba


class TinyDiscriminator(nn.Module):
    """(B, 1, 4, 4) -> (logits (B, 3), feats (B, 8)), with dropout so that training mode is stochastic."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(16, 8)
        self.dropout = nn.Dropout(0.5)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = torch.relu(self.hidden(self.dropout(x.flatten(1))))
        return self.out(feats) * 5, feats


@pytest.fixture
def disc() -> TinyDiscriminator:
    torch.manual_seed(0)
    return TinyDiscriminator()


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(10, 1, 4, 4))


def test_predict_proba_rows_sum_to_one(disc, x):
    probs = predict_proba(disc, x, batch_size=4)
    assert probs.shape == (10, 3) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (probs >= 0).all()


def test_predict_proba_is_deterministic_eval_mode_and_restores_training(disc, x):
    disc.train()
    first, second = predict_proba(disc, x), predict_proba(disc, x, batch_size=3)
    np.testing.assert_allclose(first, second, atol=1e-6)
    assert disc.training
    # eval mode: dropout off, equal to the softmax of the eval-mode logits
    disc.eval()
    with torch.no_grad():
        expected = torch.softmax(disc(torch.as_tensor(x, dtype=torch.float32))[0], dim=1).numpy()
    np.testing.assert_allclose(first, expected, atol=1e-6)
    assert not disc.training
    # whereas training mode is stochastic: the test would notice dropout left on
    disc.train()
    with torch.no_grad():
        a, b = (disc(torch.as_tensor(x, dtype=torch.float32))[0] for _ in range(2))
    assert not torch.allclose(a, b)


def test_predict_proba_accepts_tensors(disc, x):
    np.testing.assert_allclose(predict_proba(disc, torch.as_tensor(x)), predict_proba(disc, x))


def test_error_rate_known_value():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert error_rate(probs, np.array([0, 1, 1, 0])) == pytest.approx(50.0)
    assert error_rate(probs, [0, 1, 0, 1]) == 0.0
    assert error_rate(probs, np.array([1, 0, 1, 1])) == pytest.approx(75.0)


def test_ensemble_uses_mean_probability_not_majority_vote():
    """Two models lean weakly to class 1, one is confident about class 0: the vote says 1, the mean 0."""
    probs_per_model = [np.array([[0.9, 0.1]]), np.array([[0.45, 0.55]]), np.array([[0.45, 0.55]])]
    votes = np.bincount([p.argmax(axis=1)[0] for p in probs_per_model], minlength=2)
    assert votes.argmax() == 1
    ensemble = ensemble_proba(probs_per_model)
    np.testing.assert_allclose(ensemble, [[0.6, 0.4]])
    assert ensemble.argmax(axis=1)[0] == 0
    assert error_rate(ensemble, np.array([0])) == 0.0


def test_ensemble_of_identical_models_equals_one_model(disc, x):
    probs = predict_proba(disc, x)
    np.testing.assert_allclose(ensemble_proba([probs, probs.copy(), probs.copy()]), probs, rtol=1e-12)
    assert ensemble_proba([probs.astype(np.float32)]).dtype == np.float64


@pytest.mark.parametrize("n_classes", [2, 5, 10])
def test_inception_score_of_uniform_confident_predictions_is_k(n_classes):
    probs = np.tile(np.eye(n_classes), (10, 1))  # each split of 10 sees every class equally
    mean, std = inception_score(probs, n_splits=10)
    assert mean == pytest.approx(n_classes, rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_of_constant_predictions_is_one():
    confident = np.tile([[0.0, 1.0, 0.0]], (20, 1))
    unsure = np.full((20, 3), 1 / 3)
    assert inception_score(confident, n_splits=4)[0] == pytest.approx(1.0)
    assert inception_score(unsure, n_splits=4)[0] == pytest.approx(1.0)


def test_inception_score_known_value():
    """Two samples, p(y|x) = (1, 0) and (0.5, 0.5): p(y) = (0.75, 0.25),
    KL_1 = log(1/0.75), KL_2 = 0.5 log(0.5/0.75) + 0.5 log(0.5/0.25)."""
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    kl = [math.log(1 / 0.75), 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)]
    assert inception_score(probs, n_splits=1)[0] == pytest.approx(math.exp(np.mean(kl)))


def test_inception_score_with_fewer_samples_than_splits_is_finite():
    probs = np.eye(3)  # 3 samples, 10 splits requested
    mean, std = inception_score(probs, n_splits=10)
    assert math.isfinite(mean) and math.isfinite(std)
    assert (mean, std) == inception_score(probs, n_splits=3)


def test_class_report_against_a_direct_count():
    from ssgan.evaluate import class_report

    y = np.array([0, 0, 0, 1, 1, 2])
    probs = np.eye(3)[[0, 1, 0, 1, 1, 0]]  # predictions 0, 1, 0, 1, 1, 0
    report = class_report(probs, y, ["a", "b", "c"])
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]  # rows: true, columns: predicted
    assert report["per_class_error"] == pytest.approx({"a": 100 / 3, "b": 0.0, "c": 100.0})
    assert report["test_error"] == pytest.approx(100 * 2 / 6)
    empty = class_report(np.eye(2)[[0, 0]], np.array([0, 0]), ["a", "b"])
    assert np.isnan(empty["per_class_error"]["b"])  # no test image of class b


def test_predict_proba_runs_in_the_runs_float32_precision():
    """Evaluation outside a training (ssgan evaluate, cached seeds, reports, the estimator) uses the run's
    train.tf32, not PyTorch's default (TF32 convolutions on GPUs), so that it reproduces the run's own
    test error. What a GPU computes cannot be seen here; the flags the forward pass sees can."""

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))
            self.seen = []

        def forward(self, x):
            self.seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return torch.zeros(len(x), 2), torch.zeros(len(x), 1)

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, True  # as a caller may have
    try:
        probe = Probe()
        predict_proba(probe, torch.zeros(3, 1, 2, 2))
        predict_proba(probe, torch.zeros(3, 1, 2, 2), tf32=True)
        assert probe.seen == [(False, False), (True, True)]
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
