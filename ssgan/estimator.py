"""The trained discriminator as a scikit-learn classifier (Salimans et al. 2016, sec. 5; Wei et al. 2018).

``SSGANClassifier.fit(X, y)`` takes the semi-supervised convention of scikit-learn: rows with y = -1 are
unlabeled. It builds a typed ``Config`` from the Hydra configs of a recipe (a data set's published
recipe: network, scaling, optimiser, schedule) and a method, exactly as ``ssgan fit`` does, and calls
``train.fit`` with the labeled rows as the labeled subset and every row as the unlabeled pool. The
classifier is the Polyak-averaged discriminator: p(y = k | x, real) = softmax(l(x))_k over the K classes.

``save`` / ``SSGANClassifier.load`` keep a fitted estimator in one file of tensors, numbers, strings, lists
and dicts (read with ``torch.load(weights_only=True)``); ``load(RUN_DIR)`` turns a run of ``ssgan fit`` into
a fitted estimator.
"""

from __future__ import annotations

import io
import math
import numbers
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from .config import (DATASETS, METHODS, Config, ConfigError, DataConfig, compose, config_from_dict, resolve_device,
                     validate)
from .data import DataError, ImageData, input_value_max, prepare_images, scale_images
from .evaluate import predict_proba
from .rundir import CHECKPOINT_FORMAT, RunDirError, atomic_write, load_networks, load_run, read_payload
from .train import fit as train_fit

ESTIMATOR_FORMAT = "ssgan-estimator-v1"
UNLABELED = -1  # scikit-learn's mark of an unlabeled row (sklearn.semi_supervised)


def unlabeled_mask(y: np.ndarray) -> np.ndarray:
    """True where y marks an unlabeled row: the number -1, or the string "-1" (what ``np.array(["cat", -1])``
    makes of it). (N,) bool."""
    y = np.asarray(y)
    if y.dtype.kind in "iuf":
        return y == UNLABELED
    if y.dtype.kind in "US":
        return y == (b"-1" if y.dtype.kind == "S" else "-1")
    if y.dtype.kind == "O":
        return np.array([(isinstance(v, numbers.Real) and not isinstance(v, bool) and v == UNLABELED)
                         or (isinstance(v, (str, bytes)) and v in ("-1", b"-1")) for v in y], dtype=bool)
    return np.zeros(len(y), dtype=bool)


