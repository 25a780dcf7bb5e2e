"""Every record of a run, and of what is made of runs, as a typed dataclass whose ``write`` and ``read`` sit side
by side: ``metrics.jsonl`` (``MetricsLog``), ``result.json`` (``RunRecord``), the figures (``RunFigures``), a
seeds run's ``seeds.json`` (``SeedsPlan``) and ``summary.json`` / ``.md`` (``SeedsSummary``), the file of
``ssgan ensemble --out`` (``EnsembleRecord``) and a saved estimator (``EstimatorFile``). Every file is written
through ``rundir``'s atomic writers; the checkpoint has a module of its own (``checkpoint.py``).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from .config import ConfigError
from .ood import TEMPERATURE_BOUNDS
from .rundir import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, CONFUSION_NAME, CURVE_NAME, METRICS_NAME, PLAN_NAME,
                     RESULT_NAME, SAMPLES_NAME, SUMMARY_MD_NAME, SUMMARY_NAME, TENSORBOARD_NAME, RunDirError,
                     atomic_create, atomic_write, make_dir, read_payload)


def _finite_or_null(value: Any) -> Any:
    """JSON has no NaN: a number that is not finite (the test error of a run with no test images) is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


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
        except (ValueError, RecursionError):  # (RecursionError: nested without bound)
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
    calibration: Optional[Dict[str, Any]] = None  # ECE, NLL, Brier of the test set (ood.finish_run)

    FILE_FIELDS = ("test_error", "val_error", "seed", "dataset", "labels", "method", "epochs", "iters_per_epoch",
                   "device", "seconds", "torch", "versions", "class_names", "class_values", "per_class_error",
                   "confusion_matrix", "labeled_indices", "calibration", "config")  # the file's keys, in its order
    OPTIONAL_FIELDS = ("calibration",)  # absent from the files of older versions

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
            values = {name: stored[name] for name in cls.FILE_FIELDS
                      if name in stored or name not in cls.OPTIONAL_FIELDS}
            record = cls(path=Path(run_dir), **values)
            record.seed, record.labels, record.epochs = int(record.seed), int(record.labels), int(record.epochs)
            record.iters_per_epoch = int(record.iters_per_epoch)
            record.test_error = float("nan") if record.test_error is None else float(record.test_error)
            if not isinstance(record.config, dict):
                raise TypeError("config is not a mapping")
            if record.calibration is not None and not isinstance(record.calibration, dict):
                raise TypeError("calibration is not a mapping")
            return record
        except (ValueError, KeyError, TypeError, RecursionError) as error:  # (nested without bound)
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
    (a plan of an older schema can still be found by its key); ``seeds.read_plan`` checks it."""

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
        except (OSError, KeyError, TypeError, ValueError, RecursionError) as error:
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
        except (OSError, KeyError, TypeError, ValueError, RecursionError) as error:
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
        except (OSError, KeyError, TypeError, ValueError, RecursionError) as error:
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
    temperature: Optional[float] = None  # fitted on a validation split (ood.calibrate); absent in older files

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
        missing = [name for name in names if name not in payload and name != "temperature"]
        if missing:
            raise RunDirError(f"{path}: incomplete estimator file, missing {missing}")
        temperature = payload.get("temperature")
        low, high = TEMPERATURE_BOUNDS
        if temperature is not None and not (isinstance(temperature, float) and low <= temperature <= high):
            raise RunDirError(f"{path}: malformed estimator file: temperature {temperature!r:.40} is not a number "
                              f"in {low}..{high}")
        dtype = payload.get("classes_dtype")
        try:  # the dtype the classes are rebuilt with: booleans, numbers, short strings or plain objects
            ok = isinstance(dtype, str) and np.dtype(dtype).kind in "biufUO" and np.dtype(dtype).itemsize <= 4096
        except TypeError:
            ok = False
        if not ok:
            raise RunDirError(f"{path}: malformed estimator file: classes_dtype {dtype!r:.40} is not a dtype of "
                              f"booleans, numbers or short strings")
        return cls(**{name: payload.get(name) for name in names})
