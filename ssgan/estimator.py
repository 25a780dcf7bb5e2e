"""The trained discriminator as a scikit-learn classifier (Salimans et al. 2016, sec. 5; Wei et al. 2018).

``SSGANClassifier.fit(X, y)`` takes the semi-supervised convention of scikit-learn: rows with y = -1 are
unlabeled. It builds a typed ``Config`` from the Hydra configs of a recipe (a data set's published
recipe: network, scaling, optimiser, schedule; or the tabular recipe, an MLP pair sized from the number of
features) and a method, exactly as ``ssgan fit`` does, and calls ``train.fit`` with the labeled rows as the
labeled subset and every row as the unlabeled pool. The classifier is the Polyak-averaged discriminator:
p(y = k | x, real) = softmax(l(x))_k over the K classes. Inputs are validated as scikit-learn's estimators
validate them (``validate_data``, ``check_classification_targets``), with scikit-learn's error messages.

``save`` / ``SSGANClassifier.load`` keep a fitted estimator in one file of tensors, numbers, strings, lists
and dicts (read with ``torch.load(weights_only=True)``); ``load(RUN_DIR)`` turns a run of ``ssgan fit`` into
a fitted estimator.
"""

from __future__ import annotations

import copy
import functools
import math
import numbers
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d, validate_data

from .checkpoint import load_networks, load_run
from .config import (DATASETS, METHODS, Config, ConfigError, DataConfig, compose, resolve_device,
                     validate)
from .data import (DataError, ImageData, check_pixels, hold_out_validation, input_value_max, prepare_images,
                   scale_images, source_value_max)
from . import ood
from .evaluate import predict_proba
from .records import EstimatorFile
from .rundir import RunDirError
from .train import fit as train_fit
from .trust import UntrustedError, check_stored, check_stored_overrides, import_path, stored_config

UNLABELED = -1  # scikit-learn's mark of an unlabeled row (sklearn.semi_supervised)

# The tabular recipe (see SSGANClassifier and tabular_defaults): the digits recipe with its MLP pair scaled to
# the number of features, min-max scaled features, and these defaults. Chosen on the CPU, 2026-11-23: 30 epochs
# of one pass learn check_estimator's blobs (training accuracy 0.93-0.98 over seeds 0-5; scikit-learn asks
# > 0.83) in ~0.6 s a fit; the digits recipe's Polyak decay 0.99 lags over such short runs (0.76 at seed 2) and
# its input noise 0.2, made for pixels in [0, 1], drowns min-max scaled features, whose std is ~0.15
# (make_classification, 10 features, 10 % labels: test accuracy 0.85 -> 0.91 with 0.02).
TABULAR = "tabular"
RECIPES = (*DATASETS, TABULAR)
TABULAR_BASE = "digits"
TABULAR_EPOCHS = 30
TABULAR_EMA_DECAY = 0.9
TABULAR_INPUT_NOISE = 0.02

# scikit-learn checks (check_estimator's names) that cannot apply to a semi-supervised classifier, with why; for
# ``check_estimator(..., expected_failed_checks=EXPECTED_FAILED_CHECKS)`` and ``parametrize_with_checks``.
EXPECTED_FAILED_CHECKS = {
    "check_classifiers_classes": "its last problem has the class labels -1 and 1; -1 marks unlabeled rows "
                                 "(scikit-learn's semi-supervised convention), which leaves one class "
                                 "(scikit-learn exempts its own LabelPropagation, LabelSpreading and "
                                 "SelfTrainingClassifier from that problem by name)",
}


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


