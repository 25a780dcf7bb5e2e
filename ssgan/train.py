"""Training: one discriminator step then one generator step per iteration (Salimans et al. 2016, sec. 5;
Wei et al. 2018), the official schedules, Polyak averaging, and ``fit``, the one path that the CLI and the
estimator both call.

Only this module calls both a network and a loss, ``backward()`` and ``optimizer.step()``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from . import losses
from .config import Config, ConfigError, MethodConfig, validate
from .data import ImageData, augment, balanced_labeled_subset, epoch_order, load_data
from .evaluate import error_rate, predict_proba, save_sample_grid
from .layers import data_dependent_init
from .models import build_models
from .optim import make_optimizer
from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_NAME, restore_rng, rng_state, write_checkpoint

# ------------------------------------------------------------------------------------- pure functions

def lr_at(epoch: int, base_lr: float, decay_start: Optional[int], epochs: int) -> float:
    """The official schedule: constant, then linear from ``decay_start`` to 0 at ``epochs``.

    CIFAR-10: lr * min(1, (1200 - epoch) / 400), i.e. decay_start 800 of 1200 epochs. None: constant.
    """
    if decay_start is None or epoch < decay_start or epochs <= decay_start:
        return base_lr
    return base_lr * max(0.0, (epochs - epoch) / (epochs - decay_start))


@torch.no_grad()
def polyak_update(avg: nn.Module, model: nn.Module, decay: float) -> None:
    """avg <- decay * avg + (1 - decay) * model for every parameter; buffers are copied."""
    avg_params = [p for p in avg.parameters()]
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(avg_params, params, 1.0 - decay)
    for b_avg, b in zip(avg.buffers(), model.buffers()):
        b_avg.copy_(b)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: no CUDA device is available; use train.device=cpu")
    return torch.device(name)


def _forward_parts(model: nn.Module, parts: List[Tensor]) -> List[Tuple[Tensor, Tensor]]:
    """Run the discriminator on several batches. Without batch-dependent layers one concatenated pass
    gives the same distribution of outputs as separate passes (dropout and noise are per example)."""
    if getattr(model, "batch_dependent", False):
        return [model(x) for x in parts]
    logits, feats = model(torch.cat(parts))
    sizes = [len(x) for x in parts]
    return list(zip(logits.split(sizes), feats.split(sizes)))


class HistoricalAverage:
    """Running mean of a network's parameters over the steps so far (Salimans et al. 2016, sec. 3.3)."""

    def __init__(self, model: nn.Module) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.means = [p.detach().clone() for p in self.params]
        self.count = 1

    @torch.no_grad()
    def update(self) -> None:
        self.count += 1
        torch._foreach_lerp_(self.means, [p.detach() for p in self.params], 1.0 / self.count)

    def penalty(self) -> Tensor:
        return losses.historical_averaging_loss(self.params, self.means)

    def state_dict(self) -> Dict:
        return {"means": [m.clone() for m in self.means], "count": self.count}

    @torch.no_grad()
    def load_state_dict(self, state: Dict) -> None:
        for mean, saved in zip(self.means, state["means"]):
            mean.copy_(saved)
        self.count = int(state["count"])


# ------------------------------------------------------------------------------------------ the steps

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """bf16 / fp16 autocast for the forward passes, or nothing. Losses are float32 whatever the networks'
    precision (they cast the logits and features before logsumexp)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def discriminator_step(disc: nn.Module, gen: nn.Module, optimizer: torch.optim.Optimizer, x_lab: Tensor,
                       y_lab: Tensor, x_unl: Tensor, z: Tensor, method: MethodConfig,
                       history: Optional[HistoricalAverage] = None,
                       amp_dtype: Optional[torch.dtype] = None, loss_fn: Optional[Callable] = None
                       ) -> Dict[str, Tensor]:
    """One update of D on L_D = L_sup + w (L_unl + L_fake + lambda CT) / 2 (+ the optional terms).

    ``loss_fn``: the loss computation, ``_discriminator_loss`` or its torch.compile'd form."""
    with autocast(x_lab.device, amp_dtype):
        loss, stats = (loss_fn or _discriminator_loss)(disc, gen, x_lab, y_lab, x_unl, z, method, history)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if history is not None:
        history.update()
    return stats


