"""Tests of ssgan/layers.py: data-dependent initialisation of the weight-normalised layers (docs/method.md sec. 3,
6), Gaussian noise, minibatch discrimination and virtual batch norm (Salimans et al. 2016, sec. 3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssgan.layers import (GaussianNoise, GeneratorNorm, MinibatchDiscrimination, WNConv2d, WNConvTranspose2d,
                          WNLinear, data_dependent_init, gaussian_noise, init_mode, minibatch_features,
                          virtual_batch_norm)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _unit_stats(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit mean and biased std over the batch and any spatial dims. out: (B, units, ...)."""
    dims = [0] + list(range(2, out.dim()))
    return out.mean(dim=dims), out.std(dim=dims, correction=0)


def _layers_and_inputs():
    """(layer factory taking target_std and train_scale, input batch)."""
    return [
        (lambda **kw: WNLinear(10, 6, **kw), torch.randn(32, 10) * 3 + 1),
        (lambda **kw: WNConv2d(3, 5, 3, stride=2, padding=1, **kw), torch.randn(8, 3, 6, 6) * 2 - 1),
        (lambda **kw: WNConvTranspose2d(3, 4, 5, stride=2, padding=2, output_padding=1, **kw),
         torch.randn(6, 3, 4, 4) + 0.5),
    ]


LAYER_IDS = ["linear", "conv", "conv_transpose"]