def _split_labels(y: Any, n_rows: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``fit``'s y (N,), checked as scikit-learn checks it: the unlabeled mask (y = -1), the sorted classes and
    each labeled row's class index. Errors are DataError (a ValueError) with one line."""
    y = column_or_1d(y, warn=True)  # (N, 1): DataConversionWarning; other shapes: ValueError
    if len(y) != n_rows:
        raise DataError(f"Found input variables with inconsistent numbers of samples: [{n_rows}, {len(y)}] "
                        f"(X has {n_rows} rows but y has {len(y)} labels)")
    if y.dtype.kind == "f" and np.isnan(y).any():
        raise DataError("y contains NaN; mark unlabeled rows with -1")
    unlabeled = unlabeled_mask(y)
    if unlabeled.all():
        raise DataError("y has no labeled rows: every label is -1 (unlabeled)")
    try:
        classes, y_lab = np.unique(y[~unlabeled], return_inverse=True)
    except TypeError:
        raise DataError("y mixes label types that cannot be sorted (e.g. strings and numbers)") from None
    # Continuous y: "Unknown label type: continuous". Objects (numbers mixed with -1 in an object array, as
    # scikit-learn's semi-supervised models take them) are judged by the values they hold.
    labels = y[~unlabeled]
    check_classification_targets(np.array(labels.tolist()) if labels.dtype == object else labels)
    if len(classes) < 2:
        raise DataError(f"y has labeled rows of one class only ({_plain(classes[0], 'y')!r}); a classifier "
                        f"needs two")
    return unlabeled, classes, y_lab


class SSGANClassifier(ClassifierMixin, BaseEstimator):
    """A semi-supervised GAN's discriminator as a scikit-learn classifier; y = -1 marks unlabeled rows.

    Training composes ``configs/`` for ``dataset=<recipe>`` and ``method=<method>`` (the published recipe,
    with its own recipe file where one exists, e.g. CT-GAN on CIFAR-10), applies the parameters below and then
    ``overrides``, and runs ``ssgan.train.fit``: one D step on L_sup + w (L_unl + L_fake) / 2 and one G step
    of feature matching per iteration. The labeled rows form the labeled set (all of them: no balancing,
    unlike ``dataset.labels`` of ``ssgan fit``) and all rows, labeled ones included, the unlabeled pool.

    Images or tabular data. X is treated as images when it is (N, H, W), (N, H, W, C) or (N, C, H, W); or
    flat rows (N, D) with ``image_shape`` given (the shape of one row); or flat rows (N, D) whose D is the
    recipe's C*H*W (64 for digits, 784 for mnist, 3072 for cifar10 / svhn), read as the recipe's images.
    Any other 2-D X, and every X with ``recipe="tabular"``, is tabular data (N, D): it trains the tabular
    recipe whatever ``recipe`` names (pass ``recipe="tabular"`` for tabular data whose D happens to be the
    recipe's C*H*W).

    Images. The image size must be the recipe's (``dataset.image_shape``: digits 8x8, mnist 28x28,
    cifar10 / svhn 32x32; or pass ``overrides=("dataset.resize=true",)``). Pixel values run from 0 to
    ``value_max`` and are scaled as the recipe scales its data (unit, cifar or symmetric, docs/method.md sec. 3);
    ``value_max=None`` infers it once, in ``fit``, with ``input_value_max``: 255 for uint8, 1 for floats in
    [0, 1], else 16 for the digits recipe and 255 for the others. Predictions take the same value_max.

    The tabular recipe. Each feature is min-max scaled to [0, 1] with the minimum and maximum of the
    training X (``data_min_``, ``data_max_``; a constant feature becomes 0), the range of the generator's
    sigmoid output. The networks are the digits MLP pair (D 256-128-128, G 256-256, z_dim 100, sized for 64
    inputs) with every width and z_dim scaled by min(1, max(1/4, D / 64)): D <= 16 features give D 64-32-32,
    G 64-64, z_dim 25; D >= 64 the digits pair itself; input noise 0.02 (min-max scaled features are
    denser than pixels), hidden noise 0.3. The rows enter as (1, 1, D) "images" and the rest is the digits
    recipe (official Adam, lr 0.003, feature matching of squared differences, batch 100). Defaults where
    the parameter is None: ``epochs`` 30, ``iters_per_epoch`` one pass over X, ceil(N / batch_size), and
    ``ema_decay`` 0.9 (for short runs). ``image_shape`` and ``value_max`` are unused.

    Labels. Any sortable values (ints, strings, ...); ``classes_`` holds them sorted, and column k of
    ``predict_proba`` is class ``classes_[k]``. Unlabeled rows carry -1 (or "-1" in a string array). y of
    shape (N, 1) is accepted with a DataConversionWarning, as scikit-learn does; continuous y is refused.

    Parameters:
        recipe: digits, mnist, cifar10 or svhn: the network, scaling and optimiser of that data set for
            images; or tabular (see above).
        method: improved_gan, ct_gan (adds the consistency term, Wei et al. 2018), ct_gan_te (CT with
            the temporal ensemble of the official CIFAR-10 script) or bad_gan (conditional entropy and
            pull-away term, Dai et al. 2017; its other terms are ``overrides`` such as method.vi_weight=0.01).
        epochs: training epochs; None: the recipe's (300 for digits and mnist, 30 for tabular).
        iters_per_epoch: iterations per epoch; None: one pass over X, len(X) // batch_size for images (the
            recipes' iteration counts are one pass over their own training sets), ceil(len(X) / batch_size)
            for tabular data.
        batch_size: None keeps the recipe's value.
        lr: None keeps the recipe's value.
        ema_decay: None keeps the recipe's value (0.9999 for mnist, cifar10 and svhn: over a short training
            the average barely leaves the initial weights; lower it for short runs; 0.9 for tabular).
        seed: the initialisation, data order and noise of training.
        device: auto, cpu or cuda.
        image_shape: the shape of one flat row, (H, W), (C, H, W) or (H, W, C); None: the recipe's (C, H, W)
            for rows of its C*H*W values, else tabular.
        value_max: the pixel value of white in X; None: inferred as above.
        overrides: Hydra overrides for anything else, e.g. ("model.d_widths=[64,32]", "train.lr_g=1e-3");
            applied last, so they also replace the tabular recipe's sizes.
        progress: show the progress bar.
        discriminator: a network of one's own (with ``generator``: both or neither): a torch.nn.Module
            instance (copies are trained; such an estimator cannot be saved to a file) or the import path of a
            class (built as ``model=custom`` builds it, saved and loaded like any other). Contract: D(x) ->
            (logits (B, K), features (B, F)); checked before training.
        generator: the generator of one's own, as ``discriminator``; G(z) -> images in the data's range.

    Attributes after fit: ``classes_`` (K,), ``n_features_in_`` (values per sample), ``config_`` (the
    Config trained with), ``discriminator_`` (the averaged D, the classifier), ``generator_``,
    ``value_max_`` (None for a run loaded with ``load``: 255 for uint8 X, else for each row by itself 1 if
    its values are at most 1, else the source's raw range (16 for the digits recipe, 255 for the others), so
    a row's scale never depends on the other rows of the batch; None for tabular data), ``data_min_`` and ``data_max_`` ((D,) float64 per-feature minimum and maximum of the
    training X for the tabular recipe; None for images) and ``history_`` (per-epoch losses).
    """

    def __init__(self, recipe: str = "digits", method: str = "improved_gan", *, epochs: Optional[int] = None,
                 iters_per_epoch: Optional[int] = None, batch_size: Optional[int] = None,
                 lr: Optional[float] = None, ema_decay: Optional[float] = None, seed: int = 0,
                 device: str = "auto", image_shape: Optional[Sequence[int]] = None,
                 value_max: Optional[float] = None, overrides: Sequence[str] = (), progress: bool = False,
                 discriminator: Any = None, generator: Any = None, calibrated: bool = False) -> None:
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
        self.discriminator = discriminator
        self.generator = generator
        self.calibrated = calibrated

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()  # a classifier (ClassifierMixin): y required, multiclass
        tags.input_tags.two_d_array = True  # flat rows: tabular data, or images of image_shape
        tags.input_tags.three_d_array = True  # images (N, H, W) as well as flat rows
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False  # the same seed gives the same fit on the CPU
        return tags

    # ------------------------------------------------------------------------------------------- config

    def _check_parameters(self) -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe={self.recipe!r}: expected one of {', '.join(RECIPES)}")
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}: expected one of {', '.join(METHODS)}")
        if isinstance(self.overrides, str) or not all(isinstance(o, str) for o in self.overrides):
            raise ConfigError(f"overrides={self.overrides!r}: expected a sequence of KEY=VALUE strings")
        if self.value_max is not None and not self.value_max > 0:
            raise ConfigError(f"value_max={self.value_max}: must be positive")
        if (self.discriminator is None) != (self.generator is None):
            raise ConfigError("discriminator and generator come together: give both (modules or import paths) or "
                              "neither")
        for name in ("discriminator", "generator"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, torch.nn.Module)):
                raise ConfigError(f"{name}={value!r}: expected a torch.nn.Module or an import path string")

    def _compose(self, dataset: str, recipe_defaults: Sequence[str] = ()) -> Config:
        """Compose ``dataset`` and the method with the parameters as Hydra overrides, as ``ssgan fit`` does:
        the recipe, then ``recipe_defaults`` (the tabular recipe's), the parameters that are not None, and
        ``overrides`` last."""
        overrides = [f"dataset={dataset}", f"method={self.method}", *recipe_defaults, f"seed={self.seed}",
                     f"train.device={self.device}", f"train.progress={str(bool(self.progress)).lower()}",
                     "train.sample_grid=false"]
        for key, value in (("train.epochs", self.epochs), ("train.iters_per_epoch", self.iters_per_epoch),
                           ("train.batch_size", self.batch_size), ("train.lr", self.lr),
                           ("train.ema_decay", self.ema_decay)):
            if value is not None:
                overrides.append(f"{key}={value}")
        if self.discriminator is not None:  # networks of one's own: model=custom, by import path or class
            overrides.append("model=custom")
            for name in ("discriminator", "generator"):
                value = getattr(self, name)
                path = value if isinstance(value, str) else f"{type(value).__module__}.{type(value).__qualname__}"
                overrides.append(f"model.{name}._target_={path}")
        return _compose_cached(tuple(overrides + list(self.overrides)))

    def _config(self, x: np.ndarray, n_labeled: int, n_classes: int) -> Tuple[Config, bool]:
        """The Config to train on X, and whether X is tabular data (the rule of the class docstring)."""
        if self.recipe == TABULAR:
            if x.ndim != 2:
                raise DataError(f"X has shape {x.shape}; the tabular recipe takes 2-D X (n_samples, n_features)")
            tabular = True
        else:
            cfg = self._compose(self.recipe)
            tabular = (x.ndim == 2 and self.image_shape is None
                       and x.shape[1] != math.prod(cfg.dataset.image_shape))
        if tabular:
            batch_size = self.batch_size or self._compose(TABULAR_BASE).train.batch_size
            cfg = self._compose(TABULAR_BASE, tabular_defaults(x.shape[0], x.shape[1], batch_size,
                                                               iters=self.iters_per_epoch is None,
                                                               epochs=self.epochs is None,
                                                               ema_decay=self.ema_decay is None))
        # The labeled rows are given, not drawn: labels and classes come from y.
        cfg = replace(cfg, dataset=replace(cfg.dataset, labels=n_labeled, n_classes=n_classes))
        validate(cfg)
        return cfg, tabular

    # ------------------------------------------------------------------------------------------- inputs

    def _validate_X(self, X: Any, reset: bool) -> np.ndarray:
        """X as a numeric array of 2 or more dimensions, checked as scikit-learn checks it (``validate_data``:
        no sparse, complex, NaN / infinite, empty or non-numeric input)."""
        x = validate_data(self, X, reset=reset, ensure_2d=False, allow_nd=True, dtype="numeric",
                          accept_sparse=False, ensure_min_features=1)
        if x.ndim < 2:
            check_array(x, estimator=self)  # raises scikit-learn's "Expected 2D array, got 1D array instead"
        return x

    def _images(self, x: np.ndarray, data: DataConfig, value_max: Optional[float]) -> np.ndarray:
        """X -> (N, C, H, W) float32 images scaled as the recipe scales its data."""
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
        if value_max is None and x.dtype != np.uint8 and len(x):  # a run loaded with ``load``
            # each row by itself (floats of at most 1: [0, 1], else the run's source range), never by the
            # other rows of the batch, so that a row's class does not depend on what it is sent with
            unit = x.reshape(len(x), -1).max(axis=1) <= 1.0
            out = np.empty(x.shape, np.float32)
            for rows, row_max in ((unit, 1.0), (~unit, source_value_max(data))):
                if rows.any():
                    check_pixels(x[rows], row_max, "X (pixel values)")
                    out[rows] = scale_images(x[rows], data.scaling, row_max)
            return out
        if value_max is None:
            value_max = input_value_max(x, data)
        check_pixels(x, value_max, "X (pixel values)")
        return scale_images(x, data.scaling, value_max)

    # ---------------------------------------------------------------------------------------------- fit

    def fit(self, X: Any, y: Any) -> "SSGANClassifier":
        """Train on X (images, or tabular rows (N, D)) with labels y (N,), where y = -1 marks an unlabeled
        row."""
        self._check_parameters()
        if y is None:
            raise ValueError(f"This {type(self).__name__} estimator requires y to be passed, but the target y "
                             f"is None.")
        x = self._validate_X(X, reset=True)
        unlabeled, classes, y_lab = _split_labels(y, len(x))
        cfg, tabular = self._config(x, int((~unlabeled).sum()), len(classes))
        data_min = data_max = value_max = None
        if tabular:
            x = x.astype(np.float64)
            data_min, data_max = x.min(axis=0), x.max(axis=0)
            x_scaled = min_max_rows(x, data_min, data_max)  # (N, 1, 1, D)
        else:
            value_max = float(self.value_max if self.value_max is not None else input_value_max(x, cfg.dataset))
            x_scaled = self._images(x, cfg.dataset, value_max)  # (N, C, H, W)
        empty = np.zeros((0, *x_scaled.shape[1:]), dtype=np.float32)
        # Labeled rows first, so that they are the labeled subset 0..L-1; the unlabeled pool is every row.
        data = ImageData(x_scaled[~unlabeled], y_lab.astype(np.int64), empty, np.zeros(0, dtype=np.int64),
                         [str(c) for c in classes], x_extra=x_scaled[unlabeled] if unlabeled.any() else None)
        if cfg.dataset.val_size > 0:  # a stratified part of the labeled rows, for the temperature only
            data = hold_out_validation(data, cfg.dataset.val_size, cfg.seed)
        modules = None
        if isinstance(self.discriminator, torch.nn.Module):  # copies of them are trained, not the parameters
            modules = (self.discriminator, self.generator)
        result = train_fit(cfg, data=data, labeled_indices=np.arange(len(data.y_train)), modules=modules)

        self._set_fitted(cfg, result.discriminator, result.generator, classes=classes,
                         n_features_in=int(math.prod(x.shape[1:])), value_max=value_max, history=result.history,
                         data_min=data_min, data_max=data_max)
        if data.x_val is not None:
            self.temperature_ = ood.calibrate(self._logits(data.x_val), data.y_val).temperature
        return self

    # ------------------------------------------------------------------------------------------ predict

    def _check_input(self, X: Any) -> np.ndarray:
        """X checked against the fitted estimator and prepared as in fit: (N, C, H, W) float32."""
        check_is_fitted(self)
        x = self._validate_X(X, reset=False)
        n_features = math.prod(x.shape[1:])
        if n_features != self.n_features_in_:
            raise DataError(f"X has {n_features} features, but {type(self).__name__} is expecting "
                            f"{self.n_features_in_} features as input. It was fitted on {self.n_features_in_} "
                            f"values per sample.")
        if getattr(self, "data_min_", None) is None:  # images (or an estimator pickled before tabular data)
            return self._images(x, self.config_.dataset, self.value_max_)
        if x.ndim != 2:
            raise DataError(f"X has shape {x.shape}; this classifier was fitted on tabular rows (n_samples, "
                            f"{self.n_features_in_})")
        return min_max_rows(x.astype(np.float64), self.data_min_, self.data_max_)

    def _logits(self, x: np.ndarray) -> np.ndarray:
        """The K class logits of prepared rows or images (float64 for tabular rows, as predict_proba)."""
        t = self.config_.train
        if getattr(self, "data_min_", None) is not None:
            return ood.predict_logits(copy.deepcopy(self.discriminator_).double(), x.astype(np.float64),
                                      t.eval_batch_size, tf32=t.tf32, dtype=torch.float64)
        return ood.predict_logits(self.discriminator_, x, t.eval_batch_size, tf32=t.tf32)

    def score_samples(self, X: Any) -> np.ndarray:
        """log Z(x) = logsumexp_k l_k(x), the discriminator's "real" log-odds (docs/ood.md): higher = more
        like the training data, as scikit-learn's outlier detectors. (N,)."""
        return ood.log_z(self._logits(self._check_input(X)))

    def predict_proba(self, X: Any) -> np.ndarray:
        """p(y = k | x, real) = softmax(l(x))_k over the K classes of ``classes_``, from the averaged
        discriminator in eval mode (no dropout or noise); with ``calibrated=True``, softmax(l(x) / T) at the
        temperature fitted on a validation split (``overrides=("dataset.val_size=0.2",)``, or a run trained
        with dataset.val_size > 0). Returns (N, K) float64 rows that sum to 1."""
        if self.calibrated:
            check_is_fitted(self)
            if getattr(self, "temperature_", None) is None:
                raise DataError("calibrated=True needs a temperature fitted on a validation split: fit with "
                                "overrides=('dataset.val_size=0.2',) (or load a run trained with dataset.val_size > 0)")
            return ood.softmax(self._logits(self._check_input(X)), self.temperature_)
        x = self._check_input(X)
        if getattr(self, "data_min_", None) is not None:
            # tabular rows: a float64 copy of the (small) classifier, since float32 products round differently
            # with the batch size (1e-7) and float64 ones at 1e-16, so no row depends on the rows beside it
            disc64 = copy.deepcopy(self.discriminator_).double()
            return predict_proba(disc64, x.astype(np.float64), self.config_.train.eval_batch_size,
                                 dtype=torch.float64, tf32=self.config_.train.tf32)
        return predict_proba(self.discriminator_, x, self.config_.train.eval_batch_size,
                             tf32=self.config_.train.tf32)

    def predict(self, X: Any) -> np.ndarray:
        """The class of highest probability, as a value of ``classes_``. (N,)."""
        probs = self.predict_proba(X)  # (N, K); checks that the estimator is fitted
        return self.classes_[np.argmax(probs, axis=1)]

    def score(self, X: Any, y: Any, sample_weight: Optional[np.ndarray] = None) -> float:
        """Accuracy on the labeled rows of (X, y); rows with y = -1 are left out (so that
        ``cross_val_score`` can split semi-supervised data)."""
        y = column_or_1d(y, warn=True)
        labeled = ~unlabeled_mask(y)
        if not labeled.any():
            raise DataError("y has no labeled rows to score: every label is -1 (unlabeled)")
        weight = None if sample_weight is None else np.asarray(sample_weight)[labeled]
        correct = self.predict(_take_rows(X, labeled)) == y[labeled]  # also for labels in object arrays
        return float(np.average(correct, weights=weight))

    # ------------------------------------------------------------------------------------- save / load

    def save(self, path: str | Path) -> None:
        """Write the fitted estimator to one file (parameters, config, both networks, classes and, for the
        tabular recipe, the scaler's per-feature minimum and maximum), atomically, holding only tensors,
        numbers, strings, lists and dicts."""
        check_is_fitted(self)
        tabular = getattr(self, "data_min_", None) is not None
        EstimatorFile(
            params={key: _plain(value, f"parameter {key}") for key, value in self.get_params().items()},
            config=asdict(self.config_),
            discriminator={k: v.detach().cpu() for k, v in self.discriminator_.state_dict().items()},
            generator={k: v.detach().cpu() for k, v in self.generator_.state_dict().items()},
            classes=[_plain(c, "classes_") for c in self.classes_.tolist()], classes_dtype=self.classes_.dtype.str,
            n_features_in=int(self.n_features_in_), value_max=self.value_max_,
            history=_plain(self.history_, "history_"),
            data_min=torch.from_numpy(np.asarray(self.data_min_, dtype=np.float64)) if tabular else None,
            data_max=torch.from_numpy(np.asarray(self.data_max_, dtype=np.float64)) if tabular else None,
            temperature=getattr(self, "temperature_", None),
        ).write(Path(path))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu",
             networks: Optional[Sequence[Any]] = None) -> "SSGANClassifier":
        """Read a file written by ``save`` (weights-only unpickling); refuse anything else with one line.
        ``networks``: an estimator of one's own networks is loaded only with them named again (modules, classes
        or import paths: ``trust.networks_for``); the file's own import paths are never imported."""
        path, device = Path(path), _device(device)
        saved = EstimatorFile.read(path)
        params = dict(saved.params)
        check_stored_overrides(params.get("overrides", ()), str(path))  # data: a refit composes them
        check_stored(params, f"{path}: params")
        params["discriminator"], params["generator"] = (None, None) if networks is None else (
            [n if isinstance(n, torch.nn.Module) else import_path(n, "networks") for n in networks] + [None, None])[:2]
        for key in ("image_shape", "overrides"):
            if isinstance(params.get(key), list):
                params[key] = tuple(params[key])
        try:
            estimator = cls(**params)
        except TypeError as error:
            raise RunDirError(f"{path}: parameters do not match this version of ssgan ({error})") from None
        try:
            cfg = stored_config(saved.config, path)
        except UntrustedError:
            raise
        except ConfigError as error:
            raise RunDirError(str(error)) from None
        disc, gen = load_networks(cfg, saved.discriminator, saved.generator, path=path, device=device,
                                  networks=networks)
        data_min = saved.data_min.numpy().astype(np.float64) if saved.tabular else None
        data_max = saved.data_max.numpy().astype(np.float64) if saved.tabular else None
        estimator._set_fitted(cfg, disc, gen, classes=np.array(saved.classes, dtype=np.dtype(saved.classes_dtype)),
                              n_features_in=int(saved.n_features_in), value_max=saved.value_max,
                              history=saved.history, data_min=data_min, data_max=data_max)
        estimator.temperature_ = saved.temperature
        return estimator

    def _set_fitted(self, cfg: Config, disc: torch.nn.Module, gen: torch.nn.Module, *, classes: np.ndarray,
                    n_features_in: int, value_max: Optional[float], history: list,
                    data_min: Optional[np.ndarray] = None, data_max: Optional[np.ndarray] = None) -> None:
        self.classes_ = classes
        self.n_features_in_ = n_features_in
        self.config_ = cfg
        self.discriminator_ = disc
        self.generator_ = gen
        self.value_max_ = value_max
        self.data_min_ = data_min
        self.data_max_ = data_max
        self.history_ = history
        self.temperature_ = None  # set by fit with a validation split, or from the run's calibration.json


