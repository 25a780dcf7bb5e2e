"""The losses of the method, one function per equation (docs/method.md sec. 1, 2).

The discriminator outputs K logits l_1..l_K; the logit of the extra "generated" class is fixed at 0, so
with Z(x) = sum_k exp(l_k(x)), D(x) = p(real | x) = Z / (Z + 1) and log Z = LSE(l(x)) (Salimans et al.
2016, sec. 5). Every loss is computed in float32 with logsumexp / softplus, never exp followed by log.
Losses take tensors and numbers only; they never touch a network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def supervised_loss(logits: Tensor, y: Tensor) -> Tensor:
    """K-way cross-entropy of the labeled batch, the fake class excluded.

    logits: (B, K), y: (B,) class indices.
    """
    return F.cross_entropy(logits.float(), y)


def unlabeled_loss(logits: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """-E log D(x_unl) = E[softplus(LSE) - LSE] (Salimans et al. 2016, sec. 5).

    With one-sided label smoothing a (sec. 3.4) the real target is 1 - a:
    -E[(1 - a) log D(x) + a log(1 - D(x))], and log(1 - D) = -softplus(LSE).
    logits: (B, K) class logits of unlabeled real images.
    """
    lse = torch.logsumexp(logits.float(), dim=1)  # (B,)
    loss = F.softplus(lse) - lse
    if label_smoothing:
        loss = loss + label_smoothing * lse  # (1-a)(sp - lse) + a sp = sp - lse + a lse
    return loss.mean()


def fake_loss(logits: Tensor) -> Tensor:
    """-E log(1 - D(x_gen)) = E[softplus(LSE)], with the fake-class logit fixed at 0 (Salimans et al. 2016).

    logits: (B, K) class logits of generated images.
    """
    lse = torch.logsumexp(logits.float(), dim=1)  # (B,)
    return F.softplus(lse).mean()


def discriminator_loss(sup: Tensor, unl: Tensor, fake: Tensor, ct: Tensor | float = 0.0, w: float = 1.0,
                       ct_weight: float = 0.0) -> Tensor:
    """L_D = L_sup + w (L_unl + L_fake + ct_weight CT) / 2.

    The consistency term is added to the unlabeled part, so it shares the factor 1/2, as in the official
    CT-GAN code (Wei et al. 2018).
    """
    return sup + w * (unl + fake + ct_weight * ct) / 2


def feature_matching_loss(f_real: Tensor, f_fake: Tensor, p: int = 1) -> Tensor:
    """|| E f(x_unl) - E f(G(z)) || (Salimans et al. 2016, sec. 3.1).

    p = 1: mean absolute difference of the batch means (official CIFAR-10 / SVHN code);
    p = 2: mean squared difference (official MNIST code). f_real, f_fake: (B, F).
    """
    diff = f_real.float().mean(dim=0) - f_fake.float().mean(dim=0)  # (F,)
    return diff.abs().mean() if p == 1 else diff.pow(2).mean()


def consistency_loss(probs_a: Tensor, probs_b: Tensor, feats_a: Tensor, feats_b: Tensor,
                     feat_weight: float = 0.1, margin: float = 0.0) -> Tensor:
    """CT = E_x max(0, d(D(x'), D(x'')) + feat_weight d(D_(x'), D_(x'')) - M') (Wei et al. 2018, sec. 3).

    x' and x'' are two stochastic passes (dropout / noise) of the same real batch. As in the official
    semi-supervised code, d on the last layer is the mean over the classes of the squared difference of the
    softmax probabilities, d on D_ (the second-to-last layer) the mean squared difference of the features,
    both per example; the hinge is applied per example, then the batch mean is taken.
    probs_*: (B, K); feats_*: (B, F).
    """
    d_out = (probs_a.float() - probs_b.float()).pow(2).mean(dim=1)  # (B,)
    d_feat = (feats_a.float() - feats_b.float()).pow(2).mean(dim=1)  # (B,)
    return F.relu(d_out + feat_weight * d_feat - margin).mean()


def interpolate(x_real: Tensor, x_fake: Tensor, eps: Tensor) -> Tensor:
    """x_hat = eps x_real + (1 - eps) x_fake, the points between real and generated images where WGAN-GP
    (Gulrajani et al. 2017) penalises the gradient. x_real, x_fake: (B, ...); eps: (B, 1, ...) in [0, 1)."""
    return eps * x_real + (1 - eps) * x_fake


def gradient_penalty(grad: Tensor) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E (||grad_x D(x_hat)||_2 - 1)^2 on real/fake interpolates x_hat.

    grad: (B, ...) gradient of the critic's output with respect to x_hat.
    """
    norm = grad.float().flatten(1).norm(dim=1)  # (B,)
    return (norm - 1).pow(2).mean()


def historical_averaging_loss(params: list[Tensor], averages: list[Tensor]) -> Tensor:
    """Historical averaging (Salimans et al. 2016, sec. 3.3): ||theta - (1/t) sum_i theta_i||^2."""
    return sum(((p.float() - a.float()) ** 2).sum() for p, a in zip(params, averages))


# ------------------------------------------------------------- Bad GAN (Dai et al. 2017), off by default


def conditional_entropy(logits: Tensor) -> Tensor:
    """H = E_x [-sum_k p_k(x) log p_k(x)], p = softmax of the K class logits of unlabeled images: the
    conditional entropy Bad GAN adds to the D loss (ssl_bad_gan utils.py:31-34, svhn_trainer.py:83).
    Computed from log_softmax (the official form -sum p l + LSE(l) is the same number). logits: (B, K)."""
    logp = F.log_softmax(logits.float(), dim=1)  # (B, K)
    return -(logp.exp() * logp).sum(dim=1).mean()


def pull_away_term(feats: Tensor) -> Tensor:
    """PT = 1 / (N (N - 1)) sum_{i != j} (f_i . f_j / (|f_i| |f_j|))^2 over the generated batch's features:
    the generator's entropy surrogate (Zhao et al. 2017; ssl_bad_gan svhn_trainer.py:116-121). feats: (N, F).
    As in the official code, a zero feature vector is not guarded (it has no direction)."""
    f = feats.float()
    n = f.shape[0]
    unit = f / f.norm(p=2, dim=1, keepdim=True)  # (N, F)
    cosine = unit @ unit.t()  # (N, N)
    off_diagonal = cosine - torch.diag_embed(torch.diagonal(cosine))
    return off_diagonal.pow(2).sum() / (n * (n - 1))


def gaussian_nll(mu: Tensor, log_sigma: Tensor, z: Tensor) -> Tensor:
    """-log q(z | G(z)) up to a constant, q = N(mu, diag sigma^2) from the encoder: E[sum_j log sigma_j +
    sum_j ((z_j - mu_j) / (1e-8 + sigma_j))^2 / 2], the variational bound on the generator's entropy
    (ssl_bad_gan utils.py:7-10, cifar_trainer.py:113-115). mu, log_sigma, z: (B, z_dim)."""
    mu, log_sigma, z = mu.float(), log_sigma.float(), z.float()
    nll = log_sigma.sum(dim=1) + ((z - mu) / (1e-8 + log_sigma.exp())).pow(2).sum(dim=1) / 2
    return nll.mean()


def low_density_penalty(log_probs: Tensor, threshold: Tensor | float) -> Tensor:
    """sum_i max(0, log p(x_i) - eps) / #{i: log p(x_i) > eps}, 0 when no image is above eps: the penalty on
    generated images that a density model finds too likely (ssl_bad_gan mnist_trainer.py:129-134).
    The count is clamped at 1 instead of branching on it (the sum is 0 then), so no value leaves the
    device. log_probs: (N,) log-likelihoods of generated images; threshold: eps."""
    excess = F.relu(log_probs.float() - threshold)  # (N,)
    return excess.sum() / (excess > 0).sum().clamp(min=1)
