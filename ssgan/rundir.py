"""The run directory: every file of a run, written and read here and nowhere else.

A run directory holds

    config.yaml     the resolved config
    overrides.yaml  the command-line overrides that composed it (``ssgan fit``)
    checkpoint.pt   the training state, written, verified and read in ``checkpoint.py``
    metrics.jsonl   one line per finished epoch (losses, lr, test error, seconds); with train.tensorboard=true
                    also tensorboard/
    result.json     the final test error, seed, labeled indices, resolved config, device and versions
    samples.png     a grid of generator samples (``RunFigures``, as the two below)
    curve.png, confusion_matrix.png   the test error and losses against epochs, and the final confusion
                    matrix (with the plots extra)
    .lock           held by the process that trains the run (``RunLock``): one at a time

A seeds run (``seeds.py``) is a folder of run directories ``seed<N>/`` with ``seeds.json`` (the plan) and
``summary.json`` / ``summary.md``.

Every file is written through ``atomic_write`` (a temporary file in the same folder, flushed to disk, then
renamed over the target), so a kill at any moment leaves the previous version or the new one, never a partial
file. Files written with ``torch.save`` (checkpoints, estimator files) are always read with
``torch.load(weights_only=True)`` (``read_payload``): loading never executes code from the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import math
import os
import re
import shutil
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
from omegaconf import OmegaConf

from .config import Config, ConfigError

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "ssgan-checkpoint-v1"
CONFIG_NAME = "config.yaml"
OVERRIDES_NAME = "overrides.yaml"
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
RESULT_NAME = "result.json"
SAMPLES_NAME = "samples.png"
CURVE_NAME = "curve.png"  # with the plots extra
CONFUSION_NAME = "confusion_matrix.png"  # with the plots extra
TENSORBOARD_NAME = "tensorboard"
LOCK_NAME = ".lock"
PLAN_NAME = "seeds.json"  # a seeds run's plan (seeds.py)
SUMMARY_NAME = "summary.json"  # a seeds run's summary (reports.py)
SUMMARY_MD_NAME = "summary.md"
OUTPUT_NAMES = (CONFIG_NAME, OVERRIDES_NAME, CHECKPOINT_NAME, METRICS_NAME, RESULT_NAME, SAMPLES_NAME, CURVE_NAME,
                CONFUSION_NAME, TENSORBOARD_NAME, PLAN_NAME, SUMMARY_NAME, SUMMARY_MD_NAME)
STAGED_NAME = ".checkpoint.pt.staged"  # a stacked group's next checkpoint, before the group commits
GROUP_COMMIT_NAME = ".group-commit.json"  # in the group's first run directory: the staged checkpoints are the new
NOT_CONTENT = (LOCK_NAME, ".hydra")  # what does not make a folder a used run directory


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file; mkstemp makes its files private


class RunDirError(ValueError):
    """A run directory or checkpoint that cannot be used as asked: one line, exit code 2."""


# ------------------------------------------------------------------------------------------- writing

def _write_temporary(path: Path, content: bytes | str) -> str:
    """``content`` in a temporary file of its own beside ``path`` (two processes never share one), flushed to
    disk; its name. A full or read-only disk is RunDirError and leaves no temporary file."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise RunDirError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        with os.fdopen(handle, "wb") as file:
            os.fchmod(file.fileno(), FILE_MODE)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise RunDirError(f"cannot write {path}: {error.strerror or error}") from None
        raise
    return tmp


def atomic_write(path: Path, content: bytes | str) -> None:
    """Write ``content`` to ``path`` atomically: a temporary file of its own in the same folder, flushed to
    disk, then renamed over ``path``. On failure the temporary file is removed and ``path`` is left as it
    was."""
    path = Path(path)
    tmp = _write_temporary(path, content)
    try:
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError):  # a full or read-only disk: the previous file is left as it was
            raise RunDirError(f"cannot write {path}: {error.strerror or error}") from None
        raise