def load(path: str | Path, device: str | torch.device = "cpu", networks: Optional[Sequence[Any]] = None
         ) -> SSGANClassifier:
    """A fitted ``SSGANClassifier`` from a run directory of ``ssgan fit`` (or its checkpoint.pt), or from a
    file written by ``SSGANClassifier.save``.

    For a run, ``classes_`` are the label values its data had (0..K-1 for torchvision, digits and npz data;
    the folder names for a folder), so that ``score(X, y)`` takes the data set's own ``y``, and
    ``class_names_`` the class names beside them; inputs are scaled as ``ssgan predict`` scales them
    (``value_max_`` None: decided row by row, see the class), and the parameters name the run's recipe, method, epochs
    and seed; ``clone`` of it trains that recipe afresh, without the run's other overrides.

    ``networks``: a run (or file) of one's own networks (``model.arch=custom``) loads only with them named by
    the caller, as (discriminator, generator) modules, classes or import paths (``module:Builder``): nothing
    a file names is ever imported (docs/security.md).
    """
    path, device = Path(path), _device(device)
    if EstimatorFile.is_one(path):
        return SSGANClassifier.load(path, device, networks)
    run = load_run(path, device, networks)
    cfg = run.config
    estimator = SSGANClassifier(recipe=cfg.dataset.name, method=cfg.method.name, epochs=cfg.train.epochs,
                                seed=cfg.seed, device=str(device))
    estimator._set_fitted(cfg, run.discriminator, run.generator, classes=np.array(run.class_values),
                          n_features_in=int(math.prod(cfg.dataset.image_shape)), value_max=None, history=[])
    estimator.class_names_ = list(run.class_names)
    estimator.temperature_ = ood.read_temperature(path)
    return estimator