def _discriminator_loss(disc: nn.Module, gen: nn.Module, x_lab: Tensor, y_lab: Tensor, x_unl: Tensor,
                        z: Tensor, method: MethodConfig,
                        history: Optional[HistoricalAverage]) -> Tuple[Tensor, Dict[str, Tensor]]:
    with torch.no_grad():
        x_gen = gen(z)  # (B, C, H, W)
    (logits_lab, _), (logits_unl, feats_unl), (logits_gen, _) = _forward_parts(disc, [x_lab, x_unl, x_gen])
    sup = losses.supervised_loss(logits_lab, y_lab)
    unl = losses.unlabeled_loss(logits_unl, method.label_smoothing)
    fake = losses.fake_loss(logits_gen)
    ct = torch.zeros((), device=x_lab.device)
    if method.ct_weight > 0:
        # Second pass of the same unlabeled batch under fresh dropout / noise; the first is the one above.
        logits_unl2, feats_unl2 = disc(x_unl)
        ct = losses.consistency_loss(logits_unl.float().softmax(1), logits_unl2.float().softmax(1), feats_unl,
                                     feats_unl2, method.ct_feat_weight, method.ct_margin)
    loss = losses.discriminator_loss(sup, unl, fake, ct, method.unl_weight, method.ct_weight)
    if method.gradient_penalty > 0:
        eps = torch.rand(len(x_gen), *([1] * (x_gen.dim() - 1)), device=x_gen.device)
        n = min(len(x_unl), len(x_gen))
        x_hat = (eps[:n] * x_unl[:n] + (1 - eps[:n]) * x_gen[:n]).requires_grad_(True)
        realness = torch.logsumexp(disc(x_hat)[0].float(), dim=1)  # log Z(x_hat), the logit of D(x_hat)
        (grad,) = torch.autograd.grad(realness.sum(), x_hat, create_graph=True)
        loss = loss + method.gradient_penalty * losses.gradient_penalty(grad)
    if history is not None:
        loss = loss + method.historical_averaging * history.penalty()
    with torch.no_grad():
        acc = (logits_lab.argmax(1) == y_lab).float().mean()
    return loss, {"loss_d": loss.detach(), "loss_sup": sup.detach(), "loss_unl": unl.detach(),
                  "loss_fake": fake.detach(), "loss_ct": ct.detach(), "train_acc": acc}


def generator_step(disc: nn.Module, gen: nn.Module, optimizer: torch.optim.Optimizer, x_unl: Tensor,
                   z: Tensor, fm_norm: int, history_weight: float = 0.0,
                   history: Optional[HistoricalAverage] = None,
                   amp_dtype: Optional[torch.dtype] = None, loss_fn: Optional[Callable] = None) -> Tensor:
    """One update of G by feature matching against a second, independently drawn unlabeled batch.

    ``loss_fn``: the loss computation, ``_generator_loss`` or its torch.compile'd form."""
    disc.requires_grad_(False)  # no gradients for D's parameters in the G step
    try:
        with autocast(x_unl.device, amp_dtype):
            loss = (loss_fn or _generator_loss)(disc, gen, x_unl, z, fm_norm)
        if history is not None:
            loss = loss + history_weight * history.penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if history is not None:
            history.update()
    finally:
        disc.requires_grad_(True)
    return loss.detach()


def _generator_loss(disc: nn.Module, gen: nn.Module, x_unl: Tensor, z: Tensor, fm_norm: int) -> Tensor:
    x_gen = gen(z)  # (B, C, H, W)
    with torch.no_grad():
        _, feats_real = disc(x_unl)  # D in training mode, as in the official code
    _, feats_gen = disc(x_gen)
    return losses.feature_matching_loss(feats_real, feats_gen, fm_norm)


def place_data(x: np.ndarray, device: torch.device, placement: str = "auto") -> Tensor:
    """The images as one tensor on the device (``device``), or in pinned host memory (``host``) for data sets
    that do not fit; ``auto`` keeps them on a GPU while they take at most half of its free memory."""
    tensor = torch.from_numpy(x)
    if placement == "auto":
        fits = device.type != "cuda" or tensor.nbytes <= 0.5 * torch.cuda.mem_get_info(device)[0]
        placement = "device" if fits else "host"
    if placement == "device":
        return tensor.to(device)
    return tensor.pin_memory() if torch.cuda.is_available() else tensor


