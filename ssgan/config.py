"""Typed configuration: the schema every YAML file in configs/ is checked against, its composition from Hydra
overrides, and the device a config names.

``compose(overrides)`` is the one way from override strings (``dataset=cifar10``, ``train.lr=1e-4``) to a
``Config``: Hydra composes ``configs/`` against the schema and the result is converted once into these
dataclasses with ``OmegaConf.to_object``, so a mistyped key or a value of the wrong type fails at start-up.
No ``DictConfig`` leaves this module (``to_config`` converts the one Hydra hands to ``ssgan fit``'s task).
Each hyperparameter of the method is one field here; the published recipes set them in
``configs/dataset/*.yaml`` (per data set) and ``configs/recipe/*.yaml`` (where a method changes them).
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import typing
from dataclasses import Field, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf, open_dict

from .fields import (AT_LEAST_ONE, EPSILON, INIT_SCALE, NOISE, PROBABILITY, RATE, UNIT, WEIGHT, data_path, execution,
                     identity, numerics, recipe, reporting, schedule)
from .hydra_state import hydra_globals

if TYPE_CHECKING:
    import torch  # (loaded where a device is resolved, not on import)

CONFIGS = Path(__file__).resolve().parent / "configs"  # the packaged configs/ (an editable install maps it)
if not CONFIGS.is_dir():
    import ssgan.configs

    CONFIGS = Path(ssgan.configs.__file__).resolve().parent


def group_options(group: str) -> Tuple[str, ...]:
    """The options of a config group, read from its folder (``configs/<group>/*.yaml``): the one list of the
    data sets (``dataset``) and methods (``method``), the root config's default first, then by name."""
    default = next((line.split(":", 1)[1].strip() for line in (CONFIGS / "config.yaml").read_text().splitlines()
                    if line.strip().startswith(f"- {group}:")), None)
    return tuple(sorted((p.stem for p in (CONFIGS / group).glob("*.yaml")), key=lambda name: (name != default, name)))


DATASETS = group_options("dataset")  # digits (the default), cifar10, mnist, svhn
SOURCES = ("builtin", "torchvision", "folder", "npz")
SCALINGS = ("unit", "cifar", "symmetric", "half")
METHODS = group_options("method")  # improved_gan (the default), bad_gan, ct_gan, ct_gan_te
ARCHS = ("mlp", "cnn", "custom")


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared (docs/method.md sec. 3)."""

    name: str = recipe("digits")
    # builtin: scikit-learn's digits; torchvision: the torchvision data set class; folder / npz: user data.
    source: str = recipe("builtin")
    root: str = execution("data", test_set=False)
    path: Optional[str] = data_path(None)  # the folder or .npz for source=folder|npz
    download: bool = execution(False, test_set=False)
    labels: int = recipe(50, test_set=False)  # total labeled examples, balanced over the classes
    n_classes: int = recipe(10)
    # (C, H, W) the recipe's network expects; user data of another size needs resize=true.
    image_shape: List[int] = recipe([1, 8, 8])
    resize: bool = recipe(False)
    # unit: x / max -> [0, 1]; cifar: (x - 127.5) / 128; symmetric: (x - 127.5) / 127.5;
    # half: (x - 127.5) / 255 -> [-0.5, 0.5] (CT-GAN's CIFAR-10 loader)
    scaling: str = recipe("unit")
    # Held out of the train split for model selection: a fraction if < 1, else a count. 0 as in the papers.
    val_size: float = recipe(0.0, test_set=False, refused_by=("stacked",))


@dataclass
class ModelConfig:
    """Which discriminator / generator pair to build (models.py) and its sizes."""

    # mlp | cnn | custom (your own networks: model.discriminator, model.generator; they may wait for the host,
    # so a CUDA graph does not capture them)
    arch: str = recipe("mlp", refused_by=("captured",), refused_when="custom")
    # mlp: hidden widths of D; cnn: [width of block 1, width of block 2, last conv, NiN 1, NiN 2]
    d_widths: List[int] = recipe([256, 128, 128])
    # mlp: hidden widths of G; cnn: channels of the 4x4 seed and the two upsampling stages
    g_widths: List[int] = recipe([256, 256])
    z_dim: int = recipe(100)
    weight_init_std: float = recipe(0.1, bounds=INIT_SCALE)  # std of the direction parameters v before normalisation
    # The generator's weights: normal (N(0, weight_init_std)) or glorot (Lasagne's default GlorotUniform, gain 1,
    # as in the official MNIST generator)
    g_init: str = recipe("normal")
    input_noise: float = recipe(0.3, bounds=NOISE)  # mlp: Gaussian noise std on the input
    hidden_noise: float = recipe(0.5, bounds=NOISE)  # mlp: Gaussian noise std after each hidden layer
    input_dropout: float = recipe(0.2, bounds=UNIT)  # cnn: dropout on the input
    hidden_dropout: float = recipe(0.5, bounds=UNIT)  # cnn: dropout after each stride-2 block
    out_init_std: float = recipe(1.0, bounds=INIT_SCALE)  # data-dependent init target std of D's and G's output layers
    # Stabilisers that change the networks (off by default; Salimans et al. 2016, Miyato et al. 2018)
    norm: str = recipe("weight", refused_by=("stacked", "captured"), refused_when="spectral")  # weight | spectral
    minibatch_discrimination: bool = recipe(False)
    mbd_kernels: int = recipe(100)
    mbd_kernel_dim: int = recipe(5)
    virtual_batch_norm: bool = recipe(False)
    # model.arch=custom: your networks, as Hydra instantiation specs {_target_: import.path, **kwargs}. ssgan
    # also passes the keyword arguments the constructors accept of: image_shape (C, H, W) and n_classes (D),
    # image_shape and z_dim (G). Contract (checked at start-up): D(x) -> (logits (B, K), features (B, F));
    # G(z) -> images (B, C, H, W) in the data's range.
    discriminator: Optional[Any] = recipe(None)
    generator: Optional[Any] = recipe(None)


@dataclass
class MethodConfig:
    """What the method switches on (docs/method.md sec. 1, 2)."""

    name: str = recipe("improved_gan")
    unl_weight: float = recipe(1.0, bounds=WEIGHT)  # w in L_D = L_sup + w (L_unl + L_fake + ct_weight CT) / 2
    ct_weight: float = recipe(0.0, bounds=WEIGHT)  # lambda of the consistency term; 0 disables it
    ct_feat_weight: float = recipe(0.1, bounds=WEIGHT)  # weight of the second-to-last-layer term inside CT
    ct_margin: float = recipe(0.0)  # M'
    # two_pass: CT between two dropout / noise passes of the unlabeled batch (CT_CIFAR.py); temporal: between one
    # pass and per-example targets, a bias-corrected moving average over epochs of each example's earlier
    # logits and features (CT_CIFAR-10_TE.py)
    ct_mode: str = recipe("two_pass")
    te_decay: float = recipe(0.6, bounds=UNIT)  # decay of the temporal ensemble (ct_mode=temporal)
    fm_norm: int = recipe(1)  # feature matching: 1 = mean absolute, 2 = mean squared difference
    # Options from the same family, off by default
    label_smoothing: float = recipe(0.0, bounds=UNIT)  # one-sided: real target 1 - label_smoothing
    # weight of ||theta - mean of past theta||^2
    historical_averaging: float = recipe(0.0, refused_by=("stacked", "captured"), bounds=WEIGHT)
    # weight of (||grad D(x_hat)|| - 1)^2 on real/fake interpolates
    gradient_penalty: float = recipe(0.0, refused_by=("stacked", "captured"), bounds=WEIGHT)
    # Bad GAN's terms (Dai et al. 2017; docs/method.md sec. 2.5), usable with any method; 0 disables each
    cond_entropy_weight: float = recipe(0.0, bounds=WEIGHT)  # D: + weight * cond. entropy of unlabeled predictions
    pull_away_weight: float = recipe(0.0, bounds=WEIGHT)  # G: + weight * pull-away term of the generated features
    # G: + weight * Gaussian NLL of z under an encoder q(z | G(z)) (trained with G)
    vi_weight: float = recipe(0.0, refused_by=("stacked", "captured"), bounds=WEIGHT)
    # the encoder's Adam lr; None: G's lr (it follows the same schedule)
    vi_lr: Optional[float] = recipe(None, bounds=RATE)
    # G: + density_weight * low-density penalty of density_batch generated images under a PixelCNN++ (a file
    # written by `ssgan density`), at iterations > density_start, each with probability density_prob
    density_weight: float = recipe(0.0, refused_by=("stacked", "captured"), bounds=WEIGHT)
    density_model: Optional[str] = recipe(None)
    density_start: int = recipe(9000)
    density_prob: float = recipe(0.1, bounds=PROBABILITY)
    density_batch: int = recipe(30)


@dataclass
class TrainConfig:
    """The optimisation recipe (docs/method.md sec. 3, 6)."""

    epochs: int = schedule(300, bounds=AT_LEAST_ONE)
    iters_per_epoch: Optional[int] = recipe(None)  # None: len(unlabeled pool) // batch_size
    batch_size: int = recipe(100)
    lr: float = schedule(0.003, bounds=RATE)
    lr_d: Optional[float] = schedule(None, bounds=RATE)  # separate D / G rates (TTUR); None: lr
    lr_g: Optional[float] = schedule(None, bounds=RATE)
    # Epoch where the linear decay to 0 (at train.epochs) starts; None, or >= train.epochs: constant lr.
    decay_start: Optional[int] = schedule(None)
    beta1: float = recipe(0.5, bounds=UNIT)
    beta2: float = recipe(0.999, bounds=UNIT)
    # G's (and the VI encoder's) beta1 where it differs from D's (Bad GAN: 0)
    beta1_g: Optional[float] = recipe(None, bounds=UNIT)
    min_lr: float = schedule(0.0, bounds=(0.0, 10.0, True, True))  # floor of the decayed lr (Bad GAN's SVHN: 1e-4)
    # official_adam (epsilon inside the sqrt) | torch_adam (its float lr would be baked into a CUDA graph)
    optimizer: str = recipe("official_adam", refused_by=("captured",), refused_when="torch_adam")
    adam_eps: float = recipe(1e-8, bounds=EPSILON)
    ema_decay: float = recipe(0.9999, bounds=UNIT)  # Polyak averaging of D for evaluation
    # the average's start: zero (official), init (initial weights; digits) or debiased (zero, divided by
    # 1 - ema_decay^n after n steps, as Adam corrects its moments: an option, docs/method.md sec. 6.7)
    ema_start: str = recipe("zero")
    init_batch: int = recipe(500)  # images for the data-dependent initialisation of D
    # Which images: pool (drawn from the unlabeled pool with the seed; ours, the digits recipe), permuted (the
    # first of the permutation of the train split that picks the labeled subset; official MNIST), labeled (the
    # first of epoch 0's labeled stream; official CIFAR-10 / SVHN)
    init_source: str = recipe("pool")
    init_pad: int = recipe(0)  # reflect padding of the init images (CT-GAN's CIFAR-10: 2, i.e. 36x36)
    init_z: Optional[int] = recipe(None)  # z for the generator's init (official: 100); None: init_batch
    augment: bool = recipe(False)  # 2-pixel reflect translation + horizontal flip (CT-GAN CIFAR-10)
    translate: int = recipe(2)
    flip: bool = recipe(True)
    device: str = execution("auto")  # auto | cpu | cuda
    # Where the training images live: device (one tensor, index gathers), host (pinned memory, batches copied
    # one ahead), or auto (device while they take at most half of the GPU's free memory).
    data_placement: str = execution("auto", refused_by=("captured",), refused_when="host")
    # fp32 | bf16: autocast of the forward passes (losses stay float32); fp16 is refused
    precision: str = numerics("fp32")
    # TensorFloat-32 for float32 convolutions and matrix products on GPUs: false is true float32, as Theano ran
    # the official code; true is a speed option (10-bit mantissa inside the products).
    tf32: bool = numerics(False)
    # NHWC memory layout for the CNNs (faster convolutions on GPUs)
    channels_last: bool = numerics(False, refused_by=("stacked",))
    # torch.compile of the D and G loss computations and of the official Adam update: off | inductor | aot_eager |
    # eager (the backend), for one model or stacked seeds, captured in the step's CUDA graph too; and its mode,
    # e.g. max-autotune-no-cudagraphs; None: the default. The modes that make CUDA graphs of their own
    # (reduce-overhead, max-autotune) are not captured in the step's graph. Stacked seeds refuse aot_eager
    # (torch 2.14: a stride error in the backward of the vmapped objectives; inductor and eager work).
    compile: str = numerics("off", refused_by=("stacked",), refused_when="aot_eager")
    compile_mode: Optional[str] = numerics(None, refused_by=("captured",),
                                           refused_when=("reduce-overhead", "max-autotune"))
    # faithful: the official step, pass by pass; lean: fewer passes and kernels for the same distribution of
    # results (G's step runs D once over the real and generated batches; docs/method.md, "the lean step")
    step: str = numerics("faithful")
    deterministic: bool = numerics(False)  # torch.use_deterministic_algorithms (exactly reproducible resume)
    # With several seeds (--seeds K): train them at once, parameters stacked and the step vectorised over seeds
    # (ssgan/concurrent.py); false: one after another.
    concurrent_seeds: bool = execution(False)
    # At most this many models in one stacked step (--seeds, and ssgan table's label counts x seeds); 0: no bound
    max_concurrent: int = execution(0)
    # CUDA graphs: capture the engine's step once and replay it (on: required, off: never, auto: on CUDA when
    # every option allows it; bit-identical to eager on an H200, results/gpu_capture_check.json).
    cuda_graph: str = numerics("auto")
    checkpoint_every: int = reporting(10)  # epochs between checkpoints (also written at the end and on SIGINT/SIGTERM)
    eval_every: int = reporting(1)  # epochs between test evaluations (the last epoch is always evaluated)
    eval_batch_size: int = reporting(1000)
    progress: bool = reporting(True)
    tensorboard: bool = reporting(False)
    sample_grid: bool = reporting(True)  # write samples.png at the end


@dataclass
class Config:
    dataset: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = identity(0)
    run_dir: str = identity("runs/default")
    overwrite: bool = identity(False)


_SECTIONS = {"DataConfig": DataConfig, "ModelConfig": ModelConfig, "MethodConfig": MethodConfig,
             "TrainConfig": TrainConfig}


def schema_fields(schema: type = None, prefix: str = "") -> Iterator[Tuple[str, Field]]:
    """Every leaf field of the schema as (dotted name, dataclass field), in the schema's order."""
    for f in fields(schema or Config):
        section = _SECTIONS.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
        if section is not None:  # dataset, model, method, train
            yield from schema_fields(section, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def fields_with(role: str, value: Any = True) -> Tuple[str, ...]:
    """The dotted names of the fields whose metadata ``role`` (a key of a ``ROLES`` entry, ``role`` itself or
    ``test_set``) equals ``value``: ``fields_with("keyed", False)`` are those a cache key leaves out,
    ``fields_with("resumable")`` those a resume may change."""
    return tuple(name for name, f in schema_fields() if f.metadata[role] == value)


def refused_options(cfg: Config, engine: str) -> List[str]:
    """The options ``cfg`` uses that ``engine`` (one of ``ENGINES``) cannot run, named as a user sets them
    (``method.gradient_penalty``, ``model.norm=spectral``), in the schema's order."""
    names = []
    for dotted, f in schema_fields():
        if engine not in f.metadata["refused_by"]:
            continue
        value = cfg
        for part in dotted.split("."):
            value = getattr(value, part)
        when = f.metadata["refused_when"]  # one value, or a tuple of them
        if when is not None and value in (when if isinstance(when, tuple) else (when,)):
            names.append(f"{dotted}={value}")
        elif when is None and value != f.default:
            names.append(dotted)
    return names


# What ``ssgan fit --resume RUN_DIR KEY=VALUE`` may change, read from the schema (cli.py's name for it).
RESUMABLE_FIELDS = fields_with("resumable")


def register_configs() -> None:
    """Register the schema so that config.yaml's defaults list can extend it."""
    cs = ConfigStore.instance()
    cs.store(name="ssgan_schema", node=Config)


MAX_SEED = 2 ** 32  # numpy.random.RandomState takes 32-bit seeds
MAX_SEEDS = 1000  # seeds in one seeds run or table cell


class ConfigError(ValueError):
    """A configuration that parses but cannot run: reported as one line, exit code 2."""


def check_seeds(first: int, n_seeds: int) -> List[int]:
    """The seeds ``first .. first + n_seeds - 1`` of a seeds run or table cell; ConfigError unless there is at
    least one and all stay below numpy's 2**32."""
    if n_seeds < 1:
        raise ConfigError(f"--seeds {n_seeds}: the number of seeds must be at least 1")
    if n_seeds > MAX_SEEDS:  # before a list of them is built, or a folder made
        raise ConfigError(f"--seeds {n_seeds}: at most {MAX_SEEDS} seeds in one run")
    if first + n_seeds > MAX_SEED:
        raise ConfigError(f"--seeds {n_seeds} from seed {first}: seeds must stay below {MAX_SEED}")
    return list(range(first, first + n_seeds))


# ------------------------------------------------------------------ numbers, checked from the schema



def numeric_keys() -> Dict[str, type]:
    """``section.key`` -> int or float, for every number of the schema (``Optional`` ones included; lists of
    numbers, such as the widths, have checks of their own in ``validate``)."""

    def number(kind: Any) -> Optional[type]:
        if typing.get_origin(kind) is typing.Union:  # Optional[int]: Union[int, None]
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            kind = args[0] if len(args) == 1 else None
        return kind if kind in (int, float) else None

    keys = {}
    for section, section_type in typing.get_type_hints(Config).items():
        items = typing.get_type_hints(section_type).items() if is_dataclass(section_type) else [(None, section_type)]
        for item, item_type in items:
            if number(item_type) is not None:
                keys[section if item is None else f"{section}.{item}"] = number(item_type)
    return keys


def check_numbers(cfg: Config) -> None:
    """Every number of the schema: a real number (not a string or a bool), finite, within its range
    (the field's ``bounds``, else ``NON_NEGATIVE``); ``None`` where the schema allows it. One line otherwise, so a
    value that would diverge at the first iteration (nan or inf in a noise level, an init or a rate) never
    starts a run."""
    bounds = {name: f.metadata["bounds"] for name, f in schema_fields()}
    for key, kind in numeric_keys().items():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and
                                                                              not isinstance(value, int)):
            raise ConfigError(f"{key}={value!r}: expected {'an integer' if kind is int else 'a number'}")
        low, high, low_in, high_in = bounds[key]
        if not math.isfinite(value) or not (low <= value if low_in else low < value) or \
                not (value <= high if high_in else value < high):
            where = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
            raise ConfigError(f"{key}={value}: must be a finite number in {where}")


def _data_checks(d: DataConfig) -> List[Tuple[bool, str]]:
    """The data set's values: (ok, message) pairs."""
    return [
        (d.name in DATASETS, f"dataset.name={d.name!r}: expected one of {', '.join(DATASETS)}"),
        (d.source in SOURCES, f"dataset.source={d.source!r}: expected one of {', '.join(SOURCES)}"),
        (d.scaling in SCALINGS, f"dataset.scaling={d.scaling!r}: expected one of {', '.join(SCALINGS)}"),
        (d.labels > 0, f"dataset.labels={d.labels}: must be a positive number of labeled examples"),
        (d.n_classes >= 2, f"dataset.n_classes={d.n_classes}: must be at least 2"),
        (len(d.image_shape) == 3 and min(d.image_shape) > 0,
         f"dataset.image_shape={list(d.image_shape)}: expected [C, H, W] with positive sizes"),
        (d.source not in ("folder", "npz") or d.path, f"dataset.source={d.source} needs dataset.path=..."),
    ]


def _model_checks(m: ModelConfig) -> List[Tuple[bool, str]]:
    """The networks' values: (ok, message) pairs."""
    return [
        (m.arch in ARCHS, f"model.arch={m.arch!r}: expected one of {', '.join(ARCHS)}"),
        (m.norm in ("weight", "spectral"), f"model.norm={m.norm!r}: expected weight or spectral"),
        (m.g_init in ("normal", "glorot"), f"model.g_init={m.g_init!r}: expected normal or glorot"),
        (m.z_dim > 0, f"model.z_dim={m.z_dim}: must be positive"),
        (m.arch != "cnn" or len(m.d_widths) == 5, "model.d_widths: the cnn needs 5 widths"),
        (m.arch == "custom" or (m.discriminator is None and m.generator is None),
         "model.discriminator / model.generator are your networks' specs: they need model=custom"),
        (m.arch != "custom" or all(isinstance(spec, dict) and spec.get("_target_") for spec in
                                   (m.discriminator, m.generator)),
         "model=custom needs model.discriminator._target_=... and model.generator._target_=... (import paths)"),
        (m.arch != "cnn" or len(m.g_widths) == 3, "model.g_widths: the cnn generator needs 3 widths"),
        (len(m.d_widths) > 0 and min(m.d_widths) > 0, f"model.d_widths={list(m.d_widths)}: widths must be positive"),
        (len(m.g_widths) > 0 and min(m.g_widths) > 0, f"model.g_widths={list(m.g_widths)}: widths must be positive"),
        (m.mbd_kernels > 0 and m.mbd_kernel_dim > 0, "model.mbd_kernels and model.mbd_kernel_dim must be positive"),
    ]


def _method_checks(me: MethodConfig) -> List[Tuple[bool, str]]:
    """The method's values: (ok, message) pairs."""
    return [
        (me.name in METHODS, f"method.name={me.name!r}: expected one of {', '.join(METHODS)}"),
        (me.fm_norm in (1, 2), f"method.fm_norm={me.fm_norm}: expected 1 or 2"),
        (me.ct_mode in ("two_pass", "temporal"), f"method.ct_mode={me.ct_mode!r}: expected two_pass or temporal"),
        (me.density_weight == 0 or me.density_model,
         "method.density_weight needs method.density_model=PATH, a density model written by `ssgan density` "
         "(or method.density_weight=0 to run without the low-density penalty)"),
        (me.density_batch > 1, f"method.density_batch={me.density_batch}: must be > 1"),
    ]


def _train_checks(t: TrainConfig, d: DataConfig) -> List[Tuple[bool, str]]:
    """The optimisation's and the run's values: (ok, message) pairs."""
    return [
        (t.batch_size > 0, f"train.batch_size={t.batch_size}: must be positive"),
        (t.min_lr <= min(t.lr_d or t.lr, t.lr_g or t.lr),
         f"train.min_lr={t.min_lr}: the floor of the decayed rate must not exceed the rate (train.lr={t.lr})"),
        (t.iters_per_epoch is None or t.iters_per_epoch > 0,
         f"train.iters_per_epoch={t.iters_per_epoch}: must be positive"),
        (t.ema_start in ("zero", "init", "debiased"),
         f"train.ema_start={t.ema_start!r}: expected zero, init or debiased"),
        (t.optimizer in ("official_adam", "torch_adam"),
         f"train.optimizer={t.optimizer!r}: expected official_adam or torch_adam"),
        (t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:"),
         f"train.device={t.device!r}: expected auto, cpu or cuda"),
        (t.eval_every > 0, f"train.eval_every={t.eval_every}: must be positive"),
        (t.eval_batch_size > 0, f"train.eval_batch_size={t.eval_batch_size}: must be positive"),
        (t.precision != "fp16", "train.precision='fp16': not supported (no gradient scaling: small GAN gradients "
                                "would underflow silently); use bf16 or fp32"),
        (t.precision in ("fp32", "bf16"), f"train.precision={t.precision!r}: expected fp32 or bf16"),
        (t.data_placement in ("auto", "device", "host"),
         f"train.data_placement={t.data_placement!r}: expected auto, device or host"),
        (t.compile in ("off", "inductor", "aot_eager", "eager"),
         f"train.compile={t.compile!r}: expected off, inductor, aot_eager or eager"),
        (t.compile_mode in (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
         f"train.compile_mode={t.compile_mode!r}: expected default, reduce-overhead, max-autotune or "
         f"max-autotune-no-cudagraphs"),
        (t.step in ("faithful", "lean"), f"train.step={t.step!r}: expected faithful or lean"),
        (t.checkpoint_every > 0, f"train.checkpoint_every={t.checkpoint_every}: must be positive"),
        (t.cuda_graph in ("auto", "on", "off"), f"train.cuda_graph={t.cuda_graph!r}: expected auto, on or off"),
        (t.init_batch > 0, f"train.init_batch={t.init_batch}: must be positive"),
        (t.init_source in ("pool", "permuted", "labeled"),
         f"train.init_source={t.init_source!r}: expected pool, permuted or labeled"),
        (0 <= t.init_pad < min(d.image_shape[1:]),
         f"train.init_pad={t.init_pad}: must be in 0..{min(d.image_shape[1:]) - 1} pixels"),
        (t.init_z is None or t.init_z > 0, f"train.init_z={t.init_z}: must be positive"),
        (not t.augment or 0 <= t.translate < min(d.image_shape[1:]),
         f"train.translate={t.translate}: must be in 0..{min(d.image_shape[1:]) - 1} pixels"),
    ]


def validate(cfg: Config) -> None:
    """Check the values that the types alone do not; raise ConfigError with one clear line. The numbers'
    ranges come first, from the schema (``check_numbers``); the checks below add what a range cannot say."""
    check_numbers(cfg)
    d = cfg.dataset
    checks = [*_data_checks(d), *_model_checks(cfg.model), *_method_checks(cfg.method), *_train_checks(cfg.train, d),
              (cfg.seed < MAX_SEED, f"seed={cfg.seed}: must be in 0..{MAX_SEED - 1} (numpy's seeds are 32-bit)")]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


# ------------------------------------------------------------------------------------------ composition

def first_line(error: BaseException) -> str:
    """The useful line of a Hydra / OmegaConf error (Hydra puts a hint "To append ... use +key" second)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return " ".join(lines[:2]) if len(lines) > 1 and lines[1].startswith("To append") else lines[0]


def override_message(error: BaseException) -> str:
    """One line for an override Hydra refused: quote a value its lexer cannot read; for a key the schema lacks,
    the nearest field (not Hydra's "use +key", which would be refused as an unknown key)."""
    message = first_line(error)
    if type(error).__name__ == "OverrideParseException":
        return f"{message} (quote a value with spaces or special characters: key='a b(c)')"
    if message.startswith("Could not override '") and "To append" in message:
        key = message.split("'")[1]
        near = difflib.get_close_matches(key, [name for name, _ in schema_fields()], n=1)
        return f"{key}: ssgan's schema has no such field" + (f"; did you mean {near[0]}?" if near else "")
    return message


PRIMARY_CONFIGS = "pkg://ssgan.configs"  # the packaged configs/ folder


def compose_dict(overrides: Sequence[str] = (), *, config_path: str = PRIMARY_CONFIGS,
                 config_dir: Optional[str] = None, config_name: str = "config"):
    """Compose ``configs/`` with Hydra overrides, without running a Hydra app, as Hydra's own app would:
    ``config_path`` (``-cp``: a ``pkg://`` or absolute path) replaces the packaged configs, ``config_dir``
    (``-cd``) adds a folder to the search path ahead of them, ``config_name`` (``-cn``) picks the root
    config. Returns the OmegaConf DictConfig without its ``hydra`` node; raises ConfigError with one line."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.types import RunMode

    register_configs()
    with hydra_globals():  # a clean GlobalHydra, cleared again afterwards
        try:
            search_path = create_config_search_path(config_path)
            if config_dir is not None:
                if not os.path.isdir(config_dir):
                    raise ConfigError(f"-cd {config_dir}: no such config directory")
                search_path.prepend(provider="command-line", path=f"file://{os.path.abspath(config_dir)}",
                                    anchor=SearchPathQuery(provider="schema"))
            hydra = Hydra.create_main_hydra2(task_name="ssgan", config_search_path=search_path)
            cfg = hydra.compose_config(config_name=config_name, overrides=list(overrides), run_mode=RunMode.RUN,
                                       with_log_configuration=False)
            with open_dict(cfg):
                del cfg["hydra"]
            return cfg
        except ConfigError:
            raise
        except Exception as error:  # Hydra and OmegaConf raise many types; all mean a bad override here
            message = override_message(error)
            if "Could not find 'hydra/launcher/" in message:  # local, slurm: configs/hydra/launcher/
                message += (" (ssgan's launcher configs: local, slurm; they extend Hydra's joblib and submitit "
                            "plugins: pip install 'ssgan[launchers]')")
            raise ConfigError(message) from None


def unknown_keys(node, schema, prefix: str = "") -> List[str]:
    """The dotted keys of a composed config that the schema does not have (added with ``+key=value``)."""
    names = []
    for key in node.keys():
        if key not in schema:
            names.append(f"{prefix}{key}")
        elif OmegaConf.is_dict(node[key]) and OmegaConf.is_dict(schema[key]):
            names += unknown_keys(node[key], schema[key], f"{prefix}{key}.")
    return names


def to_config(dict_cfg, check_values: bool = True) -> Config:
    """A composed DictConfig -> the typed Config (its keys and types checked against the schema) and, unless
    ``check_values`` is false (a config already checked, which ``train.fit`` checks again), the range
    checks of ``validate``."""
    unknown = unknown_keys(dict_cfg, OmegaConf.structured(Config))
    if unknown:
        raise ConfigError(f"unknown config key {', '.join(unknown)}: ssgan's schema has no such field "
                          f"(see ssgan fit --cfg job for the keys)")
    try:
        cfg = OmegaConf.to_object(dict_cfg)
    except Exception as error:  # OmegaConf's validation and interpolation errors
        key = getattr(error, "full_key", None)
        message = first_line(error)
        raise ConfigError(f"{key}: {message}" if key and key not in message else message) from None
    if check_values:
        validate(cfg)
    if cfg.model.arch == "custom":  # composed from the user's own overrides and config folders: given
        GIVEN_SPECS.update(spec_text(spec) for spec in (cfg.model.discriminator, cfg.model.generator))
    return cfg


# The network specs (model.arch=custom) given in this process, as spec_text: composed from the user's overrides
# (to_config) or named by them (trust.networks_for). Hydra instantiates no other spec (trust.is_given).
GIVEN_SPECS: set = set()
spec_text = functools.partial(json.dumps, sort_keys=True, default=repr)


def compose(overrides: Sequence[str] = (), **where) -> Config:
    """Hydra overrides -> a checked ``Config``: what ``ssgan fit``, the estimator and the benchmarks build.
    ``where``: ``compose_dict``'s config_path, config_dir and config_name."""
    return to_config(compose_dict(overrides, **where))


def config_from_dict(values: Dict[str, Any]) -> Config:
    """Rebuild the typed Config stored as plain values (a checkpoint's, a result.json's), checked against
    the schema; a field the schema has since gained takes its default."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), values))
    except Exception as error:  # OmegaConf raises several error types for schema mismatches
        raise ConfigError(f"the stored config does not match this version of ssgan: "
                          f"{first_line(error)}") from None


def resolve_paths(cfg: Config) -> Config:
    """The config with ``dataset.root`` and ``dataset.path`` made absolute (``~`` expanded), so that a run's
    stored config finds its data from any working directory."""
    d = cfg.dataset
    path = None if d.path is None else os.path.abspath(os.path.expanduser(d.path))
    return replace(cfg, dataset=replace(d, root=os.path.abspath(os.path.expanduser(d.root)), path=path))


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a torch device: auto picks CUDA when there is one. A CUDA device always carries its
    index (``cuda`` -> ``cuda:0``), as the tensors placed on it do, so that devices compare equal."""
    import torch  # here, not at the top: the command line's help and usage errors load no torch

    if not (name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ConfigError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")  # (what validate accepts)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: no CUDA device is available; use train.device=cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device
