"""Tests of ssgan/models.py, parametrised over every model YAML in configs/model x the image shapes it serves
(Salimans et al. 2016, sec. 5; Wei et al. 2018)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ssgan.config import DataConfig, ModelConfig
from ssgan.layers import WNLinear, data_dependent_init
from ssgan.models import VBN_REFERENCE, CNNGenerator, build_models


MODEL_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"
BATCH = 4

# (model YAML, image shape, scaling): the MLPs on 8x8 digits and 28x28 MNIST, the CNNs on 32x32 colour
CASES = [(name, [1, 8, 8], "unit") for name in ("mlp_digits", "mlp_mnist")]
CASES += [(name, [1, 28, 28], "unit") for name in ("mlp_digits", "mlp_mnist")]
CASES += [(path.stem, [3, 32, 32], "cifar") for path in sorted(MODEL_DIR.glob("cnn_*.yaml"))]


def load_model_config(name: str, **overrides) -> ModelConfig:
    node = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(MODEL_DIR / f"{name}.yaml"))
    return dataclasses.replace(OmegaConf.to_object(node), **overrides)


def data_config(image_shape: list[int], scaling: str = "unit") -> DataConfig:
    return DataConfig(image_shape=list(image_shape), n_classes=10, scaling=scaling)


def small_cnn(**overrides) -> ModelConfig:
    """A CNN with tiny widths, for the options tests."""
    return ModelConfig(arch="cnn", d_widths=[4, 6, 6, 5, 5], g_widths=[8, 6, 4], z_dim=7,
                       weight_init_std=0.05, out_init_std=0.1, **overrides)


def test_every_model_yaml_is_covered():
    # custom.yaml holds your import paths; tests/test_custom.py builds and trains it
    assert {path.stem for path in MODEL_DIR.glob("*.yaml")} - {"custom"} == {name for name, _, _ in CASES}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name, image_shape, scaling", CASES, ids=[f"{n}-{s[1]}" for n, s, _ in CASES])
def test_shapes_and_ranges(name, image_shape, scaling):
    cfg = load_model_config(name)
    data = data_config(image_shape, scaling)
    disc, gen = build_models(data, cfg)
    x = torch.rand(BATCH, *image_shape) * 2 - 1
    data_dependent_init(disc, x)
    z = gen.sample_z(BATCH)
    assert z.shape == (BATCH, cfg.z_dim) and z.min() >= 0 and z.max() < 1

    disc.eval()
    with torch.no_grad():
        logits, feats = disc(x)
    n_features = cfg.d_widths[-1] if cfg.arch == "mlp" else cfg.d_widths[4]
    assert logits.shape == (BATCH, data.n_classes)
    assert feats.shape == (BATCH, n_features) and disc.n_features == n_features
    assert torch.isfinite(logits).all() and torch.isfinite(feats).all()

    with torch.no_grad():
        x_gen = gen(z)
    assert x_gen.shape == (BATCH, *image_shape)
    if scaling == "unit":  # sigmoid
        assert x_gen.min() > 0 and x_gen.max() < 1
    else:  # tanh: symmetric range, so some outputs are negative
        assert x_gen.min() > -1 and x_gen.max() < 1 and x_gen.min() < 0


@pytest.mark.parametrize("name, image_shape", [("mlp_digits", [1, 8, 8]), ("cnn_svhn", [3, 32, 32])])
@pytest.mark.parametrize("scaling, activation", [("unit", torch.sigmoid), ("cifar", torch.tanh),
                                                 ("symmetric", torch.tanh)])
def test_output_activation_follows_scaling(name, image_shape, scaling, activation):
    _, gen = build_models(data_config(image_shape, scaling), load_model_config(name))
    assert gen.activation is activation


def test_mlp_features_are_read_before_the_noise():
    """The MLP's features are the last hidden ReLU output, before the noise that follows it (official
    code): nonnegative even in training mode, where the noise is active (the logits of two passes differ)."""
    cfg = load_model_config("mlp_digits")
    disc, _ = build_models(data_config([1, 8, 8]), cfg)
    disc.train()
    x = torch.rand(BATCH, 1, 8, 8)
    with torch.no_grad():
        (logits_a, feats_a), (logits_b, _) = disc(x), disc(x)
    assert feats_a.min() >= 0
    assert not torch.allclose(logits_a, logits_b)


def test_cnn_features_are_the_global_mean_pool():
    disc, _ = build_models(data_config([3, 32, 32], "cifar"), small_cnn())
    disc.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, feats = disc(x)
        torch.testing.assert_close(feats, disc.layers(x).mean(dim=(2, 3)))
        torch.testing.assert_close(logits, disc.out(feats))


def test_cifar10_discriminator_parameter_count():
    """conv3x3 96, 96, 96/2; 192, 192, 192/2; conv3x3 192; NiN 192, 192; dense 10. Hidden weight-norm
    scales are fixed (buffers), the output layer's scale is trained."""
    disc, _ = build_models(data_config([3, 32, 32], "cifar"), load_model_config("cnn_cifar10"))
    convs = [(3, 96, 3), (96, 96, 3), (96, 96, 3), (96, 192, 3), (192, 192, 3), (192, 192, 3),
             (192, 192, 3), (192, 192, 1), (192, 192, 1)]
    expected = sum(c_in * c_out * k * k + c_out for c_in, c_out, k in convs) + 192 * 10 + 10 + 10
    n_params = sum(p.numel() for p in disc.parameters())
    assert n_params == expected
    assert 1.3e6 < n_params < 1.5e6