def batch_stream(batches: Tuple[np.ndarray, np.ndarray, np.ndarray], start: int, x_lab_all: Tensor,
                 y_lab_all: Tensor, x_unl_all: Tensor, device: torch.device) -> Iterator[Tuple[Tensor, ...]]:
    """(x_lab, y_lab, x_unl, x_unl_fm) for the iterations ``start``.. of an epoch, as index gathers.

    With the unlabeled images on the device no host work is left in the loop; from pinned host memory each
    batch is gathered and copied without blocking one iteration ahead, so the copy overlaps the step.
    """
    lab, unl, unl_fm = (torch.from_numpy(b) for b in batches)  # (iters, B) each
    lab = lab.to(device)
    on_device = x_unl_all.device == device

    def gather(it: int) -> Tuple[Tensor, ...]:
        if on_device:
            x_unl, x_unl_fm = x_unl_all[unl[it].to(device)], x_unl_all[unl_fm[it].to(device)]
        else:
            x_unl = x_unl_all[unl[it]].to(device, non_blocking=True)
            x_unl_fm = x_unl_all[unl_fm[it]].to(device, non_blocking=True)
        return x_lab_all[lab[it]], y_lab_all[lab[it]], x_unl, x_unl_fm  # (B, C, H, W), (B,), ...

    upcoming = gather(start) if start < len(lab) else None
    for it in range(start, len(lab)):
        current, upcoming = upcoming, (gather(it + 1) if it + 1 < len(lab) else None)
        yield current


def compiled_losses(backend: str, mode: Optional[str] = None) -> Tuple[Optional[Callable], Optional[Callable]]:
    """The D and G loss computations (forward passes and losses; backward follows through AOT autograd)
    captured with ``torch.compile(backend=..., mode=...)``, or (None, None) for eager. The optimizer steps
    and the Polyak update stay outside: they are already foreach kernels."""
    if backend == "off":
        return None, None
    options = {"backend": backend, **({"mode": mode} if mode else {})}
    return torch.compile(_discriminator_loss, **options), torch.compile(_generator_loss, **options)


def init_networks(cfg: Config, x_unl_all: Tensor, device: torch.device) -> Tuple[nn.Module, nn.Module]:
    """Build D and G and initialise their weight-normalised layers on a first batch (METHOD.md sec. 3):
    ``init_batch`` training images drawn with the seed, and as many generated images. Draws from torch's
    global generator, which the caller has seeded."""
    disc, gen = build_models(cfg.dataset, cfg.model)
    disc, gen = disc.to(device), gen.to(device)
    init_idx = np.random.RandomState([cfg.seed, 2]).permutation(len(x_unl_all))[:cfg.train.init_batch]
    data_dependent_init(disc, x_unl_all[torch.from_numpy(init_idx).to(x_unl_all.device)].to(device))
    data_dependent_init(gen, gen.sample_z(cfg.train.init_batch, device))
    return disc, gen


# ------------------------------------------------------------------------------------------------- fit

class TrainingDiverged(RuntimeError):
    """A non-finite loss or parameter: training stops and keeps the last good checkpoint."""


