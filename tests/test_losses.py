"""Tests of ssgan/losses.py: for each equation a reference computed differently, stability at logits of
+-1e4, and known values (docs/method.md sec. 1, 2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssgan.losses import (conditional_entropy, consistency_loss, discriminator_loss, fake_loss,
                          feature_matching_loss, gaussian_nll, gradient_penalty, historical_averaging_loss, interpolate,
                          low_density_penalty, pull_away_term, supervised_loss, unlabeled_loss)


K = 5
HUGE = 1e4


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(7, K, generator=torch.Generator().manual_seed(0)) * 3  # (B, K)


def _k_plus_one_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """(K+1)-way log-softmax with the fake-class logit 0 appended last, in float64. (B, K+1)."""
    logits = logits.double()
    return torch.log_softmax(torch.cat([logits, torch.zeros(len(logits), 1, dtype=logits.dtype)], 1), 1)


def _d_direct(logits: torch.Tensor) -> torch.Tensor:
    """D(x) = Z / (Z + 1), Z = sum_k exp(l_k), in float64 on moderate logits. (B,)."""
    z = logits.double().exp().sum(dim=1)
    return z / (z + 1)


def _assert_finite_grad(loss_fn, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    loss = loss_fn(x)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()
    return loss.detach()


def _logit_of_label(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits[torch.arange(len(y)), y]  # (B,)


# -- supervised_loss ---------------------------------------------------------------------------------

def test_supervised_loss_matches_manual_log_softmax(logits):
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    log_probs = logits.double() - torch.logsumexp(logits.double(), dim=1, keepdim=True)
    expected = -log_probs[torch.arange(len(y)), y].mean()
    assert supervised_loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_supervised_loss_ignores_fake_class(logits):
    """K-way: the fake class is excluded, so the loss differs from the (K+1)-way cross-entropy."""
    y = torch.zeros(len(logits), dtype=torch.long)
    k_plus_one = -_k_plus_one_log_probs(logits)[:, 0].mean().item()
    assert supervised_loss(logits, y).item() < k_plus_one


def test_supervised_loss_stable_at_huge_logits():
    logits = torch.tensor([[HUGE, -HUGE, 0.0], [HUGE, -HUGE, 0.0]])
    right = _assert_finite_grad(lambda l: supervised_loss(l, torch.tensor([0, 0])), logits)
    wrong = _assert_finite_grad(lambda l: supervised_loss(l, torch.tensor([1, 1])), logits)
    assert right.item() == pytest.approx(0.0, abs=1e-6)
    assert wrong.item() == pytest.approx(2 * HUGE, rel=1e-6)


def test_supervised_loss_known_value():
    """Equal logits: -log(1/K)."""
    assert supervised_loss(torch.zeros(3, K), torch.tensor([0, 1, 2])).item() == pytest.approx(math.log(K))


# -- unlabeled_loss and fake_loss ------------------------------------------------------------------------

def test_unlabeled_loss_matches_k_plus_one_softmax(logits):
    """-log D(x) = -log(1 - p(fake | x)) with p from a (K+1)-way softmax whose last logit is 0."""
    p_fake = _k_plus_one_log_probs(logits)[:, -1].exp()
    expected = -torch.log1p(-p_fake).mean()
    assert unlabeled_loss(logits).item() == pytest.approx(expected.item(), rel=1e-5)


def test_fake_loss_matches_k_plus_one_softmax(logits):
    """-log(1 - D(x)) = -log p(fake | x), the last entry of the (K+1)-way log-softmax."""
    expected = -_k_plus_one_log_probs(logits)[:, -1].mean()
    assert fake_loss(logits).item() == pytest.approx(expected.item(), rel=1e-5)


def test_d_identity_z_over_z_plus_one(logits):
    """D(x) = Z / (Z + 1), computed directly and recovered from each loss on a one-example batch."""
    d = _d_direct(logits)
    for i in range(len(logits)):
        row = logits[i:i + 1]
        assert math.exp(-unlabeled_loss(row).item()) == pytest.approx(d[i].item(), rel=1e-5)
        assert math.exp(-fake_loss(row).item()) == pytest.approx(1 - d[i].item(), rel=1e-5)
    # and from the (K+1)-way softmax: D = 1 - p(fake)
    torch.testing.assert_close(1 - _k_plus_one_log_probs(logits)[:, -1].exp(), d)


def test_unlabeled_and_fake_known_value_at_zero_logits():
    """All logits 0: Z = K, D = K / (K + 1)."""
    zeros = torch.zeros(4, K)
    assert unlabeled_loss(zeros).item() == pytest.approx(-math.log(K / (K + 1)), rel=1e-6)
    assert fake_loss(zeros).item() == pytest.approx(-math.log(1 / (K + 1)), rel=1e-6)


def test_unlabeled_loss_stable_at_huge_logits():
    pos = _assert_finite_grad(unlabeled_loss, torch.full((3, K), HUGE))
    neg = _assert_finite_grad(unlabeled_loss, torch.full((3, K), -HUGE))
    assert pos.item() == pytest.approx(0.0, abs=1e-6)  # D -> 1
    assert neg.item() == pytest.approx(HUGE - math.log(K), rel=1e-6)  # -log D = -LSE


def test_fake_loss_stable_at_huge_logits():
    pos = _assert_finite_grad(fake_loss, torch.full((3, K), HUGE))
    neg = _assert_finite_grad(fake_loss, torch.full((3, K), -HUGE))
    assert pos.item() == pytest.approx(HUGE + math.log(K), rel=1e-6)  # -log(1 - D) = LSE
    assert neg.item() == pytest.approx(0.0, abs=1e-6)


def test_losses_computed_in_float32_from_half_logits(logits):
    half = logits.half()
    assert unlabeled_loss(half).dtype == torch.float32
    assert fake_loss(half).dtype == torch.float32
    assert fake_loss(half).item() == pytest.approx(fake_loss(half.float()).item())


@pytest.mark.parametrize("a", [0.1, 0.3])
def test_label_smoothing_matches_direct_formula(logits, a):
    """-(1 - a) log D - a log(1 - D) with D = Z / (Z + 1) computed directly."""
    d = _d_direct(logits)
    expected = (-(1 - a) * d.log() - a * (1 - d).log()).mean()
    assert unlabeled_loss(logits, label_smoothing=a).item() == pytest.approx(expected.item(), rel=1e-5)
    assert unlabeled_loss(logits, label_smoothing=a).item() != pytest.approx(unlabeled_loss(logits).item())


def test_label_smoothing_stable_at_huge_logits():
    a = 0.1
    pos = _assert_finite_grad(lambda l: unlabeled_loss(l, a), torch.full((2, K), HUGE))
    neg = _assert_finite_grad(lambda l: unlabeled_loss(l, a), torch.full((2, K), -HUGE))
    # D -> 1: only the smoothed term a * LSE remains; D -> 0: (1 - a) * (-LSE).
    assert pos.item() == pytest.approx(a * (HUGE + math.log(K)), rel=1e-5)
    assert neg.item() == pytest.approx((1 - a) * (HUGE - math.log(K)), rel=1e-5)


# -- discriminator_loss ----------------------------------------------------------------------------------

def test_discriminator_loss_combination():
    sup, unl, fake, ct = (torch.tensor(v) for v in (1.0, 2.0, 3.0, 4.0))
    assert discriminator_loss(sup, unl, fake).item() == pytest.approx(1 + (2 + 3) / 2)
    assert discriminator_loss(sup, unl, fake, ct, w=0.5, ct_weight=0.1).item() == pytest.approx(
        1 + 0.5 * (2 + 3 + 0.1 * 4) / 2)
    # ct_weight = 0 switches CT off whatever its value
    assert discriminator_loss(sup, unl, fake, ct, w=1.0, ct_weight=0.0).item() == pytest.approx(3.5)


def test_discriminator_loss_matches_official_expression(logits):
    """The official loss_lab + w * loss_unl, written as in improved-gan's scripts."""
    x_lab, x_unl, x_gen = logits[:3], logits[3:5], logits[5:]
    y = torch.tensor([0, 3, 1])
    lse = lambda l: torch.logsumexp(l.double(), 1)  # noqa: E731
    loss_lab = -_logit_of_label(x_lab.double(), y).mean() + lse(x_lab).mean()
    loss_unl = (-0.5 * lse(x_unl).mean() + 0.5 * F.softplus(lse(x_unl)).mean()
                + 0.5 * F.softplus(lse(x_gen)).mean())
    ours = discriminator_loss(supervised_loss(x_lab, y), unlabeled_loss(x_unl), fake_loss(x_gen), w=1.0)
    assert ours.item() == pytest.approx((loss_lab + loss_unl).item(), rel=1e-5)


