"""Tests of ssgan/quality.py: the Inception Score and FID computed by torch-fidelity. A small random conv net
stands in for Inception-v3, whose weights are not at hand here. It exercises the path the real network takes:
the images mapped to uint8 RGB, the feature statistics, and both formulas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import Tensor, nn

from ssgan import quality
from ssgan.config import DataConfig, ModelConfig
from ssgan.evaluate import inception_score, sample_images
from ssgan.models import build_models

# A guard only: the dev extra installs torch-fidelity.
library = pytest.mark.skipif(not quality.library_available(), reason="the quality extra (torch-fidelity)")

N, BATCH = 200, 50


class StandIn(nn.Module):
    """uint8 (B, 3, H, W) -> (logits (B, 10), pooled features (B, 8)): a random conv net in place of Inception."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> tuple:
        assert x.dtype == torch.uint8 and x.shape[1] == 3  # what the library's Inception-v3 takes
        feats = torch.tanh(self.conv(x.float() / 255.0)).mean(dim=(2, 3))
        return self.head(feats), feats


class Labels(nn.Module):
    """Confident predictions of given classes: logits 50 * one-hot of ``classes(i)`` for the i-th image seen."""

    def __init__(self, classes) -> None:
        super().__init__()
        self.classes, self.seen = classes, 0

    def forward(self, x: Tensor) -> tuple:
        y = torch.tensor([self.classes(self.seen + i) for i in range(len(x))])
        self.seen += len(x)
        return 50.0 * nn.functional.one_hot(y, 10).double(), x.float().mean(dim=(2, 3))


class Shifted(nn.Module):
    """A generator whose images are moved by ``shift`` in the unit scale (clipped later by unscale_images)."""

    def __init__(self, gen: nn.Module, shift: float) -> None:
        super().__init__()
        self.gen, self.shift = gen, shift

    def sample_z(self, *args, **kwargs) -> Tensor:
        return self.gen.sample_z(*args, **kwargs)

    def forward(self, z: Tensor) -> Tensor:
        return self.gen(z) + self.shift


@pytest.fixture(scope="module")
def nets():
    """An untrained digits generator (1 x 8 x 8, grey, unit scale) and the stand-in feature extractor."""
    torch.manual_seed(0)
    _, gen = build_models(DataConfig(), ModelConfig(g_widths=[32], z_dim=8))
    return gen, StandIn()


@pytest.fixture
def hub(tmp_path):
    """An empty torch hub cache; returns where the weights file goes in it."""
    saved = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    location = quality.inception_weights_location()
    location.parent.mkdir(parents=True)
    yield location
    torch.hub.set_dir(saved)


def direct_fid(images_a: np.ndarray, images_b: np.ndarray, extractor: nn.Module) -> float:
    """The FID formula written out with numpy and scipy's sqrtm on the stand-in's features of unit-scale images."""
    def stats(images):
        pixels = torch.from_numpy(np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8)).repeat(1, 3, 1, 1)
        with torch.no_grad():
            feats = extractor(pixels)[1].double().numpy()
        return feats.mean(axis=0), np.cov(feats, rowvar=False)

    (mu_a, s_a), (mu_b, s_b) = stats(images_a), stats(images_b)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * scipy.linalg.sqrtm(s_a @ s_b).real))


@library
def test_fid_of_a_sample_set_against_itself_is_zero(nets):
    gen, extractor = nets
    real = sample_images(gen, N, BATCH, torch.Generator().manual_seed(0))  # the very samples scored below
    out = quality.sample_quality(gen, "unit", N, BATCH, real_images=real, splits=2, feature_extractor=extractor)
    assert out[quality.FID] == pytest.approx(0.0, abs=1e-9)
    assert out["n_samples"] == out["n_real"] == N


@library
def test_fid_grows_as_the_samples_shift_and_agrees_with_the_formula(nets):
    gen, extractor = nets
    real = sample_images(gen, N, BATCH, torch.Generator().manual_seed(1)).numpy()  # other draws, same model
    fids = [quality.sample_quality(Shifted(gen, shift), "unit", N, BATCH, real_images=real, splits=2,
                                   feature_extractor=extractor)[quality.FID] for shift in (0.0, 0.2, 0.4)]
    assert 0 < fids[0] < fids[1] < fids[2]
    assert fids[2] > 10 * fids[0]
    fake = sample_images(Shifted(gen, 0.2), N, BATCH, torch.Generator().manual_seed(0)).numpy()
    assert fids[1] == pytest.approx(direct_fid(fake, real, extractor), rel=1e-6, abs=1e-9)


