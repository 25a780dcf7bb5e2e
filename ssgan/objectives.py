"""The method's objectives: the discriminator's and the generator's losses of one iteration, built from the
equations of ``losses.py`` and one model's networks (Salimans et al. 2016, sec. 3, 5; Wei et al. 2018 for the
consistency term; Gulrajani et al. 2017 for the gradient penalty; Dai et al. 2017 for Bad GAN's terms).

Each objective is written for one model: networks called on batches (B, ...). ``engines.py`` runs them as
they are for one model and under ``torch.func.vmap`` for models stacked along a leading dimension
(``concurrent.py``); either way ``engines.update`` does the backward pass and the optimizer step. Nothing here
calls ``backward()`` or steps an optimizer (the gradient penalty's ``autograd.grad`` is part of its loss).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import losses
from .config import MethodConfig, resolve_device
from .layers import weights_once
from .optim import HistoricalAverage


def _forward_parts(model: nn.Module, parts: List[Tensor]) -> List[Tuple[Tensor, Tensor]]:
    """Run the discriminator on several batches. Without batch-dependent layers one concatenated pass
    gives the same distribution of outputs as separate passes (dropout and noise are per example)."""
    if getattr(model, "batch_dependent", False):
        return [model(x) for x in parts]
    logits, feats = model(torch.cat(parts))
    sizes = [len(x) for x in parts]
    return list(zip(logits.split(sizes), feats.split(sizes)))


def _consistency(disc: nn.Module, x_unl: Tensor, logits_unl: Tensor, feats_unl: Tensor, method: MethodConfig,
                 targets: Optional[Tensor]) -> Tensor:
    """CT between the unlabeled pass and a second pass under fresh dropout / noise (two_pass, CT_CIFAR.py), or
    each example's moving average of its earlier logits and features (temporal, CT_CIFAR-10_TE.py)."""
    if method.ct_mode == "temporal":
        other_logits, other_feats = targets.split([logits_unl.shape[1], feats_unl.shape[1]], dim=1)
    else:
        other_logits, other_feats = disc(x_unl)
    return losses.consistency_loss(logits_unl.float().softmax(1), other_logits.float().softmax(1), feats_unl,
                                   other_feats, method.ct_feat_weight, method.ct_margin)


def _gradient_penalty(disc: nn.Module, x_unl: Tensor, x_gen: Tensor) -> Tensor:
    """(||grad log Z(x_hat)|| - 1)^2 on interpolates of real and generated images (Gulrajani et al. 2017)."""
    eps = torch.rand(len(x_gen), *([1] * (x_gen.dim() - 1)), device=x_gen.device)  # (B, 1, 1, 1)
    n = min(len(x_unl), len(x_gen))
    x_hat = losses.interpolate(x_unl[:n], x_gen[:n], eps[:n]).requires_grad_(True)
    realness = torch.logsumexp(disc(x_hat)[0].float(), dim=1)  # log Z(x_hat), the logit of D(x_hat)
    (grad,) = torch.autograd.grad(realness.sum(), x_hat, create_graph=True)
    return losses.gradient_penalty(grad)


def history_penalty(history: HistoricalAverage, method: MethodConfig) -> Tensor:
    """The historical-averaging term of D's or G's loss (Salimans et al. 2016, sec. 3.3), weighted."""
    return method.historical_averaging * losses.historical_averaging_loss(history.params, history.means)


def discriminator_objective(disc: nn.Module, gen: nn.Module, x_lab: Tensor, y_lab: Tensor, x_unl: Tensor,
                            z: Tensor, *, method: MethodConfig, targets: Optional[Tensor] = None,
                            history: Optional[HistoricalAverage] = None, one_pass: bool = False,
                            ) -> Tuple[Tensor, Dict[str, Tensor], Tensor]:
    """L_D = L_sup + w (L_unl + L_fake + lambda CT) / 2 (+ the optional terms) and its parts, from one pass of D
    over the labeled, unlabeled and generated batches; and that unlabeled pass's logits and features
    (B, K + F), detached (what the temporal ensemble records). ``targets`` (B, K + F): the temporal
    ensemble's targets of x_unl (``method.ct_mode=temporal``). ``one_pass`` (``train.step=lean``): D's
    weight-normalised weights computed once for all its passes (CT's second pass, the gradient penalty's):
    the same values, gradients summed in another order (the last bits)."""
    with weights_once(disc) if one_pass else contextlib.nullcontext():
        return _discriminator_objective(disc, gen, x_lab, y_lab, x_unl, z, method, targets, history)


