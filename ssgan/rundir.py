"""The run directory: every file of a run, written and read here and nowhere else.

A run directory holds

    config.yaml     the resolved config
    checkpoint.pt   both networks, the averaged discriminator, the optimizers, the position (epoch, iteration,
                    that epoch's data order and statistics), the random states, the labeled indices and the
                    class names; weights-only, written atomically
    metrics.jsonl   one line per finished epoch (losses, lr, test error, seconds); with train.tensorboard=true
                    also tensorboard/
    result.json     the final test error, seed, labeled indices, resolved config, device and versions
    samples.png     a grid of generator samples

Every file is written through ``atomic_write`` (a temporary file in the same folder, flushed to disk, then
renamed over the target), so a kill at any moment leaves the previous version or the new one, never a partial
file. Checkpoints hold only tensors, numbers, strings, lists and dicts and are always read with
``torch.load(weights_only=True)``: loading never executes code from the file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from .config import Config, ConfigError, config_from_dict
from .models import build_models

CHECKPOINT_FORMAT = "ssgan-checkpoint-v1"
CONFIG_NAME = "config.yaml"
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
RESULT_NAME = "result.json"
SAMPLES_NAME = "samples.png"
TENSORBOARD_NAME = "tensorboard"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file; mkstemp makes its files private


class RunDirError(ValueError):
    """A run directory or checkpoint that cannot be used as asked: one line, exit code 2."""


# ------------------------------------------------------------------------------------------- writing

def atomic_write(path: Path, content: bytes | str) -> None:
    """Write ``content`` to ``path`` atomically: a temporary file of its own in the same folder (two
    processes never share one), flushed to disk, then renamed over ``path``. On failure the temporary
    file is removed and ``path`` is left as it was."""
    path = Path(path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            os.fchmod(file.fileno(), FILE_MODE)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def default_name(cfg: Config, n_seeds: Optional[int] = None) -> str:
    """``runs/<dataset>-<labels>-<method>-seed<N>-<timestamp>`` (``-seeds<first>-<last>-`` for a seeds run);
    the timestamp is to the microsecond, so runs never collide."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    seeds = f"seed{cfg.seed}" if n_seeds is None else f"seeds{cfg.seed}-{cfg.seed + n_seeds - 1}"
    return f"runs/{cfg.dataset.name}-{cfg.dataset.labels}-{cfg.method.name}-{seeds}-{stamp}"


def check_free(run_dir: Path | str, overwrite: bool) -> None:
    """A run never overwrites an existing, non-empty directory (or a file) unless ``overwrite``."""
    path = Path(run_dir)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise RunDirError(f"run directory {run_dir} already exists; choose another --run-dir or pass "
                          f"--overwrite")


