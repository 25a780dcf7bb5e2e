"""The loop's feed: what ``train.py``'s loop hands an engine each iteration and keeps between iterations.

A ``Member`` is one model's share of a training (its config, run directory, labeled subset, random streams,
position and log); ``Batches`` turns the members' epoch orders into each iteration's ``engines.Batch`` (the
images and labels of the rows, the augmentation, z from each member's stream, the temporal ensemble's
targets), (B, ...) for one model and (S, B, ...) for S stacked models; ``TemporalEnsemble`` holds CT-GAN's
per-example targets (Wei et al. 2018). Nothing here touches a network.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .checkpoint import restore_rng, rng_state
from .config import Config
from .data import augment, epoch_order
from .engines import STAT_NAMES, Batch
from .models import sample_z
from .optim import debiased_rate
from .records import MetricsLog

logger = logging.getLogger("ssgan.train")  # one DEBUG record per finished epoch (the CLI shows a progress bar)


@dataclass
class Member:
    """One model of a training (one seed): its config, run directory, labeled subset, random streams and
    position. ``epoch`` counts finished epochs and ``iteration`` the finished iterations of the current one;
    mid-epoch (after an interrupt) ``batches`` holds that epoch's data order and ``stats`` its statistics."""

    cfg: Config
    run_dir: Optional[Path]
    labeled_indices: np.ndarray
    class_names: List[str]
    order_rng: np.random.RandomState
    z_rng: torch.Generator
    epoch: int = 0
    iteration: int = 0
    batches: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None
    stats: Optional[Tensor] = None  # (iteration, len(STAT_NAMES)) of the interrupted epoch
    resumed: bool = False
    log: Optional[MetricsLog] = None
    test_error: float = float("nan")
    class_values: List = field(default_factory=list)  # each class's label value in the data (ImageData)
    te: Optional[TemporalEnsemble] = None  # method.ct_mode=temporal: the per-example targets
    clock: float = 0.0  # time.time() at the start of training, less the seconds of the epochs before a resume

    def open_log(self) -> None:
        """Start the metrics log; a resumed member keeps the records of its finished epochs."""
        self.log = MetricsLog(self.run_dir, resume_epoch=self.epoch if self.resumed else None,
                              tensorboard=self.cfg.train.tensorboard)
        history = self.log.history
        self.test_error = history[-1].get("test_error", float("nan")) if history else float("nan")
        self.clock = time.time() - (history[-1]["seconds"] if history else 0.0)

    def begin_epoch(self, n_unlabeled: int, iters: int, stats: Tensor) -> Tensor:
        """This epoch's data order as rows of the unlabeled pool, (3, iters, B): labeled, unlabeled and
        feature-matching batches (drawn now, unless a resumed epoch brought its own); a resumed epoch's
        statistics go into ``stats`` (iters, len(STAT_NAMES))."""
        if self.batches is None:
            self.batches = epoch_order(self.order_rng, len(self.labeled_indices), n_unlabeled, iters,
                                       self.cfg.train.batch_size)
        if self.stats is not None:
            stats[:self.iteration] = self.stats.to(stats.device)
            self.stats = None
        lab, unl, unl_fm = (torch.from_numpy(b) for b in self.batches)
        # The labeled batches index the labeled subset; as rows of the pool they are the subset's train indices.
        return torch.stack([torch.from_numpy(self.labeled_indices)[lab], unl, unl_fm])

    def end_epoch(self) -> None:
        self.epoch, self.iteration, self.batches = self.epoch + 1, 0, None
        if self.te is not None:
            self.te.end_epoch()

    def log_epoch(self, record: Dict[str, float]) -> None:
        """Append a finished epoch's record, with the training seconds so far, to the metrics log."""
        record["seconds"] = round(time.time() - self.clock, 3)
        self.log.write(record)
        logger.debug("%s: epoch %d of %d: %s", self.run_dir or f"seed {self.cfg.seed}", record["epoch"],
                     self.cfg.train.epochs, ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))

    def state_dict(self, stats: Tensor) -> Dict:
        """The member's part of a checkpoint; ``stats`` (iteration, len(STAT_NAMES)): this epoch's so far."""
        return {"epoch": self.epoch, "iteration": self.iteration, "rng": rng_state(self.order_rng, self.z_rng),
                "batches": None if self.batches is None else [torch.from_numpy(b) for b in self.batches],
                "stats": {k: stats[:, i].cpu().clone() for i, k in enumerate(STAT_NAMES)} if self.iteration else None,
                "labeled_indices": torch.from_numpy(self.labeled_indices), "class_names": list(self.class_names),
                "class_values": list(self.class_values),
                "temporal_ensemble": None if self.te is None else self.te.state_dict()}

    def load_state_dict(self, payload: Dict) -> None:
        self.epoch, self.iteration = int(payload["epoch"]), int(payload["iteration"])
        self.batches = None if payload["batches"] is None else tuple(b.numpy() for b in payload["batches"])
        if payload["stats"] and self.iteration:
            self.stats = torch.stack([payload["stats"][k][:self.iteration].float() for k in STAT_NAMES], dim=1)
        restore_rng(payload["rng"], self.order_rng, self.z_rng)
        if self.te is not None:
            self.te.load_state_dict(payload["temporal_ensemble"])
        self.resumed = True