def atomic_create(path: Path | str, content: bytes | str) -> None:
    """Write a new file that must not replace another (a command's ``--out``): the content goes to a temporary
    file of its own, flushed, then is linked to ``path`` (which fails if ``path`` exists) and the temporary
    name removed. A full or read-only disk or a file that appeared meanwhile is one line (RunDirError) and
    leaves neither ``path`` nor a temporary file: never a truncated or empty output."""
    path = Path(path)
    tmp = _write_temporary(path, content)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise RunDirError(f"{path} already exists; it is left as it was") from None
    except OSError as error:
        raise RunDirError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def make_dir(path: Path) -> None:
    """``mkdir -p``, with a file in the way or a read-only parent as one clear line."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"cannot create the directory {path}: {error.strerror or error}") from None


def default_name(cfg: Config, n_seeds: Optional[int] = None) -> str:
    """``runs/<dataset>-<labels>-<method>-seed<N>-<timestamp>`` (``-seeds<first>-<last>-`` for a seeds run);
    the timestamp is to the microsecond, so runs never collide."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    seeds = f"seed{cfg.seed}" if n_seeds is None else f"seeds{cfg.seed}-{cfg.seed + n_seeds - 1}"
    return f"runs/{cfg.dataset.name}-{cfg.dataset.labels}-{cfg.method.name}-{seeds}-{stamp}"


def default_sweep_name() -> str:
    """``runs/multirun-<timestamp>``: the folder of a Hydra sweep's jobs (``hydra.sweep.dir``)."""
    return f"runs/multirun-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"


def is_used(run_dir: Path | str) -> bool:
    """Whether a folder holds anything (but a lock file or Hydra's .hydra/): a run that must not be
    overwritten without ``--overwrite``."""
    path = Path(run_dir)
    return path.is_dir() and any(p.name not in NOT_CONTENT for p in path.iterdir())


def check_free(run_dir: Path | str, overwrite: bool) -> None:
    """A run never overwrites a used directory unless ``overwrite``; a file where the directory (or one of its
    parents) should be is refused even then."""
    path = Path(run_dir)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise RunDirError(f"run directory {run_dir}: {part} is a file, not a directory")
    if is_used(path) and not overwrite:
        raise RunDirError(f"run directory {run_dir} already exists; choose another --run-dir or pass "
                          f"--overwrite")


def clear_outputs(run_dir: Path | str) -> None:
    """What ``--overwrite`` removes before a run starts again: every file of the run-directory format
    (``OUTPUT_NAMES``, leftover temporary and staged files), also inside the ``seed<N>/`` runs of a seeds
    run, so that no old result stands beside a new checkpoint; a seed folder left empty goes too. Other files
    (in the folder or a seed folder) are left alone. A run (or seed) that another process trains is not
    touched: one line instead."""
    path = Path(run_dir)
    if not path.is_dir():
        return
    seed_runs = [p for p in path.iterdir() if p.is_dir() and re.fullmatch(r"seed\d+", p.name)]
    with contextlib.ExitStack() as held:
        for folder in [path, *seed_runs]:
            held.enter_context(locked(folder))
        for folder in [*seed_runs, path]:
            _remove_run_files(folder)
        for folder in seed_runs:  # empty but its lock file: it was a seed's run directory and nothing else
            if {p.name for p in folder.iterdir()} <= {LOCK_NAME}:
                shutil.rmtree(folder, ignore_errors=True)


def _remove_run_files(folder: Path) -> None:
    for item in folder.iterdir():
        if item.name in OUTPUT_NAMES + (STAGED_NAME, GROUP_COMMIT_NAME) or (item.name.startswith(".") and
                                                                            item.name.endswith(".tmp")):
            try:
                shutil.rmtree(item) if item.is_dir() else item.unlink()
            except OSError as error:
                raise RunDirError(f"--overwrite: cannot remove {item}: {error.strerror or error}") from None