# -- feature_matching_loss ----------------------------------------------------------------------------

def test_feature_matching_identical_batches_is_zero():
    f = torch.randn(6, 4)
    assert feature_matching_loss(f, f.clone(), p=1).item() == 0.0
    assert feature_matching_loss(f, f[torch.randperm(6)], p=2).item() == pytest.approx(0.0, abs=1e-12)


def test_feature_matching_known_values():
    f_real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # mean (2, 3)
    f_fake = torch.tensor([[0.0, 0.0], [2.0, 2.0]])  # mean (1, 1); diff (1, 2)
    assert feature_matching_loss(f_real, f_fake, p=1).item() == pytest.approx(1.5)
    assert feature_matching_loss(f_real, f_fake, p=2).item() == pytest.approx(2.5)


def test_feature_matching_matches_reference():
    f_real, f_fake = torch.randn(5, 3), torch.randn(8, 3)
    m_real, m_fake = f_real.mean(0, keepdim=True), f_fake.mean(0, keepdim=True)
    assert feature_matching_loss(f_real, f_fake, 1).item() == pytest.approx(F.l1_loss(m_real, m_fake).item())
    assert feature_matching_loss(f_real, f_fake, 2).item() == pytest.approx(F.mse_loss(m_real, m_fake).item())


def test_feature_matching_stable_at_huge_features():
    f_real, f_fake = torch.full((3, 2), HUGE), torch.full((3, 2), -HUGE)
    assert feature_matching_loss(f_real, f_fake, 1).item() == pytest.approx(2 * HUGE)
    loss = _assert_finite_grad(lambda f: feature_matching_loss(f, f_fake, 2), f_real)
    assert loss.item() == pytest.approx(4 * HUGE ** 2, rel=1e-6)


