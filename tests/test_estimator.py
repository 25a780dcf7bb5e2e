"""Tests of ssgan/estimator.py: scikit-learn conventions (clone, parameters, y = -1 for unlabeled rows,
arbitrary class labels, probabilities that sum to 1, Pipeline, cross_val_score), save / load, and runs of
``ssgan fit`` loaded as estimators. Every fit is two iterations of a tiny network on 200 digits."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

import ssgan
from ssgan.rundir import RunDirError
from ssgan.estimator import SSGANClassifier, unlabeled_mask
from tests.conftest import TINY_OVERRIDES

TINY = dict(epochs=1, iters_per_epoch=2, batch_size=20, device="cpu",
            overrides=("model.d_widths=[32,16]", "model.g_widths=[32]", "model.z_dim=8", "train.init_batch=50"))
N_LABELED = 50


@pytest.fixture(scope="module")
def digits():
    """200 digit images (0..16 floats, as load_digits gives them), labels, and the labels with all but the
    first 50 rows marked unlabeled."""
    data = load_digits()
    x, y = data.images[:200], data.target[:200]
    y_semi = y.copy()
    y_semi[N_LABELED:] = -1
    return x, y, y_semi


@pytest.fixture(scope="module")
def fitted(digits):
    x, _, y_semi = digits
    return SSGANClassifier(**TINY).fit(x, y_semi)


# ------------------------------------------------------------------------------------ sklearn conventions

def test_parameters_round_trip_and_clone():
    est = SSGANClassifier(recipe="mnist", method="ct_gan", seed=3, lr=1e-4, **TINY)
    params = est.get_params()
    assert params["recipe"] == "mnist" and params["seed"] == 3 and params["overrides"] is TINY["overrides"]
    assert clone(est).get_params() == params
    assert est.set_params(seed=5, value_max=255.0) is est
    assert est.get_params()["seed"] == 5 and est.get_params()["value_max"] == 255.0
    assert SSGANClassifier(**SSGANClassifier().get_params()).get_params() == SSGANClassifier().get_params()


def test_unfitted_estimator_refuses_to_predict(fitted, digits):
    with pytest.raises(NotFittedError):
        SSGANClassifier().predict(digits[0])
    with pytest.raises(NotFittedError):
        clone(fitted).predict_proba(digits[0])  # a clone is unfitted


def test_fit_with_unlabeled_rows(fitted, digits):
    x = digits[0]
    assert list(fitted.classes_) == list(range(10))
    probs = fitted.predict_proba(x)
    assert probs.shape == (200, 10) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(fitted.predict(x), fitted.classes_[probs.argmax(axis=1)])
    assert fitted.n_features_in_ == 64 and fitted.value_max_ == 16.0
    assert fitted.config_.dataset.labels == N_LABELED and fitted.config_.dataset.n_classes == 10
    assert fitted.config_.train.iters_per_epoch == 2 and len(fitted.history_) == 1


def test_unlabeled_mask_marks():
    assert unlabeled_mask(np.array([0, -1, 3])).tolist() == [False, True, False]
    assert unlabeled_mask(np.array([0.5, -1.0])).tolist() == [False, True]
    assert unlabeled_mask(np.array(["cat", -1, "dog"])).tolist() == [False, True, False]  # '-1' as a string
    assert unlabeled_mask(np.array(["cat", -1, True], dtype=object)).tolist() == [False, True, False]


@pytest.mark.parametrize("names", [np.array(["even", "odd"], dtype=object), np.array([10, 30])])
def test_class_labels_are_arbitrary_values(digits, names):
    x, y, _ = digits
    y_named = names[y % 2].astype(object)
    y_named[N_LABELED:] = -1  # strings and -1 in one object array, as scikit-learn's semi-supervised models
    est = SSGANClassifier(**TINY).fit(x, y_named)
    assert list(est.classes_) == sorted(names.tolist())
    assert set(est.predict(x)) <= set(names.tolist())
    probs = est.predict_proba(x[:7])
    assert probs.shape == (7, 2) and np.allclose(probs.sum(axis=1), 1.0)
    assert 0.0 <= est.score(x, y_named) <= 1.0


def test_flat_rows_in_unit_range_train_the_same_network(fitted, digits):
    """load_digits().data / 16 (flat rows in [0, 1]) and the 0..16 images are the same scaled inputs."""
    x, _, y_semi = digits
    flat = SSGANClassifier(**TINY).fit(x.reshape(200, 64) / 16.0, y_semi)
    assert flat.value_max_ == 1.0
    np.testing.assert_array_equal(flat.predict_proba(x.reshape(200, 64) / 16.0), fitted.predict_proba(x))


def test_score_leaves_out_unlabeled_rows(fitted, digits):
    x, y, y_semi = digits
    labeled = y_semi != -1
    assert fitted.score(x, y_semi) == np.mean(fitted.predict(x[labeled]) == y[labeled])
    assert fitted.score(x, y) == np.mean(fitted.predict(x) == y)


def test_pipeline_and_cross_val_score(digits):
    x, _, y_semi = digits
    pipe = make_pipeline(FunctionTransformer(np.sqrt), SSGANClassifier(**TINY))
    assert pipe.fit(x, y_semi).predict(x[:3]).shape == (3,)
    scores = cross_val_score(SSGANClassifier(**TINY), x, y_semi, cv=2)
    assert scores.shape == (2,) and np.all((0 <= scores) & (scores <= 1))


@pytest.mark.parametrize("change, fragment", [
    (lambda x, y: (x[:, :7, :7], y), "8x8"),
    (lambda x, y: (x.reshape(200, 64)[:, :50], y), "image_shape"),
    (lambda x, y: (x[:, None, None], y), "expected images"),
    (lambda x, y: (x, np.full(200, -1)), "no labeled rows"),
    (lambda x, y: (x, np.where(y == -1, -1, 4)), "one class"),
    (lambda x, y: (x[:100], y), "100 rows"),
    (lambda x, y: (np.where(np.arange(200)[:, None, None] == 3, np.nan, x), y), "NaN"),
    (lambda x, y: (x, np.where(y == 2, np.nan, y.astype(float))), "NaN"),
    (lambda x, y: (x, np.array(["a", 1] * 100, dtype=object)), "mixes label types"),
])
def test_bad_data_is_a_clear_value_error(digits, change, fragment):
    x, y = change(digits[0], digits[2])
    with pytest.raises(ValueError, match=fragment):
        SSGANClassifier(**TINY).fit(x, y)


@pytest.mark.parametrize("params, fragment", [
    (dict(recipe="imagenet"), "recipe='imagenet'"),
    (dict(method="wgan"), "method='wgan'"),
    (dict(epochs=-1), "train.epochs"),
    (dict(overrides=("model.nope=1",)), "model.nope"),
    (dict(overrides="train.lr=1"), "sequence of KEY=VALUE"),
    (dict(value_max=0), "value_max"),
])
def test_bad_parameters_are_clear_value_errors_at_fit(digits, params, fragment):
    est = SSGANClassifier(**{**TINY, **params})  # stored unchanged: no error before fit
    with pytest.raises(ValueError, match=fragment):
        est.fit(digits[0], digits[2])


def test_predict_checks_the_row_length(fitted, digits):
    with pytest.raises(ValueError, match="fitted on 64"):
        fitted.predict(digits[0].reshape(200, 64)[:, :32])


# ---------------------------------------------------------------------------------------- save / load

def test_save_load_round_trip_gives_identical_predictions(fitted, digits, tmp_path):
    path = tmp_path / "model.pt"
    fitted.save(path)
    payload = torch.load(path, weights_only=True)  # plain data only
    assert payload["format"] == "ssgan-estimator-v1"
    loaded = SSGANClassifier.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(digits[0]), fitted.predict_proba(digits[0]))
    assert loaded.get_params() == fitted.get_params() and loaded.value_max_ == fitted.value_max_
    np.testing.assert_array_equal(ssgan.load(path).predict(digits[0]), fitted.predict(digits[0]))
    assert pickle.loads(pickle.dumps(loaded)).predict(digits[0][:3]).shape == (3,)


def test_string_classes_survive_save_and_load(digits, tmp_path):
    x, y, _ = digits
    y_named = np.array(["even", "odd"], dtype=object)[y % 2]
    y_named[N_LABELED:] = -1
    est = SSGANClassifier(**TINY).fit(x, y_named)
    est.save(tmp_path / "m.pt")
    loaded = SSGANClassifier.load(tmp_path / "m.pt")
    assert loaded.classes_.dtype == object and list(loaded.classes_) == ["even", "odd"]
    np.testing.assert_array_equal(loaded.predict(x), est.predict(x))


class _Payload:
    """Not a tensor, number, string, list or dict: weights-only loading refuses it."""


@pytest.mark.parametrize("write, fragment", [
    (lambda p: p.write_text("not a checkpoint"), "not a readable"),
    (lambda p: torch.save({"a": 1}, p), "not a saved SSGANClassifier"),
    (lambda p: torch.save({"x": _Payload()}, p), "refused"),
])
def test_load_refuses_other_files(tmp_path, write, fragment):
    path = tmp_path / "f.pt"
    write(path)
    with pytest.raises(RunDirError, match=fragment):
        SSGANClassifier.load(path)


# ----------------------------------------------------------------------------------- runs of ssgan fit

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as `ssgan fit` writes it (same path: compose, convert, train.fit with run_dir)."""
    from ssgan.config import compose
    from ssgan.train import fit

    run_dir = tmp_path_factory.mktemp("runs") / "run"
    fit(compose(TINY_OVERRIDES), run_dir=run_dir)
    return run_dir


def test_load_run_dir_as_an_estimator(run_dir, digits):
    from ssgan.rundir import load_run
    from ssgan.evaluate import predict_proba

    est = ssgan.load(run_dir)
    assert list(est.classes_) == [str(k) for k in range(10)]  # the data set's class names
    assert est.get_params()["recipe"] == "digits" and est.value_max_ is None
    x = digits[0]  # 0..16 floats: the builtin digits' range
    expected = predict_proba(load_run(run_dir).discriminator, x[:, None] / 16.0)
    np.testing.assert_allclose(est.predict_proba(x), expected, atol=1e-12)
    np.testing.assert_allclose(est.predict_proba(x / 16.0), expected, atol=1e-12)  # floats in [0, 1]
    with pytest.raises(RunDirError, match="a checkpoint of ssgan fit"):
        SSGANClassifier.load(run_dir / "checkpoint.pt")


def test_import_ssgan_stays_cheap():
    code = "import sys, ssgan; assert 'sklearn' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
