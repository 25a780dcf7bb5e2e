"""Sample quality through a maintained library: the Inception Score (IS, Salimans et al. 2016, sec. 4) and the
Frechet Inception Distance (FID, Heusel et al. 2017) of a generator's samples, computed with torch-fidelity.

    IS  = exp(E_x KL(p(y|x) || p(y)))                       over 10 splits of 50,000 samples: mean and std
    FID = ||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2))   of the 2048-d pool features, generated (g)
                                                                  against real (r) images

Why torch-fidelity (the optional extra ``pip install 'ssgan[quality]'``) rather than torchmetrics:

- Local weights. torch-fidelity's ``FeatureExtractorInceptionV3`` takes the path of its weights file, so no
  download can happen behind our back. torchmetrics wraps the same class (its FID and IS need torch-fidelity
  installed anyway), but its ``InceptionScore`` builds the network without a path, leaving only the torch hub
  cache, and a missing file there means a download.
- Stand-ins. torch-fidelity's metric functions (``isc_features_to_metric``, ``fid_features_to_statistics``,
  ``fid_statistics_to_metric``) take plain feature tensors. One forward pass of any network, Inception-v3 or a
  test's small stand-in, gives the logits for the IS and the pool features for the FID, and the library computes
  the feature statistics and both formulas.
- Salimans' protocol. Its IS is computed in float64 over contiguous splits, with the std over the splits taken
  with ddof 0 as in the original code. torchmetrics' ``InceptionScore`` reshuffles with torch's global RNG and
  reports the ddof-1 std.

The network is Inception-v3 with the TensorFlow weights of 2015-12-05, the graph that Salimans' and Heusel's
code used, converted to PyTorch by torch-fidelity. It resizes the images to 299 x 299 the way TensorFlow 1 did.
The IS uses its 1008 logits without the bias ("logits_unbiased", as the original IS code computed them); the
FID uses the 2048-d pool features. Its scores are therefore close to the published ones, unlike scores from
torchvision's ImageNet Inception-v3 (``evaluate.inception_classifier``).

Nothing is downloaded. The weights file must already be at ``inception_weights_location()``:
``torch.hub.get_dir()/checkpoints/weights-inception-2015-12-05-6726825d.pth``, the file that torch-fidelity
itself would fetch from ``INCEPTION_WEIGHTS_URL``. ``inception_weights_available()`` says whether it is there.
Without the file or without the extra, the fallback stays in ``ssgan.evaluate``: the run's own discriminator as
the classifier (``evaluate.discriminator_classifier`` with ``evaluate.sample_score``), reported under
``CLASSIFIER_SCORE_NAME``. That number is not an Inception Score and cannot be compared with published ones.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .data import unscale_images
from .evaluate import generate

# The converted TF Inception-v3 weights, as torch-fidelity names and publishes them (its URL_INCEPTION_V3; a
# test checks that the two agree). The file name is what torch's hub cache stores the download under.
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                         + INCEPTION_WEIGHTS_FILE)

# The names the scores are reported under: the library's Inception scores, and the fallback of ssgan.evaluate.
INCEPTION_SCORE_NAME = "Inception Score (TF Inception-v3 via torch-fidelity)"
FID_NAME = "FID (TF Inception-v3 via torch-fidelity)"
CLASSIFIER_SCORE_NAME = "classifier score (the run's own discriminator, not the Inception Score)"

# The keys of sample_quality's result, which are torch-fidelity's own metric keys.
IS_MEAN, IS_STD, FID = "inception_score_mean", "inception_score_std", "frechet_inception_distance"

# uint8 images (B, 3, H, W) -> (logits (B, K) for the IS, features (B, D) for the FID)
FeatureExtractor = Callable[[Tensor], Tuple[Tensor, Tensor]]


# ---------------------------------------------------------------------------------------- weights, library

def inception_weights_location() -> Path:
    """Where the weights file must be placed: ``torch.hub.get_dir()/checkpoints/INCEPTION_WEIGHTS_FILE``.

    This is the same path that torch-fidelity's own download would write. ``torch.hub.get_dir()`` is
    ``$TORCH_HOME/hub``, which is ``~/.cache/torch/hub`` unless ``TORCH_HOME`` or ``XDG_CACHE_HOME`` is set.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def inception_weights_available() -> Optional[Path]:
    """The local weights file of torch-fidelity's Inception-v3, or None when it is absent (then
    ``missing_weights_message()`` says where to put it). Nothing is ever downloaded."""
    path = inception_weights_location()
    return path if path.is_file() else None