@pytest.mark.parametrize("make, x", _layers_and_inputs(), ids=LAYER_IDS)
@pytest.mark.parametrize("target_std, train_scale", [(1.0, False), (0.1, True)], ids=["hidden", "output"])
def test_data_dependent_init_gives_mean_zero_and_target_std(make, x, target_std, train_scale):
    layer = make(target_std=target_std, train_scale=train_scale)
    before_mean, before_std = _unit_stats(layer(x).detach())
    assert not torch.allclose(before_std, torch.full_like(before_std, target_std), rtol=0.05)
    data_dependent_init(layer, x)
    with torch.no_grad():
        mean, std = _unit_stats(layer(x))  # the pre-activations: these layers have no nonlinearity
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5 * max(1, target_std), rtol=0)
    torch.testing.assert_close(std, torch.full_like(std, target_std), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("make, x", _layers_and_inputs(), ids=LAYER_IDS)
def test_init_mode_output_equals_the_initialised_layer(make, x):
    """The output seen by later layers during initialisation is the initialised layer's output."""
    layer = make(target_std=1.0, train_scale=False)
    with torch.no_grad(), init_mode(layer):
        during = layer(x)
    with torch.no_grad():
        after = layer(x)
    torch.testing.assert_close(during, after, atol=1e-5, rtol=1e-5)
    assert not layer.init_mode


@pytest.mark.parametrize("make, x", _layers_and_inputs(), ids=LAYER_IDS)
def test_hidden_scales_are_buffers_output_scales_are_parameters(make, x):
    hidden, output = make(target_std=1.0, train_scale=False), make(target_std=0.1, train_scale=True)
    assert "g" in dict(hidden.named_buffers()) and "g" not in dict(hidden.named_parameters())
    assert "g" in dict(output.named_parameters()) and "g" not in dict(output.named_buffers())
    assert {"v", "b"} <= set(dict(hidden.named_parameters()))
    # the fixed scale survives a state_dict round trip
    data_dependent_init(hidden, x)
    copy = make(target_std=1.0, train_scale=False)
    copy.load_state_dict(hidden.state_dict())
    torch.testing.assert_close(copy.g, hidden.g)


@pytest.mark.parametrize("make, x", _layers_and_inputs(), ids=LAYER_IDS)
def test_weight_has_norm_g_per_output_unit(make, x):
    layer = make(target_std=1.0, train_scale=False)
    data_dependent_init(layer, x)
    w = layer.weight().detach()
    unit_dim = 1 if isinstance(layer, WNConvTranspose2d) else 0
    norms = w.transpose(0, unit_dim).flatten(1).norm(dim=1)
    assert not torch.allclose(layer.g, torch.ones_like(layer.g))
    torch.testing.assert_close(norms, layer.g, atol=1e-6, rtol=1e-5)


def test_weight_transposed_conv_normalised_per_output_channel():
    """v: (in, out, k, k); the norm runs over in, k, k."""
    layer = WNConvTranspose2d(3, 4, 5)
    with torch.no_grad():
        layer.g.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    w = layer.weight().detach()
    torch.testing.assert_close(w.pow(2).sum(dim=(0, 2, 3)).sqrt(), layer.g)


def test_data_init_false_keeps_unit_scale():
    layer = WNLinear(10, 6, train_scale=True, data_init=False)
    data_dependent_init(layer, torch.randn(16, 10) * 5 + 3)
    torch.testing.assert_close(layer.g.detach(), torch.ones(6))
    torch.testing.assert_close(layer.b.detach(), torch.zeros(6))
    torch.testing.assert_close(layer.weight().detach().norm(dim=1), torch.ones(6))


def test_data_dependent_init_restores_mode_and_uses_training_mode():
    seen = []
    layer = torch.nn.Sequential(GaussianNoise(1.0), WNLinear(4, 3))
    layer[0].register_forward_hook(lambda m, i, o: seen.append(m.training))
    layer.eval()
    data_dependent_init(layer, torch.randn(8, 4))
    assert seen == [True]  # noise active during initialisation, as in the official code
    assert not layer.training


# -- Gaussian noise -----------------------------------------------------------------------------------

def test_gaussian_noise_identity_in_eval_and_noisy_in_training():
    x = torch.randn(2000, 5)
    torch.testing.assert_close(gaussian_noise(x, 0.5, training=False), x)
    torch.testing.assert_close(gaussian_noise(x, 0.0, training=True), x)
    noisy = gaussian_noise(x, 0.5, training=True)
    assert not torch.allclose(noisy, x)
    assert (noisy - x).std().item() == pytest.approx(0.5, rel=0.05)
    module = GaussianNoise(0.5)
    module.eval()
    torch.testing.assert_close(module(x), x)
    module.train()
    assert not torch.allclose(module(x), x)


# -- minibatch discrimination --------------------------------------------------------------------------

def test_minibatch_features_match_double_loop():
    m = torch.randn(5, 3, 4)  # (B, n_kernels, kernel_dim)
    expected = torch.zeros(5, 3)
    for i in range(5):
        for j in range(5):
            if j != i:
                expected[i] += torch.exp(-(m[i] - m[j]).abs().sum(dim=1))
    torch.testing.assert_close(minibatch_features(m), expected, atol=1e-6, rtol=1e-5)


def test_minibatch_features_single_example_is_zero_and_identical_examples_count():
    m = torch.randn(1, 3, 4)
    torch.testing.assert_close(minibatch_features(m), torch.zeros(1, 3))
    torch.testing.assert_close(minibatch_features(m.expand(4, 3, 4)), torch.full((4, 3), 3.0))


def test_minibatch_discrimination_appends_kernels():
    layer = MinibatchDiscrimination(6, n_kernels=7, kernel_dim=3)
    feats = torch.randn(4, 6)
    out = layer(feats)
    assert out.shape == (4, 6 + 7)
    torch.testing.assert_close(out[:, :6], feats)


# -- virtual batch norm and the generator's batch norm ---------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 4), (6, 4, 3, 3)], ids=["dense", "conv"])
def test_virtual_batch_norm_matches_per_example_computation(shape):
    """Each example normalised by the statistics of cat(ref, example), computed one example at a time."""
    x, ref = torch.randn(*shape) * 2 + 1, torch.randn(5, *shape[1:]) - 1
    dims = [0] + list(range(2, len(shape)))
    expected = []
    for i in range(len(x)):
        both = torch.cat([ref, x[i:i + 1]])  # (R + 1, C, ...)
        mean = both.mean(dim=dims, keepdim=True)
        var = both.var(dim=dims, unbiased=False, keepdim=True)
        expected.append((x[i:i + 1] - mean) / torch.sqrt(var + 1e-5))
    torch.testing.assert_close(virtual_batch_norm(x, ref), torch.cat(expected), atol=1e-5, rtol=1e-5)


def test_virtual_batch_norm_example_independent_of_others():
    x, ref = torch.randn(6, 4, 2, 2), torch.randn(5, 4, 2, 2)
    torch.testing.assert_close(virtual_batch_norm(x, ref)[:2], virtual_batch_norm(x[:2], ref))


@pytest.mark.parametrize("shape", [(8, 5), (8, 5, 3, 3)], ids=["dense", "conv"])
def test_generator_norm_uses_batch_statistics_in_eval_mode(shape):
    norm = GeneratorNorm(shape[1])
    with torch.no_grad():
        norm.bias.copy_(torch.arange(shape[1], dtype=torch.float32))
    norm.eval()
    x = torch.randn(*shape) * 3 + 2
    out = norm(x)
    mean, std = _unit_stats(out)
    torch.testing.assert_close(mean, norm.bias.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones(shape[1]), atol=1e-3, rtol=0)
    norm.train()
    torch.testing.assert_close(norm(x), out)
    assert "weight" not in dict(norm.named_parameters())  # no gain, as in the official code


def test_generator_norm_virtual_splits_reference_and_main():
    norm = GeneratorNorm(4, virtual=True, n_ref=5)
    ref, main = torch.randn(5, 4), torch.randn(3, 4)
    out = norm(torch.cat([ref, main]))
    torch.testing.assert_close(out[5:], virtual_batch_norm(main, ref))
    torch.testing.assert_close(out[:5], F.batch_norm(ref, None, None, training=True, eps=1e-5))


@pytest.mark.parametrize("make", [lambda: WNLinear(6, 4), lambda: WNConv2d(3, 4, 3, padding=1),
                                  lambda: WNConvTranspose2d(3, 4, 4, stride=2, padding=1)])
def test_weight_normalised_layers_stay_in_bf16_under_autocast(make):
    """The float32 bias is added in the product's precision: a bf16 product stays bf16 (no cast kernels back
    and forth per layer); float32 products are unchanged."""
    layer = make()
    x = torch.randn(2, 6) if isinstance(layer, WNLinear) else torch.randn(2, 3, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    out = layer(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, layer._apply_op(x, layer.weight()) + layer._unit_view(layer.b, out.dim()))


def test_weights_once_is_bit_identical_and_computes_each_weight_once(monkeypatch):
    """Equivalence kind: bit-identical. Inside ``weights_once`` a network not trained by the step (D in G's
    step: a no_grad pass, then a pass that carries gradients back to its input) gives the same outputs and
    the same input gradients, with w = g v / ||v|| computed once per layer instead of once per pass."""
    from ssgan.config import DataConfig, ModelConfig
    from ssgan.layers import _WeightNormBase, data_dependent_init, weight_norm_layers, weights_once
    from ssgan.models import build_models

    torch.manual_seed(0)
    disc, _ = build_models(DataConfig(image_shape=[1, 8, 8]), ModelConfig(d_widths=[32, 16], g_widths=[32], z_dim=8))
    data_dependent_init(disc, torch.rand(40, 1, 8, 8))
    disc.eval()  # no noise: both forms see the same passes
    x_real, x_gen = torch.rand(20, 1, 8, 8), torch.rand(20, 1, 8, 8)
    calls, weight = [], _WeightNormBase.weight
    monkeypatch.setattr(_WeightNormBase, "weight", lambda self: calls.append(self) or weight(self))

    def two_passes():
        x = x_gen.clone().requires_grad_(True)
        with torch.no_grad():
            _, feats_real = disc(x_real)
        _, feats_gen = disc(x)
        loss = (feats_real.mean(0) - feats_gen.mean(0)).pow(2).sum()
        return loss, torch.autograd.grad(loss, x)[0]

    loss, grad = two_passes()
    per_pass = len(calls)
    calls.clear()
    with weights_once(disc):
        loss_once, grad_once = two_passes()
    assert torch.equal(loss, loss_once) and torch.equal(grad, grad_once)
    n_layers = len(list(weight_norm_layers(disc)))
    assert per_pass == 2 * n_layers and len(calls) == n_layers
    assert all("_weight_cache" not in layer.__dict__ for layer in weight_norm_layers(disc))  # nothing kept


@pytest.mark.parametrize("kind", ["linear", "conv", "conv_transpose"])
def test_the_scale_after_the_product_is_the_same_layer_to_rounding(kind):
    """Equivalence kind of ``scale_after_product`` (``train.step=lean``): (x v^T) g/||v|| + b is the layer
    x w^T + b with w = g v/||v||: outputs and gradients agree to float32 rounding (last bits), and the
    layer never forms w."""
    from ssgan.layers import _WeightNormBase, scale_after_product

    torch.manual_seed(0)
    layer, x = {"linear": (WNLinear(6, 4, train_scale=True), torch.randn(5, 6)),
                "conv": (WNConv2d(3, 4, 3, padding=1, train_scale=True), torch.randn(2, 3, 5, 5)),
                "conv_transpose": (WNConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1,
                                                     train_scale=True), torch.randn(2, 3, 4, 4))}[kind]
    with torch.no_grad():
        layer.g.uniform_(0.5, 2.0)
        layer.b.normal_()

    def out_and_grads():
        layer.zero_grad()
        out = layer(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), [p.grad.clone() for p in layer.parameters()]

    plain, plain_grads = out_and_grads()
    scale_after_product(layer)
    if kind != "linear":  # dense layers only (a convolution's outputs outweigh its kernel)
        assert "scale_after" not in layer.__dict__
        layer.__dict__["scale_after"] = True  # the form itself is still the same layer
    formed, weight = [], _WeightNormBase.weight
    _WeightNormBase.weight = lambda self: formed.append(self) or weight(self)
    try:
        after, after_grads = out_and_grads()
    finally:
        _WeightNormBase.weight = weight
    torch.testing.assert_close(after, plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(after_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not formed