@library
def test_inception_score_of_constant_and_of_spread_predictions(nets):
    gen, _ = nets
    constant = quality.sample_quality(gen, "unit", N, BATCH, splits=4, feature_extractor=Labels(lambda i: 3))
    assert constant[quality.IS_MEAN] == pytest.approx(1.0, abs=1e-6) and constant[quality.IS_STD] < 1e-6
    spread = quality.sample_quality(gen, "unit", N, BATCH, splits=4, feature_extractor=Labels(lambda i: i % 10))
    assert spread[quality.IS_MEAN] == pytest.approx(10.0, rel=1e-6) and spread[quality.IS_STD] < 1e-6
    assert quality.FID not in spread


@library
def test_inception_score_agrees_with_the_papers_formula_in_evaluate():
    logits = torch.randn(300, 10, generator=torch.Generator().manual_seed(0)) * 3
    expected = inception_score(torch.softmax(logits.double(), dim=1).numpy(), 3)  # splits of 100 in both
    assert quality.inception_score_from_logits(logits, 3) == pytest.approx(expected, rel=1e-9)


def test_images_become_uint8_rgb_with_their_pixels_back():
    pixels = np.random.RandomState(0).randint(0, 256, size=(4, 1, 5, 5)).astype(np.float32)
    scaled = (pixels - 127.5) / 128.0  # the "cifar" scaling
    out = quality.to_uint8_rgb(torch.from_numpy(scaled), "cifar")
    assert out.dtype == torch.uint8 and out.shape == (4, 3, 5, 5)
    assert all(np.array_equal(out[:, c].numpy(), pixels[:, 0]) for c in range(3))
    assert quality.to_uint8_rgb(np.full((1, 3, 2, 2), 1.7, np.float32), "unit").max() == 255  # overshoot clipped


def test_no_weights_here_and_the_message_says_where(hub, nets):
    assert hub == Path(torch.hub.get_dir()) / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    assert quality.inception_weights_available() is None
    message = quality.missing_weights_message()
    assert str(hub) in message and quality.INCEPTION_WEIGHTS_URL in message
    assert quality.unavailable_reason() == message
    with pytest.raises(FileNotFoundError, match="no Inception-v3 weights at"):
        quality.sample_quality(nets[0], "unit", 10, 5, splits=2)  # no stand-in: Inception, which is absent
    hub.write_bytes(b"")
    assert quality.inception_weights_available() == hub


@library
def test_the_weights_file_is_the_one_torch_fidelity_fetches():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert quality.INCEPTION_WEIGHTS_URL == URL_INCEPTION_V3


@library
def test_the_library_network_is_built_from_the_local_file_only(hub, monkeypatch):
    from torch_fidelity import feature_extractor_inceptionv3 as inception

    with monkeypatch.context() as patch:  # random weights of the right shapes stand for the real file
        patch.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: None)
        patch.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *args, **kw: None)
        weights = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    torch.save(weights, hub)

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(inception, "load_state_dict_from_url", no_download)
    net = quality.inception_feature_extractor()
    assert not net.training and list(net.features_list) == ["logits_unbiased", "2048"]
    assert torch.equal(net.fc.weight, weights["fc.weight"])


@library
def test_a_weights_file_with_more_than_tensors_is_refused(hub):
    import pickle
    from pathlib import PurePosixPath

    torch.save({"fc.weight": torch.zeros(1), "payload": PurePosixPath("not a tensor")}, hub)
    with pytest.raises(pickle.UnpicklingError):
        quality.inception_feature_extractor()


def test_without_the_library_the_reason_names_the_extra(monkeypatch):
    monkeypatch.setattr(quality, "library_available", lambda: False)
    assert "pip install 'ssgan[quality]'" in quality.unavailable_reason()
    with pytest.raises(ImportError, match="ssgan\\[quality\\]"):
        quality.inception_score_from_logits(torch.zeros(4, 3), 2)
