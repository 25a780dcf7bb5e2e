"""Training: the loop (``train_loop``), and ``fit`` / ``fit_grid``, the one path that the CLI, the seeds runs,
the tables, the benchmarks and the estimator call.

``train_loop`` reads top to bottom: per epoch the learning rates and the data order; per iteration a
``Batch``, then ``engine.step(batch)`` (one D step, one G step and the Polyak update, ``engines.py``); at
the end of the epoch the finite check, the temporal ensemble, evaluation, the log and the checkpoint. The
same loop trains one model (``engines.SingleEngine``, batches (B, ...)) or several stacked and vectorised
(``concurrent.StackedEngine``, batches (S, B, ...)); ``accelerate.Captured`` wraps the step as a CUDA graph.
The loop's feed (``Member``, one model's share of a training; ``Batches``; the temporal ensemble) is
``feed.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import ood, plots
from .accelerate import Captured, decide_capture, gatherer, numerics, place_data, use_cuda_graph
from .checkpoint import check_resume_fits, load_checkpoint, remove_stale_temporaries, write_group_checkpoints
from .concurrent import StackedEngine, check_supported
from .config import Config, ConfigError, first_line, resolve_device, validate
from .data import DataError, ImageData, balanced_labeled_subset, epoch_order, load_data
from .engines import STAT_NAMES, Engine, SingleEngine
from .feed import Batches, Member, TemporalEnsemble
from .evaluate import class_report, error_rate, error_rates, predict_proba, sample_grid_png
from .models import ModelError, Networks, build_networks, init_images
from .optim import set_lr
from .records import RunFigures, RunRecord
from .rundir import CHECKPOINT_NAME, RunDirError, environment, locked, write_config
from .signals import StopSignals



def lr_at(epoch: int, base_lr: float, decay_start: Optional[int], epochs: int) -> float:
    """The official schedule: constant, then linear from ``decay_start`` to 0 at ``epochs``.

    CIFAR-10: lr * min(1, (1200 - epoch) / 400), i.e. decay_start 800 of 1200 epochs. None: constant.
    """
    if decay_start is None or epoch < decay_start or epochs <= decay_start:
        return base_lr
    return base_lr * max(0.0, (epochs - epoch) / (epochs - decay_start))


def learning_rates(cfg: Config, epoch: int) -> Tuple[float, float, float]:
    """D's, G's and the VI encoder's rates in ``epoch``: ``lr_at`` of each base rate, floored at ``min_lr``."""
    t = cfg.train
    bases = (t.lr_d or t.lr, t.lr_g or t.lr, cfg.method.vi_lr or t.lr_g or t.lr)
    return tuple(max(t.min_lr, lr_at(epoch, base, t.decay_start, t.epochs)) for base in bases)


# ------------------------------------------------------------------------------------- results, errors

class TrainingDiverged(RuntimeError):
    """A non-finite loss or parameter: training stops and keeps the last good checkpoint, which the
    message names (``run_dir``: the run directory, if any)."""

    def __init__(self, message: str, run_dir: Optional[Path] = None) -> None:
        super().__init__(message + kept_checkpoint(run_dir))


def kept_checkpoint(run_dir: Optional[Path]) -> str:
    """What a run that stops on an error keeps: "; the last good checkpoint is ..." (nothing without a run
    directory)."""
    if run_dir is None:
        return ""
    kept = Path(run_dir) / CHECKPOINT_NAME
    if not kept.exists():
        return "; no checkpoint was written yet"
    try:  # called good only when it passes the checks a resume makes
        load_checkpoint(kept)
    except RunDirError as error:
        return f"; its checkpoint is refused too ({error})"
    return f"; the last good checkpoint is {kept}"