class Batches:
    """Each iteration's ``Batch`` from the members' (``train.Member``) epoch order: the images and labels of
    the rows (``gather``: ``accelerate.gatherer``, plain indexing on the CPU), the augmentation
    (``train.augment``), z from each member's stream, and the temporal ensemble's targets. One model:
    (B, ...); stacked models: (S, B, ...)."""

    def __init__(self, members: Sequence, x_all: Tensor, y_train: np.ndarray, device: torch.device, *,
                 stacked: bool, gather: Callable[[Tensor], Tensor]) -> None:
        self.members, self.stacked, self.device = list(members), stacked, device
        self.t, self.z_dim, self.n_unlabeled = members[0].cfg.train, members[0].cfg.model.z_dim, len(x_all)
        self.gather, self.on_device = gather, x_all.device == device
        self.y_all = torch.from_numpy(y_train).to(device)  # (N,) labels of the first N rows of x_all
        self.temporal = members[0].te is not None

    def begin_epoch(self, iters: int, stats: Tensor) -> int:
        """The epoch's rows, (3, [S,] iters, B); returns the iteration to start from (after a resume). ``stats``:
        the loop's (S, iters, len(STAT_NAMES)), S = 1 for one model: each member keeps its slice."""
        rows = [m.begin_epoch(self.n_unlabeled, iters, s) for m, s in zip(self.members, stats.unbind(0))]
        self.rows_host = torch.stack(rows, dim=1) if self.stacked else rows[0]
        self.rows = self.rows_host.to(self.device)
        return self.members[0].iteration

    def _split(self, x: Tensor) -> Sequence[Tensor]:
        """Each member's part of ``x``: ([S,] ...) -> S tensors (...)."""
        return x.unbind(0) if self.stacked else (x,)

    def _each(self, fn: Callable, rows: Tensor) -> Tensor:
        if not self.stacked:
            return fn(self.members[0], rows)
        return torch.stack([fn(m, rows[s]) for s, m in enumerate(self.members)])

    def _z(self, member, rows: Tensor) -> Tensor:
        return sample_z(self.t.batch_size, self.z_dim, self.device, member.z_rng)  # (B, z_dim)

    def _z_pair(self, rows: Tensor) -> Tuple[Tensor, Tensor]:
        """z of D's and of G's step, ([S,] B, z_dim) each: each member's two draws from its own stream, or with
        ``train.step=lean`` one draw for every model and both steps from the first member's stream (one kernel
        instead of 2 S; stacked models then draw other numbers than each alone: the same distribution)."""
        if self.t.step != "lean":
            return self._each(self._z, rows), self._each(self._z, rows)
        lead = (len(self.members),) if self.stacked else ()
        z = sample_z(2 * len(self.members) * self.t.batch_size, self.z_dim, self.device, self.members[0].z_rng)
        return z.view(2, *lead, self.t.batch_size, self.z_dim).unbind(0)

    def get(self, it: int, iteration: int) -> Batch:
        """Iteration ``it`` of the epoch (``iteration``: its index in the whole run)."""
        t, rows = self.t, self.rows.select(-2, it)  # (3, [S,] B): labeled, unlabeled, feature-matching
        x_lab, x_unl, x_fm = (self.gather(r) for r in (rows if self.on_device else self.rows_host.select(-2, it)))
        if t.augment:  # ([S,] B, C, H, W) each
            x_lab, x_unl, x_fm = (augment(x.flatten(0, -4), t.translate, t.flip).view_as(x)
                                  for x in (x_lab, x_unl, x_fm))
        z_d, z_g = self._z_pair(rows[0])
        targets = self._each(lambda m, r: m.te.targets(r), rows[1]) if self.temporal else None
        self.unl_rows = rows[1]
        rate = None
        if t.ema_start == "debiased":  # a tensor input, so that a captured step reads each step's value
            rate = torch.tensor(debiased_rate(t.ema_decay, iteration + 1), dtype=torch.float32, device=x_unl.device)
        return Batch(x_lab, self.y_all[rows[0]], x_unl, x_fm, z_d, z_g, targets, iteration, rate)

    def record(self, outputs: Tensor) -> None:
        """The temporal ensemble's latest values of the last batch's unlabeled rows: ([S,] B, K + F)."""
        if not self.temporal:
            return
        for member, rows, values in zip(self.members, self._split(self.unl_rows), self._split(outputs)):
            member.te.record(rows, values)


