"""Out-of-distribution scores and calibration of a trained run's classifier (the averaged discriminator).

Scores, higher = more like the training data (scikit-learn's convention for ``score_samples``):

    msp     max_k softmax(l(x))_k, the maximum class probability (Hendrycks & Gimpel 2017), the usual baseline;
    log_z   log Z(x) = logsumexp_k l_k(x), the discriminator's own "real" log-odds: with the fake class's logit
            fixed at 0, D(x) = Z(x) / (Z(x) + 1) (Salimans et al. 2016, sec. 5), which the unlabeled and fake
            terms push up on data and down on generated samples near it. Without a GAN (method.unl_weight=0)
            it is the energy score of Liu et al. 2020, trained by nothing but the labels.

Metrics of a score on in-distribution images (positives) against foreign ones: AUROC, AUPR-in (average
precision with the in-distribution images as positives, as scikit-learn's ``average_precision_score``) and
the false-positive rate at 95 % true positives (FPR95: the share of foreign images scored at or above the
highest threshold that keeps 95 % of the in-distribution images).

Calibration of the class probabilities (Guo et al. 2017): the expected calibration error over 15 equal-width
confidence bins, the negative log-likelihood, the Brier score (sum over classes of the squared difference to
the one-hot label, mean over images), and temperature scaling, softmax(l / T), with T fitted by minimising the
NLL on the validation split (``dataset.val_size > 0``) and kept in the run as ``calibration.json``. Every file
read here is treated as written by someone else: bounded in size, typed, finite.
"""

from __future__ import annotations

import json
import math
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from . import plots
from .config import Config, DataConfig, first_line
from .data import DataError, ImageData
from .evaluate import float32_precision
from .rundir import CALIBRATION_NAME, OOD_NAME, OOD_PNG_NAME, RELIABILITY_NAME, RunDirError, atomic_write

SCORES = {"msp": "max softmax probability", "log_z": "log Z(x) = logsumexp_k l_k(x)"}
ECE_BINS = 15
FPR_AT_TPR = 0.95
TEMPERATURE_FORMAT = "ssgan-temperature-v1"
TEMPERATURE_BOUNDS = (0.05, 20.0)  # the search range of T; a stored T outside it is refused
MAX_RECORD_BYTES = 4096  # calibration.json is a few hundred bytes


# ------------------------------------------------------------------------------------------------ scores

@torch.no_grad()
def predict_logits(disc: nn.Module, x: np.ndarray, batch_size: int = 1000, *, tf32: bool = False,
                   dtype: torch.dtype = torch.float32) -> np.ndarray:
    """The K class logits l(x) of the discriminator in eval mode (no dropout or noise). x: (N, C, H, W)
    scaled images; returns (N, K) float64."""
    was_training = disc.training
    disc.eval()
    device = next(disc.parameters()).device
    x = torch.as_tensor(x)
    out = []
    with float32_precision(tf32):
        for start in range(0, len(x), batch_size):
            logits, _ = disc(x[start:start + batch_size].to(device, dtype))  # (B, K)
            out.append(logits.double().cpu())
    disc.train(was_training)
    if not out:
        raise DataError("no images to score")
    return torch.cat(out).numpy()


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(l / T) over the classes, stable (the row maximum subtracted). (N, K) -> (N, K) float64."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    e = np.exp(scaled)
    return e / e.sum(axis=1, keepdims=True)


def log_z(logits: np.ndarray) -> np.ndarray:
    """log Z(x) = logsumexp_k l_k(x), stable. (N, K) -> (N,)."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=1)
    return top + np.log(np.exp(logits - top[:, None]).sum(axis=1))


def scores_from_logits(logits: np.ndarray) -> Dict[str, np.ndarray]:
    """Every score of ``SCORES`` of each image, higher = more like the training data. (N, K) -> {name: (N,)}."""
    return {"msp": softmax(logits).max(axis=1), "log_z": log_z(logits)}


# ----------------------------------------------------------------------------------------------- metrics

def _checked(in_scores: np.ndarray, out_scores: np.ndarray):
    a, b = np.asarray(in_scores, dtype=np.float64), np.asarray(out_scores, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1 or not len(a) or not len(b):
        raise DataError("OOD metrics need non-empty 1-d scores of in-distribution and foreign images")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise DataError("OOD scores are not all finite")
    return a, b


def _curve(in_scores: np.ndarray, out_scores: np.ndarray):
    """True and false positives at each distinct threshold, highest first (an image counts as in-distribution
    when its score is at or above the threshold)."""
    a, b = _checked(in_scores, out_scores)
    scores = np.concatenate([a, b])
    positive = np.concatenate([np.ones(len(a)), np.zeros(len(b))])
    order = np.argsort(-scores, kind="mergesort")
    scores, positive = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # the last index of each distinct score
    tps = np.cumsum(positive)[last]
    fps = (last + 1) - tps
    return tps, fps, len(a), len(b)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve: P(score of an in-distribution image > that of a foreign one), ties counted
    half (the Mann-Whitney U statistic over n_in * n_out)."""
    from scipy.stats import rankdata

    a, b = _checked(in_scores, out_scores)
    ranks = rankdata(np.concatenate([a, b]))  # average ranks for ties
    u = ranks[:len(a)].sum() - len(a) * (len(a) + 1) / 2
    return float(u / (len(a) * len(b)))


