"""A run's checkpoint (``checkpoint.pt``): written, verified and read back here.

A checkpoint holds both networks, the averaged discriminator, the optimizers, the position (epoch, iteration,
that epoch's data order and statistics), the random states, the labeled indices, the class names and the resolved
config. It is written atomically (``rundir.atomic_write``) and holds only tensors, numbers, strings, lists and
dicts, so it is always read with ``torch.load(weights_only=True)`` (``rundir.read_payload``): loading never
executes code from the file. A SHA-256 of its content inside it turns flipped bytes into a refusal rather than
wrong weights. Models trained together (stacked) commit their checkpoints as one unit
(``write_group_checkpoints``), which ``recover_group_checkpoints`` finishes or undoes after a kill; the
temporary files of a writer killed mid-write go when the run trains again (``remove_stale_temporaries``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .config import Config, ConfigError, first_line
from .models import as_generator, build_models
from .rundir import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, CONFIG_NAME, GROUP_COMMIT_NAME, RESULT_NAME, STAGED_NAME,
                     RunDirError, atomic_write, read_payload)
from .trust import UntrustedError, networks_for, stored_config


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


def write_checkpoint(run_dir: Path, cfg: Config, state: Dict[str, Any], name: str = CHECKPOINT_NAME) -> None:
    """``checkpoint.pt``: the format tag, the resolved config and a training state (``train.Member``'s and
    the networks' ``state_dict``), written atomically."""
    payload = {"format": CHECKPOINT_FORMAT, "config": asdict(cfg), **state}
    payload["sha256"] = content_digest(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(Path(run_dir) / name, buffer.getvalue())


def write_group_checkpoints(items: Sequence[Tuple[Path, Config, Dict[str, Any]]]) -> None:
    """The checkpoints of models trained together (stacked), committed as one unit: a resumed group must
    start all its members at one position, since the in-network noise that vmap draws for a stack depends
    on its size. Each member's checkpoint is staged (``STAGED_NAME``), then the commit record is written in
    the first member's folder (the commit point), then every staged file replaces its ``checkpoint.pt``.
    ``recover_group_checkpoints`` finishes or undoes a group cut anywhere in this sequence. One member: a
    plain ``write_checkpoint``."""
    if len(items) == 1:
        write_checkpoint(*items[0])
        return
    dirs = [Path(run_dir) for run_dir, _, _ in items]
    for run_dir, cfg, state in items:
        write_checkpoint(run_dir, cfg, state, name=STAGED_NAME)
    record = dirs[0] / GROUP_COMMIT_NAME
    # relative to the record's folder, so that a run directory copied or moved mid-commit recovers its own files
    members = [os.path.relpath(d.resolve(), dirs[0].resolve()) for d in dirs]
    atomic_write(record, json.dumps({"members": members}))
    _switch_staged(dirs)
    record.unlink()


def _switch_staged(dirs: Sequence[Path]) -> None:
    for run_dir in dirs:
        staged = run_dir / STAGED_NAME
        if (run_dir / RESULT_NAME).exists():  # finished since (one at a time): its checkpoint is newer
            staged.unlink(missing_ok=True)
        elif staged.exists():
            try:
                os.replace(staged, run_dir / CHECKPOINT_NAME)
            except OSError as error:
                raise RunDirError(f"cannot write {run_dir / CHECKPOINT_NAME}: {error.strerror or error}") from None


def recover_group_checkpoints(run_dirs: Sequence[Path]) -> None:
    """Before a group of stacked models resumes (their locks held): a group commit that was cut after its
    commit record is finished (every staged checkpoint switched in), one cut before it is undone (the staged
    checkpoints removed), so every member is at the group's last committed position."""
    for run_dir in run_dirs:
        record = Path(run_dir) / GROUP_COMMIT_NAME
        if record.is_file():
            try:
                members = [str(m) for m in json.loads(record.read_text())["members"]]
            except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
                raise RunDirError(f"{record}: unreadable group commit record ({error}); move it away") from None
            _switch_staged([_group_member(Path(run_dir), member, run_dirs) for member in members])
            record.unlink()
    for run_dir in run_dirs:
        with contextlib.suppress(FileNotFoundError):
            (Path(run_dir) / STAGED_NAME).unlink()


def _group_member(record_dir: Path, member: str, run_dirs: Sequence[Path]) -> Path:
    """A member folder of a group commit record, relative to the record's folder: within its seeds run or table
    cache (at most two levels up: ``../seed1``, ``../../<key>/seed0``). An absolute path (an older ssgan's
    record) only where it is one of ``run_dirs`` itself; anything else is refused, never touched."""
    if os.path.isabs(member):
        if any(Path(member) == Path(d).resolve() for d in run_dirs):
            return Path(member)
    else:
        root = record_dir.resolve().parent.parent
        resolved = Path(os.path.normpath(record_dir.resolve() / member))
        if root in resolved.parents:
            return resolved
    raise RunDirError(f"{record_dir / GROUP_COMMIT_NAME}: names a folder outside its group ({member}); "
                      f"refused, move the record away")


def remove_stale_temporaries(run_dir: Path) -> None:
    """With the run directory's lock held, before a run trains again: a checkpoint's temporary file there is a
    killed writer's (SIGKILL runs no clean-up), and goes."""
    run_dir = Path(run_dir)
    for stale in [*run_dir.glob(f".{CHECKPOINT_NAME}.*.tmp"), *run_dir.glob(f".{STAGED_NAME}.*.tmp")]:
        with contextlib.suppress(OSError):
            stale.unlink()


def content_digest(value: Any) -> str:
    """SHA-256 of a checkpoint's content (tensors' bytes, shapes and dtypes; plain values as JSON), keys in
    order; the ``sha256`` entry itself is left out."""
    digest = hashlib.sha256()

    def feed(item: Any) -> None:
        if torch.is_tensor(item):
            flat = item.detach().cpu().contiguous()  # a copy only of a strided or expanded view
            flat = flat.as_strided((flat.numel(),), (1,))  # its elements in order, stride 1 (size-1 dims too)
            digest.update(f"T{item.dtype}{tuple(item.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy())  # the bytes in place, no copy
        elif isinstance(item, dict):
            digest.update(b"{")
            for key, sub in item.items():
                if key != "sha256":
                    digest.update(json.dumps(str(key)).encode())
                    feed(sub)
            digest.update(b"}")
        elif isinstance(item, (list, tuple)):
            digest.update(b"[")
            for sub in item:
                feed(sub)
            digest.update(b"]")
        else:
            digest.update(json.dumps(item, sort_keys=True, default=str).encode())

    feed(value)
    return digest.hexdigest()


# What a checkpoint must hold, and of which kind (the networks' and optimizers' entries are dicts).
CHECKPOINT_FIELDS = {"config": dict, "epoch": int, "iteration": int, "discriminator": dict,
                     "discriminator_avg": dict, "generator": dict, "opt_d": dict, "opt_g": dict, "rng": dict,
                     "labeled_indices": torch.Tensor, "class_names": list, "class_values": list}


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Read a run's checkpoint (``read_payload``) and check its format, its checksum and its fields."""
    payload = read_payload(path)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"{path}: not an ssgan checkpoint (expected format {CHECKPOINT_FORMAT})")
    if "sha256" not in payload:
        raise RunDirError(f"{path}: refused, the checkpoint has no checksum (sha256)")
    if payload["sha256"] != content_digest(payload):
        raise RunDirError(f"{path}: corrupt checkpoint (its content does not match its checksum)")
    missing = [k for k in CHECKPOINT_FIELDS if k not in payload]
    if missing:
        raise RunDirError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    for key, kind in CHECKPOINT_FIELDS.items():
        value = payload[key]
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
            raise RunDirError(f"{path}: malformed checkpoint entry {key!r} ({type(value).__name__} {value!r:.40})")
    if not all(isinstance(name, str) for name in payload["class_names"]):
        raise RunDirError(f"{path}: malformed checkpoint entry 'class_names' (expected a list of strings)")
    _check_content(payload, path)
    return payload


def _check_content(payload: Dict[str, Any], path: Path) -> None:
    """What a checksum recomputed by a forger does not vouch for: finite weights, labeled indices that are
    indices, one class name per output class."""
    for part in ("discriminator", "discriminator_avg", "generator"):
        for name, tensor in payload[part].items():
            if not torch.is_tensor(tensor) or (tensor.is_floating_point() and not torch.isfinite(tensor).all()):
                raise RunDirError(f"{path}: refused, {part} weight {name} is not a finite tensor")
    for part in [name for name in ("opt_d", "opt_g", "opt_e") if isinstance(payload.get(name), dict)]:
        bad = _first_non_finite(payload[part])
        if bad is not None:
            raise RunDirError(f"{path}: refused, the optimizer state {part}.{bad} is not finite")
    indices = payload["labeled_indices"]
    if indices.dim() != 1 or indices.is_floating_point() or (indices.numel() and int(indices.min()) < 0):
        raise RunDirError(f"{path}: malformed checkpoint entry 'labeled_indices' (expected indices >= 0)")
    n_classes = payload["config"].get("dataset", {}).get("n_classes") if isinstance(
        payload["config"].get("dataset"), dict) else None
    if n_classes is not None and len(payload["class_names"]) != n_classes:
        raise RunDirError(f"{path}: malformed checkpoint: {len(payload['class_names'])} class names for "
                          f"{n_classes} classes")


def _first_non_finite(state: Dict[str, Any]) -> Optional[str]:
    """The dotted name of the first tensor or number of an optimizer's state that is not finite, or None (the
    payload's size was bounded when it was read: ``rundir.check_payload_size``)."""
    stack = [(str(key), value) for key, value in state.items()]
    while stack:
        name, value = stack.pop()
        if torch.is_tensor(value):
            if value.is_floating_point() and not torch.isfinite(value).all():
                return name
        elif isinstance(value, float) and not np.isfinite(value):
            return name
        elif isinstance(value, dict):
            stack.extend((f"{name}.{key}", sub) for key, sub in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{name}.{i}", sub) for i, sub in enumerate(value))
    return None


def check_resume_fits(payload: Dict[str, Any], run_dir: Optional[Path], n_train: int, iters: int) -> None:
    """A checkpoint's position and labeled indices fit the data and the schedule it resumes with."""
    indices = payload["labeled_indices"]
    if indices.numel() and int(indices.max()) >= n_train:
        raise RunDirError(f"{run_dir}: the checkpoint's labeled indices reach {int(indices.max())}, but the data "
                          f"has {n_train} training images")
    if int(payload["iteration"]) >= iters:
        raise RunDirError(f"{run_dir}: the checkpoint's iteration {int(payload['iteration'])} is past an epoch "
                          f"of {iters} iterations")


def checkpoint_config(payload: Dict[str, Any], path: Path) -> Config:
    """The typed Config stored in a checkpoint (plain values only: ``trust.stored_config``)."""
    try:
        return stored_config(payload["config"], path)
    except UntrustedError:
        raise
    except ConfigError as error:  # (stored_config's message names the file)
        raise RunDirError(str(error)) from None


def check_config_record(run_dir: Path, cfg: Config, overrides: Sequence[str], resumable: Sequence[str]) -> None:
    """Before a resume: the checkpoint's config must be the run's, as its ``config.yaml`` records it. A field in
    which they differ is refused with one line (a checkpoint of another run, or config.yaml edited by hand,
    which would be overwritten), unless the resume's KEY=VALUE words set it now."""
    import yaml

    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        return
    try:
        recorded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as error:
        raise RunDirError(f"{path}: unreadable ({type(error).__name__}); move it away to resume") from None
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    recorded_cfg = asdict(stored_config(recorded, path))
    fields = [f for f in _differences(recorded_cfg, asdict(cfg)) if f not in given]
    if not fields:
        return
    fixed = [f for f in fields if f not in resumable]
    may = [f"{f}={_value(recorded_cfg, f)}" for f in fields if f in resumable]
    how = (f"to change {', '.join(f.split('=')[0] for f in may)}, pass {' '.join(may)} to --resume" if may else "")
    how += ("; " if may and fixed else "") + (f"{', '.join(fixed)} cannot change on a resume: put config.yaml "
                                                f"back, or move checkpoint.pt away to train afresh" if fixed else "")
    raise RunDirError(f"{run_dir}: its config.yaml and {CHECKPOINT_NAME} differ in {', '.join(fields)} (config.yaml "
                      f"is the run's record, not an input); {how}")


def _differences(a: Dict[str, Any], b: Dict[str, Any], prefix: str = "") -> List[str]:
    """The dotted names of the fields in which two configs (nested dicts) differ."""
    names = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict) and key not in ("discriminator", "generator"):
            names += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            names.append(f"{prefix}{key}")
    return names


def _value(config: Dict[str, Any], name: str) -> str:
    for part in name.split("."):
        config = config[part]
    return json.dumps(config) if not isinstance(config, str) else config


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
    class_values: List = None  # each class's label value in the data (0..K-1, or a folder's class names)


def check_weight_shapes(cfg: Config, disc_state: Any, gen_state: Any, path: Path) -> None:
    """The networks ``cfg`` names, built on the meta device (no memory, no values), against the stored weights'
    names and shapes: a stored config naming other sizes (``model.d_widths=[1000000]``: terabytes for a 1 KB
    file) is one line before anything is allocated. Fewer stored tensors than layers is refused first, so that
    not even the meta build grows with a declared list."""
    model = cfg.model
    states = [s if isinstance(s, dict) else {} for s in (disc_state, gen_state)]
    if len(model.d_widths) + len(model.g_widths) > sum(len(s) for s in states):
        raise RunDirError(f"{path}: the weights do not fit the architecture its config names (more layers than "
                          f"stored tensors)")
    with torch.device("meta"):
        disc, gen = build_models(cfg.dataset, model)
    for module, state, what in ((disc, states[0], "discriminator"), (gen, states[1], "generator")):
        built = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        stored = {k: tuple(v.shape) if torch.is_tensor(v) else None for k, v in state.items()}
        if built != stored:
            name = next((k for k in built if built[k] != stored.get(k)), None) or next(k for k in stored
                                                                                     if k not in built)
            raise RunDirError(f"{path}: the weights do not fit the architecture its config names ({what} "
                              f"{name}: {stored.get(name)} stored, {built.get(name)} named)")


def load_networks(cfg: Config, disc_state: Dict[str, torch.Tensor], gen_state: Dict[str, torch.Tensor], *,
                  path: Path, device: str | torch.device = "cpu", networks: Optional[Sequence[Any]] = None):
    """The (discriminator, generator) that ``cfg`` names, holding the given weights; the discriminator in
    eval mode with its gradients off (a classifier). Weights of another architecture are one line. A run of
    one's own networks needs ``networks``, named by the person loading it (``trust.networks_for``)."""
    cfg, modules = networks_for(cfg, networks, str(path))
    if modules is not None:  # the caller's modules: copies hold the weights
        disc, gen = copy.deepcopy(modules[0]), as_generator(copy.deepcopy(modules[1]), cfg.model.z_dim)
    else:
        if cfg.model.arch != "custom":  # (a builder named by the person is theirs, and may not build on meta)
            check_weight_shapes(cfg, disc_state, gen_state, path)
        disc, gen = build_models(cfg.dataset, cfg.model)
    try:
        disc.load_state_dict(disc_state)
        gen.load_state_dict(gen_state)
    except (RuntimeError, KeyError, TypeError) as error:
        raise RunDirError(f"{path}: the weights do not fit the architecture its config names "
                          f"({first_line(error)})") from None
    for p in disc.parameters():
        p.requires_grad_(False)
    return disc.to(device).eval(), gen.to(device)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", networks: Optional[Sequence[Any]] = None
             ) -> Run:
    """Load the checkpoint of a run directory (or a checkpoint file) into ready-to-use networks; ``networks``:
    those of a run of one's own networks, named by the person loading it (``trust.networks_for``)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunDirError(f"{run_dir}: no such run directory")
    path = run_dir / CHECKPOINT_NAME if run_dir.is_dir() else run_dir
    payload = load_checkpoint(path)
    cfg = checkpoint_config(payload, path)
    disc, gen = load_networks(cfg, payload["discriminator_avg"], payload["generator"], path=path, device=device,
                              networks=networks)
    return Run(cfg, disc, gen, list(payload["class_names"]), payload["labeled_indices"].numpy(),
               int(payload["epoch"]), run_dir, list(payload["class_values"]))
