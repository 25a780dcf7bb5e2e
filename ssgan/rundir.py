"""The run directory: its files' names, the atomic writers every file of a run goes through, the folder's life
(a new name, refusing to overwrite, ``--overwrite``'s clearing, removing what could not start) and its lock.

A run directory holds

    config.yaml     the resolved config (``write_config``)
    overrides.yaml  the command-line overrides that composed it (``ssgan fit``; ``write_overrides``)
    checkpoint.pt   the training state, written, verified and read in ``checkpoint.py``
    metrics.jsonl   one line per finished epoch (losses, lr, test error, seconds); with train.tensorboard=true
                    also tensorboard/ (``records.MetricsLog``)
    result.json     the final test error, seed, labeled indices, resolved config, device and versions
                    (``records.RunRecord``)
    samples.png     a grid of generator samples (``records.RunFigures``, as the two below)
    curve.png, confusion_matrix.png   the test error and losses against epochs, and the final confusion
                    matrix (with the plots extra)
    calibration.json, reliability.png   the temperature fitted on the validation split (dataset.val_size > 0)
                    and the test set's reliability diagram (``ood.py``)
    ood.json, ood_scores.png   written by ``ssgan evaluate --ood``: OOD metrics and score histograms
    .lock           held by the process that trains the run (``RunLock``): one at a time

A seeds run (``seeds.py``) is a folder of run directories ``seed<N>/`` with ``seeds.json`` (the plan,
``records.SeedsPlan``) and ``summary.json`` / ``summary.md`` (``records.SeedsSummary``). Each record is a typed
dataclass in ``records.py`` with its ``write`` and ``read`` side by side.

Every file is written through ``atomic_write`` (a temporary file in the same folder, flushed to disk, then
renamed over the target), so a kill at any moment leaves the previous version or the new one, never a partial
file; a command's new file (``--out``) through ``atomic_create``, which never replaces one. Files written with
``torch.save`` (checkpoints, estimator files) are always read with ``torch.load(weights_only=True)``
(``read_payload``): loading never executes code from the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import pickle
import tempfile
import zipfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence

from omegaconf import OmegaConf

from .config import Config

if TYPE_CHECKING:
    import torch  # (loaded where a checkpoint is read, not on import)

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
CALIBRATION_NAME = "calibration.json"  # the temperature fitted on the validation split (ood.py)
RELIABILITY_NAME = "reliability.png"  # the test set's reliability diagram (ood.py; plots extra)
OOD_NAME = "ood.json"  # ssgan evaluate --ood: the scores' AUROC, AUPR-in, FPR95 per foreign set
OOD_PNG_NAME = "ood_scores.png"  # ssgan evaluate --ood: histograms of the scores (plots extra)
TENSORBOARD_NAME = "tensorboard"
LOCK_NAME = ".lock"
PLAN_NAME = "seeds.json"  # a seeds run's plan (seeds.py)
SUMMARY_NAME = "summary.json"  # a seeds run's summary (reports.py)
SUMMARY_MD_NAME = "summary.md"
STAGED_NAME = ".checkpoint.pt.staged"  # a stacked group's next checkpoint, before the group commits
GROUP_COMMIT_NAME = ".group-commit.json"  # in the group's first run directory: the staged checkpoints are committed
OUTPUT_NAMES = (CONFIG_NAME, OVERRIDES_NAME, CHECKPOINT_NAME, METRICS_NAME, RESULT_NAME, SAMPLES_NAME, CURVE_NAME,
                CONFUSION_NAME, TENSORBOARD_NAME, PLAN_NAME, SUMMARY_NAME, SUMMARY_MD_NAME, STAGED_NAME,
                GROUP_COMMIT_NAME, CALIBRATION_NAME, RELIABILITY_NAME, OOD_NAME, OOD_PNG_NAME)
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


TABLE_DIR = "runs/table"  # a table's runs and its .md / .json / .png by default: with the user's runs, never the
# checkout's results/ (the maintainers write those with an explicit --out-dir results)


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
        if item.name in OUTPUT_NAMES or (item.name.startswith(".") and item.name.endswith(".tmp")):
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

    import torch

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


# ----------------------------------------------------------------------------------- torch files

def read_payload(path: Path) -> Dict[str, Any]:
    """torch.load with weights-only unpickling; a missing, corrupt or code-carrying file is one clear line."""
    import torch  # here: the run directory's checks (and the command line's usage errors) load no torch

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
    except Exception as error:  # a truncated, corrupt or malformed pickle raises any of many types
        raise RunDirError(f"{path}: not a readable checkpoint (truncated or corrupt: "
                          f"{type(error).__name__})") from None
    if not isinstance(payload, dict):
        raise RunDirError(f"{path}: not an ssgan file (a {type(payload).__name__}, not a dict)")
    check_payload_size(payload, path)
    return payload


# What a payload may hold, counted before anything walks it recursively (the checksum): a run's checkpoint has a
# few thousand values, nested about 6 deep. Shared lists (a few bytes in a pickle) could stand for 2**64 values.
MAX_PAYLOAD_VALUES = 1_000_000
MAX_PAYLOAD_DEPTH = 32


def check_payload_size(payload: Any, path: Path) -> None:
    """Count the values of an unpickled payload without recursion, following every reference as the checksum
    does; RunDirError at once when they are too many or nested too deep."""
    stack, seen = [(payload, 0)], 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_PAYLOAD_VALUES:
            raise RunDirError(f"{path}: refused, too large (more than {MAX_PAYLOAD_VALUES:,} values; shared or "
                              f"repeated lists)")
        if depth > MAX_PAYLOAD_DEPTH:
            raise RunDirError(f"{path}: refused, nested too deep (more than {MAX_PAYLOAD_DEPTH} levels)")
        if isinstance(value, dict):
            stack.extend((sub, depth + 1) for sub in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((sub, depth + 1) for sub in value)