def remove_unstarted(run_dir: Path | str) -> None:
    """Leave nothing behind of a run that could not start (bad input, Ctrl-C at start-up): the folder goes
    unless something in it is worth keeping, a checkpoint or a result (of the run, or of a seed)."""
    path = Path(run_dir)
    if path.is_dir() and not any(path.glob(f"**/{CHECKPOINT_NAME}")) and not any(path.glob(f"**/{RESULT_NAME}")):
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def removed_on_failure(*, runs: Sequence[Path | str] = (), folders: Sequence[Path | str] = ()) -> Iterator[None]:
    """Leave nothing behind of what a block could not start: if it raises (Ctrl-C included), each of ``runs``
    that did not exist before it goes as ``remove_unstarted`` decides (kept if it holds a checkpoint or a
    result), and every folder the block created for ``runs`` and ``folders`` (their parents too) goes if it
    is empty, deepest first."""
    targets = [Path(p).absolute() for p in runs]
    created = {p for t in [*targets, *(Path(f).absolute() for f in folders)] for p in (t, *t.parents)
               if not p.exists()}
    try:
        yield
    except BaseException:
        for run_dir in targets:
            if run_dir in created:
                remove_unstarted(run_dir)
        for path in sorted(created, key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise


class RunLock:
    """The lock of a run directory (``flock`` on its ``.lock`` file): one process trains a run at a time.

    The operating system releases it when the process ends, however it ends, so a killed run never leaves
    a stale lock. Held locks are counted per process, so the frame can take the lock that a seeds run
    already holds. ``acquire(wait=False)`` returns False when another process holds it; ``wait=True``
    says so once and waits.
    """

    _held: Dict[Path, List] = {}  # resolved path -> [file descriptor, count], in this process

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        self.key: Optional[Path] = None

    def acquire(self, wait: bool) -> bool:
        make_dir(self.run_dir)
        key = self.run_dir.resolve()
        if key in self._held:
            self._held[key][1] += 1
            self.key = key
            return True
        try:
            fd = os.open(self.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as error:  # a read-only mount: one line
            raise RunDirError(f"cannot lock {self.run_dir}: {error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                os.close(fd)
                return False
            logger.info(f"{self.run_dir} is being trained by another process ({self._holder(fd)}); waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._held[key] = [fd, 1]
        self.key = key
        return True

    @staticmethod
    def _holder(fd: int) -> str:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return f"pid {pid}" if pid.isdigit() else "pid unknown"

    def holder(self) -> str:
        fd = os.open(self.run_dir / LOCK_NAME, os.O_RDONLY)
        try:
            return self._holder(fd)
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.key is None:
            return
        entry = self._held[self.key]
        entry[1] -= 1
        if entry[1] == 0:
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])
            del self._held[self.key]
        self.key = None


@contextlib.contextmanager
def locked(run_dir: Path | str) -> Iterator[None]:
    """Hold a run directory's lock, or fail at once with one line if another process trains it."""
    lock = RunLock(run_dir)
    if not lock.acquire(wait=False):
        raise RunDirError(f"{run_dir} is being trained by another process ({lock.holder()}); wait for it to "
                          f"finish")
    try:
        yield
    finally:
        lock.release()


def check_new_file(path: Path | str, suffix: str, what: str = "--out") -> None:
    """A file about to be written by a command: new (never overwritten), in an existing folder, with the
    expected extension; RunDirError with one line otherwise."""
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise RunDirError(f"{what} {path}: expected a {suffix} file")
    if path.exists():
        raise RunDirError(f"{path} already exists; choose another {what}")
    if not path.parent.is_dir():
        raise RunDirError(f"{what} {path}: the folder {path.parent} does not exist")


def write_config(run_dir: Path, cfg: Config) -> None:
    """Create the run directory and write its resolved config as ``config.yaml``."""
    run_dir = Path(run_dir)
    make_dir(run_dir)
    atomic_write(run_dir / CONFIG_NAME, OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def write_overrides(run_dir: Path, overrides: Sequence[str]) -> None:
    """``overrides.yaml``: the overrides that composed the run's config, one list item each (as Hydra's
    own ``.hydra/overrides.yaml``), so that the command can be told from the resolved config."""
    make_dir(run_dir)
    atomic_write(Path(run_dir) / OVERRIDES_NAME, OmegaConf.to_yaml(OmegaConf.create(list(overrides))))


def environment(device: torch.device | str = "cpu") -> Dict[str, str]:
    """What produced a result: the versions of ssgan, its main dependencies and Python, the device's name and,
    when ssgan runs from a git checkout, its commit (marked when the checkout has uncommitted changes)."""
    import platform
    import subprocess
    from importlib import metadata

    from . import __version__

    versions = {"ssgan": __version__, "torch": torch.__version__}  # torch's own: it names the CUDA build
    for package in ("torchvision", "numpy", "scikit-learn", "hydra-core"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["python"] = platform.python_version()
    device = torch.device(device)
    if device.type == "cuda":
        versions["device"] = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        versions["device"] = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / ".git").exists():
        try:
            def git(*args: str) -> str:
                return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True,
                                      timeout=10, check=True).stdout.strip()

            commit = git("rev-parse", "HEAD")
            dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
            versions["git_commit"] = commit + (" (with uncommitted changes)" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass  # no git: the versions above still say what ran
    return versions


def _finite_or_null(value: Any) -> Any:
    """JSON has no NaN: a number that is not finite (the test error of a run with no test images) is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


# ----------------------------------------------------------------------------------- torch files

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
        make_dir(Path(run_dir))
        path = Path(run_dir) / METRICS_NAME
        if resume_epoch is not None and path.exists():
            self.history = [r for r in _read_records(path) if r["epoch"] <= resume_epoch]
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in self.history))
        try:
            self.file = open(path, "a", encoding="utf-8")
        except OSError as error:
            raise RunDirError(f"cannot write {path}: {error.strerror or error}") from None
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
            try:
                self.file.write(json.dumps(record) + "\n")
                self.file.flush()
            except OSError as error:
                raise RunDirError(f"cannot write {self.file.name}: {error.strerror or error}") from None
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


def _read_records(path: Path) -> List[Dict[str, Any]]:
    """The records of a metrics.jsonl; a last line cut by a kill while it was appended is dropped (that epoch
    is redone), a malformed line before it is one line of error."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                raise ValueError("no epoch")
        except ValueError:
            if number == len(lines):
                break
            raise RunDirError(f"{path}: line {number} is not a metrics record") from None
        records.append(record)
    return records


# -------------------------------------------------------------------------------------- finished runs

@dataclass
class RunRecord:
    """``result.json``, the outcome of a finished run (written by ``train.fit`` at its end), and where it was
    read from. The file holds every field but ``path``; a test error that is not a number (a data set without
    test images) is null in the file and NaN here."""

    path: Optional[Path]
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
    val_error: Optional[float] = None
    seconds: float = 0.0
    versions: Dict[str, str] = field(default_factory=dict)
    class_names: List[str] = field(default_factory=list)
    class_values: List[Any] = field(default_factory=list)  # each class's label value in the data
    per_class_error: Optional[Dict[str, float]] = None
    confusion_matrix: Optional[List[List[int]]] = None
    labeled_indices: List[int] = field(default_factory=list)

    FILE_FIELDS = ("test_error", "val_error", "seed", "dataset", "labels", "method", "epochs", "iters_per_epoch",
                   "device", "seconds", "torch", "versions", "class_names", "class_values", "per_class_error",
                   "confusion_matrix", "labeled_indices", "config")  # the file's keys, in its order

    def write(self, run_dir: Path) -> None:
        payload = {name: getattr(self, name) for name in self.FILE_FIELDS}
        atomic_write(Path(run_dir) / RESULT_NAME, json.dumps(_finite_or_null(payload), indent=1, allow_nan=False))

    @classmethod
    def read(cls, run_dir: Path) -> "RunRecord":
        path = Path(run_dir) / RESULT_NAME
        if not path.is_file():
            raise RunDirError(f"{run_dir}: not a finished run (no {RESULT_NAME}); finish it with "
                              f"ssgan fit --resume {run_dir}")
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            values = {name: stored[name] for name in cls.FILE_FIELDS}
            record = cls(path=Path(run_dir), **values)
            record.seed, record.labels, record.epochs = int(record.seed), int(record.labels), int(record.epochs)
            record.iters_per_epoch = int(record.iters_per_epoch)
            record.test_error = float("nan") if record.test_error is None else float(record.test_error)
            if not isinstance(record.config, dict):
                raise TypeError("config is not a mapping")
            return record
        except (ValueError, KeyError, TypeError) as error:
            raise RunDirError(f"{path}: not a result.json written by ssgan fit ({type(error).__name__}: "
                              f"{error})") from None


@dataclass
class RunFigures:
    """``samples.png`` (a grid of generator samples), ``curve.png`` and ``confusion_matrix.png`` (with the plots
    extra): a run's figures as PNG bytes, drawn by the training (``train.write_outputs`` decides which); a
    figure that is None is not written (and reads back as None)."""

    samples: Optional[bytes] = None
    curve: Optional[bytes] = None
    confusion: Optional[bytes] = None

    NAMES = {"samples": SAMPLES_NAME, "curve": CURVE_NAME, "confusion": CONFUSION_NAME}

    def write(self, run_dir: Path) -> None:
        for attribute, name in self.NAMES.items():
            content = getattr(self, attribute)
            if content is not None:
                atomic_write(Path(run_dir) / name, content)

    @classmethod
    def read(cls, run_dir: Path) -> "RunFigures":
        paths = {attribute: Path(run_dir) / name for attribute, name in cls.NAMES.items()}
        return cls(**{attribute: path.read_bytes() if path.is_file() else None for attribute, path in paths.items()})


@dataclass
class SeedsPlan:
    """``seeds.json``, what a seeds run trains (its resolved config, seeds and command), written before the
    first seed starts so that a run stopped at any point can be continued. The config stays a plain dict here
    (a plan of an older schema can still be found by its key); ``typed_config`` checks it."""

    config: Dict[str, Any]
    seeds: List[int]
    command: str

    def write(self, out_dir: Path) -> None:
        make_dir(out_dir)
        atomic_write(Path(out_dir) / PLAN_NAME, json.dumps({"config": self.config, "seeds": [int(s) for s in
                                                                                           self.seeds],
                                                            "command": self.command}, indent=1))

    @classmethod
    def read(cls, out_dir: Path) -> "SeedsPlan":
        path = Path(out_dir) / PLAN_NAME
        try:
            plan = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(plan["config"], dict):
                raise TypeError("config is not a mapping")
            return cls(plan["config"], [int(s) for s in plan["seeds"]], str(plan["command"]))
        except (OSError, KeyError, TypeError, ValueError) as error:
            raise RunDirError(f"{path}: not a seeds plan ({type(error).__name__}: {error})") from None


@dataclass
class SeedsSummary:
    """``summary.json`` (and its Markdown twin ``summary.md``): a seeds run's numbers so far, rewritten after
    every seed (``complete`` says whether every planned seed has finished). ``meta`` is the provenance
    (command, date, devices, versions, epochs, seeds, std, ensemble) that leads the file."""

    meta: Dict[str, Any]
    dataset: str
    labels: int
    method: str
    key: str
    seeds: List[int]
    finished: List[int]
    test_errors: Dict[str, float]
    mean: float
    std: Optional[float]
    ensemble_error: float
    n_test: int
    runs: Dict[str, str]
    config: Dict[str, Any]
    ensemble_per_class_error: Optional[Dict[str, float]] = None
    ensemble_confusion_matrix: Optional[List[List[int]]] = None

    @property
    def complete(self) -> bool:
        return sorted(self.finished) == sorted(self.seeds)

    def write(self, out_dir: Path, markdown: str) -> None:
        body = {name: getattr(self, name) for name in ("dataset", "labels", "method", "key", "seeds", "finished")}
        body["complete"] = self.complete
        body.update({name: getattr(self, name) for name in ("test_errors", "mean", "std", "ensemble_error",
                                                             "n_test", "runs", "config", "ensemble_per_class_error",
                                                             "ensemble_confusion_matrix")})
        atomic_write(Path(out_dir) / SUMMARY_NAME, json.dumps({**self.meta, **body}, indent=1))
        atomic_write(Path(out_dir) / SUMMARY_MD_NAME, markdown)

    @classmethod
    def read(cls, out_dir: Path) -> "SeedsSummary":
        path = Path(out_dir) / SUMMARY_NAME
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            names = [f.name for f in fields(cls) if f.name != "meta"]
            values = {name: stored.pop(name) for name in names}
            stored.pop("complete")
            return cls(meta=stored, **values)
        except (OSError, KeyError, TypeError, ValueError) as error:
            raise RunDirError(f"{path}: not a seeds summary ({type(error).__name__}: {error})") from None


@dataclass
class EnsembleRecord:
    """``ssgan ensemble --out FILE.json``: finished runs evaluated together, each one's recorded test error, their
    mean +- std (``std_kind``) and the ensemble's error, per-class errors and confusion matrix on ``n_test``
    images. A new file: it never replaces another (``atomic_create``)."""

    runs: List[str]
    test_errors: List[float]
    mean: float
    std: Optional[float]
    std_kind: str
    ensemble_error: float
    n_test: int
    classes: List[str]
    per_class_error: Optional[Dict[str, float]]
    confusion_matrix: Optional[List[List[int]]]

    def write(self, path: Path | str) -> None:
        body = {f.name: getattr(self, f.name) for f in fields(self)}
        atomic_create(path, json.dumps(_finite_or_null(body), indent=1, allow_nan=False))

    @classmethod
    def read(cls, path: Path | str) -> "EnsembleRecord":
        try:
            stored = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(**{f.name: stored[f.name] for f in fields(cls)})
        except (OSError, KeyError, TypeError, ValueError) as error:
            raise RunDirError(f"{path}: not an ensemble record ({type(error).__name__}: {error})") from None


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
            hint = (f" (an unfinished run: continue it with ssgan fit --resume {path})"
                    if (path / CHECKPOINT_NAME).exists() else "")
            raise RunDirError(f"{item}: no finished runs (no {RESULT_NAME}) in it{hint}")
        for run_dir in found:
            if run_dir.resolve() not in seen:
                seen.add(run_dir.resolve())
                records.append(RunRecord.read(run_dir))
    return records


# ------------------------------------------------------------------------------------ estimator files

ESTIMATOR_FORMAT = "ssgan-estimator-v1"
# Files of an estimator fitted with the tabular recipe: they also hold the min-max scaler, which a reader of
# v1 files would ignore (and then scale the rows as pixels), so they carry a format of their own.
TABULAR_FORMAT = "ssgan-estimator-v2"
ESTIMATOR_FORMATS = (ESTIMATOR_FORMAT, TABULAR_FORMAT)


@dataclass
class EstimatorFile:
    """A fitted ``SSGANClassifier`` in one file (``save`` / ``load``): its parameters, config, both networks'
    weights, classes and, for the tabular recipe, the scaler's per-feature minimum and maximum (then the file's
    format is ``TABULAR_FORMAT``). Only tensors, numbers, strings, lists and dicts: read weights-only."""

    params: Dict[str, Any]
    config: Dict[str, Any]
    discriminator: Dict[str, torch.Tensor]
    generator: Dict[str, torch.Tensor]
    classes: List[Any]
    classes_dtype: str
    n_features_in: int
    value_max: Optional[float]
    history: List[Dict[str, float]]
    data_min: Optional[torch.Tensor] = None  # float64, tabular recipe only
    data_max: Optional[torch.Tensor] = None

    @property
    def tabular(self) -> bool:
        return self.data_min is not None

    def write(self, path: Path) -> None:
        payload = {"format": TABULAR_FORMAT if self.tabular else ESTIMATOR_FORMAT}
        payload.update({f.name: getattr(self, f.name) for f in fields(self)
                        if self.tabular or f.name not in ("data_min", "data_max")})
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write(path, buffer.getvalue())

    @staticmethod
    def is_one(path: Path) -> bool:
        """Whether ``path`` is a file written by ``write`` (not a run's checkpoint)."""
        return Path(path).is_file() and read_payload(path).get("format") in ESTIMATOR_FORMATS

    @classmethod
    def read(cls, path: Path) -> "EstimatorFile":
        path = Path(path)
        if path.is_dir():
            raise RunDirError(f"{path} is a directory: SSGANClassifier.load takes a file written by save(); for a "
                              f"run directory of ssgan fit use ssgan.load({str(path)!r})")
        payload = read_payload(path)
        if payload.get("format") == CHECKPOINT_FORMAT:
            raise RunDirError(f"{path}: a checkpoint of ssgan fit, not a saved estimator; use "
                              f"ssgan.load({str(path.parent)!r})")
        if payload.get("format") not in ESTIMATOR_FORMATS:
            raise RunDirError(f"{path}: not a saved SSGANClassifier (expected format "
                              f"{' or '.join(ESTIMATOR_FORMATS)})")
        tabular = payload["format"] == TABULAR_FORMAT
        names = [f.name for f in fields(cls) if tabular or f.name not in ("data_min", "data_max")]
        missing = [name for name in names if name not in payload]
        if missing:
            raise RunDirError(f"{path}: incomplete estimator file, missing {missing}")
        return cls(**{name: payload[name] for name in names})
