"""Evaluation: class probabilities of the discriminator, error rates, ensembles over seeds, generator samples
and the Inception Score with a pluggable classifier (docs/method.md sec. 1, 5).

A classifier for sample quality is any function from a batch of generated images, in the recipe's scale,
to class probabilities (B, K): torchvision's Inception-v3 (the score of Salimans et al. 2016, sec. 4) when its
weights are already in the torch hub cache, or the run's own discriminator, whose score is then a
"classifier score" and not comparable with published Inception Scores. ssgan.quality computes the Inception
Score and the FID with torch-fidelity's Inception-v3 (the TensorFlow weights of the papers) when those are at hand.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision.utils as vutils
from torch import Tensor, nn

from .data import unscale_images

# (B, C, H, W) generated images in the recipe's scale -> (B, K) class probabilities
Classifier = Callable[[Tensor], Tensor]

def _precision_flags() -> list:
    """torch >= 2.9 keeps one fp32_precision per backend and operation: the owners of those flags that this
    torch has, parents first (empty before 2.9)."""
    owners = [torch.backends, torch.backends.cuda.matmul, torch.backends.cudnn]
    owners += [getattr(torch.backends.cudnn, op) for op in ("conv", "rnn") if hasattr(torch.backends.cudnn, op)]
    try:
        return [owner for owner in owners if owner.fp32_precision is not None]
    except (AttributeError, RuntimeError):
        return []


@contextlib.contextmanager
def float32_precision(tf32: bool) -> Iterator[None]:
    """TensorFloat-32 (``tf32``) or true float32 for float32 matrix products and cuDNN convolutions, for the
    duration; restored afterwards. Set through the legacy switches, which set the new per-operation flags
    (torch >= 2.9) consistently: the legacy getters (``torch.backends.cudnn.allow_tf32``,
    ``torch.backends.cuda.matmul.allow_tf32``, ``torch.get_float32_matmul_precision()``, read by Inductor)
    raise when only some of the new flags were set. No effect on a CPU."""
    flags = _precision_flags()
    saved = [owner.fp32_precision for owner in flags]
    try:  # the legacy switches too: restoring only the new flags leaves torch's legacy ones out of step
        legacy = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    except RuntimeError:  # the caller had mixed the two APIs
        legacy = None
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        if legacy is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = legacy
        if legacy is None or [owner.fp32_precision for owner in flags] != saved:
            for owner, value in zip(flags, saved):
                owner.fp32_precision = value


@torch.no_grad()
def predict_proba(disc: nn.Module, x: np.ndarray | Tensor, batch_size: int = 1000,
                  dtype: torch.dtype = torch.float32, *, tf32: bool = False) -> np.ndarray:
    """p(y = k | x, real) = softmax(l(x))_k over the K real classes, deterministic (no dropout or noise).

    x: (N, C, H, W) scaled images. ``tf32``: the run's ``train.tf32`` (``float32_precision``), so that on a GPU
    the probabilities are those the run computed (PyTorch's default uses TF32 convolutions). Returns (N, K)
    float64 rows that sum to 1. ``dtype``: the input's (float64 for the estimator's tabular recipe).
    """
    with float32_precision(tf32):
        return _predict_proba(disc, x, batch_size, dtype)


def _predict_proba(disc: nn.Module, x: np.ndarray | Tensor, batch_size: int, dtype: torch.dtype) -> np.ndarray:
    was_training = disc.training
    disc.eval()
    device = next(disc.parameters()).device
    x = torch.as_tensor(x)
    out = []
    for start in range(0, len(x), batch_size):
        logits, _ = disc(x[start:start + batch_size].to(device, dtype))
        out.append(torch.softmax(logits.double(), dim=1).cpu())  # float64: rows sum to 1 to ~1e-16
    disc.train(was_training)
    if not out:
        return np.zeros((0, 0))
    return torch.cat(out).numpy()


def percent_wrong(n_wrong: int, n: int) -> float:
    """An error rate in percent: the one formula behind ``error_rate`` and ``error_rates``."""
    return 100.0 * (n_wrong / n) if n else float("nan")


def error_rate(probs: np.ndarray, y: np.ndarray) -> float:
    """Test error in percent of the argmax prediction."""
    return percent_wrong(int(np.sum(np.argmax(probs, axis=1) != np.asarray(y))), len(y))


@torch.no_grad()
def error_rates(models: Sequence[nn.Module], x: Tensor, y: Tensor, batch_size: int) -> List[float]:
    """The test error (%) of each model, in eval mode (no dropout or noise), with one wait for the device:
    each model's count of wrong argmax predictions stays on the device until all are counted (the training
    loop's evaluation; softmax keeps the order of the logits, so the argmax is ``predict_proba``'s).
    x: (N, C, H, W) on the models' device or in host memory, y: (N,) on the models' device."""
    wrong = []
    for model in models:
        was_training = model.training
        model.eval()
        count = torch.zeros((), dtype=torch.long, device=y.device)
        for start in range(0, len(y), batch_size):
            logits, _ = model(x[start:start + batch_size].to(y.device, torch.float32))
            count += (logits.argmax(dim=1) != y[start:start + batch_size]).sum()
        model.train(was_training)
        wrong.append(count)
    return [percent_wrong(int(w), len(y)) for w in torch.stack(wrong).cpu()]


def class_report(probs: np.ndarray, y: np.ndarray, class_names: Sequence[str]) -> Dict[str, Any]:
    """The test error (%), each class's error (% of its images predicted as another class) and the
    confusion matrix (``sklearn.metrics.confusion_matrix``: rows the true class, columns the predicted one)
    of argmax predictions. probs: (N, K), y: (N,) in 0..K-1."""
    from sklearn.metrics import confusion_matrix

    k = len(class_names)
    matrix = confusion_matrix(np.asarray(y), np.argmax(probs, axis=1), labels=list(range(k)))  # (K, K)
    counts = matrix.sum(axis=1)
    per_class = [float(100.0 * (1 - matrix[c, c] / counts[c])) if counts[c] else float("nan") for c in range(k)]
    return {"test_error": error_rate(probs, y), "class_names": list(class_names),
            "per_class_error": dict(zip(class_names, per_class)), "confusion_matrix": matrix.tolist()}


def ensemble_proba(probs_per_model: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble's class probabilities: the mean of the models' probabilities (not of their votes);
    its prediction is the argmax of this mean (docs/method.md sec. 5). (M, N, K) -> (N, K)."""
    return np.mean(np.stack([np.asarray(p, dtype=np.float64) for p in probs_per_model]), axis=0)