def test_cnn_generator_batch_norm_of_the_dense_layer_is_per_unit():
    """Official code: batch norm of the 4x4x512 dense layer per unit, before the reshape."""
    gen = CNNGenerator((3, 32, 32), "cifar", small_cnn())
    assert gen.norm0.bias.shape == (8 * 4 * 4,)
    assert gen.norm1.bias.shape == (6,) and gen.norm2.bias.shape == (4,)


def test_cnn_generator_output_layer_initialised_to_target_std():
    cfg = small_cnn()
    gen = CNNGenerator((3, 32, 32), "cifar", cfg)
    z = gen.sample_z(16)
    data_dependent_init(gen, z)
    with torch.no_grad():
        pre = torch.atanh(gen(z).clamp(-0.999999, 0.999999))  # undo the tanh
    dims = (0, 2, 3)
    torch.testing.assert_close(pre.mean(dim=dims), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(pre.std(dim=dims, correction=0), torch.full((3,), cfg.out_init_std),
                               atol=1e-3, rtol=0)
    assert isinstance(gen.out.g, torch.nn.Parameter)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_spectral_norm_option_builds_and_runs(arch):
    if arch == "mlp":
        cfg, shape = load_model_config("mlp_digits", norm="spectral"), [1, 8, 8]
    else:
        cfg, shape = small_cnn(norm="spectral"), [3, 32, 32]
    disc, _ = build_models(data_config(shape, "cifar"), cfg)
    parametrized = [m for m in disc.modules() if torch.nn.utils.parametrize.is_parametrized(m)]
    assert parametrized and not any(isinstance(m, WNLinear) for m in disc.modules())
    x = torch.randn(BATCH, *shape)
    data_dependent_init(disc, x)
    logits, feats = disc(x)
    assert logits.shape == (BATCH, 10) and feats.shape == (BATCH, disc.n_features)
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in disc.parameters() if p.grad is not None)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_minibatch_discrimination_widens_the_output_layer(arch):
    if arch == "mlp":
        base, shape = load_model_config("mlp_digits"), [1, 8, 8]
    else:
        base, shape = small_cnn(), [3, 32, 32]
    mbd = dataclasses.replace(base, minibatch_discrimination=True, mbd_kernels=7, mbd_kernel_dim=3)
    plain_disc, _ = build_models(data_config(shape), base)
    disc, _ = build_models(data_config(shape), mbd)
    assert plain_disc.out.v.shape[1] == disc.n_features
    assert disc.out.v.shape[1] == disc.n_features + 7
    assert disc.batch_dependent and not plain_disc.batch_dependent
    x = torch.rand(BATCH, *shape)
    data_dependent_init(disc, x)
    disc.eval()
    with torch.no_grad():
        logits, feats = disc(x)
        # the logits of an example now depend on the rest of the batch
        assert not torch.allclose(disc(x[:2])[0], logits[:2])
    assert logits.shape == (BATCH, 10) and feats.shape == (BATCH, disc.n_features)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_virtual_batch_norm_output_independent_of_the_batch(arch):
    if arch == "mlp":
        base, shape = load_model_config("mlp_digits"), [1, 8, 8]
    else:
        base, shape = small_cnn(), [3, 32, 32]
    vbn = dataclasses.replace(base, virtual_batch_norm=True)
    _, gen = build_models(data_config(shape), vbn)
    _, plain = build_models(data_config(shape), base)
    assert gen.z_ref.shape == (VBN_REFERENCE, vbn.z_dim)
    z = gen.sample_z(5)
    other = torch.cat([z[:1], gen.sample_z(3)])  # same first z, different companions
    data_dependent_init(gen, z)
    data_dependent_init(plain, z)
    with torch.no_grad():
        out, out_other, out_alone = gen(z), gen(other), gen(z[:1])
        assert out.shape == (5, *shape)
        torch.testing.assert_close(out_other[0], out[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out_alone[0], out[0], atol=1e-5, rtol=1e-5)
        # without VBN the generator's batch norm makes each sample depend on the others
        assert not torch.allclose(plain(other)[0], plain(z)[0], atol=1e-4)


def test_glorot_init_of_the_mnist_generator():
    """Lasagne's GlorotUniform (gain 1): U(-a, a), a = sqrt(6 / (fan_in + fan_out)), std a / sqrt(3):
    0.058, 0.045, 0.040 for the MNIST generator's 100-500, 500-500 and 500-784 layers."""
    torch.manual_seed(0)
    _, gen = build_models(DataConfig(image_shape=[1, 28, 28]), ModelConfig(arch="mlp", g_widths=[500, 500],
                                                                          g_init="glorot"))
    weights = [layer.weight for layer in gen.hidden] + [gen.out.v]
    for weight, std in zip(weights, (0.0577, 0.0447, 0.0395)):
        fan_out, fan_in = weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert weight.abs().max() <= bound and weight.abs().max() > 0.99 * bound
        assert weight.std().item() == pytest.approx(std, rel=0.03)
    _, normal = build_models(DataConfig(image_shape=[1, 28, 28]), ModelConfig(arch="mlp", g_widths=[500, 500]))
    assert normal.hidden[0].weight.std().item() == pytest.approx(0.1, rel=0.03)  # N(0, weight_init_std)


SMALL_MLP = ["model.d_widths=[32,16]", "model.g_widths=[32]", "train.init_batch=20"]


@pytest.mark.parametrize("overrides, start", [(SMALL_MLP, "init"), (["dataset=mnist"] + SMALL_MLP, "zero"),
                                               (["dataset=cifar10", "method=ct_gan"], "zero"),
                                               (["dataset=svhn", "method=bad_gan"], "zero")])
def test_the_polyak_average_starts_where_the_recipe_says(overrides, start):
    """The official scripts start the average at zero (a <- 0, then a <- a + (1 - decay) (p - a)); the digits
    recipe (ours) starts it from the initialised weights. Buffers (fixed scales) are copies either way."""
    from ssgan.config import compose
    from ssgan.engines import polyak_average
    from ssgan.models import build_networks

    cfg = compose(overrides)
    assert cfg.train.ema_start == start
    torch.manual_seed(0)
    net = build_networks(cfg, torch.rand(20, *cfg.dataset.image_shape), torch.device("cpu"))
    avg, buffers = dict(net.disc_avg.named_parameters()), dict(net.disc_avg.named_buffers())
    starts = {name: torch.zeros_like(p) if start == "zero" else p.detach().clone()
              for name, p in net.disc.named_parameters()}
    for name, p in net.disc.named_parameters():
        assert torch.equal(avg[name], starts[name]), name
    for name, b in net.disc.named_buffers():
        assert torch.equal(buffers[name], b), name
    decay = cfg.train.ema_decay
    polyak_average(net.disc_avg, net.disc, decay)
    for name, p in net.disc.named_parameters():
        official = starts[name] + (1 - decay) * (p.detach() - starts[name])
        assert torch.allclose(avg[name], official, rtol=1e-6, atol=1e-12), name