# -- consistency_loss ---------------------------------------------------------------------------------

def test_consistency_identical_passes_is_zero():
    probs, feats = torch.softmax(torch.randn(4, K), 1), torch.randn(4, 6)
    assert consistency_loss(probs, probs.clone(), feats, feats.clone()).item() == 0.0


def test_consistency_known_value():
    probs_a, probs_b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])  # d_out = 1
    feats_a, feats_b = torch.tensor([[2.0, 0.0, 0.0, 0.0]]), torch.zeros(1, 4)  # d_feat = 4 / 4 = 1
    assert consistency_loss(probs_a, probs_b, feats_a, feats_b, feat_weight=0.1).item() == pytest.approx(1.1)
    assert consistency_loss(probs_a, probs_b, feats_a, feats_b, feat_weight=0.0).item() == pytest.approx(1.0)
    probs = torch.softmax(torch.randn(3, K), 1)
    assert consistency_loss(probs, probs.flip(0), feats_a.expand(3, 4), feats_b.expand(3, 4)).item() > 0


def test_consistency_matches_reference():
    """Mean over classes of the squared probability difference + 0.1 * mean squared feature difference."""
    g = torch.Generator().manual_seed(1)
    probs_a, probs_b = torch.softmax(torch.randn(6, K, generator=g), 1), torch.softmax(torch.randn(6, K, generator=g), 1)
    feats_a, feats_b = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    expected = F.mse_loss(probs_a, probs_b) + 0.1 * F.mse_loss(feats_a, feats_b)
    assert consistency_loss(probs_a, probs_b, feats_a, feats_b).item() == pytest.approx(expected.item(), rel=1e-6)


def test_consistency_margin_is_a_per_example_hinge():
    # example 0: d = 1 (above the margin 0.5), example 1: d = 0 (below it)
    probs_a = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    probs_b = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    feats = torch.zeros(2, 3)
    assert consistency_loss(probs_a, probs_b, feats, feats, margin=0.5).item() == pytest.approx((0.5 + 0.0) / 2)
    assert consistency_loss(probs_a, probs_b, feats, feats, margin=2.0).item() == 0.0
    assert consistency_loss(probs_a, probs_b, feats, feats, margin=0.0).item() == pytest.approx(0.5)