def missing_weights_message() -> str:
    """One line that says where the Inception-v3 weights file goes and where to get it."""
    return (f"no Inception-v3 weights at {inception_weights_location()}; download {INCEPTION_WEIGHTS_URL} on a "
            f"machine with internet and copy it there (nothing is downloaded here)")


def library_available() -> bool:
    """Whether torch-fidelity (the ``quality`` extra) is installed."""
    return importlib.util.find_spec("torch_fidelity") is not None


def unavailable_reason() -> Optional[str]:
    """None when the Inception scores can be computed here. Otherwise a line saying what is missing: the
    ``quality`` extra or the weights file. The caller then falls back to the discriminator's classifier score."""
    if not library_available():
        return "torch-fidelity is not installed (pip install 'ssgan[quality]')"
    if inception_weights_available() is None:
        return missing_weights_message()
    return None


def _fidelity_module(name: str):
    """A torch_fidelity submodule. Imported only when needed, so that ssgan works without the extra."""
    if not library_available():
        raise ImportError("the Inception Score and FID need torch-fidelity: pip install 'ssgan[quality]'")
    return importlib.import_module(f"torch_fidelity.{name}")


def inception_feature_extractor(device: torch.device | str = "cpu",
                                weights_path: Optional[Path | str] = None) -> nn.Module:
    """torch-fidelity's Inception-v3 with the local TF weights, in eval mode on ``device``.

    It maps uint8 images (B, 3, H, W) of any size to (the 1008 logits without bias, the 2048-d pool features).
    ``weights_path`` defaults to ``inception_weights_available()``. A missing file raises FileNotFoundError
    with ``missing_weights_message()``; the library is never left to download the file.
    """
    path = Path(weights_path) if weights_path is not None else inception_weights_available()
    if path is None or not path.is_file():
        raise FileNotFoundError(missing_weights_message() if weights_path is None else f"no file {path}")
    inception = _fidelity_module("feature_extractor_inceptionv3")
    # A hand-placed file is read here first with weights-only loading. A pickle that holds anything besides
    # tensors is refused before the library's own torch.load, which does not restrict what it unpickles.
    torch.load(path, map_location="cpu", weights_only=True)
    model = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["logits_unbiased", "2048"],
                                                  feature_extractor_weights_path=str(path))
    return model.to(device).eval()


# -------------------------------------------------------------------------------------- images, features

def to_uint8_rgb(x: Tensor | np.ndarray, scaling: str) -> Tensor:
    """Images (B, C, H, W) in the recipe's scale -> uint8 (B, 3, H, W), the input that the library's
    Inception-v3 expects. They are mapped back to [0, 1] with ``data.unscale_images``, which clips a generator's
    overshoot, and then rounded to 0..255, so real images come back with exactly their original pixels. Grey
    images are replicated to 3 channels. The result is on ``x``'s device (CPU for an array)."""
    device = x.device if isinstance(x, Tensor) else torch.device("cpu")
    array = x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float32)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 1 or 3, H, W), got shape {tuple(array.shape)}")
    pixels = torch.from_numpy(np.rint(unscale_images(array, scaling) * 255.0).astype(np.uint8))
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return pixels.to(device)


def _device_of(feature_extractor: FeatureExtractor) -> Optional[torch.device]:
    """The device of a network's parameters (None for a function or a network without any)."""
    if isinstance(feature_extractor, nn.Module):
        for param in feature_extractor.parameters():
            return param.device
    return None


@torch.no_grad()
def extract_features(batches: Iterable[Tensor | np.ndarray], scaling: str,
                     feature_extractor: FeatureExtractor) -> Tuple[Tensor, Tensor]:
    """Run ``feature_extractor`` batch by batch over images in the recipe's scale, each batch moved to the
    network's device (real images come as CPU arrays, samples on the generator's device). Returns (logits (N, K),
    features (N, D)), float32 on the CPU. Only these are kept, never the images: with Inception, 50,000 samples
    hold about 600 MB (N x (1008 + 2048) floats). The statistics are then computed in float64."""
    device = _device_of(feature_extractor)
    logits, features = [], []
    for batch in batches:
        pixels = to_uint8_rgb(batch, scaling)
        batch_logits, batch_features = feature_extractor(pixels if device is None else pixels.to(device))
        logits.append(batch_logits.float().cpu())
        features.append(batch_features.float().reshape(len(batch_features), -1).cpu())
    if not logits:
        raise ValueError("no images to extract features from")
    return torch.cat(logits), torch.cat(features)


# ------------------------------------------------------------------------------------------------ scores