def aupr_in(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Average precision with the in-distribution images as positives: sum over thresholds of
    (R_n - R_{n-1}) P_n, as scikit-learn's ``average_precision_score`` (no interpolation)."""
    tps, fps, n_in, _ = _curve(in_scores, out_scores)
    precision, recall = tps / (tps + fps), tps / n_in
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = FPR_AT_TPR) -> float:
    """The smallest false-positive rate among the thresholds whose true-positive rate is at least ``tpr``."""
    tps, fps, n_in, n_out = _curve(in_scores, out_scores)
    first = int(np.argmax(tps / n_in >= tpr - 1e-12))  # the rates grow with each lower threshold
    return float(fps[first] / n_out)


def ood_metrics(in_scores: np.ndarray, out_scores: np.ndarray) -> Dict[str, float]:
    """AUROC, AUPR-in and FPR at 95 % TPR of one score."""
    return {"auroc": auroc(in_scores, out_scores), "aupr_in": aupr_in(in_scores, out_scores),
            "fpr95": fpr_at_tpr(in_scores, out_scores)}


# ------------------------------------------------------------------------------------------- calibration

def _labels(probs: np.ndarray, y: np.ndarray):
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    if probs.ndim != 2 or len(probs) != len(y) or not len(y):
        raise DataError(f"calibration needs (N, K) probabilities and N labels, got {probs.shape} and {y.shape}")
    return probs, y.astype(np.int64)


def reliability_bins(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS):
    """Per equal-width confidence bin (lo, hi] (the first also holds 0): the number of images, their mean
    confidence (max probability) and their accuracy; empty bins have NaN means. Three (n_bins,) arrays."""
    probs, y = _labels(probs, y)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=n_bins) / counts
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / counts
    return counts, mean_confidence, accuracy


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE = sum over bins of |B| / N * |accuracy(B) - confidence(B)| (Guo et al. 2017, eq. 3)."""
    counts, confidence, accuracy = reliability_bins(probs, y, n_bins)
    filled = counts > 0
    return float(np.sum(counts[filled] / counts.sum() * np.abs(accuracy[filled] - confidence[filled])))


def negative_log_likelihood(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean over images of -log p(y | x) (a probability of 0 counts as 1e-300)."""
    probs, y = _labels(probs, y)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-300, None))))