def test_consistency_stable_at_huge_features():
    probs = torch.softmax(torch.full((2, K), HUGE) * torch.arange(K), 1)
    loss = _assert_finite_grad(
        lambda f: consistency_loss(probs, probs.flip(1), f, -f), torch.full((2, 3), HUGE))
    assert loss.item() == pytest.approx(2 / K + 0.1 * 4 * HUGE ** 2, rel=1e-6)


# -- gradient_penalty ---------------------------------------------------------------------------------

def test_interpolate_ends_and_midpoint():
    x_real, x_fake = torch.full((3, 1, 2, 2), 2.0), torch.full((3, 1, 2, 2), -4.0)
    eps = torch.tensor([1.0, 0.0, 0.5]).view(3, 1, 1, 1)
    x_hat = interpolate(x_real, x_fake, eps)
    assert torch.equal(x_hat[0], x_real[0]) and torch.equal(x_hat[1], x_fake[1])
    assert torch.equal(x_hat[2], torch.full((1, 2, 2), -1.0))


def test_gradient_penalty_zero_for_unit_norm_gradients():
    grad = torch.randn(5, 2, 3, 3)
    grad = grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert gradient_penalty(grad).item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_known_value():
    grad = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # norms 5, 0 -> (4^2 + 1^2) / 2
    assert gradient_penalty(grad).item() == pytest.approx(8.5)


def test_gradient_penalty_matches_autograd_reference():
    w = torch.tensor([0.5, -2.0, 1.0])
    x_hat = torch.randn(4, 3, requires_grad=True)
    (grad,) = torch.autograd.grad((x_hat @ w).sum(), x_hat)
    assert gradient_penalty(grad).item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-6)


def test_gradient_penalty_stable_at_huge_gradients():
    loss = _assert_finite_grad(gradient_penalty, torch.full((2, 3), HUGE))
    assert loss.item() == pytest.approx((HUGE * math.sqrt(3) - 1) ** 2, rel=1e-5)


# -- historical_averaging_loss ---------------------------------------------------------------------------

def test_historical_averaging_known_value():
    params = [torch.tensor([1.0, 2.0]), torch.tensor([[1.0]])]
    averages = [torch.zeros(2), torch.tensor([[3.0]])]
    assert historical_averaging_loss(params, averages).item() == pytest.approx(1 + 4 + 4)
    assert historical_averaging_loss(params, [p.clone() for p in params]).item() == 0.0


def test_historical_averaging_stable_and_differentiable():
    p = torch.full((3,), HUGE, requires_grad=True)
    loss = historical_averaging_loss([p], [torch.zeros(3)])
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(3 * HUGE ** 2)
    torch.testing.assert_close(p.grad, torch.full((3,), 2 * HUGE))


# ------------------------------------------------------------------------ Bad GAN's terms (Dai et al. 2017)
# References: the official expressions of ssl_bad_gan (utils.py, svhn_trainer.py, mnist_trainer.py), written
# out in float64 with explicit loops or masks, as the official code computes them.


def _official_entropy(logits: torch.Tensor) -> torch.Tensor:
    """utils.py:31-34: (-softmax(l) * l).sum(1) + log_sum_exp(l), mean over the batch (max-shifted LSE)."""
    l = logits.double()
    m = l.max(1, keepdim=True)[0]
    lse = (l - m).exp().sum(1).log() + m[:, 0]
    return ((-torch.softmax(l, 1) * l).sum(1) + lse).mean()


def test_conditional_entropy_matches_official_expression(logits):
    assert conditional_entropy(logits).item() == pytest.approx(_official_entropy(logits).item(), rel=1e-6)


def test_conditional_entropy_stable_at_huge_logits():
    x = torch.tensor([[HUGE, -HUGE, 0.0], [-HUGE, -HUGE, HUGE]])
    loss = _assert_finite_grad(conditional_entropy, x)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # one-hot predictions have no entropy


def test_conditional_entropy_known_value():
    assert conditional_entropy(torch.zeros(4, K)).item() == pytest.approx(math.log(K), rel=1e-6)