def inception_score(probs: np.ndarray, n_splits: int = 10) -> Tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016, sec. 4), mean and std over ``n_splits``
    equal splits of the samples (at most N splits, so that none is empty). probs: (N, K) class probabilities
    of generated samples."""
    probs = np.asarray(probs, dtype=np.float64)
    scores = []
    for part in np.array_split(probs, max(1, min(n_splits, len(probs)))):
        p_y = part.mean(axis=0, keepdims=True)  # (1, K) marginal over the split
        kl = np.sum(part * (np.log(np.clip(part, 1e-12, None)) - np.log(np.clip(p_y, 1e-12, None))), axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


# ------------------------------------------------------------------------------- samples and their score

@torch.no_grad()
def generate(gen: nn.Module, n: int, batch_size: int = 100,
             generator: Optional[torch.Generator] = None) -> Iterator[Tensor]:
    """Yield ``n`` samples G(z), z ~ U[0, 1)^z_dim, in batches of (at most) ``batch_size``.

    Every batch is drawn full and the last one cut: the generator normalises with batch statistics also
    when sampling (docs/method.md sec. 6), so a batch of a few images would not look like training batches.
    """
    device = next(gen.parameters()).device
    for start in range(0, n, batch_size):
        z = gen.sample_z(batch_size, device, generator)  # (batch_size, z_dim)
        yield gen(z)[: n - start]  # (b, C, H, W)


def sample_images(gen: nn.Module, n: int, batch_size: int = 100,
                  generator: Optional[torch.Generator] = None) -> Tensor:
    """``n`` generator samples in the recipe's scale, (n, C, H, W), on the generator's device."""
    return torch.cat(list(generate(gen, n, batch_size, generator)))


SAMPLE_PIXELS = 48  # the smallest side of one sample in a grid (a 10 x 10 grid of 8 x 8 digits was 91 pixels wide)


def sample_grid_png(gen: nn.Module, scaling: str, n: int = 100, batch_size: int = 100,
                    generator: Optional[torch.Generator] = None) -> bytes:
    """``n`` generator samples as a square grid, mapped back from the recipe's scale to [0, 1], each drawn an
    integer number of times larger (nearest neighbour) so that it is at least ``SAMPLE_PIXELS`` on a side: a PNG
    file's bytes (the caller writes them, atomically where it matters)."""
    images = sample_images(gen, n, batch_size, generator).float().cpu().numpy()
    grid = torch.from_numpy(unscale_images(images, scaling))  # (n, C, H, W) in [0, 1]
    factor = math.ceil(SAMPLE_PIXELS / min(grid.shape[-2:]))  # 8 x 8 digits: 6 (48 x 48); MNIST, CIFAR: 2
    grid = grid.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    buffer = io.BytesIO()
    vutils.save_image(grid, buffer, format="png", nrow=math.ceil(math.sqrt(n)), padding=1)
    return buffer.getvalue()


