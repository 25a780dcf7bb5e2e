"""Every YAML file composes against the schema and converts to the typed Config; the recipes say what
docs/method.md says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssgan.config import ConfigError, compose, compose_dict
from ssgan.config import DATASETS, METHODS, ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml") if p.stem != "custom")  # custom: test_custom


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", METHODS)
def test_every_dataset_and_method_composes(dataset, method):
    # Bad GAN's MNIST recipe needs its density model's file (a one-line error without it: test_bad_gan.py)
    density = ["method.density_model=mnist.pixelcnn"] if (dataset, method) == ("mnist", "bad_gan") else []
    cfg = compose([f"dataset={dataset}", f"method={method}", *density])
    assert cfg.dataset.name == dataset
    assert cfg.method.name == method
    assert cfg.train.optimizer == "official_adam"  # the faithful default of every recipe
    assert (cfg.method.ct_weight > 0) == (method in ("ct_gan", "ct_gan_te"))
    assert (cfg.method.ct_mode == "temporal") == (method == "ct_gan_te")


@pytest.mark.parametrize("model", MODELS)
def test_every_model_composes(model):
    arch = "mlp" if model.startswith("mlp") else "cnn"
    dataset = "digits" if arch == "mlp" else "cifar10"
    cfg = compose([f"dataset={dataset}", f"model={model}"])
    assert cfg.model.arch == arch


def test_official_recipes():
    mnist = compose(["dataset=mnist"])
    assert (mnist.train.lr, mnist.train.epochs, mnist.train.iters_per_epoch) == (0.003, 300, 600)
    assert mnist.model.d_widths == [1000, 500, 250, 250, 250] and mnist.method.fm_norm == 2
    assert mnist.dataset.scaling == "unit" and mnist.train.ema_decay == 0.9999

    cifar = compose(["dataset=cifar10"])
    assert (cifar.train.lr, cifar.train.decay_start, cifar.train.epochs) == (0.0003, 800, 1200)
    assert cifar.model.d_widths == [96, 192, 192, 192, 192] and cifar.method.fm_norm == 1
    assert cifar.dataset.scaling == "cifar" and not cifar.train.augment

    svhn = compose(["dataset=svhn"])
    assert (svhn.train.decay_start, svhn.train.epochs) == (600, 900)
    assert svhn.model.d_widths[:2] == [64, 128] and svhn.dataset.scaling == "symmetric"


def test_ct_gan_recipes():
    cifar = compose(["dataset=cifar10", "method=ct_gan"])
    assert cifar.model.d_widths == [128, 256, 512, 256, 128] and cifar.model.z_dim == 50
    assert cifar.train.augment and cifar.train.epochs == 1000 and cifar.train.decay_start is None
    assert (cifar.method.ct_weight, cifar.method.ct_feat_weight) == (1.0, 0.1)

    mnist = compose(["dataset=mnist", "method=ct_gan"])
    assert (mnist.method.ct_weight, mnist.method.ct_feat_weight) == (0.1, 0.0)
    assert mnist.model.d_widths == [1000, 500, 250, 250, 250]

    svhn = compose(["dataset=svhn", "method=ct_gan"])  # SVHN: CIFAR-10's CT weights
    assert (svhn.method.ct_weight, svhn.method.ct_feat_weight) == (1.0, 0.1)
    assert svhn.model.d_widths[0] == 64 and not svhn.train.augment


def test_command_line_values_win_over_recipes():
    cfg = compose(["dataset=cifar10", "method=ct_gan", "train.epochs=7", "model.z_dim=100"])
    assert cfg.train.epochs == 7 and cfg.model.z_dim == 100


@pytest.mark.parametrize("overrides", [["dataset.nope=1"], ["train.lr=abc"], ["dataset=imagenet"],
                                        ["method=wgan"], ["model=resnet"]])
def test_bad_overrides_are_config_errors(overrides):
    with pytest.raises(ConfigError):
        compose_dict(overrides)


@pytest.mark.parametrize("override", ["train.lr=0", "train.epochs=-1", "dataset.labels=0",
                                      "train.ema_decay=1.0", "method.fm_norm=3", "train.device=tpu"])
def test_bad_values_are_config_errors(override):
    with pytest.raises(ConfigError):
        compose([override])


def test_short_runs_of_a_decaying_recipe_are_valid():
    # CIFAR-10 decays from epoch 800; a 2-epoch run keeps the constant lr (lr_at) instead of failing.
    cfg = compose(["dataset=cifar10", "train.epochs=2"])
    assert cfg.train.decay_start == 800 and cfg.train.epochs == 2


@pytest.mark.parametrize("overrides, init", [
    # (train.init_source, init_batch, init_pad, init_z), dataset.scaling, model.g_init: docs/method.md sec. 6.4-6.6
    (["dataset=mnist"], (("permuted", 500, 0, 100), "unit", "glorot")),
    (["dataset=mnist", "method=ct_gan"], (("permuted", 500, 0, 100), "unit", "glorot")),
    (["dataset=cifar10"], (("labeled", 500, 0, 100), "cifar", "normal")),
    (["dataset=svhn"], (("labeled", 500, 0, 100), "symmetric", "normal")),
    (["dataset=cifar10", "method=ct_gan"], (("labeled", 500, 2, 100), "half", "normal")),
    (["dataset=cifar10", "method=ct_gan_te"], (("labeled", 1000, 2, 100), "half", "normal")),
    (["dataset=digits"], (("pool", 500, 0, None), "unit", "normal")),  # ours: not a published recipe
])
def test_each_recipe_uses_the_official_init_batch_scaling_and_generator_init(overrides, init):
    cfg = compose(overrides)
    t = cfg.train
    assert ((t.init_source, t.init_batch, t.init_pad, t.init_z), cfg.dataset.scaling, cfg.model.g_init) == init
    assert not t.tf32  # true float32, as Theano ran the official code


def test_the_temporal_ensemble_recipe():
    te = compose(["dataset=cifar10", "method=ct_gan_te"])
    assert (te.method.ct_mode, te.method.te_decay, te.method.ct_weight, te.method.ct_feat_weight,
            te.method.ct_margin) == ("temporal", 0.6, 1.0, 0.1, 0.0)
    assert te.model.d_widths == [128, 256, 512, 256, 128] and te.model.z_dim == 50
    assert te.train.augment and te.train.epochs == 1000 and te.train.decay_start is None


def test_a_cuda_device_carries_its_index_as_placed_tensors_do(monkeypatch):
    """A device of "cuda" compared unequal to the "cuda:0" of the tensors placed on it, so the training loop
    took its host-memory path with the images on the GPU."""
    from ssgan.config import resolve_device

    assert resolve_device("cpu") == torch.zeros(1).device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_every_field_declares_its_role_once_in_the_schema():
    from ssgan.config import schema_fields
    from ssgan.fields import ENGINES, ROLES

    names = [name for name, _ in schema_fields()]
    assert len(names) == len(set(names)) > 80 and "train.lr" in names and "seed" in names
    for name, f in schema_fields():
        assert f.metadata.get("role") in ROLES, f"{name} has no role"
        assert set(f.metadata["refused_by"]) <= set(ENGINES), name


def test_the_roles_answer_what_the_lists_used_to():
    from ssgan.config import fields_with

    unkeyed, resumable = fields_with("keyed", False), fields_with("resumable")
    # where and how runs execute is out of the cache key, both ways of stacking seeds alike (README, resume)
    assert {"seed", "run_dir", "train.device", "train.concurrent_seeds", "train.max_concurrent"} <= set(unkeyed)
    assert not {"train.lr", "train.precision", "train.tf32", "train.compile", "dataset.path"} & set(unkeyed)
    # the numerics are keyed and resumable alike; networks, data and method are fixed by the checkpoint
    assert {"train.precision", "train.tf32", "train.compile", "train.cuda_graph", "train.epochs"} <= set(resumable)
    assert not {"model.d_widths", "method.ct_weight", "train.batch_size", "seed"} & set(resumable)
    assert set(fields_with("test_set", False)) == {"dataset.labels", "dataset.val_size", "dataset.root",
                                                   "dataset.download"}


def test_keyed_fields_drop_the_unkeyed_fields_only():
    from dataclasses import asdict

    from ssgan.config import Config
    from ssgan.seeds import keyed_fields

    values = asdict(Config())
    kept = keyed_fields(values)
    assert "seed" not in kept and "device" not in kept["train"] and "max_concurrent" not in kept["train"]
    assert kept["train"]["lr"] == values["train"]["lr"] and "device" in values["train"]  # a copy


@pytest.mark.parametrize("engine, overrides, expected", [
    ("stacked", [], []),
    ("stacked", ["method.gradient_penalty=1", "model.norm=spectral"], ["model.norm=spectral",
                                                                       "method.gradient_penalty"]),
    ("captured", ["train.optimizer=torch_adam", "train.data_placement=host"],
     ["train.optimizer=torch_adam", "train.data_placement=host"]),
    ("captured", ["train.channels_last=true", "train.data_placement=device"], []),
    ("stacked", ["train.channels_last=true"], ["train.channels_last"]),
    ("stacked", ["train.compile=inductor"], []),
    ("captured", ["train.compile=inductor", "train.compile_mode=max-autotune-no-cudagraphs"], []),
    ("captured", ["train.compile=inductor", "train.compile_mode=max-autotune"], ["train.compile_mode=max-autotune"]),
    ("captured", ["train.compile=inductor", "train.compile_mode=reduce-overhead"],
     ["train.compile_mode=reduce-overhead"]),
])
def test_refused_options_follow_the_schema(engine, overrides, expected):
    from ssgan.config import refused_options

    assert refused_options(compose(overrides), engine) == expected


@pytest.mark.parametrize("override", [
    "method.unl_weight=1e30", "method.ct_weight=1e30", "method.gradient_penalty=1e30", "method.vi_weight=1e30",
    "model.input_noise=1e30", "model.hidden_noise=1e30", "model.weight_init_std=1e30", "model.out_init_std=1e30",
    "train.lr=1e30", "train.lr_d=1e30", "train.lr_g=1e30", "method.vi_lr=1e30", "train.adam_eps=1e30",
    "train.epochs=0", "train.min_lr=0.01",  # min_lr above the digits recipe's lr of 0.003
])
def test_values_no_run_can_use_are_refused(override):
    """1e30 for a weight, noise level, init scale, rate or epsilon; zero epochs (a result for an untrained model);
    a floor of the decayed rate above the rate itself."""
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        compose([override])


def test_a_flag_and_an_override_of_the_same_field_contradict(tmp_path, monkeypatch, capsys):
    from ssgan.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--epochs", "1", "train.epochs=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--epochs 1" in err and "train.epochs=2" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["mps", "meta", "xpu", "cuda:x", "tpu"])
def test_resolve_device_offers_what_validate_accepts(name):
    """train.device takes auto, cpu, cuda or cuda:N (validate); resolve_device, which --device of evaluate,
    predict and sample goes through, offers the same and no more (it once offered mps)."""
    from ssgan.config import resolve_device

    with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device(name)
    assert str(resolve_device("cpu")) == "cpu"


def test_one_list_of_data_sets_and_methods_read_from_the_config_folders():
    """configs/dataset/*.yaml and configs/method/*.yaml are the lists (the default first); the loader's torchvision
    data sets and the published numbers name only data sets of that list."""
    from ssgan.config import CONFIGS
    from ssgan.data import TORCHVISION_DATASETS
    from ssgan.reports import PUBLISHED

    assert DATASETS[0] == "digits" and set(DATASETS) == {p.stem for p in (CONFIGS / "dataset").glob("*.yaml")}
    assert METHODS[0] == "improved_gan" and set(METHODS) == {p.stem for p in (CONFIGS / "method").glob("*.yaml")}
    for name in DATASETS:
        cfg = compose([f"dataset={name}"])
        assert cfg.dataset.name == name  # the file's name is the data set's name
        assert (name in TORCHVISION_DATASETS) == (cfg.dataset.source == "torchvision")
    assert set(PUBLISHED) <= set(DATASETS)