def _discriminator_objective(disc, gen, x_lab: Tensor, y_lab: Tensor, x_unl: Tensor, z: Tensor,
                             method: MethodConfig, targets: Optional[Tensor], history: Optional[HistoricalAverage]
                             ) -> Tuple[Tensor, Dict[str, Tensor], Tensor]:
    with torch.no_grad():
        x_gen = gen(z)  # (B, C, H, W)
    (logits_lab, _), (logits_unl, feats_unl), (logits_gen, _) = _forward_parts(disc, [x_lab, x_unl, x_gen])
    sup = losses.supervised_loss(logits_lab, y_lab)
    unl = losses.unlabeled_loss(logits_unl, method.label_smoothing)
    fake = losses.fake_loss(logits_gen)
    ct = torch.zeros((), device=x_lab.device)
    if method.ct_weight > 0:
        ct = _consistency(disc, x_unl, logits_unl, feats_unl, method, targets)
    loss = losses.discriminator_loss(sup, unl, fake, ct, method.unl_weight, method.ct_weight)
    if method.cond_entropy_weight > 0:  # Bad GAN (svhn_trainer.py:83, 93): outside the factor 1/2
        loss = loss + method.cond_entropy_weight * losses.conditional_entropy(logits_unl)
    if method.gradient_penalty > 0:
        loss = loss + method.gradient_penalty * _gradient_penalty(disc, x_unl, x_gen)
    if history is not None:
        loss = loss + history_penalty(history, method)
    with torch.no_grad():
        acc = (logits_lab.argmax(1) == y_lab).float().mean()
    outputs = torch.cat([logits_unl.float(), feats_unl.float()], dim=1).detach()  # (B, K + F)
    return loss, {"loss_d": loss.detach(), "loss_sup": sup.detach(), "loss_unl": unl.detach(),
                  "loss_fake": fake.detach(), "loss_ct": ct.detach(), "train_acc": acc}, outputs


def generator_objective(disc: nn.Module, gen: nn.Module, x_unl: Tensor, z: Tensor, *, method: MethodConfig,
                        encoder: Optional[nn.Module] = None, one_pass: bool = False) -> Tensor:
    """Feature matching of G(z) against a real batch, both through D in training mode (the official code);
    Bad GAN's generator entropy terms where their weights are set: the pull-away term on the generated
    features (svhn_trainer.py:116-124) and the encoder's Gaussian NLL of z (cifar_trainer.py:113-123).

    ``one_pass`` (``train.step=lean``): D's two passes, over the real and the generated batch, as one pass
    over both concatenated (``_forward_parts``; two passes where D is batch-dependent). The same distribution
    of features (dropout and noise are drawn per example), not the same random numbers as two passes."""
    x_gen = gen(z)  # (B, C, H, W)
    if one_pass and not getattr(disc, "batch_dependent", False):
        (_, feats_real), (_, feats_gen) = _forward_parts(disc, [x_unl, x_gen])
        feats_real = feats_real.detach()  # the target: no gradient through the real batch's rows
    else:
        with weights_once(disc):  # D is not trained here: its weights once, as constants, for both passes
            with torch.no_grad():
                _, feats_real = disc(x_unl)
            _, feats_gen = disc(x_gen)
    loss = losses.feature_matching_loss(feats_real, feats_gen, method.fm_norm)
    if method.pull_away_weight > 0:
        loss = loss + method.pull_away_weight * losses.pull_away_term(feats_gen)
    if method.vi_weight > 0:
        mu, log_sigma = encoder(x_gen)  # each (B, z_dim)
        loss = loss + method.vi_weight * losses.gaussian_nll(mu, log_sigma, z)
    return loss


def compiled(objective: Callable, train) -> Callable:
    """``objective`` (forward passes and losses; backward follows through AOT autograd) captured with
    ``torch.compile(backend=train.compile, mode=train.compile_mode)``, or itself with ``train.compile=off``:
    the plain objectives for one model, their vmapped form for stacked models (``concurrent.py``).

    On a CPU inductor's random numbers (dropout, Gaussian noise) are PyTorch's own (``fallback_random``):
    its generated C++ Philox loop made a compiled MNIST iteration 1.59x slower than eager code (120.5 against
    75.7 ms; with PyTorch's kernels 79.1 ms: benchmarks/paired_step_time.py, results/benchmarks.md); the
    numbers are then drawn as eager code draws them. On a GPU its fused
    Triton random numbers are kept (fewer kernels; the same distribution). Not with a ``train.compile_mode``
    (torch.compile takes a mode or options, not both)."""
    if train.compile == "off":
        return objective
    if train.compile_mode:  # torch.compile takes a mode or options, not both: the user's mode as it is
        return torch.compile(objective, backend=train.compile, mode=train.compile_mode)
    if train.compile == "inductor" and resolve_device(train.device).type == "cpu":
        return torch.compile(objective, backend="inductor", options={"fallback_random": True})
    return torch.compile(objective, backend=train.compile)
