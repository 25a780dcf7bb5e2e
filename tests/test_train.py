"""Training loop: the schedule, Polyak averaging, one D and one G step, the consistency term in use, and
two CPU iterations of fit on tiny data."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from ssgan import losses
from ssgan.config import DataConfig, MethodConfig, ModelConfig, TrainConfig
from ssgan.engines import discriminator_step, generator_step, polyak_average
from ssgan.layers import data_dependent_init
from ssgan.models import build_models
from ssgan.optim import OfficialAdam
from ssgan.optim import polyak_update
from ssgan.train import fit, lr_at


def test_lr_schedule_constant_then_linear_to_zero():
    # CIFAR-10: lr * min(3 - epoch / 400, 1) over 1200 epochs.
    for epoch in (0, 400, 799, 800, 1000, 1199):
        assert lr_at(epoch, 3e-4, 800, 1200) == pytest.approx(3e-4 * min(3 - epoch / 400, 1.0))
    assert lr_at(299, 0.003, None, 300) == 0.003
    assert lr_at(5, 3e-4, 800, 10) == 3e-4  # runs shorter than the decay start keep the constant lr


def test_polyak_update_moves_towards_the_model():
    avg, model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = avg.weight.detach().clone()
    polyak_update(avg.parameters(), model.parameters(), decay=0.9)
    assert torch.allclose(avg.weight, 0.9 * before + 0.1 * model.weight.detach())


def _tiny_models(seed=0, **model_kwargs):
    torch.manual_seed(seed)
    data_cfg = DataConfig(image_shape=[1, 8, 8])
    disc, gen = build_models(data_cfg, ModelConfig(d_widths=[32, 16], g_widths=[32], z_dim=8, **model_kwargs))
    x = torch.rand(40, 1, 8, 8)
    data_dependent_init(disc, x)
    data_dependent_init(gen, gen.sample_z(40))
    return disc, gen, x


def test_consistency_term_zero_without_noise_and_positive_with_it():
    disc, _, x = _tiny_models()
    disc.eval()  # noise off: the two passes agree
    (la, fa), (lb, fb) = disc(x), disc(x)
    assert losses.consistency_loss(la.softmax(1), lb.softmax(1), fa, fb).item() == 0.0
    disc.train()  # Gaussian noise on: the two passes disagree
    (la, fa), (lb, fb) = disc(x), disc(x)
    assert losses.consistency_loss(la.softmax(1), lb.softmax(1), fa, fb).item() > 0.0


@pytest.mark.parametrize("options", [
    {},
    {"ct_weight": 1.0},
    {"label_smoothing": 0.1},
    {"gradient_penalty": 1.0},
])
def test_discriminator_step_updates_only_d(options):
    disc, gen, x = _tiny_models()
    opt = OfficialAdam(disc.parameters(), lr=1e-3)
    d_before = copy.deepcopy(disc.state_dict())
    g_before = copy.deepcopy(gen.state_dict())
    y = torch.arange(20) % 10
    stats, _ = discriminator_step(disc, gen, opt, x[:20], y, x[20:], gen.sample_z(20), method=MethodConfig(**options),
                                  train=TrainConfig())
    assert all(torch.isfinite(v) for v in stats.values())
    if options.get("ct_weight"):
        assert stats["loss_ct"] > 0
    assert any(not torch.equal(d_before[k], v) for k, v in disc.state_dict().items())
    assert all(torch.equal(g_before[k], v) for k, v in gen.state_dict().items())


def test_generator_step_updates_only_g_and_leaves_d_trainable():
    disc, gen, x = _tiny_models()
    opt = OfficialAdam(gen.parameters(), lr=1e-3)
    d_before = copy.deepcopy(disc.state_dict())
    g_before = copy.deepcopy(gen.state_dict())
    loss = generator_step(disc, gen, opt, x[:20], gen.sample_z(20), method=MethodConfig(fm_norm=1), train=TrainConfig())
    assert torch.isfinite(loss) and loss > 0
    assert any(not torch.equal(g_before[k], v) for k, v in gen.state_dict().items())
    assert all(torch.equal(d_before[k], v) for k, v in disc.state_dict().items())
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.requires_grad for p in disc.parameters())


def test_minibatch_discrimination_step_runs():
    disc, gen, x = _tiny_models(minibatch_discrimination=True, mbd_kernels=4, mbd_kernel_dim=3)
    opt = OfficialAdam(disc.parameters(), lr=1e-3)
    stats, _ = discriminator_step(disc, gen, opt, x[:20], torch.arange(20) % 10, x[20:], gen.sample_z(20),
                               method=MethodConfig(), train=TrainConfig())
    assert torch.isfinite(stats["loss_d"])


def test_fit_two_iterations_changes_parameters_and_average(tiny_config, tmp_path, monkeypatch):
    import copy

    from ssgan import train as train_module

    built = []

    def build_and_keep(*args, **kwargs):  # the averaged discriminator as built, before any iteration
        networks = build_networks(*args, **kwargs)
        built.append(copy.deepcopy(networks.disc_avg))
        return networks

    build_networks = train_module.build_networks
    monkeypatch.setattr(train_module, "build_networks", build_and_keep)
    result = fit(tiny_config, run_dir=tmp_path / "run")
    assert math.isfinite(result.test_error) and 0 <= result.test_error <= 100
    record = result.history[-1]
    assert all(math.isfinite(record[k]) for k in ("loss_sup", "loss_unl", "loss_fake", "loss_g"))
    # The averaged discriminator moved away from the initial weights, and differs from the trained one.
    moved = [not torch.equal(a, b) for a, b in zip(result.discriminator.state_dict().values(),
                                                   built[0].state_dict().values())]
    assert any(moved)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"checkpoint.pt", "metrics.jsonl", "result.json"} <= files
    assert len(result.labeled_indices) == 20


def test_fit_is_reproducible_and_seed_dependent(tiny_config):
    a, b = fit(tiny_config), fit(tiny_config)
    assert np.array_equal(a.labeled_indices, b.labeled_indices)
    for pa, pb in zip(a.discriminator.parameters(), b.discriminator.parameters()):
        assert torch.equal(pa, pb)
    other = fit(replace(tiny_config, seed=1))
    assert not np.array_equal(a.labeled_indices, other.labeled_indices)


def test_fit_with_every_option(tiny_config):
    cfg = copy.deepcopy(tiny_config)
    cfg.method = MethodConfig(fm_norm=1, ct_weight=1.0, label_smoothing=0.1, historical_averaging=0.01,
                              gradient_penalty=1.0)
    cfg.model.virtual_batch_norm = True
    cfg.train.lr_d, cfg.train.lr_g = 1e-3, 2e-3
    cfg.train.optimizer = "torch_adam"
    assert math.isfinite(fit(cfg).test_error)
    cfg.model = ModelConfig(d_widths=[32, 16], g_widths=[32], z_dim=8, norm="spectral")
    assert math.isfinite(fit(cfg).test_error)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_step_agrees_with_the_float32_step(channels_last):
    """The fast path (bf16 autocast, channels_last) against a plain float32 eager step on the same inputs
    and weights: losses within 3 % and the same update direction (cosine > 0.95)."""
    torch.manual_seed(0)
    data_cfg = DataConfig(image_shape=[3, 16, 16], scaling="cifar")
    model_cfg = ModelConfig(arch="cnn", d_widths=[8, 16, 16, 16, 16], g_widths=[16, 8, 8], z_dim=8,
                            input_dropout=0.0, hidden_dropout=0.0, weight_init_std=0.05, out_init_std=0.1)
    disc, gen = build_models(data_cfg, model_cfg)
    x = torch.rand(40, 3, 16, 16) * 2 - 1
    data_dependent_init(disc, x)
    data_dependent_init(gen, gen.sample_z(40))
    y, z = torch.arange(20) % 10, gen.sample_z(20)
    results = []
    for amp in (None, torch.bfloat16):
        train = TrainConfig(precision="bf16" if amp else "fp32")  # autocast's dtype, AMP_DTYPES[train.precision]
        d, g = copy.deepcopy(disc), copy.deepcopy(gen)
        inputs = x.contiguous(memory_format=torch.channels_last) if channels_last and amp else x
        if channels_last and amp:
            d, g = d.to(memory_format=torch.channels_last), g.to(memory_format=torch.channels_last)
        before = [p.detach().clone() for p in d.parameters()]
        stats, _ = discriminator_step(d, g, torch.optim.SGD(d.parameters(), lr=0.1), inputs[:20], y, inputs[20:], z,
                                   method=MethodConfig(ct_weight=1.0), train=train)
        loss_g = generator_step(d, g, torch.optim.SGD(g.parameters(), lr=0.1), inputs[20:], z,
                                method=MethodConfig(fm_norm=1), train=train)
        update = torch.cat([(p.detach() - b).flatten() for p, b in zip(d.parameters(), before)])
        results.append((stats, loss_g, update))
    (s32, g32, u32), (s16, g16, u16) = results
    for key in ("loss_sup", "loss_unl", "loss_fake"):
        assert s16[key].item() == pytest.approx(s32[key].item(), rel=3e-2)
    assert g16.item() == pytest.approx(g32.item(), rel=5e-2, abs=1e-3)
    assert torch.nn.functional.cosine_similarity(u32, u16, dim=0) > 0.95


def test_host_placement_gives_the_same_run_as_device_placement(tiny_config):
    """Batches from (pinned) host memory, copied one ahead, are the batches of the on-device path."""
    on_device = fit(tiny_config)
    on_host = fit(replace(tiny_config, train=replace(tiny_config.train, data_placement="host")))
    for a, b in zip(on_device.discriminator.state_dict().values(), on_host.discriminator.state_dict().values()):
        assert torch.equal(a, b)


def test_tensorboard_logging_writes_event_files(tiny_config, tmp_path):
    pytest.importorskip("tensorboard")  # the `tensorboard` extra (dev installs it)
    cfg = replace(tiny_config, train=replace(tiny_config.train, tensorboard=True, epochs=2))
    fit(cfg, run_dir=tmp_path / "run")
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


@pytest.mark.parametrize("backend, ema_start", [("eager", "init"), ("aot_eager", "init"), ("eager", "debiased")])
def test_compiled_losses_give_the_same_run(tiny_config, backend, ema_start):
    """train.compile captures the loss computations with torch.compile, and the optimizers' update with D's
    Polyak update fused into it; the captured graphs (here with backends that skip code generation, to stay
    fast on the CPU) train as the eager code does, the average too (with the debiased average's changing rate).
    With the in-network noise off: AOT autograd draws random numbers in its own order."""
    cfg = replace(tiny_config, model=replace(tiny_config.model, input_noise=0.0, hidden_noise=0.0),
                  train=replace(tiny_config.train, ema_start=ema_start))
    eager = fit(cfg)
    compiled = fit(replace(cfg, train=replace(cfg.train, compile=backend)))
    torch._dynamo.reset()
    for a, b in zip(eager.discriminator.state_dict().values(), compiled.discriminator.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------- the official init batches, TF32, the temporal ensemble

def _digits_data():
    from ssgan.data import load_data

    return load_data(DataConfig(labels=20))


@pytest.mark.parametrize("source", ["pool", "permuted", "labeled"])
def test_the_init_batch_of_each_source(tiny_config, source):
    from ssgan.data import balanced_labeled_subset
    from ssgan.models import init_images
    from ssgan.train import start_member

    data = _digits_data()
    cfg = replace(tiny_config, train=replace(tiny_config.train, init_source=source, init_batch=30))
    x_all = torch.from_numpy(data.x_unlabeled)
    member, _ = start_member(cfg, data, x_all, torch.device("cpu"), None)
    x_init = init_images(cfg, x_all, len(data.y_train), member.labeled_indices, member.batches)
    if source == "pool":  # ours: 30 images of the pool drawn with RandomState([seed, 2])
        rows = np.random.RandomState([0, 2]).permutation(len(x_all))[:30]
    elif source == "permuted":  # MNIST: the first of the permutation that picks the labeled subset
        rows = np.random.RandomState(0).permutation(len(data.y_train))[:30]
        # ... whose first images of each class are the labeled subset
        lab = balanced_labeled_subset(data.y_train, 20, 10, 0)
        assert set(lab[data.y_train[lab] == data.y_train[rows[0]]]) >= {rows[0]}
    else:  # CIFAR-10 / SVHN: the first of epoch 0's labeled stream, which epoch 0 then trains on
        assert member.batches is not None  # drawn at the start, kept for the first epoch
        rows = member.labeled_indices[member.batches[0].reshape(-1)[:30]]
        assert set(rows) <= set(member.labeled_indices)
    assert torch.equal(x_init, x_all[torch.from_numpy(rows)])


def test_the_init_batch_is_reflect_padded_for_ct_gan(tiny_config):
    from ssgan.models import init_images

    x_all = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    cfg = replace(tiny_config, train=replace(tiny_config.train, init_source="pool", init_batch=2, init_pad=2))
    x_init = init_images(cfg, x_all, 2, np.arange(2), None)
    assert x_init.shape == (2, 1, 12, 12)  # 36x36 from 32x32 in CT_CIFAR.py
    first = x_all[int(np.random.RandomState([0, 2]).permutation(2)[0]), 0]
    assert torch.equal(x_init[0, 0, 2:-2, 2:-2], first) and torch.equal(x_init[0, 0, 2:-2, 0], first[:, 2])


def test_tf32_is_off_in_float32_training_and_on_when_asked(tiny_config, monkeypatch):
    from ssgan import train

    seen = []
    original = train.SingleEngine.step

    def recording_step(self, *args):
        # both APIs: the legacy switches and the per-operation flags (cuDNN's "none" inherits: not TF32)
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                     torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision == "tf32"))
        return original(self, *args)

    monkeypatch.setattr(train.SingleEngine, "step", recording_step)
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    fit(tiny_config)
    fit(replace(tiny_config, train=replace(tiny_config.train, tf32=True)))
    assert seen[0] == (False, False, "ieee", False) and seen[-1] == (True, True, "tf32", True)
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before


def test_the_temporal_consistency_term_uses_one_pass_and_the_targets():
    from ssgan.objectives import discriminator_objective

    disc, gen, x = _tiny_models()
    method = MethodConfig(ct_weight=1.0, ct_feat_weight=0.1, ct_mode="temporal")
    targets = torch.randn(20, 10 + 16)
    calls = []
    disc.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    torch.manual_seed(3)
    loss, stats, outputs = discriminator_objective(disc, gen, x[:20], torch.arange(20) % 10, x[20:], gen.sample_z(20),
                                                   method=method, targets=targets)
    assert calls == [60]  # labeled, unlabeled and generated in one pass; no second unlabeled pass
    logits_unl, feats_unl = outputs.split([10, 16], dim=1)
    expected = losses.consistency_loss(logits_unl.softmax(1), targets[:, :10].softmax(1), feats_unl, targets[:, 10:],
                                       0.1, 0.0)
    torch.testing.assert_close(stats["loss_ct"], expected)


def test_a_temporal_ensemble_run_resumes_exactly(tmp_path, monkeypatch):
    """The per-example targets are in the checkpoint: an interrupted ct_gan_te run continues exactly."""
    import os
    import signal

    from ssgan import train
    from ssgan.cli import main
    from ssgan.checkpoint import load_checkpoint
    from tests.conftest import TINY_OVERRIDES

    overrides = [o for o in TINY_OVERRIDES if not o.startswith(("train.epochs", "train.iters_per_epoch"))] + [
        "method=ct_gan_te", "train.epochs=3", "train.iters_per_epoch=5", "train.deterministic=true"]
    assert main(["fit", "--run-dir", str(tmp_path / "whole"), *overrides]) == 0
    calls, original = {"n": 0}, train.SingleEngine.step

    def interrupting_step(self, *args):
        calls["n"] += 1
        if calls["n"] == 8:  # epoch 2, iteration 3: the targets hold epoch 1's values
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args)

    monkeypatch.setattr(train.SingleEngine, "step", interrupting_step)
    assert main(["fit", "--run-dir", str(tmp_path / "cut"), *overrides]) == 130
    monkeypatch.undo()
    payload = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (payload["epoch"], payload["iteration"]) == (1, 3) and payload["temporal_ensemble"]["ensemble"].abs().sum() > 0
    assert main(["fit", "--resume", str(tmp_path / "cut")]) == 0
    a, b = load_checkpoint(tmp_path / "whole" / "checkpoint.pt"), load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for part in ("discriminator", "discriminator_avg", "generator"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)
    assert torch.equal(a["temporal_ensemble"]["ensemble"], b["temporal_ensemble"]["ensemble"])


def test_each_epoch_is_a_debug_record_of_the_ssgan_train_logger(tiny_config, caplog):
    import logging

    with caplog.at_level(logging.DEBUG, logger="ssgan.train"):
        fit(replace(tiny_config, train=replace(tiny_config.train, epochs=2)))
    records = [r for r in caplog.records if r.name == "ssgan.train"]
    assert [r.getMessage().split(":")[1].strip() for r in records] == ["epoch 1 of 2", "epoch 2 of 2"]
    assert "test_error=" in records[-1].getMessage()


def test_the_restructured_iteration_equals_a_plain_loop_of_the_steps(tiny_config):
    """fit's loop against the steps written out by hand: index, z, discriminator_step, generator_step,
    polyak_average (noise off)."""
    from ssgan.data import epoch_order
    from ssgan.models import sample_z
    from ssgan.train import start_member

    cfg = replace(tiny_config, model=replace(tiny_config.model, input_noise=0.0, hidden_noise=0.0),
                  train=replace(tiny_config.train, iters_per_epoch=4))
    result = fit(cfg)

    data = _digits_data()
    x_all = torch.from_numpy(data.x_unlabeled)
    member, net = start_member(cfg, data, x_all, torch.device("cpu"), None)
    t = cfg.train
    assert member.batches is None  # the pool init draws no order: epoch 0's comes next, as the frame draws it
    lab, unl, fm = epoch_order(member.order_rng, len(member.labeled_indices), len(x_all), 4, t.batch_size)
    rows = torch.from_numpy(member.labeled_indices)
    y_all = torch.from_numpy(data.y_train)
    for it in range(4):
        lab_rows = rows[torch.from_numpy(lab[it])]
        z_d, z_g = (sample_z(t.batch_size, cfg.model.z_dim, "cpu", member.z_rng) for _ in range(2))
        discriminator_step(net.disc, net.gen, net.opt_d, x_all[lab_rows], y_all[lab_rows],
                           x_all[torch.from_numpy(unl[it])], z_d, method=cfg.method, train=t)
        generator_step(net.disc, net.gen, net.opt_g, x_all[torch.from_numpy(fm[it])], z_g, method=cfg.method, train=t)
        polyak_average(net.disc_avg, net.disc, t.ema_decay)
    for a, b in zip(result.discriminator.state_dict().values(), net.disc_avg.state_dict().values()):
        assert torch.equal(a, b)


def test_cuda_graph_where_it_cannot_capture(tiny_config):
    from ssgan.config import ConfigError
    from ssgan.accelerate import use_cuda_graph

    on = replace(tiny_config, train=replace(tiny_config.train, cuda_graph="on"))
    with pytest.raises(ConfigError, match=r"cannot capture with the device \(cpu\)"):
        fit(on)
    auto = replace(tiny_config, train=replace(tiny_config.train, cuda_graph="auto"))
    assert not use_cuda_graph(auto, torch.device("cpu"))  # auto: eager here
    assert use_cuda_graph(auto, torch.device("cuda"))  # (a decision only: nothing runs on CUDA here)
    blocked = replace(auto, method=replace(auto.method, historical_averaging=0.1))
    assert not use_cuda_graph(blocked, torch.device("cuda"))
    with pytest.raises(ConfigError, match="method.historical_averaging"):
        use_cuda_graph(replace(blocked, train=replace(blocked.train, cuda_graph="on")), torch.device("cuda"))


def test_the_capture_decision_follows_where_the_images_are(tiny_config):
    """auto placement may keep the images in host memory: then nothing is captured (auto) or one line (on)."""
    from ssgan.config import ConfigError
    from ssgan.accelerate import decide_capture

    gpu = torch.device("cuda", 0)  # a decision only: nothing runs on CUDA here
    auto = replace(tiny_config, train=replace(tiny_config.train, cuda_graph="auto"))
    on_host = torch.zeros(2, 1, 8, 8)
    assert not decide_capture(auto, gpu, on_host)
    with pytest.raises(ConfigError, match="images in host memory"):
        decide_capture(replace(auto, train=replace(auto.train, cuda_graph="on")), gpu, on_host)
    for blocker in (dict(train=replace(auto.train, optimizer="torch_adam")),
                    dict(model=replace(auto.model, arch="custom"))):
        assert not decide_capture(replace(auto, **blocker), torch.device("cpu"), on_host)
        from ssgan.accelerate import use_cuda_graph

        assert not use_cuda_graph(replace(auto, **blocker), gpu)


def test_networks_of_ones_own_are_never_captured_by_auto(tiny_config, monkeypatch):
    """train.cuda_graph defaults to auto: the user's modules (the estimator's ``discriminator=``, which leave
    model.arch as it is) may wait for the host mid-step, so auto leaves them eager and on is one line."""
    from ssgan import train as train_module
    from ssgan.accelerate import decide_capture, use_cuda_graph
    from ssgan.config import ConfigError
    from tests.custom_nets import SmallCNN, SmallGenerator

    gpu = torch.device("cuda", 0)  # a decision only: nothing runs on CUDA here
    auto = replace(tiny_config, train=replace(tiny_config.train, cuda_graph="auto"))
    assert use_cuda_graph(auto, gpu) and not use_cuda_graph(auto, gpu, own_networks=True)
    with pytest.raises(ConfigError, match="your own networks"):
        use_cuda_graph(replace(auto, train=replace(auto.train, cuda_graph="on")), gpu, own_networks=True)
    seen = []
    monkeypatch.setattr(train_module, "decide_capture",
                        lambda *a, **kw: seen.append(kw.get("own_networks")) or decide_capture(*a, **kw))
    fit(auto, modules=(SmallCNN((1, 8, 8), 10, width=8), SmallGenerator((1, 8, 8), auto.model.z_dim)))
    fit(auto)
    assert seen == [True, False]


# ------------------------------------------------------------------ CUDA-only paths, checked on the CPU
# No GPU runs in CI. What only a GPU can show (that cuBLAS accepts the workspace setting, that cuDNN really
# computes in TF32 or not, that a pinned buffer is not rewritten under an in-flight copy) is checked here
# through what the code hands to PyTorch; benchmarks/gpu_session.sh runs the real thing on a GPU.


def test_deterministic_on_cuda_sets_the_cublas_workspace_before_enabling(tiny_config, monkeypatch):
    """torch.use_deterministic_algorithms(True) raises at the first float32 matmul on CUDA unless
    CUBLAS_WORKSPACE_CONFIG is set (a GPU-only error): numerics sets it first when the caller has not."""
    import os

    from ssgan import train as train_module

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = []
    real = torch.use_deterministic_algorithms
    monkeypatch.setattr(torch, "use_deterministic_algorithms",
                        lambda mode, **kw: (seen.append((mode, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))),
                                            real(mode, **kw))[1])
    t = replace(tiny_config.train, deterministic=True)
    with train_module.numerics(t, torch.device("cuda")):
        pass
    assert seen[0] == (True, ":4096:8")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own setting is kept
    with train_module.numerics(t, torch.device("cuda")):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    with train_module.numerics(t, torch.device("cpu")):  # the CPU needs none
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


@pytest.mark.parametrize("tf32", [False, True])
def test_inside_numerics_the_legacy_tf32_getters_answer(tiny_config, tf32):
    """Inductor and older code read torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    and torch.get_float32_matmul_precision(); with only the per-operation flags set they raise."""
    from ssgan.accelerate import numerics

    with numerics(replace(tiny_config.train, tf32=tf32), torch.device("cpu")):
        assert torch.backends.cudnn.allow_tf32 is tf32
        assert torch.backends.cuda.matmul.allow_tf32 is tf32
        assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32  # restored to a state that answers  # noqa: B018


def test_a_run_resumes_with_another_cuda_graph_setting(tmp_path):
    """A captured run's checkpoint (the optimizer saved in its plain form) continues without the capture,
    e.g. on a CPU: train.cuda_graph may change on --resume."""
    from ssgan.cli import main
    from ssgan.config import fields_with

    from .conftest import TINY_OVERRIDES

    assert "train.cuda_graph" in fields_with("resumable")
    run_dir = tmp_path / "r"
    assert main(["fit", "--run-dir", str(run_dir), *TINY_OVERRIDES, "train.cuda_graph=auto"]) == 0
    assert main(["fit", "--resume", str(run_dir), "train.epochs=2", "train.cuda_graph=off"]) == 0




def test_each_evaluated_epoch_records_the_raw_discriminators_error_beside_the_average(tiny_config):
    """The averaged classifier starts at zero (the official recipe), so for many epochs it reads worse than the
    network it averages: metrics.jsonl and the progress line carry the raw discriminator's error too."""
    from ssgan.evaluate import error_rates

    cfg = replace(tiny_config, train=replace(tiny_config.train, epochs=2))
    result = fit(cfg)
    for record in result.history:
        assert 0 <= record["raw_test_error"] <= 100 and 0 <= record["test_error"] <= 100
    data_cfg = result.history[-1]
    # The last epoch's raw error is the trained discriminator's own (not the average's), in eval mode.
    from ssgan.train import prepare

    _, data, _ = prepare(cfg, None)
    raw, = error_rates([result.raw_discriminator], torch.from_numpy(data.x_test), torch.from_numpy(data.y_test),
                       64)
    assert data_cfg["raw_test_error"] == raw