# ------------------------------------------------------------------------------------------------ helpers

def tabular_defaults(n_rows: int, n_features: int, batch_size: int, *, iters: bool = True,
                     epochs: bool = True, ema_decay: bool = True) -> List[str]:
    """The tabular recipe's Hydra overrides on top of the digits recipe, for X of (n_rows, n_features): rows
    as (1, 1, D) images, the digits MLP pair (D 256-128-128, G 256-256, z 100, for 64 inputs) with widths and
    z_dim scaled by min(1, max(1/4, D / 64)), input noise TABULAR_INPUT_NOISE and, where asked (the parameter
    is None), one pass over X per epoch (ceil(N / batch_size) iterations), TABULAR_EPOCHS epochs and Polyak
    decay TABULAR_EMA_DECAY."""
    scale = min(1.0, max(0.25, n_features / 64))

    def width(w: int) -> int:
        return max(1, round(w * scale))

    overrides = [f"dataset.image_shape=[1,1,{n_features}]",
                 f"model.d_widths=[{width(256)},{width(128)},{width(128)}]",
                 f"model.g_widths=[{width(256)},{width(256)}]", f"model.z_dim={width(100)}",
                 f"model.input_noise={TABULAR_INPUT_NOISE}"]
    if iters:
        overrides.append(f"train.iters_per_epoch={max(1, math.ceil(n_rows / batch_size))}")
    if epochs:
        overrides.append(f"train.epochs={TABULAR_EPOCHS}")
    if ema_decay:
        overrides.append(f"train.ema_decay={TABULAR_EMA_DECAY}")
    return overrides