def _official_pull_away(f: torch.Tensor) -> torch.Tensor:
    """svhn_trainer.py:117-121: masked squared cosines summed, over nsample (nsample - 1); pairs looped."""
    f = f.double()
    n = len(f)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += (torch.dot(f[i], f[j]) / (f[i].norm() * f[j].norm())) ** 2
    return total / (n * (n - 1))


def test_pull_away_term_matches_official_expression():
    f = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    assert pull_away_term(f).item() == pytest.approx(_official_pull_away(f).item(), rel=1e-6)


def test_pull_away_term_stable_at_huge_features():
    f = torch.randn(5, 3, generator=torch.Generator().manual_seed(2)) * HUGE
    loss = _assert_finite_grad(pull_away_term, f)
    assert 0.0 <= loss.item() <= 1.0


def test_pull_away_term_known_values():
    assert pull_away_term(torch.eye(3)).item() == pytest.approx(0.0, abs=1e-7)  # orthogonal: no pull
    assert pull_away_term(torch.ones(4, 2)).item() == pytest.approx(1.0, rel=1e-6)  # collapsed: cos = 1
    # two vectors at 60 degrees: cos^2 = 1/4 for both ordered pairs, over 2 * 1
    f = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert pull_away_term(f).item() == pytest.approx(0.25, rel=1e-6)


def _official_gaussian_nll(mu, log_sigma, z):
    """utils.py:7-10, element by element."""
    total = 0.0
    for b in range(len(z)):
        row = 0.0
        for j in range(z.shape[1]):
            ls = float(log_sigma[b, j])
            row += ls + ((float(z[b, j]) - float(mu[b, j])) / (1e-8 + math.exp(ls))) ** 2 / 2
        total += row
    return total / len(z)


def test_gaussian_nll_matches_official_expression():
    g = torch.Generator().manual_seed(3)
    mu, log_sigma, z = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.rand(4, 3, generator=g)
    assert gaussian_nll(mu, log_sigma, z).item() == pytest.approx(_official_gaussian_nll(mu, log_sigma, z), rel=1e-5)


def test_gaussian_nll_stable_at_large_log_sigma():
    g = torch.Generator().manual_seed(4)
    mu, z = torch.randn(4, 3, generator=g), torch.rand(4, 3, generator=g)
    loss = _assert_finite_grad(lambda ls: gaussian_nll(mu, ls, z), torch.full((4, 3), 50.0))
    assert loss.item() == pytest.approx(150.0, rel=1e-6)  # sum of log sigma; the squares vanish


def test_gaussian_nll_known_value():
    # sigma = 1 (log sigma 0), z - mu = 1 in every of 3 coordinates: 3 * 1 / 2
    z = torch.ones(2, 3)
    assert gaussian_nll(torch.zeros(2, 3), torch.zeros(2, 3), z).item() == pytest.approx(1.5, rel=1e-6)


def _official_low_density(log_probs, threshold):
    """mnist_trainer.py:129-136: max(lp - th, 0); sum / nonzero count, or 0 when none is above."""
    p = [max(float(v) - threshold, 0.0) for v in log_probs]
    nonzero = sum(1 for v in p if v > 0)
    return sum(p) / nonzero if nonzero else 0.0


@pytest.mark.parametrize("threshold", [-5.0, 0.5, 100.0])
def test_low_density_penalty_matches_official_expression(threshold):
    lp = torch.randn(30, generator=torch.Generator().manual_seed(5)) * 3
    assert low_density_penalty(lp, threshold).item() == pytest.approx(_official_low_density(lp, threshold),
                                                                      rel=1e-6, abs=1e-9)


def test_low_density_penalty_stable_at_huge_log_probs():
    loss = _assert_finite_grad(lambda lp: low_density_penalty(lp, 0.0), torch.tensor([HUGE, -HUGE, 1.0]))
    assert loss.item() == pytest.approx((HUGE + 1.0) / 2, rel=1e-6)


def test_low_density_penalty_known_value():
    assert low_density_penalty(torch.tensor([1.0, 3.0, -2.0]), 0.0).item() == pytest.approx(2.0)
    assert low_density_penalty(torch.tensor([-1.0, -3.0]), 0.0).item() == 0.0
