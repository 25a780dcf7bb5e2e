"""Adam in the form of the official improved-gan code (docs/method.md sec. 6.1).

The official update divides by sqrt(v_hat + eps), the epsilon inside the square root (about 1e-4 outside
it for eps = 1e-8), where torch.optim.Adam divides by sqrt(v_hat) + eps. On the MNIST recipe this detail
alone separates the published 93 errors from over 1,000 (docs/method.md sec. 6.16), so it is the default of
every faithful recipe; ``train.optimizer=torch_adam`` selects torch's Adam instead.
"""

from __future__ import annotations

import math

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor


class OfficialAdam(torch.optim.Optimizer):
    """p <- p - lr * m_hat / sqrt(v_hat + eps), with m_hat, v_hat the bias-corrected moments.

    Uses foreach kernels: one launch per operation over all parameters, not one per tensor.

    ``capturable=True`` keeps the step count and the learning rate in tensors on the parameters' device and
    computes the bias corrections there, so that a step launches no host work and can be captured in a CUDA
    graph; the learning rate is then changed in place with ``set_lr`` (outside the graph). The two forms agree
    to float32 rounding (the capturable one computes lr / (1 - beta1^t) in float32 rather than in Python's
    float64).
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 3e-4, betas: Tuple[float, float] = (0.5, 0.999),
                 eps: float = 1e-8, capturable: bool = False) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, capturable=capturable))
        for group in self.param_groups:
            if capturable:
                device = group["params"][0].device
                # float64, as Python computes the plain form's corrections: 1 - 0.999 in float32 is off by 1e-5
                group["lr_t"] = torch.tensor(float(group["lr"]), dtype=torch.float64, device=device)
                group["step_t"] = torch.zeros((), dtype=torch.float64, device=device)

    def set_lr(self, lr: float) -> None:
        """Every group's learning rate; in place on the device for a capturable optimizer."""
        for group in self.param_groups:
            group["lr"] = lr
            if group.get("capturable"):
                group["lr_t"].fill_(lr)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                self._averages_of(group, params)  # a fused average still moves (average_into)
                continue
            for p in params:
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
            if group.get("capturable"):
                self._capturable_step(group, params)
            else:
                self._step(group, params)
        return loss

    def _step(self, group: dict, params: list) -> None:
        beta1, beta2 = group["betas"]
        for p in params:
            self.state[p]["step"] = int(self.state[p].get("step", 0)) + 1
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

    def compile_update(self, backend: str, mode: Optional[str] = None) -> None:
        """Run each step as ``official_adam_update`` compiled with ``torch.compile(backend=..., mode=...)``
        (inductor fuses the update of a tensor into one loop: one kernel per tensor group instead of 7 foreach
        operators). The optimizer takes its capturable form (step and lr as tensors, so that no step count
        recompiles); the update agrees with the plain form to float32 rounding, as the capturable one does."""
        for group in self.param_groups:
            if not group.get("capturable"):
                device = group["params"][0].device
                steps = [self.state[p].get("step", 0) for p in group["params"] if p in self.state]
                group["lr_t"] = torch.tensor(float(group["lr"]), dtype=torch.float64, device=device)
                group["step_t"] = torch.tensor(float(steps[0]) if steps else 0.0, dtype=torch.float64, device=device)
                group["capturable"] = True
        options = {"backend": backend, **({"mode": mode} if mode else {})}
        self._update = torch.compile(official_adam_update, **options)

    def average_into(self, averages: Sequence[Tensor], rate: Tensor) -> None:
        """Fuse the Polyak update into the compiled update (``compile_update`` first): right after each
        parameter's step, its average in ``averages`` (one per parameter, in the optimizer's order) moves
        a <- a + rate (p - a), in the same loop over the tensor (inductor: one kernel per optimizer for both).
        ``rate``: a 0-d tensor on the device (1 - decay, or the debiased average's rate: the caller fills it
        before each step). A parameter without a gradient is not stepped; its average is moved all the same."""
        if getattr(self, "_update", None) is None:
            raise RuntimeError("average_into needs the compiled update (compile_update first)")
        params = [p for group in self.param_groups for p in group["params"]]
        if len(params) != len(averages) or any(p.shape != a.shape for p, a in zip(params, averages)):
            raise ValueError("average_into: one average per parameter, of its shape")
        self._averages = dict(zip(params, averages))
        self._average_rate = rate

    def _averages_of(self, group: dict, params: list) -> Optional[List[Tensor]]:
        """The averages of ``params`` (those stepped), having first moved the averages of the group's
        parameters without a gradient; None without ``average_into``."""
        averages = getattr(self, "_averages", None)
        if averages is None:
            return None
        idle = [p for p in group["params"] if p.grad is None]
        if idle:
            torch._foreach_lerp_([averages[p] for p in idle], [p.detach() for p in idle], self._average_rate)
        return [averages[p] for p in params]

    def _capturable_step(self, group: dict, params: list) -> None:
        """The same update with the step count, the bias corrections and lr as device tensors."""
        beta1, beta2 = group["betas"]
        step = group["step_t"]
        step.add_(1)
        grads = [p.grad for p in params]
        m = [self.state[p]["exp_avg"] for p in params]
        v = [self.state[p]["exp_avg_sq"] for p in params]
        if getattr(self, "_update", None) is not None:
            averages = self._averages_of(group, params)
            self._update(params, grads, m, v, group["lr_t"], step, beta1, beta2, group["eps"], averages,
                         None if averages is None else self._average_rate)
            return
        torch._foreach_lerp_(m, grads, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
        dtype = params[0].dtype
        denom = torch._foreach_div(v, (1 - torch.pow(beta2, step)).to(dtype))  # v_hat; the correction 0-d
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_sqrt_(denom)
        update = torch._foreach_div(m, denom)
        torch._foreach_mul_(update, (group["lr_t"] / (1 - torch.pow(beta1, step))).to(dtype))  # lr m_hat / ..
        torch._foreach_sub_(params, update)

    def state_dict(self):
        """The plain form (an integer step per parameter), whichever form runs: checkpoints of both agree."""
        state = super().state_dict()
        for group, saved in zip(self.param_groups, state["param_groups"]):
            if group.get("capturable"):
                step = int(group["step_t"].item())
                for index in saved["params"]:
                    if index in state["state"]:  # a copy: torch's state_dict holds the live per-parameter dicts
                        state["state"][index] = {**state["state"][index], "step": step}
            saved.pop("lr_t", None)
            saved.pop("step_t", None)
        return state

    def load_state_dict(self, state_dict) -> None:
        """Load a state of either form into this optimizer's own form (torch keeps the saved groups' options,
        ``capturable`` among them: it is set back to what this optimizer is)."""
        capturable = [(g.get("lr_t"), g.get("step_t")) for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, (lr_t, step_t) in zip(self.param_groups, capturable):
            group["capturable"] = lr_t is not None
            if lr_t is None:
                group.pop("lr_t", None)
                group.pop("step_t", None)
                continue
            group["lr_t"], group["step_t"] = lr_t, step_t
            lr_t.fill_(group["lr"])
            steps = [self.state[p].get("step", 0) for p in group["params"] if p in self.state]
            step_t.fill_(float(steps[0]) if steps else 0.0)


def official_adam_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                         exp_avg_sqs: List[Tensor], lr: Tensor, step: Tensor, beta1: float, beta2: float,
                         eps: float, averages: Optional[List[Tensor]] = None, rate: Optional[Tensor] = None) -> None:
    """``OfficialAdam``'s capturable update, tensor by tensor (the form a compiler fuses: one loop per tensor
    reads p, g, m, v once and writes p, m, v once): the same operations in the same order as the foreach form.
    ``lr``, ``step``: 0-d float64 tensors (``step`` already counts this step). ``averages`` (one per
    parameter) and ``rate`` (0-d): the Polyak update a <- a + rate (p - a) of each updated parameter, in the
    same loop (``OfficialAdam.average_into``)."""
    dtype = params[0].dtype
    correction2 = (1 - torch.pow(beta2, step)).to(dtype)
    scale = (lr / (1 - torch.pow(beta1, step))).to(dtype)
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2)
        v.addcmul_(g, g, value=1 - beta2)
        p.sub_(m / (v / correction2 + eps).sqrt() * scale)
        if averages is not None:
            averages[i].lerp_(p, rate)