def test_the_debiased_average_is_the_official_one_divided_by_one_minus_decay_to_the_n(tiny_config):
    """train.ema_start=debiased: the zero-started average a_n divided by 1 - decay^n (n steps so far), kept as
    an average with the rate (1 - decay) / (1 - decay^n), so that checkpoints, resume and every reader of the
    averaged weights need nothing else. The training itself is the same (the average never feeds back)."""
    cfg = replace(tiny_config, train=replace(tiny_config.train, epochs=2, ema_start="zero"))
    official = fit(cfg)
    debiased = fit(replace(cfg, train=replace(cfg.train, ema_start="debiased")))
    n = cfg.train.epochs * cfg.train.iters_per_epoch
    correction = 1 - cfg.train.ema_decay ** n
    for (name, a), (_, b) in zip(official.discriminator.named_parameters(), debiased.discriminator.named_parameters()):
        assert torch.allclose(a / correction, b, rtol=1e-4, atol=1e-6), name
    for a, b in zip(official.raw_discriminator.parameters(), debiased.raw_discriminator.parameters()):
        assert torch.equal(a, b)  # the same training
    assert [r["raw_test_error"] for r in official.history] == [r["raw_test_error"] for r in debiased.history]


def test_compiled_code_on_a_cpu_draws_pytorch_s_random_numbers(tiny_config):
    """On a CPU inductor falls back to PyTorch's random kernels (its own C++ Philox loop was a third of a
    compiled MNIST iteration): a compiled objective with dropout and Gaussian noise draws the numbers the eager
    one draws, from the same generator state."""
    from ssgan.objectives import compiled

    def objective(x):
        return torch.nn.functional.dropout(x + 0.3 * torch.randn_like(x), 0.5).square().sum()

    train_cfg = replace(tiny_config.train, compile="inductor", device="cpu")
    fast = compiled(objective, train_cfg)
    x = torch.randn(64, 32)
    torch.manual_seed(3)
    eager = objective(x)
    torch.manual_seed(3)
    again = fast(x)
    torch._dynamo.reset()
    torch.testing.assert_close(again, eager)