class TemporalEnsemble:
    """The per-example targets of CT-GAN's temporal-ensemble form (Wei et al. 2018; CT_CIFAR-10_TE.py,
    docs/method.md sec. 6.9): for every example of the unlabeled pool, a moving average over epochs of its
    logits and features from the unlabeled pass of D's step (dropout on, before the step's update).

    After each epoch, ensemble <- decay ensemble + (1 - decay) values, where ``values`` holds each example's
    latest logits and features; during epoch e (e finished epochs before it) the targets are
    ensemble / (1 - decay^e), bias-corrected, and zero in the first epoch.
    """

    def __init__(self, n_examples: int, width: int, decay: float, device: torch.device) -> None:
        self.decay = decay
        self.ensemble = torch.zeros(n_examples, width, device=device)  # (U, K + F)
        self.values = torch.zeros(n_examples, width, device=device)  # (U, K + F), the latest per example
        self.epochs = 0  # finished epochs
        self.correction = torch.ones((), device=device)  # 1 - decay^epochs (1 before the first epoch)

    def targets(self, rows: Tensor) -> Tensor:
        """The targets of the pool's ``rows`` (B,) during the current epoch: (B, K + F)."""
        return self.ensemble[rows] / self.correction

    def record(self, rows: Tensor, outputs: Tensor) -> None:
        """This iteration's logits and features (B, K + F) of the pool's ``rows`` (B,)."""
        self.values[rows] = outputs.float()

    def end_epoch(self) -> None:
        self.ensemble.mul_(self.decay).add_(self.values, alpha=1 - self.decay)
        self.epochs += 1
        self.correction.fill_(1 - self.decay ** self.epochs)

    def state_dict(self) -> Dict[str, Tensor]:
        return {"ensemble": self.ensemble.cpu(), "values": self.values.cpu(), "epochs": self.epochs}

    def load_state_dict(self, state: Dict[str, Tensor]) -> None:
        self.ensemble.copy_(state["ensemble"])
        self.values.copy_(state["values"])
        self.epochs = int(state["epochs"])
        self.correction.fill_(1 - self.decay ** self.epochs if self.epochs else 1.0)