def write_config(run_dir: Path, cfg: Config) -> None:
    """Create the run directory and write its resolved config as ``config.yaml``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / CONFIG_NAME, OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def write_result(run_dir: Path, result: Dict[str, Any]) -> None:
    """``result.json``: the outcome of a finished run (see ``read_run``)."""
    atomic_write(Path(run_dir) / RESULT_NAME, json.dumps(result, indent=1))


# ---------------------------------------------------------------------------------------- checkpoints

def rng_state(order_rng: np.random.RandomState, z_rng: torch.Generator) -> Dict[str, Any]:
    """The random states of a run: torch's global one (dropout, noise), the generator of z, the data order."""
    _, keys, pos, has_gauss, cached = order_rng.get_state()
    state = {"torch": torch.get_rng_state(), "z": z_rng.get_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any], order_rng: np.random.RandomState, z_rng: torch.Generator) -> None:
    """Set torch's, z's and the data order's random states back to those of ``rng_state``."""
    torch.set_rng_state(state["torch"])
    z_rng.set_state(state["z"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    order_rng.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached"]))


def write_checkpoint(run_dir: Path, cfg: Config, state: Dict[str, Any]) -> None:
    """``checkpoint.pt``: the format tag, the resolved config and a training state (``train.Member``'s and
    the networks' ``state_dict``), written atomically."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "config": asdict(cfg), **state}, buffer)
    atomic_write(Path(run_dir) / CHECKPOINT_NAME, buffer.getvalue())


def read_payload(path: Path) -> Dict[str, Any]:
    """torch.load with weights-only unpickling; a missing, corrupt or code-carrying file is one clear line."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one has no central directory
        raise RunDirError(f"{path}: not a readable checkpoint (truncated or corrupt, or not written by "
                          f"torch.save)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch names the offending object on a line "WeightsUnpickler error: Unsupported global: ..."
        lines = [line.strip() for line in str(error).splitlines() if "Unsupported" in line]
        reason = lines[0].split("error: ", 1)[-1].split(" was not")[0] if lines else "unsupported content"
        raise RunDirError(f"{path}: refused, the file holds more than weights ({reason})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise RunDirError(f"{path}: not a readable checkpoint (truncated or corrupt: "
                          f"{type(error).__name__})") from None
    if not isinstance(payload, dict):
        raise RunDirError(f"{path}: not an ssgan file (a {type(payload).__name__}, not a dict)")
    return payload


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Read a run's checkpoint (``read_payload``) and check its format."""
    payload = read_payload(path)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"{path}: not an ssgan checkpoint (expected format {CHECKPOINT_FORMAT})")
    return payload


def checkpoint_config(payload: Dict[str, Any], path: Path) -> Config:
    """The typed Config stored in a checkpoint."""
    try:
        return config_from_dict(payload["config"])
    except (ConfigError, KeyError) as error:
        raise RunDirError(f"{path}: {error}") from None


@dataclass
class Run:
    """A trained run loaded back: its config, the averaged discriminator (the classifier) and the generator."""

    config: Config
    discriminator: nn.Module
    generator: nn.Module
    class_names: List[str]
    labeled_indices: np.ndarray
    epoch: int
    path: Path


def load_networks(cfg: Config, disc_state: Dict[str, torch.Tensor], gen_state: Dict[str, torch.Tensor],
                  path: Path, device: str | torch.device = "cpu"):
    """The (discriminator, generator) that ``cfg`` names, holding the given weights; the discriminator in
    eval mode with its gradients off (a classifier). Weights of another architecture are one line."""
    disc, gen = build_models(cfg.dataset, cfg.model)
    try:
        disc.load_state_dict(disc_state)
        gen.load_state_dict(gen_state)
    except (RuntimeError, KeyError, TypeError) as error:
        raise RunDirError(f"{path}: the weights do not fit the architecture its config names "
                          f"({str(error).strip().splitlines()[0]})") from None
    for p in disc.parameters():
        p.requires_grad_(False)
    return disc.to(device).eval(), gen.to(device)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Load the checkpoint of a run directory (or a checkpoint file) into ready-to-use networks."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunDirError(f"{run_dir}: no such run directory")
    path = run_dir / CHECKPOINT_NAME if run_dir.is_dir() else run_dir
    payload = load_checkpoint(path)
    cfg = checkpoint_config(payload, path)
    disc, gen = load_networks(cfg, payload["discriminator_avg"], payload["generator"], path, device)
    return Run(cfg, disc, gen, list(payload["class_names"]), payload["labeled_indices"].numpy(),
               int(payload["epoch"]), run_dir)


# -------------------------------------------------------------------------------------------- metrics

class MetricsLog:
    """``metrics.jsonl`` (one JSON line per finished epoch) and, optionally, TensorBoard event files.

    A fresh run starts an empty file; a resumed one (``resume_epoch``) keeps the lines of epochs
    1..resume_epoch as its ``history`` and drops later ones (work lost to a kill, which the resumed run
    redoes), so that every epoch is logged once. Without a run directory nothing is written.
    """

    def __init__(self, run_dir: Optional[Path], *, resume_epoch: Optional[int] = None,
                 tensorboard: bool = False) -> None:
        self.history: List[Dict[str, float]] = []
        self.file, self.writer = None, None
        if run_dir is None:
            return
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        path = Path(run_dir) / METRICS_NAME
        if resume_epoch is not None and path.exists():
            records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            self.history = [r for r in records if r["epoch"] <= resume_epoch]
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in self.history))
        self.file = open(path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.close()
                raise ConfigError("train.tensorboard=true needs the tensorboard extra: "
                                  "pip install 'ssgan[tensorboard]'") from None
            self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_NAME))

    def write(self, record: Dict[str, float]) -> None:
        """Append one epoch's record (``record["epoch"]`` counts from 1)."""
        self.history.append(record)
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, record["epoch"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()
        self.file, self.writer = None, None


# -------------------------------------------------------------------------------------- finished runs

@dataclass
class RunRecord:
    """A finished run directory (one with a result.json) and what its result.json says."""

    path: Path
    seed: int
    dataset: str
    labels: int
    method: str
    test_error: float
    epochs: int
    iters_per_epoch: int
    device: str
    torch: str
    config: Dict[str, Any]


def read_run(run_dir: Path) -> RunRecord:
    """Read ``run_dir/result.json`` (written by ``train.fit`` at the end of a run)."""
    path = Path(run_dir) / RESULT_NAME
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a finished run (no {RESULT_NAME}); finish it with "
                          f"ssgan fit --resume {run_dir}")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        return RunRecord(Path(run_dir), int(result["seed"]), result["dataset"], int(result["labels"]),
                         result["method"], float(result["test_error"]), int(result["epochs"]),
                         int(result["iters_per_epoch"]), str(result.get("device", "?")),
                         str(result.get("torch", "?")), result["config"])
    except (ValueError, KeyError, TypeError) as error:
        raise RunDirError(f"{path}: not a result.json written by ssgan fit ({type(error).__name__}: "
                          f"{error})") from None


def find_runs(paths: Sequence[str | Path]) -> List[RunRecord]:
    """The finished runs in ``paths``: each is a run directory or a folder searched recursively for them
    (a multirun's sweep directory, a seeds run, a table's cache). A path given twice counts once."""
    records, seen = [], set()
    for item in paths:
        path = Path(item)
        if not path.is_dir():
            raise RunDirError(f"{item}: no such run directory")
        found = [path] if (path / RESULT_NAME).is_file() else sorted(p.parent for p in path.rglob(RESULT_NAME))
        if not found:
            hint = (" (an unfinished run: continue it with ssgan fit --resume)"
                    if (path / CHECKPOINT_NAME).exists() else "")
            raise RunDirError(f"{item}: no finished runs (no {RESULT_NAME}) in it{hint}")
        for run_dir in found:
            if run_dir.resolve() not in seen:
                seen.add(run_dir.resolve())
                records.append(read_run(run_dir))
    return records