def inception_score_from_logits(logits: Tensor | np.ndarray, splits: int = 10) -> Tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) with p(y|x) = softmax(logits) (Salimans et al. 2016, sec. 4). Returns
    the mean and std (ddof 0) over ``splits`` contiguous splits, computed by torch-fidelity's
    ``isc_features_to_metric``. The samples are not reshuffled: generated samples are i.i.d. already."""
    logits = torch.as_tensor(logits, dtype=torch.float64).cpu()
    if logits.ndim != 2 or not 1 <= splits <= len(logits):
        raise ValueError(f"need logits (N, K) with 1 <= splits <= N, got shape {tuple(logits.shape)} and "
                         f"splits={splits}")
    isc = _fidelity_module("metric_isc")
    out = isc.isc_features_to_metric(logits, splits=splits, shuffle=False)
    return float(out[IS_MEAN]), float(out[IS_STD])


def feature_statistics(features: Tensor | np.ndarray) -> Dict[str, np.ndarray]:
    """The FID's Gaussian of a set of features (N, D): {"mu": mean (D,), "sigma": covariance (D, D) with
    ddof 1}, computed by torch-fidelity's ``fid_features_to_statistics`` in float64."""
    features = torch.as_tensor(features, dtype=torch.float64).cpu()
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D), got shape {tuple(features.shape)}")
    return _fidelity_module("metric_fid").fid_features_to_statistics(features)


def frechet_distance(stats_a: Dict[str, np.ndarray], stats_b: Dict[str, np.ndarray]) -> float:
    """FID = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (Heusel et al. 2017) between two
    ``feature_statistics``, computed by torch-fidelity's ``fid_statistics_to_metric``."""
    return float(_fidelity_module("metric_fid").fid_statistics_to_metric(stats_a, stats_b, False)[FID])


def _batches(images: Tensor | np.ndarray, batch_size: int) -> Iterable[Tensor | np.ndarray]:
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def sample_quality(generator: nn.Module, scaling: str, n_samples: int = 50000, batch_size: int = 100, *,
                   real_images: Optional[Tensor | np.ndarray] = None, splits: int = 10,
                   feature_extractor: Optional[FeatureExtractor] = None,
                   generator_seed: int = 0) -> Dict[str, float]:
    """The Inception Score of ``n_samples`` generator samples and, when ``real_images`` are given, their FID
    against those images.

    generator: an ssgan generator (``sample_z`` and a forward pass from z to images in the recipe's scale),
        sampled in full batches of ``batch_size`` as ``evaluate.generate`` does. The noise comes from a
        torch.Generator on the generator's device seeded with ``generator_seed``.
    scaling: the recipe's ``dataset.scaling``, which maps the samples and the real images back to pixels.
    real_images: (M, C, H, W) in the recipe's scale, e.g. ``load_data(cfg.dataset).x_train``. Heusel et al.
        compare with the training set and recommend at least 10,000 samples.
    splits: the IS's splits (Salimans et al.: 50,000 samples in 10 splits).
    feature_extractor: uint8 (B, 3, H, W) -> (logits (B, K), features (B, D)); defaults to
        ``inception_feature_extractor`` on the generator's device (FileNotFoundError when its weights are
        absent). Tests pass a small stand-in network.

    Returns {IS_MEAN, IS_STD, "n_samples"} and, with real images, also {FID, "n_real"}.
    """
    if n_samples < 1 or batch_size < 1 or not 1 <= splits <= n_samples:
        raise ValueError(f"need n_samples >= 1, batch_size >= 1 and 1 <= splits <= n_samples, got "
                         f"n_samples={n_samples}, batch_size={batch_size}, splits={splits}")
    if real_images is not None and (len(real_images) < 2 or n_samples < 2):
        raise ValueError("the FID needs at least 2 real and 2 generated images (a covariance each)")
    device = next(generator.parameters()).device
    if feature_extractor is None:
        feature_extractor = inception_feature_extractor(device)
    result: Dict[str, float] = {"n_samples": n_samples}
    real_stats = None
    if real_images is not None:
        # The real set's statistics come first. Its features are dropped before the samples' features are
        # extracted, so the two sets are never held in memory together.
        real_stats = feature_statistics(extract_features(_batches(real_images, batch_size), scaling,
                                                         feature_extractor)[1])
        result["n_real"] = len(real_images)
    noise = torch.Generator(device=device).manual_seed(generator_seed)
    logits, features = extract_features(generate(generator, n_samples, batch_size, noise), scaling,
                                        feature_extractor)
    result[IS_MEAN], result[IS_STD] = inception_score_from_logits(logits, splits)
    if real_stats is not None:
        result[FID] = frechet_distance(feature_statistics(features), real_stats)
    return result