class TrainingInterrupted(RuntimeError):
    """SIGINT / SIGTERM: a checkpoint of the exact position was written; ``--resume`` continues.

    ``where``: the position (None: the signal came during the final writes of a finished run, which were
    completed first). ``how_to_continue``: the command that continues (``ssgan fit --resume DIR``; None when
    nothing is left); a seeds run or a table replaces it with its own (``resume_with``).
    """

    def __init__(self, where: Optional[str], signum: int, how_to_continue: Optional[str], *,
                 after: Optional[str] = None) -> None:
        self.where, self.signum, self.how_to_continue, self.after = where, signum, how_to_continue, after
        name = signal.Signals(signum).name
        if after is not None:  # outside the loop (a seeds run, a table): what was completed before stopping
            message = f"interrupted by {name} after {after}"
        elif where is None:
            message = f"interrupted by {name} while writing the outputs of the finished run, which were completed"
        else:
            message = f"interrupted by {name} at {where}; checkpoint written"
        super().__init__(message + (f", continue with: {how_to_continue}" if how_to_continue else ""))

    def resume_with(self, how_to_continue: str) -> "TrainingInterrupted":
        return TrainingInterrupted(self.where, self.signum, how_to_continue, after=self.after)


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
    class_values: List = field(default_factory=list)  # each class's label value in the data
    test_probs: Optional[np.ndarray] = None  # (N, K) class probabilities of the test images
    raw_discriminator: Optional[nn.Module] = None  # the trained weights themselves, before averaging


# ----------------------------------------------------------------------------------------- a member

def start_member(cfg: Config, data: ImageData, x_all: Tensor, device: torch.device, run_dir: Optional[Path], *,
                 labeled_indices: Optional[np.ndarray] = None, resume: Optional[Dict] = None,
                 modules: Optional[Tuple[nn.Module, nn.Module]] = None,
                 capturable: bool = False) -> Tuple[Member, Networks]:
    """Everything a seed draws before training, in a fixed order: torch's global generator (initialisation,
    dropout, noise), the data order, z, the labeled subset (``RandomState(seed)``, unless
    ``labeled_indices`` of ``data.x_train`` are given) and the networks; then the checkpoint ``resume``,
    if any, replaces the weights, optimizers, position and random states."""
    torch.manual_seed(cfg.seed)
    order_rng = np.random.RandomState([cfg.seed, 1])  # data order; the labeled subset uses RandomState(seed)
    z_rng = torch.Generator(device).manual_seed(cfg.seed)  # z: one stream per model
    t, iters = cfg.train, iterations_per_epoch(cfg.train, len(x_all))
    if resume is not None:
        lab_idx = resume["labeled_indices"].numpy()
        check_resume_fits(resume, run_dir, len(data.y_train), iters)
    elif labeled_indices is None:
        lab_idx = balanced_labeled_subset(data.y_train, cfg.dataset.labels, data.n_classes, cfg.seed)
    else:
        lab_idx = np.asarray(labeled_indices, dtype=np.int64)
    member = Member(cfg, run_dir, lab_idx, list(data.class_names), order_rng, z_rng, class_values=data.label_values)
    if t.init_source == "labeled":  # epoch 0's order is drawn now: its labeled stream gives the init images
        member.batches = epoch_order(order_rng, len(lab_idx), len(x_all), iters, t.batch_size)
    x_init = init_images(cfg, x_all, len(data.y_train), lab_idx, member.batches)
    probe = x_all[:2].to(device)  # two images of the data's size
    networks = build_networks(cfg, x_init, device, probe=probe, modules=modules, capturable=capturable)
    if cfg.method.ct_mode == "temporal":
        with torch.no_grad():  # eval mode: no noise or dropout, so no random number is drawn
            logits, feats = networks.disc.eval()(probe)
        networks.disc.train()
        member.te = TemporalEnsemble(len(x_all), logits.shape[1] + feats.shape[1], cfg.method.te_decay, device)
    if resume is not None:
        try:
            networks.load_state_dict(resume)
            member.load_state_dict(resume)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as error:
            raise RunDirError(f"{run_dir}: the checkpoint does not fit the networks its config names "
                              f"({first_line(error)[:200]})") from None
    return member, networks