class SSGANClassifier(ClassifierMixin, BaseEstimator):
    """A semi-supervised GAN's discriminator as a scikit-learn classifier; y = -1 marks unlabeled rows.

    Training composes ``configs/`` for ``dataset=<recipe>`` and ``method=<method>`` (the published recipe,
    with its own recipe file where one exists, e.g. CT-GAN on CIFAR-10), applies the parameters below and then
    ``overrides``, and runs ``ssgan.train.fit``: one D step on L_sup + w (L_unl + L_fake) / 2 and one G step
    of feature matching per iteration. The labeled rows form the labeled set (all of them: no balancing,
    unlike ``dataset.labels`` of ``ssgan fit``) and all rows, labeled ones included, the unlabeled pool.

    Inputs. X holds images, (N, H, W), (N, H, W, C) or (N, C, H, W), or flat rows (N, D) reshaped to
    ``image_shape`` (default: the recipe's (C, H, W)); the image size must be the recipe's
    (``dataset.image_shape``: digits 8x8, mnist 28x28, cifar10 / svhn 32x32; or pass
    ``overrides=("dataset.resize=true",)``). Pixel values run from 0 to ``value_max`` and are scaled as the
    recipe scales its data (unit, cifar or symmetric, METHOD.md sec. 3); ``value_max=None`` infers it once,
    in ``fit``, with ``input_value_max``: 255 for uint8, 1 for floats in [0, 1], else 16 for the digits recipe
    and 255 for the others. Predictions take the same value_max.

    Labels. Any sortable values (ints, strings, ...); ``classes_`` holds them sorted, and column k of
    ``predict_proba`` is class ``classes_[k]``. Unlabeled rows carry -1 (or "-1" in a string array).

    Parameters:
        recipe: digits, mnist, cifar10 or svhn: the network, scaling and optimiser of that data set.
        method: improved_gan or ct_gan (adds the consistency term, Wei et al. 2018).
        epochs: training epochs; None: the recipe's (300 for digits and mnist).
        iters_per_epoch: iterations per epoch; None: one pass over X, len(X) // batch_size (the recipes'
            iteration counts are one pass over their own training sets).
        batch_size, lr, ema_decay: None keeps the recipe's value (ema_decay 0.9999 for mnist, cifar10 and svhn:
            over a short training the average barely leaves the initial weights; lower it for short runs).
        seed: the initialisation, data order and noise of training.
        device: auto, cpu or cuda.
        image_shape: the shape of one flat row, (H, W), (C, H, W) or (H, W, C); None: the recipe's (C, H, W).
        value_max: the pixel value of white in X; None: inferred as above.
        overrides: Hydra overrides for anything else, e.g. ("model.d_widths=[64,32]", "train.lr_g=1e-3").
        progress: show the progress bar.

    Attributes after fit: ``classes_`` (K,), ``n_features_in_`` (values per sample), ``config_`` (the
    Config trained with), ``discriminator_`` (the averaged D, the classifier), ``generator_``,
    ``value_max_`` (None for a run loaded with ``load``: inferred per call as ``ssgan predict`` does) and
    ``history_`` (per-epoch losses).
    """

    def __init__(self, recipe: str = "digits", method: str = "improved_gan", epochs: Optional[int] = None,
                 iters_per_epoch: Optional[int] = None, batch_size: Optional[int] = None,
                 lr: Optional[float] = None, ema_decay: Optional[float] = None, seed: int = 0,
                 device: str = "auto", image_shape: Optional[Sequence[int]] = None,
                 value_max: Optional[float] = None, overrides: Sequence[str] = (), progress: bool = False) -> None:
        # scikit-learn's rule: store the parameters unchanged; they are checked in fit.
        self.recipe = recipe
        self.method = method
        self.epochs = epochs
        self.iters_per_epoch = iters_per_epoch
        self.batch_size = batch_size
        self.lr = lr
        self.ema_decay = ema_decay
        self.seed = seed
        self.device = device
        self.image_shape = image_shape
        self.value_max = value_max
        self.overrides = overrides
        self.progress = progress

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # images (N, H, W) as well as flat rows
        return tags

    # ------------------------------------------------------------------------------------------- config

    def _config(self, n_labeled: int, n_classes: int) -> Config:
        """Compose the recipe and method with the parameters as Hydra overrides, as ``ssgan fit`` does."""
        if self.recipe not in DATASETS:
            raise ConfigError(f"recipe={self.recipe!r}: expected one of {', '.join(DATASETS)}")
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}: expected one of {', '.join(METHODS)}")
        if isinstance(self.overrides, str) or not all(isinstance(o, str) for o in self.overrides):
            raise ConfigError(f"overrides={self.overrides!r}: expected a sequence of KEY=VALUE strings")
        if self.value_max is not None and not self.value_max > 0:
            raise ConfigError(f"value_max={self.value_max}: must be positive")
        overrides = [f"dataset={self.recipe}", f"method={self.method}", f"seed={self.seed}",
                     f"train.device={self.device}", f"train.progress={str(bool(self.progress)).lower()}",
                     "train.sample_grid=false",
                     f"train.iters_per_epoch={'null' if self.iters_per_epoch is None else self.iters_per_epoch}"]
        for key, value in (("train.epochs", self.epochs), ("train.batch_size", self.batch_size),
                           ("train.lr", self.lr), ("train.ema_decay", self.ema_decay)):
            if value is not None:
                overrides.append(f"{key}={value}")
        cfg = compose(overrides + list(self.overrides))
        # The labeled rows are given, not drawn: labels and classes come from y.
        cfg = replace(cfg, dataset=replace(cfg.dataset, labels=n_labeled, n_classes=n_classes))
        validate(cfg)
        return cfg

    # ------------------------------------------------------------------------------------------- inputs

    def _images(self, X: Any, data: DataConfig, value_max: Optional[float]) -> np.ndarray:
        """X -> (N, C, H, W) float32 images scaled as the recipe scales its data."""
        x = np.asarray(X)
        if not np.issubdtype(x.dtype, np.number):
            raise DataError(f"X has dtype {x.dtype}; expected numbers (pixel values)")
        channels, height, width = data.image_shape
        if x.ndim == 2:
            shape = tuple(self.image_shape) if self.image_shape is not None else tuple(data.image_shape)
            if len(shape) not in (2, 3) or math.prod(shape) != x.shape[1]:
                raise DataError(f"X has rows of {x.shape[1]} values, which do not fill image_shape={shape}; "
                                f"the {data.name} recipe takes {channels}x{height}x{width} images")
            x = x.reshape(len(x), *shape)
        elif x.ndim not in (3, 4):
            raise DataError(f"X has shape {x.shape}; expected images (N, H, W), (N, H, W, C), (N, C, H, W) "
                            f"or flat rows (N, D)")
        x = prepare_images(x, data, "X")  # (N, C, H, W)
        if not np.all(np.isfinite(x)):
            raise DataError("X contains NaN or infinite values")
        if value_max is None:
            value_max = input_value_max(x, data)
        return scale_images(x, data.scaling, value_max)

    # ---------------------------------------------------------------------------------------------- fit

    def fit(self, X: Any, y: Any) -> "SSGANClassifier":
        """Train on images X (N, ...) with labels y (N,), where y = -1 marks an unlabeled row."""
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.ravel()
        if y.ndim != 1:
            raise DataError(f"y has shape {y.shape}; expected one label per row, (N,)")
        n_rows = len(np.asarray(X)) if np.ndim(X) else 0
        if len(y) != n_rows:
            raise DataError(f"X has {n_rows} rows but y has {len(y)} labels")
        if y.dtype.kind == "f" and np.isnan(y).any():
            raise DataError("y contains NaN; mark unlabeled rows with -1")
        unlabeled = unlabeled_mask(y)
        if unlabeled.all():
            raise DataError("y has no labeled rows: every label is -1 (unlabeled)")
        try:
            classes, y_lab = np.unique(y[~unlabeled], return_inverse=True)
        except TypeError:
            raise DataError("y mixes label types that cannot be sorted (e.g. strings and numbers)") from None
        if len(classes) < 2:
            raise DataError(f"y has labeled rows of one class only ({classes[0]!r}); a classifier needs two")

        cfg = self._config(int((~unlabeled).sum()), len(classes))
        x_raw = np.asarray(X)
        value_max = self.value_max if self.value_max is not None else input_value_max(x_raw, cfg.dataset)
        x = self._images(x_raw, cfg.dataset, value_max)  # (N, C, H, W)
        empty = np.zeros((0, *x.shape[1:]), dtype=np.float32)
        # Labeled rows first, so that they are the labeled subset 0..L-1; the unlabeled pool is every row.
        data = ImageData(x[~unlabeled], y_lab.astype(np.int64), empty, np.zeros(0, dtype=np.int64),
                         [str(c) for c in classes], x_extra=x[unlabeled] if unlabeled.any() else None)
        result = train_fit(cfg, data=data, labeled_indices=np.arange(len(y_lab)))

        self._set_fitted(cfg, result.discriminator, result.generator, classes, int(math.prod(x_raw.shape[1:])),
                         float(value_max), result.history)
        return self

    # ------------------------------------------------------------------------------------------ predict

    def _check_input(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        x = np.asarray(X)
        if x.ndim == 2 and x.shape[1] != self.n_features_in_:
            raise DataError(f"X has rows of {x.shape[1]} values; this classifier was fitted on "
                            f"{self.n_features_in_}")
        return self._images(x, self.config_.dataset, self.value_max_)

    def predict_proba(self, X: Any) -> np.ndarray:
        """p(y = k | x, real) = softmax(l(x))_k over the K classes of ``classes_``, from the averaged
        discriminator in eval mode (no dropout or noise). Returns (N, K) float64 rows that sum to 1."""
        x = self._check_input(X)
        if len(x) == 0:
            return np.zeros((0, len(self.classes_)))
        return predict_proba(self.discriminator_, x, self.config_.train.eval_batch_size)

    def predict(self, X: Any) -> np.ndarray:
        """The class of highest probability, as a value of ``classes_``. (N,)."""
        probs = self.predict_proba(X)  # (N, K); checks that the estimator is fitted
        return self.classes_[np.argmax(probs, axis=1)]

    def score(self, X: Any, y: Any, sample_weight: Optional[np.ndarray] = None) -> float:
        """Accuracy on the labeled rows of (X, y); rows with y = -1 are left out (so that
        ``cross_val_score`` can split semi-supervised data)."""
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.ravel()
        labeled = ~unlabeled_mask(y)
        if not labeled.any():
            raise DataError("y has no labeled rows to score: every label is -1 (unlabeled)")
        weight = None if sample_weight is None else np.asarray(sample_weight)[labeled]
        correct = self.predict(np.asarray(X)[labeled]) == y[labeled]  # also for labels in object arrays
        return float(np.average(correct, weights=weight))

    # ------------------------------------------------------------------------------------- save / load

    def save(self, path: str | Path) -> None:
        """Write the fitted estimator to one file (parameters, config, both networks, classes), atomically,
        holding only tensors, numbers, strings, lists and dicts."""
        check_is_fitted(self)
        path = Path(path)
        payload = {
            "format": ESTIMATOR_FORMAT,
            "params": {key: _plain(value, f"parameter {key}") for key, value in self.get_params().items()},
            "config": asdict(self.config_),
            "discriminator": {k: v.detach().cpu() for k, v in self.discriminator_.state_dict().items()},
            "generator": {k: v.detach().cpu() for k, v in self.generator_.state_dict().items()},
            "classes": [_plain(c, "classes_") for c in self.classes_.tolist()],
            "classes_dtype": self.classes_.dtype.str,
            "n_features_in": int(self.n_features_in_),
            "value_max": self.value_max_,
            "history": _plain(self.history_, "history_"),
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "SSGANClassifier":
        """Read a file written by ``save`` (weights-only unpickling); refuse anything else with one line."""
        path, device = Path(path), _device(device)
        payload = read_payload(path)
        if payload.get("format") == CHECKPOINT_FORMAT:
            raise RunDirError(f"{path}: a checkpoint of ssgan fit, not a saved estimator; use "
                                  f"ssgan.load({str(path.parent)!r})")
        if payload.get("format") != ESTIMATOR_FORMAT:
            raise RunDirError(f"{path}: not a saved SSGANClassifier (expected format {ESTIMATOR_FORMAT})")
        missing = [k for k in ("params", "config", "discriminator", "generator", "classes", "classes_dtype",
                               "n_features_in", "value_max") if k not in payload]
        if missing:
            raise RunDirError(f"{path}: incomplete estimator file, missing {missing}")
        params = dict(payload["params"])
        for key in ("image_shape", "overrides"):
            if isinstance(params.get(key), list):
                params[key] = tuple(params[key])
        try:
            estimator = cls(**params)
        except TypeError as error:
            raise RunDirError(f"{path}: parameters do not match this version of ssgan ({error})") from None
        try:
            cfg = config_from_dict(payload["config"])
        except ConfigError as error:
            raise RunDirError(f"{path}: {error}") from None
        disc, gen = load_networks(cfg, payload["discriminator"], payload["generator"], path, device)
        estimator._set_fitted(cfg, disc, gen, np.array(payload["classes"], dtype=np.dtype(payload["classes_dtype"])),
                              int(payload["n_features_in"]), payload["value_max"], payload.get("history", []))
        return estimator

    def _set_fitted(self, cfg: Config, disc: torch.nn.Module, gen: torch.nn.Module, classes: np.ndarray,
                    n_features_in: int, value_max: Optional[float], history: list) -> None:
        self.classes_ = classes
        self.n_features_in_ = n_features_in
        self.config_ = cfg
        self.discriminator_ = disc
        self.generator_ = gen
        self.value_max_ = value_max
        self.history_ = history


def load(path: str | Path, device: str | torch.device = "cpu") -> SSGANClassifier:
    """A fitted ``SSGANClassifier`` from a run directory of ``ssgan fit`` (or its checkpoint.pt), or from a
    file written by ``SSGANClassifier.save``.

    For a run, ``classes_`` are the data set's class names (strings), inputs are scaled as ``ssgan predict``
    scales them (``value_max_`` None: see ``input_value_max``), and the parameters name the run's recipe,
    method, epochs and seed; ``clone`` of it trains that recipe afresh, without the run's other overrides.
    """
    path, device = Path(path), _device(device)
    if path.is_file() and read_payload(path).get("format") == ESTIMATOR_FORMAT:
        return SSGANClassifier.load(path, device)
    run = load_run(path, device)
    cfg = run.config
    estimator = SSGANClassifier(recipe=cfg.dataset.name, method=cfg.method.name, epochs=cfg.train.epochs,
                                seed=cfg.seed, device=str(device))
    estimator._set_fitted(cfg, run.discriminator, run.generator, np.array(run.class_names),
                          int(math.prod(cfg.dataset.image_shape)), None, [])
    return estimator


# ------------------------------------------------------------------------------------------------ helpers

def _device(device: str | torch.device) -> torch.device:
    return resolve_device(str(device))  # auto, cpu, cuda or cuda:N


def _plain(value: Any, what: str) -> Any:
    """Numbers, strings, None, lists and dicts of them, as plain Python values (weights-only pickling)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v, what) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, what) for k, v in value.items()}
    raise RunDirError(f"cannot save {what} of type {type(value).__name__}: only numbers, strings, None, "
                          f"lists and dicts are stored")
