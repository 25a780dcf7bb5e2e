"""The method's objectives (objectives.py): each loss is the equations of losses.py applied to the right
passes, and the objective written for one model, vmapped over stacked models, is each model's objective."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import stack_module_state, vmap

from ssgan import losses
from ssgan.concurrent import _Bound
from ssgan.config import DataConfig, MethodConfig, ModelConfig
from ssgan.layers import data_dependent_init
from ssgan.models import build_models
from ssgan.objectives import discriminator_objective, generator_objective


def _models(seed=0):
    torch.manual_seed(seed)
    disc, gen = build_models(DataConfig(image_shape=[1, 8, 8]), ModelConfig(d_widths=[32, 16], g_widths=[32], z_dim=8))
    x = torch.rand(40, 1, 8, 8)
    data_dependent_init(disc, x)
    data_dependent_init(gen, gen.sample_z(40))
    return disc.eval(), gen, x  # eval: no noise, every pass deterministic


def test_the_discriminator_objective_is_its_equation_of_its_passes():
    disc, gen, x = _models()
    y, z = torch.arange(20) % 10, gen.sample_z(20)
    loss, stats, outputs = discriminator_objective(disc, gen, x[:20], y, x[20:], z, method=MethodConfig())
    logits_lab, _ = disc(x[:20])
    logits_unl, feats_unl = disc(x[20:])
    logits_gen, _ = disc(gen(z))
    sup, unl, fake = (losses.supervised_loss(logits_lab, y), losses.unlabeled_loss(logits_unl),
                      losses.fake_loss(logits_gen))
    expected = losses.discriminator_loss(sup, unl, fake, torch.zeros(()), 1.0, 0.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert stats["loss_sup"].item() == pytest.approx(sup.item(), rel=1e-6)
    assert torch.allclose(outputs, torch.cat([logits_unl, feats_unl], dim=1), atol=1e-6)
    assert not outputs.requires_grad


def test_the_generator_objective_is_feature_matching_of_its_passes():
    disc, gen, x = _models()
    z = gen.sample_z(20)
    loss = generator_objective(disc, gen, x[20:], z, method=MethodConfig(fm_norm=2))
    expected = losses.feature_matching_loss(disc(x[20:])[1], disc(gen(z))[1], 2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()  # the real batch's pass is a constant: only G (and D through x_gen) get gradients
    assert all(p.grad is not None for p in gen.parameters() if p.requires_grad)


def test_written_for_one_model_and_vmapped_it_is_each_model_s_objective():
    """The one step body's premise: vmap over two stacked models gives, per model, that model's objective
    (to float32 rounding: a batched product may sum in another order)."""
    (d0, g0, x), (d1, g1, _) = _models(0), _models(1)
    template_d, template_g = copy.deepcopy(d0), copy.deepcopy(g0)
    pd, bd = stack_module_state([d0, d1])
    pg, bg = stack_module_state([g0, g1])
    y, z = torch.arange(20) % 10, torch.stack([g0.sample_z(20), g1.sample_z(20)])
    method = MethodConfig(fm_norm=2)

    def d_loss(pd, bd, pg, bg, x_lab, x_unl, z):
        return discriminator_objective(_Bound(template_d, pd, bd), _Bound(template_g, pg, bg), x_lab, y, x_unl, z,
                                       method=method)[0]

    def g_loss(pd, bd, pg, bg, x_unl, z):
        return generator_objective(_Bound(template_d, pd, bd), _Bound(template_g, pg, bg), x_unl, z, method=method)

    xs_lab, xs_unl = torch.stack([x[:20], x[:20]]), torch.stack([x[20:], x[20:]])
    stacked_d = vmap(d_loss)(pd, bd, pg, bg, xs_lab, xs_unl, z)
    stacked_g = vmap(g_loss)(pd, bd, pg, bg, xs_unl, z)
    for s, (disc, gen) in enumerate([(d0, g0), (d1, g1)]):
        single_d = discriminator_objective(disc, gen, x[:20], y, x[20:], z[s], method=method)[0]
        single_g = generator_objective(disc, gen, x[20:], z[s], method=method)
        assert stacked_d[s].item() == pytest.approx(single_d.item(), rel=1e-5)
        assert stacked_g[s].item() == pytest.approx(single_g.item(), rel=1e-5)
    assert stacked_d[0].item() != pytest.approx(stacked_d[1].item(), rel=1e-3)  # two different models


def test_the_lean_generator_pass_is_the_faithful_one_without_noise_and_in_distribution_with_it():
    """Equivalence kind of ``train.step=lean``'s one D pass in G's step: with D's noise off, the loss and G's
    gradients equal the faithful two passes' to float32 rounding (a product over 2B rows may block its sums
    otherwise); with the noise on, the same distribution: over 300 draws, the two means agree within 4
    standard errors (and the losses are not the same numbers)."""
    disc, gen, x = _models()
    z = gen.sample_z(20)
    method = MethodConfig(fm_norm=2)

    def loss_and_grads(one_pass):
        gen.zero_grad()
        loss = generator_objective(disc, gen, x[20:], z, method=method, one_pass=one_pass)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in gen.parameters() if p.grad is not None]

    (faithful, g_faithful), (lean, g_lean) = loss_and_grads(False), loss_and_grads(True)
    assert torch.allclose(faithful, lean, rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g_faithful, g_lean))

    disc.train()  # Gaussian noise in D: each form draws its own numbers
    with torch.no_grad():
        draws = {one_pass: torch.stack([generator_objective(disc, gen, x[20:], z, method=method, one_pass=one_pass)
                                        for _ in range(300)]) for one_pass in (False, True)}
    a, b = draws[False], draws[True]
    standard_error = (a.var() / len(a) + b.var() / len(b)).sqrt()
    assert (a.mean() - b.mean()).abs() < 4 * standard_error
    assert not torch.equal(a, b)


def test_the_lean_discriminator_objective_computes_d_s_weights_once():
    """Equivalence kind of ``one_pass`` in D's objective (``train.step=lean``): with CT's second pass and the
    gradient penalty, D's weights are computed once for the three passes: the same loss bit for bit, the
    gradients to float32 rounding (summed into w before the weight norm's backward, not after)."""
    from ssgan.layers import _WeightNormBase

    disc, gen, x = _models()
    y, z = torch.arange(20) % 10, gen.sample_z(20)
    method = MethodConfig(ct_weight=1.0, gradient_penalty=1.0)

    def loss_and_grads(one_pass):
        disc.zero_grad()
        torch.manual_seed(1)  # the gradient penalty's interpolation weights
        loss = discriminator_objective(disc, gen, x[:20], y, x[20:], z, method=method, one_pass=one_pass)[0]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in disc.parameters() if p.grad is not None]

    (faithful, g_faithful), (lean, g_lean) = loss_and_grads(False), loss_and_grads(True)
    assert torch.equal(faithful, lean)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(g_faithful, g_lean))
    calls, weight = [], _WeightNormBase.weight
    _WeightNormBase.weight = lambda self: calls.append(self) or weight(self)
    try:
        discriminator_objective(disc, gen, x[:20], y, x[20:], z, method=method, one_pass=True)
    finally:
        _WeightNormBase.weight = weight
    n_disc_layers = sum(isinstance(m, _WeightNormBase) for m in disc.modules())
    assert sum(layer in set(disc.modules()) for layer in calls) == n_disc_layers
