"""Bad GAN (Dai et al. 2017) in the harness: its terms inside the D and G losses against the official
expressions on the same forward passes, its recipes against the official settings, and the frame around it
(concurrent seeds, capture refusal, resume with the VI encoder)."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from ssgan import losses
from ssgan.config import ConfigError, MethodConfig, TrainConfig, compose
from ssgan.engines import generator_step
from ssgan.objectives import discriminator_objective, generator_objective
from ssgan.models import build_encoder
from ssgan.train import fit, fit_grid, lr_at
from tests.test_train import _tiny_models


def _quiet(seed=0):
    """Tiny digits networks without their Gaussian noise, so two forward passes agree."""
    return _tiny_models(seed, input_noise=0.0, hidden_noise=0.0)


def test_d_loss_with_conditional_entropy_is_the_official_svhn_d_loss():
    """svhn_trainer.py:80-93: lab_loss + (true_loss + fake_loss) + ent_weight * entropy(unl_logits)."""
    disc, gen, x = _quiet()
    y, z = torch.arange(20) % 10, gen.sample_z(20)
    loss, _, _ = discriminator_objective(disc, gen, x[:20], y, x[20:], z, method=MethodConfig(cond_entropy_weight=0.1))
    with torch.no_grad():
        lab, _ = disc(x[:20])
        unl, _ = disc(x[20:])
        fake, _ = disc(gen(z))
        unl_lse, fake_lse = torch.logsumexp(unl, 1), torch.logsumexp(fake, 1)
        true_loss = -0.5 * unl_lse.mean() + 0.5 * F.softplus(unl_lse).mean()
        fake_loss = 0.5 * F.softplus(fake_lse).mean()
        probs = unl.softmax(1)
        entropy = ((-probs * unl).sum(1) + unl_lse).mean()  # utils.py:31-34
        expected = F.cross_entropy(lab, y) + true_loss + fake_loss + 0.1 * entropy
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    plain, _, _ = discriminator_objective(disc, gen, x[:20], y, x[20:], z, method=MethodConfig())
    assert plain.item() != pytest.approx(loss.item())  # the term is in use


def test_g_loss_with_pull_away_and_vi_is_the_official_g_loss():
    """svhn_trainer.py:112-124 (L1 feature matching + pt_weight PT) and cifar_trainer.py:113-123 (+ vi_weight
    times the encoder's Gaussian NLL of z)."""
    disc, gen, x = _quiet()
    torch.manual_seed(1)
    enc = build_encoder([1, 8, 8], 8)
    z = gen.sample_z(20)
    method = MethodConfig(fm_norm=1, pull_away_weight=0.8, vi_weight=0.01)
    loss = generator_objective(disc, gen, x[20:], z, method=method, encoder=enc)
    with torch.no_grad():
        x_gen = gen(z)
        _, real_feat = disc(x[20:])
        _, gen_feat = disc(x_gen)
        fm = (gen_feat.mean(0) - real_feat.mean(0)).abs().mean()
        n = len(gen_feat)
        unit = gen_feat / gen_feat.norm(p=2, dim=1, keepdim=True)
        mask = torch.ones(n, n) - torch.eye(n)
        pt = ((unit @ unit.t() * mask) ** 2).sum() / (n * (n - 1))
        mu, log_sigma = enc(x_gen)
        nll = (log_sigma.sum(1) + (((z - mu) / (1e-8 + log_sigma.exp())) ** 2).sum(1) / 2).mean()
        expected = fm + 0.8 * pt + 0.01 * nll
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_the_g_step_with_vi_steps_the_encoder_too_and_leaves_d_alone():
    disc, gen, x = _quiet()
    enc = build_encoder([1, 8, 8], 8)
    opt_g, opt_e = torch.optim.Adam(gen.parameters(), 1e-3), torch.optim.Adam(enc.parameters(), 1e-3)
    before = [copy.deepcopy(m.state_dict()) for m in (disc, gen, enc)]
    generator_step(disc, gen, opt_g, x[20:], gen.sample_z(20), method=MethodConfig(fm_norm=1, vi_weight=0.01),
                   train=TrainConfig(), encoder=enc, opt_e=opt_e)
    after = [m.state_dict() for m in (disc, gen, enc)]
    assert all(torch.equal(before[0][k], v) for k, v in after[0].items())
    for i in (1, 2):
        assert any(not torch.equal(before[i][k], v) for k, v in after[i].items())


def _official_lr(epoch, base, epochs, floor=0.0):
    """svhn_trainer.py:241-244, cifar_trainer.py:246-250: max(min_lr, lr * min(3 (1 - epoch / max_epochs), 1))."""
    return max(floor, base * max(0.0, min(3.0 * (1.0 - epoch / epochs), 1.0)))


@pytest.mark.parametrize("dataset, expected", [
    ("svhn", dict(lr_d=1e-3, lr_g=1e-3, vi_lr=None, batch=64, epochs=900, ent=0.1, pt=0.8, vi=0.0, fm=1, beta2=0.999,
                  min_lr=1e-4)),
    ("cifar10", dict(lr_d=6e-4, lr_g=3e-4, vi_lr=3e-4, batch=100, epochs=1200, ent=0.0, pt=0.0, vi=0.01, fm=1,
                     beta2=0.999, min_lr=0.0)),
    ("mnist", dict(lr_d=3e-3, lr_g=1e-3, vi_lr=None, batch=100, epochs=2000, ent=0.0, pt=0.0, vi=0.0, fm=2,
                   beta2=0.9999, min_lr=0.0)),
])
def test_the_recipes_are_the_official_settings(dataset, expected):
    """config.py and the trainers' optimizers and schedules (docs/recipes.md)."""
    density = ["method.density_model=mnist.pixelcnn"] if dataset == "mnist" else []
    cfg = compose([f"dataset={dataset}", "method=bad_gan", *density])
    t, m, e = cfg.train, cfg.method, expected
    assert (t.lr_d, t.lr_g, m.vi_lr, t.batch_size, t.epochs) == (e["lr_d"], e["lr_g"], e["vi_lr"], e["batch"], e["epochs"])
    assert (m.cond_entropy_weight, m.pull_away_weight, m.vi_weight, m.fm_norm) == (e["ent"], e["pt"], e["vi"], e["fm"])
    assert (t.beta1, t.beta1_g, t.beta2, t.ema_decay, m.ct_weight) == (0.5, 0.0, e["beta2"], 0.0, 0.0)
    if dataset == "mnist":  # the low-density penalty (config.py:35-36, mnist_trainer.py:122-123)
        assert (m.density_weight, m.density_start, m.density_prob, m.density_batch) == (1e-4, 9000, 0.1, 30)
    else:
        assert m.density_weight == 0
    for epoch in range(0, t.epochs, 7):
        ours = max(t.min_lr, lr_at(epoch, t.lr_d, t.decay_start, t.epochs))
        # MNIST's decay starts at 1333.3 epochs; ours at 1333 (the lr differs by < 0.1 % in the decay)
        assert ours == pytest.approx(_official_lr(epoch, t.lr_d, t.epochs, e["min_lr"]), rel=1e-3, abs=1e-12)


def test_any_method_takes_the_terms_in_one_command(tmp_path, capsys):
    from ssgan.cli import main
    from tests.conftest import TINY_OVERRIDES

    rc = main(["fit", "--method", "ct_gan", "--run-dir", str(tmp_path / "r"), *TINY_OVERRIDES,
               "method.pull_away_weight=0.8", "method.cond_entropy_weight=0.1"])
    assert rc == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("test error:")


def test_negative_weights_are_one_line_errors(tmp_path, capsys):
    from ssgan.cli import main
    from tests.conftest import TINY_OVERRIDES

    assert main(["fit", "--run-dir", str(tmp_path / "r"), *TINY_OVERRIDES, "method.pull_away_weight=-1"]) == 2
    assert "pull_away_weight" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_concurrent_seeds_with_entropy_and_pull_away_match_single_runs(tiny_config):

    cfg = replace(tiny_config, model=replace(tiny_config.model, input_noise=0.0, hidden_noise=0.0),
                  method=replace(tiny_config.method, cond_entropy_weight=0.1, pull_away_weight=0.8),
                  train=replace(tiny_config.train, epochs=2, iters_per_epoch=3, beta1_g=0.0))
    for seed, result in zip([0, 1], fit_grid([replace(cfg, seed=s) for s in (0, 1)])):
        single = fit(replace(cfg, seed=seed))
        for a, b in zip(result.generator.state_dict().values(), single.generator.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        for a, b in zip(result.discriminator.state_dict().values(), single.discriminator.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_vi_is_refused_by_concurrent_seeds_and_the_cuda_graph(tiny_config):
    from ssgan.accelerate import use_cuda_graph

    cfg = replace(tiny_config, method=replace(tiny_config.method, vi_weight=0.01))
    with pytest.raises(ConfigError, match="concurrent seeds do not support method.vi_weight"):
        fit_grid([replace(cfg, seed=s) for s in (0, 1)])
    on = replace(cfg, train=replace(cfg.train, cuda_graph="on"))
    with pytest.raises(ConfigError, match="method.vi_weight"):
        use_cuda_graph(on, torch.device("cuda"))


def test_a_vi_run_resumes_exactly_with_its_encoder(tmp_path, monkeypatch):
    """The encoder and its Adam are in the checkpoint: an interrupted VI run continues exactly."""
    from ssgan.cli import main
    from ssgan.checkpoint import load_checkpoint
    from tests.conftest import TINY_OVERRIDES

    overrides = [o for o in TINY_OVERRIDES if not o.startswith(("train.epochs", "train.iters_per_epoch"))] + [
        "method=bad_gan", "method.vi_weight=0.01", "method.vi_lr=0.0005", "train.beta1_g=0", "train.epochs=2",
        "train.iters_per_epoch=4", "train.deterministic=true"]
    _train_whole_and_interrupted(tmp_path, monkeypatch, overrides)
    assert "encoder" in load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert main(["fit", "--resume", str(tmp_path / "cut")]) == 0
    a, b = load_checkpoint(tmp_path / "whole" / "checkpoint.pt"), load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for part in ("discriminator", "discriminator_avg", "generator", "encoder"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)
    assert a["opt_e"]["param_groups"][0]["lr"] == 0.0005


def test_the_mnist_recipe_without_a_density_model_is_one_line(tmp_path, capsys):
    from ssgan.cli import main

    assert main(["fit", "--dataset", "mnist", "--method", "bad_gan", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "method.density_model=PATH" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def tiny_density(tmp_path_factory):
    """A small PixelCNN++ fitted for a few iterations on the digits images (8x8, unit scaling)."""
    from ssgan.config import DataConfig
    from ssgan.data import load_data
    from ssgan.density import density_threshold, log_likelihoods, save_density, to_unit_range, train_density

    x = to_unit_range(torch.from_numpy(load_data(DataConfig()).x_unlabeled[:200]).float(), "unit")
    fitted = train_density(x, epochs=1, batch_size=50, lr=1e-3, nr_filters=8, nr_resnet=1, nr_mix=2, stages=2)
    folder = tmp_path_factory.mktemp("density")
    lp = log_likelihoods(fitted["model"], x).numpy()
    save_density(folder / "official.pixelcnn", fitted["model"], density_threshold(lp), "unit", [1, 8, 8])
    # A threshold far below every image's log-likelihood: the penalty is non-zero on generated images too.
    save_density(folder / "low.pixelcnn", fitted["model"], float(lp.min()) - 1e3, "unit", [1, 8, 8])
    return folder / "low.pixelcnn"


def test_the_density_penalty_joins_the_g_loss_as_the_official_expression(tiny_density):
    """mnist_trainer.py:122-138 on one G step: fm + 1e-4 * low_density_penalty(log p(G(z')), eps)."""
    from ssgan.config import Config, DataConfig, ModelConfig
    from ssgan.density import DensityPenalty, discretized_logistic_mixture_loglik, load_density

    disc, gen, x = _quiet()
    cfg = Config(dataset=DataConfig(image_shape=[1, 8, 8]), model=ModelConfig(z_dim=8),
                 method=MethodConfig(density_weight=1e-4, density_model=str(tiny_density), density_start=0,
                                     density_prob=1.0, density_batch=30))
    penalty = DensityPenalty(cfg, torch.device("cpu"))
    assert penalty.z_at(0) is None  # iteration > density_start only
    z_p = penalty.z_at(1)
    assert z_p.shape == (30, 8) and torch.equal(z_p, penalty.z_at(1))  # the draws are a function of the iteration
    z = gen.sample_z(20)
    fm = generator_objective(disc, gen, x[20:], z, method=MethodConfig(fm_norm=1))
    with torch.no_grad():
        loaded = load_density(tiny_density)
        images = gen(z_p) * 2 - 1  # (x - 0.5) / 0.5, mnist_trainer.py:125
        lp = discretized_logistic_mixture_loglik(images, loaded["model"](images))
        excess = (lp - loaded["threshold"]).clamp(min=0)
        nonzero = int((excess > 0).sum())
        assert nonzero == 30
        expected = fm.detach() + (1e-4 * excess.sum() / nonzero if nonzero else 0.0)
    opt = torch.optim.SGD(gen.parameters(), lr=0.0)
    got = generator_step(disc, gen, opt, x[20:], z, method=MethodConfig(fm_norm=1), train=TrainConfig(),
                         density=penalty, density_z=z_p)
    torch.testing.assert_close(got, torch.as_tensor(expected, dtype=got.dtype), rtol=1e-5, atol=1e-7)


def test_a_density_run_resumes_exactly_and_is_refused_by_concurrent_seeds(tiny_density, tmp_path, monkeypatch):
    from ssgan.cli import main
    from ssgan.checkpoint import load_checkpoint
    from tests.conftest import TINY_OVERRIDES

    overrides = [o for o in TINY_OVERRIDES if not o.startswith(("train.epochs", "train.iters_per_epoch"))] + [
        "method=bad_gan", f"method.density_model={tiny_density}", "method.density_weight=0.01",
        "method.density_start=2", "method.density_prob=0.5", "train.epochs=2", "train.iters_per_epoch=4",
        "train.deterministic=true"]
    _train_whole_and_interrupted(tmp_path, monkeypatch, overrides)
    assert main(["fit", "--resume", str(tmp_path / "cut")]) == 0
    a, b = load_checkpoint(tmp_path / "whole" / "checkpoint.pt"), load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for part in ("discriminator", "generator"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)
    # the penalty was in use: without it the generator ends elsewhere
    off = [o if not o.startswith("method.density_weight") else "method.density_weight=0" for o in overrides]
    assert main(["fit", "--run-dir", str(tmp_path / "off"), *off]) == 0
    c = load_checkpoint(tmp_path / "off" / "checkpoint.pt")
    assert any(not torch.equal(a["generator"][k], c["generator"][k]) for k in a["generator"])
    assert main(["fit", "--seeds", "2", "train.concurrent_seeds=true", "--run-dir", str(tmp_path / "cc"),
                 *overrides]) == 2


def test_ssgan_density_writes_a_model_the_recipe_loads(tmp_path, capsys):
    from ssgan.cli import main
    from ssgan.density import load_density

    out = tmp_path / "d.pixelcnn"
    args = ["density", "--dataset", "digits", "--out", str(out), "--filters", "4", "--resnet", "1", "--mix", "2",
            "--max-images", "60", "--batch-size", "30"]
    assert main(args) == 0
    loaded = load_density(out)
    assert loaded["image_shape"] == [1, 8, 8] and math.isfinite(loaded["threshold"])
    assert loaded["info"]["images"] == 60
    assert main(args) == 2  # never overwritten
    assert "exists" in capsys.readouterr().err


def test_the_estimator_and_export_take_bad_gan(tmp_path):
    """method=bad_gan with the VI encoder through the scikit-learn estimator, and a run's classifier exported
    (the encoder is training state only: the exported file is D's)."""
    from ssgan.cli import main
    from ssgan.config import DataConfig
    from ssgan.data import load_data
    from ssgan.estimator import SSGANClassifier
    from tests.conftest import TINY_OVERRIDES
    from tests.test_estimator import TINY

    data = load_data(DataConfig())
    x, y = data.x_train.reshape(len(data.x_train), -1) * 16, data.y_train.copy()
    y[50:] = -1
    est = SSGANClassifier(method="bad_gan", **{**TINY, "overrides": (*TINY["overrides"], "method.vi_weight=0.01")})
    est.fit(x, y)
    assert est.predict(x[:5]).shape == (5,)
    run = tmp_path / "run"
    assert main(["fit", "--method", "bad_gan", "--run-dir", str(run), *TINY_OVERRIDES, "method.vi_weight=0.01"]) == 0
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    assert scripted(torch.rand(2, 1, 8, 8)).shape[0] == 2


def test_the_optimizers_take_the_recipes_betas_and_rates(tiny_config):
    """svhn_trainer.py:43-44 / cifar_trainer.py:44-46: D Adam betas (0.5, 0.999), G and the encoder (0, 0.999)."""
    from ssgan.data import load_data
    from ssgan.models import build_networks

    cfg = replace(tiny_config, method=replace(tiny_config.method, vi_weight=0.01, vi_lr=3e-4),
                  train=replace(tiny_config.train, beta1_g=0.0, lr_d=6e-4, lr_g=3e-4))
    x = torch.from_numpy(load_data(cfg.dataset).x_unlabeled[:50])
    net = build_networks(cfg, x, torch.device("cpu"))
    groups = [opt.param_groups[0] for opt in (net.opt_d, net.opt_g, net.opt_e)]
    assert [g["betas"] for g in groups] == [(0.5, 0.999), (0.0, 0.999), (0.0, 0.999)]
    assert [g["lr"] for g in groups] == [6e-4, 3e-4, 3e-4]
    plain = build_networks(tiny_config, x, torch.device("cpu"))
    assert plain.enc is None and plain.opt_g.param_groups[0]["betas"] == (0.5, 0.999)


def _train_whole_and_interrupted(tmp_path, monkeypatch, overrides) -> None:
    """Train ``overrides`` uninterrupted into tmp_path/whole, and again into tmp_path/cut with a SIGINT at the
    sixth iteration (exit 130, checkpoint of the exact position), for a resume to be compared with the whole."""
    import os
    import signal

    from ssgan import train
    from ssgan.cli import main

    assert main(["fit", "--run-dir", str(tmp_path / "whole"), *overrides]) == 0
    calls, original = {"n": 0}, train.SingleEngine.step

    def interrupting_step(self, *args):
        calls["n"] += 1
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args)

    monkeypatch.setattr(train.SingleEngine, "step", interrupting_step)
    assert main(["fit", "--run-dir", str(tmp_path / "cut"), *overrides]) == 130
    monkeypatch.undo()