@torch.no_grad()
def sample_class_probs(gen: nn.Module, classify: Classifier, n: int, batch_size: int = 100,
                       generator: Optional[torch.Generator] = None) -> np.ndarray:
    """p(y | x) of ``n`` generated samples, classified batch by batch (no (n, C, H, W) array is kept).

    Returns (n, K) float64 rows.
    """
    probs = [classify(x).float().cpu() for x in generate(gen, n, batch_size, generator)]
    return torch.cat(probs).double().numpy()


def discriminator_classifier(disc: nn.Module) -> Classifier:
    """The run's own discriminator as the score's classifier: softmax over its K real classes, in eval mode
    (the fake class is left out, so p(y|x) is the same as in ``predict_proba``)."""
    disc.eval()

    @torch.no_grad()
    def classify(x: Tensor) -> Tensor:
        logits, _ = disc(x.float())  # (B, K)
        return torch.softmax(logits.float(), dim=1)

    return classify


def inception_weights_path() -> Optional[Path]:
    """The local file of torchvision's ImageNet Inception-v3 weights in the torch hub cache
    (``torch.hub.get_dir()/checkpoints``), or None. Nothing is ever downloaded."""
    from torchvision.models import Inception_V3_Weights

    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(Inception_V3_Weights.IMAGENET1K_V1.url)
    return path if path.is_file() else None


def inception_input(x: Tensor, scaling: str) -> Tensor:
    """Generated images (B, C, H, W) in the recipe's scale -> Inception-v3's input (B, 3, 299, 299):
    back to [0, 1], grey replicated to 3 channels, bilinear resize to 299 x 299 and the ImageNet mean / std
    that torchvision's weights expect (the network's ``transform_input`` maps that to its own range)."""
    x01 = torch.from_numpy(unscale_images(x.float().cpu().numpy(), scaling)).to(x.device)
    if x01.shape[1] == 1:
        x01 = x01.expand(-1, 3, -1, -1)
    x01 = nn.functional.interpolate(x01, size=(299, 299), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1)
    return (x01 - mean) / std


def inception_classifier(scaling: str, device: torch.device | str = "cpu",
                         model: Optional[nn.Module] = None) -> Optional[Classifier]:
    """torchvision's Inception-v3 as the score's classifier: softmax over its 1000 ImageNet classes.

    ``model`` defaults to Inception-v3 with the weights of ``inception_weights_path()``; returns None when
    that file is absent. Salimans et al. used TensorFlow's Inception graph, so scores from torchvision's
    weights are close to, not identical with, published Inception Scores. Not tested without the weights.
    """
    if model is None:
        path = inception_weights_path()
        if path is None:
            return None
        from torchvision.models import inception_v3

        # The architecture torchvision builds for these weights (aux head kept so the state dict fits).
        model = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model = model.to(device).eval()

    @torch.no_grad()
    def classify(x: Tensor) -> Tensor:
        return torch.softmax(model(inception_input(x, scaling)).float(), dim=1)  # (B, 1000)

    return classify


def sample_score(gen: nn.Module, classify: Classifier, n_samples: int = 50000, n_splits: int = 10,
                 batch_size: int = 100, generator: Optional[torch.Generator] = None) -> Tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) over ``n_samples`` generated samples in ``n_splits`` splits, mean and std
    over the splits: the Inception Score protocol of Salimans et al. 2016, sec. 4 (50,000 samples, 10
    splits) with any classifier."""
    return inception_score(sample_class_probs(gen, classify, n_samples, batch_size, generator), n_splits)