class TrainingInterrupted(RuntimeError):
    """SIGINT / SIGTERM: a checkpoint of the exact position was written; ``--resume`` continues."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class FitResult:
    """What ``fit`` returns: the final test error (%) of the averaged discriminator and the networks."""

    test_error: float
    discriminator: nn.Module  # Polyak-averaged weights, the classifier
    generator: nn.Module
    labeled_indices: np.ndarray
    class_names: List[str]
    history: List[Dict[str, float]] = field(default_factory=list)
    run_dir: Optional[Path] = None
    val_error: Optional[float] = None


@dataclass
class TrainState:
    """Everything that changes during training; a checkpoint is this plus the config.

    ``epoch`` counts finished epochs and ``iteration`` the finished iterations of the current one; mid-epoch
    (after an interrupt) ``batches`` holds that epoch's data order and ``stats`` its per-iteration losses.
    """

    disc: nn.Module
    disc_avg: nn.Module
    gen: nn.Module
    opt_d: torch.optim.Optimizer
    opt_g: torch.optim.Optimizer
    order_rng: np.random.RandomState
    z_rng: torch.Generator
    hist_d: Optional[HistoricalAverage] = None
    hist_g: Optional[HistoricalAverage] = None
    epoch: int = 0
    iteration: int = 0
    batches: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None
    stats: List[Dict[str, Tensor]] = field(default_factory=list)

    def state_dict(self) -> Dict:
        """Plain tensors, numbers, lists and dicts only (loadable with weights_only=True)."""
        return {
            "epoch": self.epoch,
            "iteration": self.iteration,
            "discriminator": self.disc.state_dict(),
            "discriminator_avg": self.disc_avg.state_dict(),
            "generator": self.gen.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "rng": rng_state(self.order_rng, self.z_rng),
            "batches": None if self.batches is None else [torch.from_numpy(b) for b in self.batches],
            "stats": {k: torch.stack([s[k] for s in self.stats]).cpu() for k in self.stats[0]}
            if self.stats else None,
            "historical_average": None if self.hist_d is None else
            {"d": self.hist_d.state_dict(), "g": self.hist_g.state_dict()},
        }

    def load_state_dict(self, payload: Dict, device: torch.device) -> None:
        self.disc.load_state_dict(payload["discriminator"])
        self.disc_avg.load_state_dict(payload["discriminator_avg"])
        self.gen.load_state_dict(payload["generator"])
        self.opt_d.load_state_dict(payload["opt_d"])
        self.opt_g.load_state_dict(payload["opt_g"])
        self.epoch, self.iteration = int(payload["epoch"]), int(payload["iteration"])
        self.batches = None if payload["batches"] is None else tuple(b.numpy() for b in payload["batches"])
        stats = payload["stats"]
        n = self.iteration if stats else 0
        self.stats = [{k: v[i].to(device) for k, v in stats.items()} for i in range(n)]
        if self.hist_d is not None and payload.get("historical_average"):
            self.hist_d.load_state_dict(payload["historical_average"]["d"])
            self.hist_g.load_state_dict(payload["historical_average"]["g"])
        restore_rng(payload["rng"], self.order_rng, self.z_rng)


def _epoch_means(stats: List[Dict[str, Tensor]]) -> Dict[str, float]:
    return {k: torch.stack([s[k] for s in stats]).float().mean().item() for k in stats[0]}


def _check_finite(state: TrainState) -> None:
    """Raise TrainingDiverged naming the first iteration whose loss was not finite, or a bad parameter."""
    if state.stats:
        losses_so_far = torch.stack([torch.stack([s["loss_d"], s["loss_g"]]) for s in state.stats])  # (I, 2)
        bad = (~torch.isfinite(losses_so_far)).any(dim=1).nonzero()
        if len(bad):
            first = int(bad[0])
            raise TrainingDiverged(f"training diverged at epoch {state.epoch + 1}, iteration {first + 1}: "
                                   f"non-finite loss (loss_d={float(losses_so_far[first, 0])}, "
                                   f"loss_g={float(losses_so_far[first, 1])})")
    for name, module in (("discriminator", state.disc), ("generator", state.gen)):
        for key, p in module.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingDiverged(f"training diverged at epoch {state.epoch + 1}, iteration "
                                       f"{state.iteration}: non-finite {name} parameter {key}")


class _StopSignals:
    """Turn SIGINT / SIGTERM into a flag checked between iterations (main thread only)."""

    def __init__(self, enabled: bool) -> None:
        self.signum: Optional[int] = None
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.previous: Dict[int, object] = {}

    def __enter__(self) -> "_StopSignals":
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _read_history(path: Path, up_to_epoch: int) -> List[Dict[str, float]]:
    """The metrics of epochs 1..up_to_epoch from metrics.jsonl; later lines (work lost to a kill that the
    resumed run redoes) are dropped from the file."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [r for r in records if r["epoch"] <= up_to_epoch]
    if len(kept) != len(records):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        tmp.replace(path)
    return kept