def min_max_rows(x: np.ndarray, data_min: np.ndarray, data_max: np.ndarray) -> np.ndarray:
    """Tabular X (N, D) -> (N, 1, 1, D) float32, each feature mapped from [data_min, data_max] to [0, 1] (a
    constant feature to 0, as scikit-learn's MinMaxScaler does); values outside the range are not clipped."""
    span = np.asarray(data_max, dtype=np.float64) - data_min
    span[span == 0] = 1.0
    return np.ascontiguousarray(((x - data_min) / span).astype(np.float32)[:, None, None, :])


@functools.lru_cache(maxsize=64)
def _composed(overrides: Tuple[str, ...]) -> Config:
    return compose(overrides)


def _compose_cached(overrides: Tuple[str, ...]) -> Config:
    """``compose`` remembered per override list (Hydra takes ~0.1 s per call and a grid search or
    ``check_estimator`` fits many times with the same ones); each caller gets its own copy."""
    return copy.deepcopy(_composed(overrides))


def _take_rows(X: Any, rows: np.ndarray) -> Any:
    """The rows of X where ``rows`` is True, for array-likes that are not arrays as well (lists)."""
    if hasattr(X, "iloc"):
        return X.iloc[rows]
    if hasattr(X, "shape") and hasattr(X, "__getitem__"):
        return X[rows]
    return np.asarray(X)[rows]

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