def iterations_per_epoch(t, n_unlabeled: int) -> int:
    """``train.iters_per_epoch``, or one pass over the unlabeled pool (at least one iteration)."""
    return t.iters_per_epoch or max(1, n_unlabeled // t.batch_size)


# --------------------------------------------------------------------------------------------- the loop

def train_loop(members: Sequence[Member], engine: Engine, data: ImageData, x_all: Tensor, device: torch.device,
               signals: "StopSignals") -> None:
    """Train ``members`` (one, or several stacked in ``engine``) from their position to ``train.epochs``."""
    cfg = members[0].cfg
    t, iters = cfg.train, iterations_per_epoch(cfg.train, len(x_all))
    batches = Batches(members, x_all, data.y_train, device, stacked=engine.stacked,
                      gather=gatherer(x_all, device))  # plain indexing on the CPU
    x_test, y_test = place_data(data.x_test, device, t.data_placement), torch.from_numpy(data.y_test).to(device)
    stats = torch.zeros(len(members), iters, len(STAT_NAMES), device=device)  # (S, ...): S = 1 for one model
    with _progress(members, iters) as progress:
        for epoch in range(members[0].epoch, t.epochs):
            lrs = learning_rates(cfg, epoch)
            for optimizer, lr in zip(engine.optimizers, lrs):
                set_lr(optimizer, lr)
            stats.zero_()
            start = batches.begin_epoch(iters, stats)  # the data order (a resumed epoch brings its own)
            for it in range(start, iters):
                if signals.signum is not None:  # SIGINT / SIGTERM: checkpoint the exact position, then stop
                    _interrupt(members, engine, stats, epoch, it, signals.signum)
                batch = batches.get(it, epoch * iters + it)
                stats[:, it], outputs = engine.step(batch)  # ([S,] len(STAT_NAMES)) into (S, ...)
                batches.record(outputs)
                progress.update(1)
            means = _finite_means(members, engine, stats, epoch)  # one wait for the device
            for member in members:
                member.end_epoch()  # the position, the temporal ensemble
            evaluate = len(y_test) and ((epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs)
            errors = [None] * len(members)
            if evaluate:  # the classifier (the average) and, beside it, the network it averages
                errors = list(zip(*[error_rates(models, x_test, y_test, t.eval_batch_size) for models in (
                    [engine.averaged(s) for s in range(len(members))],
                    [engine.discriminator(s) for s in range(len(members))])]))
            _log_epoch(members, epoch + 1, lrs[0], means, errors, progress)
            if members[0].run_dir is not None and (epoch + 1) % t.checkpoint_every == 0 and epoch + 1 < t.epochs:
                _checkpoint(members, engine, stats[:, :0], checked=True)


def _interrupt(members: Sequence[Member], engine: Engine, stats: Tensor, epoch: int, done: int,
               signum: int) -> None:
    """Checkpoint every member's exact position (``done`` iterations of epoch ``epoch``) and raise."""
    for member in members:
        member.iteration = done
    _checkpoint(members, engine, stats[:, :done])
    run_dir = members[0].run_dir
    resume_dir = run_dir if len(members) == 1 or run_dir is None else run_dir.parent
    raise TrainingInterrupted(f"epoch {epoch + 1}, iteration {done}", signum, f"ssgan fit --resume {resume_dir}")


def _finite_means(members: Sequence[Member], engine: Engine, stats: Tensor, epoch: int) -> List[List[float]]:
    """Each member's mean statistics over the epoch, after checking that its losses and parameters are all
    finite (read from the device at once; the slow path names the first bad iteration or parameter)."""
    means = stats.transpose(1, 2).contiguous().mean(dim=2)  # (S, stats): each a contiguous mean over iters
    losses = stats[:, :, [STAT_NAMES.index("loss_d"), STAT_NAMES.index("loss_g")]]
    finite = torch.isfinite(losses).flatten(1).all(dim=1) & engine.finite()
    summary = torch.cat([means, finite[:, None].float()], dim=1).cpu()  # one transfer
    for s, member in enumerate(members):
        if not summary[s, -1]:
            _check_finite(stats[s], engine.networks(s), epoch, stats.shape[-2], member.run_dir,
                          label=_label(members, s))
    return summary[:, :-1].tolist()


def _log_epoch(members: Sequence[Member], epoch: int, lr: float, means: List[List[float]],
               errors: List[Optional[Tuple[float, float]]], progress) -> None:
    """Each member's record of a finished epoch (``epoch`` counts from 1) into its metrics log; ``errors``:
    each member's (averaged, raw) test errors where the epoch was evaluated. The average starts at zero (the
    official recipe) and reads worse than the raw network for many epochs: both are shown."""
    for member, row, error in zip(members, means, errors):
        record = {"epoch": epoch, "lr": lr, **dict(zip(STAT_NAMES, row))}
        if error is not None:
            member.test_error = record["test_error"] = error[0]
            record["raw_test_error"] = error[1]
        member.log_epoch(record)
    progress.set_postfix({k: f"{v:.3g}" for k, v in members[0].log.history[-1].items()
                          if k in ("loss_sup", "loss_unl", "loss_g", "test_error", "raw_test_error")},
                         refresh=False)  # redrawn at most once a second (mininterval)


def _label(members: Sequence[Member], s: int) -> str:
    """How messages name member s: nothing for a single model, its seed among several."""
    return "" if len(members) == 1 else f" (seed {members[s].cfg.seed})"


def _check_finite(stats: Tensor, networks: Networks, epoch: int, iteration: int, run_dir: Optional[Path], *,
                  label: str = "") -> None:
    """Raise TrainingDiverged naming the first iteration whose loss was not finite, or a bad parameter.

    stats: (iterations, len(STAT_NAMES)) of the epoch so far; ``epoch`` counts from 0, ``iteration`` is the
    number of finished iterations; ``label`` names the model among several.
    """
    loss_columns = stats[:, [STAT_NAMES.index("loss_d"), STAT_NAMES.index("loss_g")]]  # (I, 2)
    bad = (~torch.isfinite(loss_columns)).any(dim=1).nonzero()
    if len(bad):
        first = int(bad[0])
        raise TrainingDiverged(f"training diverged at epoch {epoch + 1}, iteration {first + 1}{label}: "
                               f"non-finite loss (loss_d={float(loss_columns[first, 0])}, "
                               f"loss_g={float(loss_columns[first, 1])})", run_dir)
    for name, module in (("discriminator", networks.disc), ("generator", networks.gen)):
        for key, p in module.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingDiverged(f"training diverged at epoch {epoch + 1}, iteration {iteration}{label}: "
                                       f"non-finite {name} parameter {key}", run_dir)


@contextlib.contextmanager
def _progress(members: Sequence[Member], iters: int) -> Iterator[tqdm]:
    """The progress bar over every iteration of the training, started at the members' position."""
    t, d = members[0].cfg.train, members[0].cfg.dataset
    who = f"seed {members[0].cfg.seed}" if len(members) == 1 else f"{len(members)} seeds"
    threads = torch.get_num_threads()  # (said here: the thread count is what a slow bar is first asked about)
    bar = tqdm(total=t.epochs * iters, disable=not t.progress,
               desc=f"{d.name} {d.labels} labels {who} ({threads} CPU thread{'s' * (threads > 1)})",
               file=sys.stderr, leave=False, mininterval=1.0, unit="it")
    bar.update(members[0].epoch * iters + members[0].iteration)
    try:
        yield bar
    finally:
        bar.close()


# ---------------------------------------------------------------------------------- checkpoints, outputs

def _checkpoint(members: Sequence[Member], engine: Engine, stats: Tensor, *, checked: bool = False) -> None:
    """Write the members' checkpoints at their (common) position, after checking that nothing diverged (a
    diverged state never replaces the last good one; ``checked``: the epoch's summary has just checked it).
    Models trained together commit their checkpoints as one unit (``checkpoint.write_group_checkpoints``), so a
    kill between two members' writes never leaves the group at two positions.
    stats: (S, iteration, len(STAT_NAMES)), the epoch's so far."""
    items = []
    for s, (member, rows) in enumerate(zip(members, stats.unbind(0))):
        if member.run_dir is None:
            continue
        if not checked:
            _check_finite(rows, engine.networks(s), member.epoch, member.iteration, member.run_dir,
                          label=_label(members, s))
        items.append((member.run_dir, member.cfg, {**member.state_dict(rows), **engine.state_dict(s)}))
    if items:
        write_group_checkpoints(items)


def _finish(members: Sequence[Member], engine: Engine, data: ImageData, device: torch.device) -> List[FitResult]:
    """The end of the members' training: each one's final test (and validation) error and, with a run
    directory, the final checkpoints (one commit for the group), then each one's samples.png and result.json.
    Each member's outputs draw from the random state its checkpoint holds, so a member whose outputs are
    written again on resume draws the same samples."""
    results = []
    for s, member in enumerate(members):
        networks, t = engine.networks(s), member.cfg.train
        test_probs = None  # (N, K): the final classifier's, computed once for result.json and the seeds' ensembles
        if len(data.y_test):
            test_probs = predict_proba(networks.disc_avg, data.x_test, t.eval_batch_size, tf32=t.tf32)
            if not member.log.history:  # no epoch was trained (train.epochs=0): no test error was recorded
                member.test_error = error_rate(test_probs, data.y_test)
        val_error = None
        if data.x_val is not None:
            val_error = error_rate(predict_proba(networks.disc_avg, data.x_val, t.eval_batch_size, tf32=t.tf32),
                                   data.y_val)
        results.append(FitResult(member.test_error, networks.disc_avg, networks.gen, member.labeled_indices,
                                 member.class_names, member.log.history, member.run_dir, val_error,
                                 member.class_values, test_probs, networks.disc))
    _checkpoint(members, engine, torch.zeros(len(members), 0, len(STAT_NAMES)))
    random_state = torch.get_rng_state()  # as the checkpoints hold it
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    for member, result in zip(members, results):
        if member.run_dir is not None:
            torch.set_rng_state(random_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state_all(cuda_state)
            write_outputs(result, member.cfg, data, iterations_per_epoch(member.cfg.train, len(data.x_unlabeled)),
                          device)
    return results


def write_outputs(result: FitResult, cfg: Config, data: ImageData, iters: int, device: torch.device) -> None:
    """The end of a run directory (the checkpoint is written before): the figures (samples.png and, with the
    plots extra, curve.png and confusion_matrix.png), then result.json with the per-class errors and confusion
    matrix of the averaged discriminator."""
    run_dir = result.run_dir
    title = f"{cfg.dataset.name}, {cfg.dataset.labels} labels, {cfg.method.name}, seed {cfg.seed}"
    samples = (sample_grid_png(result.generator, cfg.dataset.scaling, batch_size=cfg.train.batch_size)
               if cfg.train.sample_grid else None)
    report = None if result.test_probs is None else class_report(result.test_probs, data.y_test, result.class_names)
    confusion = None if report is None else plots.confusion_matrix_png(report["confusion_matrix"],
                                                                       result.class_names, f"{title}: test set")
    RunFigures(samples=samples, curve=plots.curve_png(result.history, title), confusion=confusion).write(run_dir)
    calibration = ood.finish_run(run_dir, result.discriminator, data, cfg)  # calibration.json, reliability.png
    RunRecord(
        path=run_dir, test_error=result.test_error, val_error=result.val_error, seed=cfg.seed,
        dataset=cfg.dataset.name, labels=cfg.dataset.labels, method=cfg.method.name, epochs=cfg.train.epochs,
        iters_per_epoch=iters, device=str(device), seconds=result.history[-1]["seconds"] if result.history else 0.0,
        torch=torch.__version__, versions=environment(device), class_names=list(result.class_names),
        class_values=list(result.class_values),
        per_class_error=None if report is None else report["per_class_error"],
        confusion_matrix=None if report is None else report["confusion_matrix"],
        labeled_indices=[int(i) for i in result.labeled_indices], calibration=calibration,
        config=asdict(cfg)).write(run_dir)


# -------------------------------------------------------------------------------------- fit, fit_grid

def prepare(cfg: Config, data: Optional[ImageData], n_models: int = 1) -> Tuple[Config, ImageData, torch.device]:
    """The device, the data (loaded unless given) and the config with the data's number of classes; sizes
    that the data or the memory cannot hold are refused before anything is allocated."""
    device = resolve_device(cfg.train.device)
    use_cuda_graph(cfg, device)  # train.cuda_graph=on where it cannot capture: refused before anything starts
    if data is None:
        data = load_data(cfg.dataset, cfg.seed)
    t, n_unlabeled = cfg.train, len(data.x_unlabeled)
    iters = iterations_per_epoch(t, n_unlabeled)
    # An epoch's order: three (iterations, batch) index arrays per model, with copies on the way to the device;
    # a batch: three real and one generated batch of images per model (activations come on top).
    order_bytes = 4 * 3 * 8 * n_models * iters * t.batch_size
    batch_bytes = 4 * 4 * n_models * t.batch_size * math.prod(data.x_unlabeled.shape[1:])
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if device.type == "cuda":
        memory = min(memory, torch.cuda.mem_get_info(device)[1])
    if order_bytes + batch_bytes > memory / 4:
        raise DataError(f"train.batch_size={t.batch_size} with train.iters_per_epoch={iters}: an epoch's data order "
                        f"and a batch take {(order_bytes + batch_bytes) / 2**30:.1f} GiB, which does not fit in "
                        f"memory ({memory / 2**30:.1f} GiB)")
    return replace(cfg, dataset=replace(cfg.dataset, n_classes=data.n_classes)), data, device


def fit(cfg: Config, data: Optional[ImageData] = None, run_dir: Optional[Path] = None, *,
        labeled_indices: Optional[np.ndarray] = None, resume: Optional[Dict] = None,
        modules: Optional[Tuple[nn.Module, nn.Module]] = None) -> FitResult:
    """Train one model as ``cfg`` says; write the run directory if one is given.

    ``modules``: a (discriminator, generator) of one's own to train (copies of them), instead of the networks
    that ``cfg.model`` names (the estimator's ``discriminator=`` / ``generator=``). The labeled subset (unless
    ``labeled_indices`` of ``data.x_train`` are given, as the estimator does), the initialisation, the data
    order and the noise all follow from ``cfg.seed``. ``resume``: a checkpoint payload
    (``checkpoint.load_checkpoint``) to continue from exactly where it was written. Returns the test error (%) of
    the Polyak-averaged discriminator after the last epoch (NaN without test images). Raises TrainingDiverged
    or TrainingInterrupted.
    """
    validate(cfg)
    if run_dir is not None:
        cfg = replace(cfg, run_dir=str(run_dir))
    with numerics(cfg.train):
        cfg, data, device = prepare(cfg, data)
        x_all = place_data(data.x_unlabeled, device, cfg.train.data_placement)  # (U, C, H, W)
        if cfg.train.channels_last:
            x_all = x_all.contiguous(memory_format=torch.channels_last)
        capture = decide_capture(cfg, device, x_all, own_networks=modules is not None)
        member, networks = start_member(cfg, data, x_all, device, run_dir, labeled_indices=labeled_indices,
                                        resume=resume, modules=modules, capturable=capture)
        engine = SingleEngine(networks, cfg)
        (result,) = _train([member], Captured(engine, device) if capture else engine, data, x_all, device,
                           own_networks=cfg.model.arch == "custom" or modules is not None)
    return result


def grid_key(cfg: Config) -> Dict:
    """What models trained in one stacked step must share: the config but the seed, the label count and the
    run directory (the networks, the method, the schedule, the data set)."""
    return asdict(replace(cfg, seed=0, run_dir="", dataset=replace(cfg.dataset, labels=0)))


def fit_grid(cfgs: Sequence[Config], data: Optional[ImageData] = None, run_dirs: Optional[Sequence[Path]] = None,
             resumes: Optional[Sequence[Optional[Dict]]] = None) -> List[FitResult]:
    """Train one model per config at once, stacked (``concurrent.StackedEngine``), the configs differing only
    in the seed and the label count (seeds run together, a table's label counts x seeds); each keeps its own
    labeled subset, initialisation, data order and z stream. Returns their FitResults in order.
    ``run_dirs``: one per config, receiving what a single run writes; ``resumes``: one checkpoint payload (or
    None) per config, all at the same position."""
    cfgs = list(cfgs)
    for cfg in cfgs:
        validate(cfg)
        check_supported(cfg)
    if any(grid_key(cfg) != grid_key(cfgs[0]) for cfg in cfgs):
        raise ConfigError("models trained together must share their config but the seed and dataset.labels")
    resumes = list(resumes) if resumes is not None else [None] * len(cfgs)
    positions = {(int(r["epoch"]), int(r["iteration"])) if r is not None else (0, 0) for r in resumes}
    if len(positions) > 1:
        raise ConfigError(f"models trained together must start at the same position, got {sorted(positions)}")
    with numerics(cfgs[0].train):
        base, data, device = prepare(cfgs[0], data, len(cfgs))
        x_all = place_data(data.x_unlabeled, device, base.train.data_placement)  # (U, C, H, W)
        capture = decide_capture(base, device, x_all)
        members, networks = [], []
        for i, cfg in enumerate(cfgs):
            run_dir = None if run_dirs is None else Path(run_dirs[i])
            cfg = replace(cfg, dataset=replace(cfg.dataset, n_classes=data.n_classes),
                          run_dir=str(run_dir) if run_dir is not None else cfg.run_dir)
            member, net = start_member(cfg, data, x_all, device, run_dir, resume=resumes[i], capturable=capture)
            members.append(member)
            networks.append(net)
        engine = StackedEngine(networks, base, capturable=capture)
        return _train(members, Captured(engine, device) if capture else engine, data, x_all, device,
                      own_networks=base.model.arch == "custom")


def _train(members: Sequence[Member], engine: Engine, data: ImageData, x_all: Tensor,
           device: torch.device, *, own_networks: bool = False) -> List[FitResult]:
    """``train_loop`` inside what a training holds: each run directory's lock (one process trains a run
    directory at a time) with the config it trains with, the metrics logs, and SIGINT / SIGTERM turned into a
    checkpoint until the last output is written. ``own_networks``: the networks are the user's (``model=custom``
    or the estimator's modules), whose errors while they train are the user's (``_own_network_errors``)."""
    with contextlib.ExitStack() as held:
        for member in members:
            if member.run_dir is not None:
                held.enter_context(locked(member.run_dir))
                remove_stale_temporaries(member.run_dir)  # a killed writer's, now that the lock is held
                write_config(member.run_dir, member.cfg)  # the config it trains with (a resume's, too)
            member.open_log()
            held.callback(member.log.close)
        with StopSignals(any(m.run_dir is not None for m in members)) as signals, \
                _own_network_errors(members, own_networks):  # until the last write
            train_loop(members, engine, data, x_all, device, signals)
            results = _finish(members, engine, data, device)
            if signals.signum is not None:  # it came during the final writes, which are complete
                raise TrainingInterrupted(None, signals.signum, None)
    return results


@contextlib.contextmanager
def _own_network_errors(members: Sequence[Member], own_networks: bool) -> Iterator[None]:
    """A network of one's own that raises while it trains (it passed the contract check at start-up, then a
    later call failed): ModelError, one line naming the error and the last good checkpoint, which is kept (as
    is every seed's). ssgan's own exceptions, and any with its networks (a bug: a traceback), pass as they are."""
    try:
        yield
    except (TrainingDiverged, TrainingInterrupted, ConfigError, DataError, RunDirError):
        raise
    except Exception as error:
        if not own_networks:
            raise
        where = members[0].run_dir if len(members) == 1 else None
        raise ModelError(f"the network of one's own failed in epoch {members[0].epoch + 1}: "
                         f"{type(error).__name__}: {first_line(error)[:200]}" + kept_checkpoint(where)
                         + ("; each seed keeps its last good checkpoint" if len(members) > 1 else "")) from None