def fit(cfg: Config, data: Optional[ImageData] = None, run_dir: Optional[Path] = None,
        labeled_indices: Optional[np.ndarray] = None, resume: Optional[Dict] = None) -> FitResult:
    """Train one model as ``cfg`` says; write the run directory if one is given.

    The labeled subset (unless ``labeled_indices`` of ``data.x_train`` are given, as the estimator does),
    the initialisation, the data order and the noise all follow from ``cfg.seed``. ``resume`` is a
    checkpoint payload (``checkpoint.load_checkpoint``) to continue from exactly where it was written.
    Returns the test error (%) of the Polyak-averaged discriminator after the last epoch (NaN without
    test images).
    """
    validate(cfg)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(cfg.train.deterministic or was_deterministic)
    try:
        return _fit(cfg, data, run_dir, labeled_indices, resume)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _fit(cfg: Config, data: Optional[ImageData], run_dir: Optional[Path], labeled_indices: Optional[np.ndarray],
         resume: Optional[Dict]) -> FitResult:
    device = resolve_device(cfg.train.device)
    if data is None:
        data = load_data(cfg.dataset, cfg.seed)
    cfg = replace(cfg, dataset=replace(cfg.dataset, n_classes=data.n_classes))
    t, method = cfg.train, cfg.method
    torch.manual_seed(cfg.seed)  # initialisation, dropout and noise
    order_rng = np.random.RandomState([cfg.seed, 1])  # data order; the labeled subset uses RandomState(seed)
    z_rng = torch.Generator(device).manual_seed(cfg.seed)  # z: one stream per run, also in fit_concurrent

    if resume is not None:
        lab_idx = resume["labeled_indices"].numpy()
    elif labeled_indices is None:
        lab_idx = balanced_labeled_subset(data.y_train, cfg.dataset.labels, data.n_classes, cfg.seed)
    else:
        lab_idx = np.asarray(labeled_indices, dtype=np.int64)
    x_lab_all = torch.from_numpy(data.x_train[lab_idx]).to(device)  # (L, C, H, W)
    y_lab_all = torch.from_numpy(data.y_train[lab_idx]).to(device)  # (L,)
    x_unl_all = place_data(data.x_unlabeled, device, t.data_placement)  # (U, C, H, W) the whole train split
    iters = t.iters_per_epoch or max(1, len(x_unl_all) // t.batch_size)

    disc, gen = init_networks(cfg, x_unl_all, device)
    amp_dtype = AMP_DTYPES[t.precision]
    d_loss_fn, g_loss_fn = compiled_losses(t.compile, t.compile_mode)
    if t.channels_last:
        disc, gen = disc.to(memory_format=torch.channels_last), gen.to(memory_format=torch.channels_last)
        x_lab_all = x_lab_all.contiguous(memory_format=torch.channels_last)
        x_unl_all = x_unl_all.contiguous(memory_format=torch.channels_last)
    disc_avg = copy.deepcopy(disc).eval()  # Polyak average, started from the initial weights
    for p in disc_avg.parameters():
        p.requires_grad_(False)

    betas = (t.beta1, t.beta2)
    state = TrainState(
        disc, disc_avg, gen,
        make_optimizer(disc.parameters(), t.optimizer, t.lr_d or t.lr, betas, t.adam_eps),
        make_optimizer(gen.parameters(), t.optimizer, t.lr_g or t.lr, betas, t.adam_eps),
        order_rng, z_rng,
        HistoricalAverage(disc) if method.historical_averaging > 0 else None,
        HistoricalAverage(gen) if method.historical_averaging > 0 else None)
    if resume is not None:
        state.load_state_dict(resume, device)

    def save(path: Path) -> None:
        _check_finite(state)  # never write a diverged state over the last good one
        write_checkpoint(path, {"format": CHECKPOINT_FORMAT, "config": asdict(cfg), **state.state_dict(),
                                "labeled_indices": torch.from_numpy(lab_idx),
                                "class_names": list(data.class_names)})

    writer, metrics_file, history = None, None, []
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        history = _read_history(run_dir / "metrics.jsonl", state.epoch)
        metrics_file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        if t.tensorboard:
            writer = _tensorboard_writer(run_dir)

    progress = _progress(t.epochs * iters, t.progress, f"{cfg.dataset.name} {cfg.dataset.labels} labels "
                                                         f"seed {cfg.seed}")
    progress.update(state.epoch * iters + state.iteration)
    test_error = history[-1].get("test_error", float("nan")) if history else float("nan")
    start = time.time() - (history[-1]["seconds"] if history else 0.0)  # seconds count on across a resume
    try:
        with _StopSignals(run_dir is not None) as signals:
            while state.epoch < t.epochs:
                epoch = state.epoch
                lr_d = lr_at(epoch, t.lr_d or t.lr, t.decay_start, t.epochs)
                lr_g = lr_at(epoch, t.lr_g or t.lr, t.decay_start, t.epochs)
                for group in state.opt_d.param_groups:
                    group["lr"] = lr_d
                for group in state.opt_g.param_groups:
                    group["lr"] = lr_g
                if state.batches is None:
                    state.batches = epoch_order(order_rng, len(lab_idx), len(x_unl_all), iters, t.batch_size)
                stream = batch_stream(state.batches, state.iteration, x_lab_all, y_lab_all, x_unl_all, device)
                disc.train()
                gen.train()
                for it, (x_lab, y_lab, x_unl, x_unl_fm) in zip(range(state.iteration, iters), stream):
                    if signals.signum is not None:
                        raise _interrupt(signals.signum, state, run_dir, save)
                    if t.augment:
                        x_lab, x_unl, x_unl_fm = (augment(x, t.translate, t.flip) for x in (x_lab, x_unl, x_unl_fm))
                    z = gen.sample_z(t.batch_size, device, z_rng)
                    step = discriminator_step(disc, gen, state.opt_d, x_lab, y_lab, x_unl, z, method, state.hist_d,
                                              amp_dtype, d_loss_fn)
                    z = gen.sample_z(t.batch_size, device, z_rng)
                    step["loss_g"] = generator_step(disc, gen, state.opt_g, x_unl_fm, z, method.fm_norm,
                                                    method.historical_averaging, state.hist_g, amp_dtype, g_loss_fn)
                    polyak_update(disc_avg, disc, t.ema_decay)
                    state.stats.append(step)
                    state.iteration = it + 1
                    progress.update(1)
                _check_finite(state)
                record = {"epoch": epoch + 1, "lr": lr_d, **_epoch_means(state.stats)}
                state.epoch, state.iteration, state.batches, state.stats = epoch + 1, 0, None, []
                if len(data.y_test) and (state.epoch % t.eval_every == 0 or state.epoch == t.epochs):
                    test_error = error_rate(predict_proba(disc_avg, data.x_test, t.eval_batch_size), data.y_test)
                    record["test_error"] = test_error
                record["seconds"] = round(time.time() - start, 3)
                history.append(record)
                progress.set_postfix({k: f"{record[k]:.3g}" for k in ("loss_sup", "loss_unl", "loss_g",
                                                                      "test_error") if k in record},
                                     refresh=False)  # redrawn at most once a second (mininterval)
                if metrics_file is not None:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                if writer is not None:
                    for key, value in record.items():
                        if key != "epoch":
                            writer.add_scalar(key, value, state.epoch)
                if run_dir is not None and state.epoch % t.checkpoint_every == 0 and state.epoch < t.epochs:
                    save(run_dir / CHECKPOINT_NAME)
    finally:
        progress.close()
        if metrics_file is not None:
            metrics_file.close()
        if writer is not None:
            writer.close()

    if not history and len(data.y_test):
        test_error = error_rate(predict_proba(disc_avg, data.x_test, t.eval_batch_size), data.y_test)
    val_error = None
    if data.x_val is not None:
        val_error = error_rate(predict_proba(disc_avg, data.x_val, t.eval_batch_size), data.y_val)
    result = FitResult(test_error, disc_avg, gen, lab_idx, data.class_names, history, run_dir, val_error)
    if run_dir is not None:
        save(run_dir / CHECKPOINT_NAME)
        write_outputs(result, cfg, iters, device)
    return result


def write_outputs(result: FitResult, cfg: Config, iters: int, device: torch.device) -> None:
    """The end of a run directory: samples.png and result.json (the checkpoint is written by the caller)."""
    if cfg.train.sample_grid:
        save_sample_grid(result.generator, result.run_dir / "samples.png", cfg.dataset.scaling,
                         batch_size=cfg.train.batch_size)
    summary = {"test_error": result.test_error, "val_error": result.val_error, "seed": cfg.seed,
               "dataset": cfg.dataset.name, "labels": cfg.dataset.labels, "method": cfg.method.name,
               "epochs": cfg.train.epochs, "iters_per_epoch": iters, "device": str(device),
               "seconds": result.history[-1]["seconds"] if result.history else 0.0, "torch": torch.__version__,
               "labeled_indices": [int(i) for i in result.labeled_indices], "config": asdict(cfg)}
    (result.run_dir / "result.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")


def _interrupt(signum: int, state: TrainState, run_dir: Path, save) -> TrainingInterrupted:
    save(run_dir / CHECKPOINT_NAME)
    return TrainingInterrupted(f"interrupted by {signal.Signals(signum).name} at epoch {state.epoch + 1}, "
                               f"iteration {state.iteration}; checkpoint written, continue with: "
                               f"ssgan fit --resume {run_dir}", signum)


def _progress(total: int, enabled: bool, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=description, file=sys.stderr, leave=False,
                mininterval=1.0, unit="it")


def _tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("train.tensorboard=true needs the tensorboard extra: pip install 'ssgan[tensorboard]'"
                          ) from None
    return SummaryWriter(str(run_dir / "tensorboard"))
