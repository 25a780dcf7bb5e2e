"""ssgan/density.py: the discretized logistic mixture likelihood against the official expression, its
stability and normalisation, the autoregressive mask of the PixelCNN++, the threshold, and a fit on tiny
images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssgan.density import (PixelCNNpp, density_threshold, discretized_logistic_mixture_loglik, load_density,
                           log_likelihoods, save_density, train_density)


def _official_c1(x, l):
    """pixelcnn_loss.py:68-127 with sum_all=False, written out on channels-last tensors with its masks and
    F.threshold, negated: log p per image. x: (B, H, W, 1), l: (B, H, W, 3 M)."""
    x, l = x.double(), l.double()
    m = l.shape[-1] // 3
    logit_probs = l[..., :m]
    rest = l[..., m:].reshape(*x.shape[:3], 1, 2 * m)
    means = rest[..., :m]
    log_scales = F.threshold(rest[..., m:2 * m], -7.0, -7.0)
    x = x.unsqueeze(4).expand(*x.shape, m)
    centered = x - means
    inv = torch.exp(-log_scales)
    plus_in, min_in = inv * (centered + 1 / 255), inv * (centered - 1 / 255)
    log_cdf_plus = plus_in - F.softplus(plus_in)
    log_one_minus = -F.softplus(min_in)
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid = inv * centered
    log_pdf_mid = mid - log_scales - 2 * F.softplus(mid)
    mask1 = (cdf_delta > 1e-5).double()
    term1 = mask1 * torch.log(F.threshold(cdf_delta, 1e-12, 1e-12)) + (1 - mask1) * (log_pdf_mid - np.log(127.5))
    mask2 = (x > 0.999).double()
    term2 = mask2 * log_one_minus + (1 - mask2) * term1
    mask3 = (x < -0.999).double()
    term3 = mask3 * log_cdf_plus + (1 - mask3) * term2
    log_probs = term3.sum(3) + torch.log_softmax(logit_probs, -1)
    return torch.logsumexp(log_probs, -1).sum((1, 2))


def test_loglik_matches_the_official_expression():
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 256, (3, 1, 5, 4), generator=g)
    x = levels.float() / 127.5 - 1  # the 256 levels on [-1, 1], edges included
    params = torch.randn(3, 3 * 4, 5, 4, generator=g) * 2
    params[:, 8:] = params[:, 8:] - 4  # small scales: the mid-bin branch of tiny probabilities is used too
    ours = discretized_logistic_mixture_loglik(x, params)
    ref = _official_c1(x.permute(0, 2, 3, 1), params.permute(0, 2, 3, 1))
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-3)  # float32 against float64


def test_loglik_is_finite_at_extreme_parameters():
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3)
    params = torch.tensor([[1e4, -1e4], [1e4, -1e4], [-1e4, 1e4]]).view(1, 6, 1, 1).expand(1, 6, 1, 3).clone()
    params.requires_grad_(True)
    ll = discretized_logistic_mixture_loglik(x, params)
    ll.sum().backward()
    assert torch.isfinite(ll).all() and torch.isfinite(params.grad).all()


def test_loglik_is_normalised_over_the_256_levels():
    """A one-pixel image: the probabilities of the 256 levels sum to 1 (known value)."""
    x = (torch.arange(256).float() / 127.5 - 1).view(256, 1, 1, 1)
    params = torch.tensor([0.3, -0.2, 0.1, 0.5, -2.0, -3.0]).view(1, 6, 1, 1).expand(256, 6, 1, 1)
    total = discretized_logistic_mixture_loglik(x, params).double().exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-4)


def test_the_pixelcnn_is_autoregressive_in_raster_order():
    torch.manual_seed(0)
    model = PixelCNNpp(nr_filters=8, nr_resnet=1, nr_mix=2, stages=3).eval()
    x = torch.rand(2, 1, 12, 12) * 2 - 1
    for (i, j) in [(0, 0), (5, 7), (11, 11), (6, 0)]:
        changed = x.clone()
        changed[:, :, i, j] = -changed[:, :, i, j] + 0.3
        diff = (model(changed) - model(x)).abs().sum((0, 1))  # (H, W)
        flat = diff.flatten()
        position = i * 12 + j
        assert flat[:position + 1].sum() == 0  # no output up to and including (i, j) sees x[i, j]
        if position < 143:
            assert flat[position + 1:].sum() > 0


def test_the_threshold_is_the_official_partition():
    assert density_threshold(np.arange(100.0)[::-1]) == 10.0
    values = np.random.RandomState(0).randn(37)
    assert density_threshold(values) == np.sort(values)[3]


def test_training_on_tiny_images_lowers_the_nll_and_the_file_round_trips(tmp_path):
    torch.manual_seed(0)
    x = (torch.rand(64, 1, 8, 8) > 0.5).float() * 2 - 1  # binary 8x8 images
    x[:, :, :, :4] = -1  # the left half always black: learnable
    small = dict(nr_filters=8, nr_resnet=1, nr_mix=2, stages=2)
    before = PixelCNNpp(**small)
    torch.manual_seed(0)
    start = log_likelihoods(PixelCNNpp(**small), x).mean().item()
    fitted = train_density(x, epochs=15, batch_size=16, lr=3e-3, **small)
    after = log_likelihoods(fitted["model"], x)
    assert after.mean().item() > start + 20  # nats per image
    threshold = density_threshold(after.numpy())
    save_density(tmp_path / "d.pt", fitted["model"], threshold, "unit", [1, 8, 8])
    loaded = load_density(tmp_path / "d.pt")
    assert loaded["threshold"] == threshold
    torch.testing.assert_close(log_likelihoods(loaded["model"], x), after)
    del before


def test_fit_density_trains_on_the_train_split_and_writes_a_file_the_recipe_loads(tmp_path):
    """``ssgan density`` as a library call: the train split's images (--max-images of them), the official
    threshold, and a new file (never replacing one); bad sizes are ConfigError before any training."""
    from ssgan.config import ConfigError, compose
    from ssgan.density import fit_density
    from ssgan.rundir import RunDirError

    cfg = compose(["dataset=digits"])
    fitted = fit_density(cfg, filters=4, resnet=1, mix=2, max_images=60, batch_size=30)
    assert fitted.info["images"] == 60 and fitted.info["dataset"] == "digits" and math.isfinite(fitted.threshold)
    fitted.write(tmp_path / "d.pixelcnn")
    loaded = load_density(tmp_path / "d.pixelcnn")
    assert loaded["threshold"] == fitted.threshold and loaded["image_shape"] == [1, 8, 8]
    with pytest.raises(RunDirError, match="already exists"):
        fitted.write(tmp_path / "d.pixelcnn")
    with pytest.raises(ConfigError, match="positive"):
        fit_density(cfg, epochs=0)
