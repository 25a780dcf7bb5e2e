"""Adam in the form of the official improved-gan code (METHOD.md sec. 6).

The official update divides by sqrt(v_hat + eps), the epsilon inside the square root (about 1e-4 outside
it for eps = 1e-8), where torch.optim.Adam divides by sqrt(v_hat) + eps. On the MNIST recipe this detail
alone separates the published 93 errors from over 1,000 (METHOD.md sec. 6), so it is the default of every
faithful recipe; ``train.optimizer=torch_adam`` selects torch's Adam instead.
"""

from __future__ import annotations

from typing import Iterable, Tuple

import torch
from torch import Tensor


class OfficialAdam(torch.optim.Optimizer):
    """p <- p - lr * m_hat / sqrt(v_hat + eps), with m_hat, v_hat the bias-corrected moments.

    Uses foreach kernels: one launch per operation over all parameters, not one per tensor.
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 3e-4, betas: Tuple[float, float] = (0.5, 0.999),
                 eps: float = 1e-8) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
            grads = [p.grad for p in params]
            m = [self.state[p]["exp_avg"] for p in params]
            v = [self.state[p]["exp_avg_sq"] for p in params]
            t = self.state[params[0]]["step"]  # every parameter is updated every step, as in the official code
            torch._foreach_lerp_(m, grads, 1 - beta1)  # m <- beta1 m + (1 - beta1) g
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)  # v <- beta2 v + (1 - beta2) g^2
            denom = torch._foreach_div(v, 1 - beta2 ** t)  # v_hat
            torch._foreach_add_(denom, group["eps"])
            torch._foreach_sqrt_(denom)  # sqrt(v_hat + eps)
            torch._foreach_addcdiv_(params, m, denom, value=-group["lr"] / (1 - beta1 ** t))
        return loss


def make_optimizer(params: Iterable[Tensor], kind: str, lr: float, betas: Tuple[float, float],
                   eps: float) -> torch.optim.Optimizer:
    """official_adam (the default) or torch_adam."""
    if kind == "official_adam":
        return OfficialAdam(params, lr=lr, betas=betas, eps=eps)
    if kind == "torch_adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)
    raise ValueError(f"unknown optimizer {kind!r}")