def brier_score(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean over images of sum_k (p_k - [y = k])^2 (Brier 1950; 0 is perfect, 2 the worst)."""
    probs, y = _labels(probs, y)
    onehot = np.eye(probs.shape[1])[y]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def calibration_report(probs: np.ndarray, y: np.ndarray) -> Dict[str, float]:
    return {"ece": expected_calibration_error(probs, y), "nll": negative_log_likelihood(probs, y),
            "brier": brier_score(probs, y)}


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """T minimising the NLL of softmax(l / T) on (logits, y), searched over log T in ``TEMPERATURE_BOUNDS``
    (Guo et al. 2017, sec. 4.2; bounded Brent search, deterministic)."""
    from scipy.optimize import minimize_scalar

    logits, y = np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if not len(y):
        raise DataError("temperature scaling needs validation images")

    def nll(log_t: float) -> float:
        scaled = logits / math.exp(log_t)
        return float(np.mean(log_z(scaled) - scaled[np.arange(len(y)), y]))

    low, high = (math.log(v) for v in TEMPERATURE_BOUNDS)
    found = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(found.x))


@dataclass
class TemperatureRecord:
    """``calibration.json``: the temperature fitted on the run's validation split, how many images it was
    fitted on, and the validation NLL before and after."""

    temperature: float
    n_val: int
    nll_before: float
    nll_after: float

    def write(self, run_dir: Path) -> None:
        payload = {"format": TEMPERATURE_FORMAT, "temperature": self.temperature, "n_val": self.n_val,
                   "nll_before": self.nll_before, "nll_after": self.nll_after}
        atomic_write(Path(run_dir) / CALIBRATION_NAME, json.dumps(payload, indent=1, allow_nan=False))

    @classmethod
    def read(cls, run_dir: Path) -> Optional["TemperatureRecord"]:
        """The run's record, None when it has none; a file that is not one this module wrote is one line of
        RunDirError (a regular file of at most ``MAX_RECORD_BYTES``, JSON, these keys, finite numbers)."""
        path = Path(run_dir) / CALIBRATION_NAME
        try:
            info = path.lstat()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise RunDirError(f"{path}: cannot read it ({error.strerror or error})") from None
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_RECORD_BYTES:
            raise RunDirError(f"{path}: refused, not a regular file of at most {MAX_RECORD_BYTES} bytes")
        try:
            with open(path, "rb") as file:
                raw = file.read(MAX_RECORD_BYTES + 1)
            stored = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
            return cls._typed(stored)
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError) as error:
            raise RunDirError(f"{path}: not a calibration record written by ssgan ({first_line(error)[:120]})") from None

    @classmethod
    def _typed(cls, stored) -> "TemperatureRecord":
        if not isinstance(stored, dict) or stored.get("format") != TEMPERATURE_FORMAT:
            raise ValueError(f"expected format {TEMPERATURE_FORMAT}")
        if set(stored) != {"format", "temperature", "n_val", "nll_before", "nll_after"}:
            raise ValueError("unexpected keys")
        n_val = stored["n_val"]
        if not isinstance(n_val, int) or isinstance(n_val, bool) or not 0 < n_val < 2**40:
            raise ValueError("n_val is not a positive count")
        numbers = [stored[k] for k in ("temperature", "nll_before", "nll_after")]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
            raise ValueError("a number is not finite")
        low, high = TEMPERATURE_BOUNDS
        if not low <= numbers[0] <= high:
            raise ValueError(f"temperature {numbers[0]} outside {low}..{high}")
        return cls(float(numbers[0]), n_val, float(numbers[1]), float(numbers[2]))


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


def read_temperature(run_dir: Path, *, required: bool = False) -> Optional[float]:
    """The run's fitted temperature, or None when it has none (with ``required``: DataError, one line)."""
    run_dir = Path(run_dir)
    record = TemperatureRecord.read(run_dir if run_dir.is_dir() else run_dir.parent)
    if record is None and required:
        raise DataError(f"{run_dir}: no {CALIBRATION_NAME}; calibrated probabilities need a temperature fitted "
                        f"on a validation split: train with dataset.val_size > 0 (e.g. dataset.val_size=0.1)")
    return None if record is None else record.temperature


def calibrate(logits_val: np.ndarray, y_val: np.ndarray) -> TemperatureRecord:
    """Fit the temperature on the validation split and record it with the NLL before and after."""
    temperature = fit_temperature(logits_val, y_val)
    return TemperatureRecord(temperature, int(len(y_val)), negative_log_likelihood(softmax(logits_val), y_val),
                             negative_log_likelihood(softmax(logits_val, temperature), y_val))


def finish_run(run_dir: Path, disc: nn.Module, data: ImageData, cfg: Config) -> Optional[Dict]:
    """The end of ``train.fit`` for a run directory: the test set's calibration (ECE, NLL, Brier) at T = 1
    and, with a validation split, the temperature fitted on it (``calibration.json``) and the test set's
    calibration at that temperature; the reliability diagram (``reliability.png``, plots extra). Returns
    result.json's ``calibration`` entry (None without test images)."""
    t = cfg.train
    record = None
    if data.x_val is not None and len(data.y_val):
        record = calibrate(predict_logits(disc, data.x_val, t.eval_batch_size, tf32=t.tf32), data.y_val)
        record.write(run_dir)
    if not len(data.y_test):
        return None
    logits = predict_logits(disc, data.x_test, t.eval_batch_size, tf32=t.tf32)
    entry, figure = calibration_entry(logits, data.y_test, record, title=f"{cfg.dataset.name}, seed {cfg.seed}")
    if figure is not None:
        atomic_write(Path(run_dir) / RELIABILITY_NAME, figure)
    return entry


def calibration_entry(logits: np.ndarray, y: np.ndarray, record: Optional[TemperatureRecord], *, title: str):
    """The ``calibration`` entry of result.json for test logits (N, K) and labels, and the reliability
    diagram's PNG bytes (None without matplotlib)."""
    probs = softmax(logits)
    entry = {"bins": ECE_BINS, **calibration_report(probs, y), "temperature": None, "calibrated": None}
    curves = {"T = 1": reliability_bins(probs, y)}
    if record is not None:
        calibrated = softmax(logits, record.temperature)
        entry["temperature"], entry["calibrated"] = record.temperature, calibration_report(calibrated, y)
        curves[f"T = {record.temperature:.3f} (validation)"] = reliability_bins(calibrated, y)
    return entry, plots.reliability_png(curves, f"{title}: test set")


def calibration_lines(entry: Dict) -> List[str]:
    """result.json's ``calibration`` entry as text lines."""
    lines = [f"calibration (test set, {entry['bins']} bins): ECE {entry['ece']:.4f}, NLL {entry['nll']:.4f}, "
             f"Brier {entry['brier']:.4f}"]
    if entry.get("calibrated"):
        c = entry["calibrated"]
        lines.append(f"calibrated (T = {entry['temperature']:.4f}, fitted on the validation split): "
                     f"ECE {c['ece']:.4f}, NLL {c['nll']:.4f}, Brier {c['brier']:.4f}")
    return lines


# ------------------------------------------------------------------------------------------ foreign sets

UNIFORM = "uniform"  # a named foreign set: pixels drawn uniformly over their range, as many as test images


def read_foreign(item: str, cfg: DataConfig, *, n_uniform: int, convert_channels: bool = False,
                 seed: int = 0) -> np.ndarray:
    """One foreign set, scaled as the run's recipe scales its images: ``uniform``, a data set's name (its test
    split, read by ``load_data`` from the run's ``dataset.root``), an .npz or an image folder / file (read
    by ``read_inputs``, as ``ssgan predict`` reads them). Images of another size are refused unless
    ``cfg.resize``; of another channel count (grey against colour) unless ``convert_channels``; an empty set
    is refused. Returns (N, C, H, W) float32."""
    from .config import DATASETS, compose
    from .data import load_data, prepare_images, read_inputs, scale_images, unscale_images

    if item == UNIFORM:
        pixels = np.random.RandomState(seed).uniform(0.0, 1.0, size=(n_uniform, *cfg.image_shape))
        return scale_images(pixels.astype(np.float32), cfg.scaling, 1.0)
    if item in DATASETS and not Path(item).exists():
        named = compose([f"dataset={item}", f"dataset.root={cfg.root}"]).dataset
        x01 = unscale_images(load_data(named).x_test, named.scaling)  # (N, C', H', W') in [0, 1]
        x = prepare_images(x01, cfg, f"{item} (test split)", convert_channels=convert_channels)
        images = scale_images(x, cfg.scaling, 1.0)
    else:
        _, images = read_inputs([item], cfg, convert_channels=convert_channels)
    if not len(images):
        raise DataError(f"{item}: an empty set; a foreign set needs at least one image")
    return images


@dataclass
class OODReport:
    """``ood.json``: per foreign set and score, AUROC, AUPR-in and FPR95 against the run's test set."""

    n_in: int
    sets: List[Dict]  # {"name": str, "n": int, "metrics": {score: {"auroc", "aupr_in", "fpr95"}}}

    def write(self, run_dir: Path) -> Path:
        path = Path(run_dir) / OOD_NAME
        payload = {"format": "ssgan-ood-v1", "in_distribution": "the run's test set", "n_in": self.n_in,
                   "positives": "in-distribution images", "scores": SCORES, "sets": self.sets}
        atomic_write(path, json.dumps(payload, indent=1, allow_nan=False))
        return path

    def lines(self) -> List[str]:
        out = []
        for entry in self.sets:
            out.append(f"{entry['name']} ({entry['n']} images) against the test set ({self.n_in} images):")
            for score, m in entry["metrics"].items():
                out.append(f"  {score:<6} AUROC {m['auroc']:.4f}  AUPR-in {m['aupr_in']:.4f}  "
                           f"FPR95 {m['fpr95']:.4f}")
        return out


def ood_report(disc: nn.Module, x_in: np.ndarray, foreign: Dict[str, np.ndarray], *, batch_size: int = 1000,
               tf32: bool = False):
    """Every score of the test images ``x_in`` against each foreign set: the report and the scores
    ({score: {set name: (N,)}}, the in-distribution set under "test set") for the histograms."""
    scores_in = scores_from_logits(predict_logits(disc, x_in, batch_size, tf32=tf32))
    by_score = {name: {"test set": values} for name, values in scores_in.items()}
    sets = []
    for set_name, x in foreign.items():
        scores_out = scores_from_logits(predict_logits(disc, x, batch_size, tf32=tf32))
        sets.append({"name": set_name, "n": int(len(x)),
                     "metrics": {s: ood_metrics(scores_in[s], scores_out[s]) for s in SCORES}})
        for name, values in scores_out.items():
            by_score[name][set_name] = values
    return OODReport(int(len(x_in)), sets), by_score


def evaluate_foreign(run, x_test: np.ndarray, items: Sequence[str], *, resize: bool = False,
                     convert_channels: bool = False) -> List[str]:
    """``ssgan evaluate RUN --ood DATA ...``: read each foreign set, score it against the run's test set,
    write ``ood.json`` and ``ood_scores.png`` (plots extra) in the run directory; the lines to print."""
    from dataclasses import replace

    cfg = replace(run.config.dataset, resize=resize or run.config.dataset.resize)
    foreign = {}
    for item in items:
        if item in foreign:
            raise DataError(f"--ood {item}: named twice")
        foreign[item] = read_foreign(item, cfg, n_uniform=len(x_test), convert_channels=convert_channels)
    t = run.config.train
    report, by_score = ood_report(run.discriminator, x_test, foreign, batch_size=t.eval_batch_size, tf32=t.tf32)
    run_dir = run.path if Path(run.path).is_dir() else Path(run.path).parent
    written = [report.write(run_dir)]
    figure = plots.score_histograms_png(by_score, SCORES, f"{run.config.dataset.name}, seed {run.config.seed}")
    if figure is not None:
        atomic_write(run_dir / OOD_PNG_NAME, figure)
        written.append(run_dir / OOD_PNG_NAME)
    return report.lines() + [f"wrote {', '.join(str(p) for p in written)}"]


# ------------------------------------------------------------------------------------ for the commands

def split_resize(items: Sequence[str]):
    """``--ood`` words: ``dataset.resize=true|false`` among them sets the resize, the others are the sets."""
    resize, sets = False, []
    for item in items:
        if item.startswith("dataset.resize=") and not Path(item).exists():
            value = item.split("=", 1)[1].lower()
            if value not in ("true", "false"):
                raise DataError(f"{item}: expected dataset.resize=true or dataset.resize=false")
            resize = value == "true"
        else:
            sets.append(item)
    if items and not sets:
        raise DataError("--ood: no foreign set given (an .npz, an image folder, a data set's name or uniform)")
    return resize, sets


def _run_dir(run) -> Path:
    return Path(run.path) if Path(run.path).is_dir() else Path(run.path).parent


def evaluate_calibration(run, data: ImageData) -> List[str]:
    """``ssgan evaluate``: the test set's calibration (and at the run's temperature, when it has one) as text
    lines; the reliability diagram written again to the run directory (plots extra)."""
    t = run.config.train
    logits = predict_logits(run.discriminator, data.x_test, t.eval_batch_size, tf32=t.tf32)
    record = TemperatureRecord.read(_run_dir(run))
    entry, figure = calibration_entry(logits, data.y_test, record,
                                      title=f"{run.config.dataset.name}, seed {run.config.seed}")
    if figure is not None:
        atomic_write(_run_dir(run) / RELIABILITY_NAME, figure)
    return calibration_lines(entry)


def predict_with_scores(run, x: np.ndarray, batch_size: int, *, calibrated: bool = False,
                        score: Optional[str] = None):
    """``ssgan predict``: the class probabilities of scaled images x (at the run's temperature when
    ``calibrated``) and, when ``score`` names one of ``SCORES``, that score of each image (else None)."""
    temperature = read_temperature(run.path, required=True) if calibrated else 1.0
    logits = predict_logits(run.discriminator, x, batch_size, tf32=run.config.train.tf32)
    return softmax(logits, temperature), (None if score is None else scores_from_logits(logits)[score])
