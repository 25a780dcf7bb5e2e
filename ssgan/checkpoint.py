"""Checkpoints and run directories.

A checkpoint holds only tensors, numbers, strings, lists and dicts, and is always read with
``torch.load(weights_only=True)``: loading never executes code from the file, and a file carrying any other
pickle payload is refused.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from .config import Config

CHECKPOINT_FORMAT = "ssgan-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint or run directory that cannot be used: one line, exit code 2."""


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
    """Set torch's and the data order's random states back to those saved by ``save_checkpoint``."""
    torch.set_rng_state(state["torch"])
    z_rng.set_state(state["z"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    order_rng.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached"]))


def write_config(run_dir: Path, cfg: Config) -> None:
    """Create the run directory and write its resolved config as ``config.yaml``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)), encoding="utf-8")


def write_checkpoint(path: Path, payload: Dict[str, Any]) -> None:
    """Write a checkpoint atomically: a temporary file in the same folder, then a rename, so that a kill at
    any moment leaves either the previous checkpoint or the new one, never a partial file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_payload(path: Path) -> Dict[str, Any]:
    """torch.load with weights-only unpickling; a missing, corrupt or code-carrying file is one clear line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one has no central directory
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt, or not written by "
                              f"torch.save)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch names the offending object on a line "WeightsUnpickler error: Unsupported global: ..."
        lines = [line.strip() for line in str(error).splitlines() if "Unsupported" in line]
        reason = lines[0].split("error: ", 1)[-1].split(" was not")[0] if lines else "unsupported content"
        raise CheckpointError(f"{path}: refused, the file holds more than weights ({reason})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: "
                              f"{type(error).__name__})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not an ssgan file (a {type(payload).__name__}, not a dict)")
    return payload


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Read a run's checkpoint (``read_payload``) and check its format."""
    payload = read_payload(path)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an ssgan checkpoint (expected format {CHECKPOINT_FORMAT})")
    return payload


def config_from_dict(values: Dict[str, Any]) -> Config:
    """Rebuild the typed Config stored in a checkpoint (checked against the schema)."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), values))
    except Exception as error:  # OmegaConf raises several error types for schema mismatches
        raise CheckpointError(f"the checkpoint's config does not match this version of ssgan: "
                              f"{str(error).splitlines()[0]}") from None


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


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Load the checkpoint of a run directory (or a checkpoint file) into ready-to-use networks."""
    from .models import build_models

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"{run_dir}: no such run directory")
    path = run_dir / CHECKPOINT_NAME if run_dir.is_dir() else run_dir
    payload = load_checkpoint(path)
    cfg = config_from_dict(payload["config"])
    disc, gen = build_models(cfg.dataset, cfg.model)
    try:
        disc.load_state_dict(payload["discriminator_avg"])
        gen.load_state_dict(payload["generator"])
    except (RuntimeError, KeyError) as error:
        raise CheckpointError(f"{path}: the weights do not fit the architecture its config names "
                              f"({str(error).strip().splitlines()[0]})") from None
    disc.to(device).eval()
    gen.to(device)
    return Run(cfg, disc, gen, list(payload["class_names"]), payload["labeled_indices"].numpy(),
               int(payload["epoch"]), run_dir)