def make_optimizer(params: Iterable[Tensor], kind: str, lr: float, betas: Tuple[float, float], eps: float,
                   capturable: bool = False) -> torch.optim.Optimizer:
    """official_adam (the default) or torch_adam; ``capturable``: CUDA-graph-safe steps."""
    if kind == "official_adam":
        return OfficialAdam(params, lr=lr, betas=betas, eps=eps, capturable=capturable)
    if kind == "torch_adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, capturable=capturable)
    raise ValueError(f"unknown optimizer {kind!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's learning rate, in place where the optimizer keeps it on the device."""
    if isinstance(optimizer, OfficialAdam):
        optimizer.set_lr(lr)
        return
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


# ------------------------------------------------------------------------------------ averages of weights

@torch.no_grad()
def polyak_update(avg: Sequence[Tensor], current: Sequence[Tensor], decay: float,
                  rate: Optional[Tensor] = None) -> None:
    """avg <- decay * avg + (1 - decay) * current for every tensor at once (one foreach kernel): Polyak
    averaging of D, the classifier (Salimans et al. 2016, sec. 5), for one model or stacked models alike.
    ``rate``: a 0-d tensor replacing 1 - decay (the debiased average's rate of this step, ``debiased_rate``)."""
    torch._foreach_lerp_(list(avg), [p.detach() for p in current], 1.0 - decay if rate is None else rate)


def debiased_rate(decay: float, n: int) -> float:
    """The rate (1 - decay) / (1 - decay^n) of step n (from 1) that keeps an average equal to the zero-started
    one divided by 1 - decay^n: c_n = a_n / (1 - decay^n) solves c_n = c_{n-1} + rate (p_n - c_{n-1}), as Adam
    corrects its moments (Kingma and Ba 2015, sec. 3). Step 1 gives 1: the average starts at the weights."""
    return (1.0 - decay) / -math.expm1(n * math.log(decay)) if decay > 0 else 1.0


class HistoricalAverage:
    """Running mean of parameters over the steps so far (Salimans et al. 2016, sec. 3.3); the penalty that
    reads it is ``losses.historical_averaging_loss(average.params, average.means)``."""

    def __init__(self, params: Iterable[Tensor]) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.means = [p.detach().clone() for p in self.params]
        self.count = 1

    @torch.no_grad()
    def update(self) -> None:
        self.count += 1
        torch._foreach_lerp_(self.means, [p.detach() for p in self.params], 1.0 / self.count)

    def state_dict(self) -> Dict:
        return {"means": [m.clone() for m in self.means], "count": self.count}

    def load_state_dict(self, state: Dict) -> None:
        with torch.no_grad():
            for mean, saved in zip(self.means, state["means"]):
                mean.copy_(saved)
        self.count = int(state["count"])
