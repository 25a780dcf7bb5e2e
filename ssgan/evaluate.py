"""Evaluation: class probabilities of the discriminator, error rates, ensembles over seeds and the
Inception Score (METHOD.md sec. 1, 5).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn


@torch.no_grad()
def predict_proba(disc: nn.Module, x: np.ndarray | Tensor, batch_size: int = 1000) -> np.ndarray:
    """p(y = k | x, real) = softmax(l(x))_k over the K real classes, deterministic (no dropout or noise).

    x: (N, C, H, W) scaled images. Returns (N, K) float64 rows that sum to 1.
    """
    was_training = disc.training
    disc.eval()
    device = next(disc.parameters()).device
    x = torch.as_tensor(x)
    out = []
    for start in range(0, len(x), batch_size):
        logits, _ = disc(x[start:start + batch_size].to(device, torch.float32))
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    disc.train(was_training)
    if not out:
        return np.zeros((0, 0))
    return torch.cat(out).double().numpy()


def error_rate(probs: np.ndarray, y: np.ndarray) -> float:
    """Test error in percent of the argmax prediction."""
    return float(100.0 * np.mean(np.argmax(probs, axis=1) != np.asarray(y)))


def ensemble_proba(probs_per_model: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble's class probabilities: the mean of the models' probabilities (not of their votes);
    its prediction is the argmax of this mean (METHOD.md sec. 5). (M, N, K) -> (N, K)."""
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
