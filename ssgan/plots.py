"""Figures as PNG bytes: a run's learning curve and confusion matrix, and the building blocks of the table's
plot (``reports.plot_table``).

matplotlib is optional (the ``plots`` extra): without it every function here returns None and logs once why,
and callers write no figure. Figures are drawn on matplotlib's object API (``Figure``), never on pyplot's
global state, so that plotting is safe inside a library and in threads.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

EXTRA = "pip install 'ssgan[plots]'"


def new_figure(width: float = 6.4, height: float = 4.4):
    """A matplotlib Figure, or None (logged) when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning(f"no figure: matplotlib is not installed ({EXTRA})")
        return None
    return Figure(figsize=(width, height))


def png_bytes(figure) -> bytes:
    """The figure as a PNG file's bytes (the caller writes them, atomically where it matters)."""
    with warnings.catch_warnings():  # a class name in a script the font lacks is drawn as boxes, not warned of
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        warnings.filterwarnings("ignore", message="Matplotlib currently does not support", category=UserWarning)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def curve_png(history: Sequence[Dict[str, float]], title: str) -> Optional[bytes]:
    """Test error (%) and the discriminator's losses against epochs, from a run's metrics.jsonl records."""
    figure = new_figure(7.2, 4.0)
    if figure is None or not history:
        return None
    error_axis, loss_axis = figure.subplots(1, 2)
    evaluated = [r for r in history if "test_error" in r]
    error_axis.plot([r["epoch"] for r in evaluated], [r["test_error"] for r in evaluated], marker=".",
                    label="averaged (the classifier)")
    raw = [r for r in evaluated if "raw_test_error" in r]  # runs of earlier versions have none
    if raw:
        error_axis.plot([r["epoch"] for r in raw], [r["raw_test_error"] for r in raw], marker=".",
                        label="raw discriminator")
        error_axis.legend(fontsize="small")
    error_axis.set_xlabel("epoch")
    error_axis.set_ylabel("test error (%)")
    for key in ("loss_sup", "loss_unl", "loss_fake", "loss_g"):
        loss_axis.plot([r["epoch"] for r in history], [r[key] for r in history], label=key)
    loss_axis.set_xlabel("epoch")
    loss_axis.set_yscale("log")
    loss_axis.legend(fontsize="small")
    figure.suptitle(title)
    return png_bytes(figure)


def confusion_matrix_png(matrix: List[List[int]], class_names: Sequence[str], title: str) -> Optional[bytes]:
    """The confusion matrix (rows: true class, columns: predicted class) with its counts."""
    size = max(3.0, 0.45 * len(class_names) + 1.5)
    figure = new_figure(size + 1.0, size)
    if figure is None:
        return None
    axis = figure.subplots()
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    ticks = range(len(class_names))
    axis.set_xticks(ticks)
    axis.set_xticklabels(class_names, rotation=90, fontsize="small")
    axis.set_yticks(ticks)
    axis.set_yticklabels(class_names, fontsize="small")
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    high = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            if count:
                axis.text(j, i, str(count), ha="center", va="center", fontsize="x-small",
                          color="white" if count > high / 2 else "black")
    axis.set_title(title)
    return png_bytes(figure)


def reliability_png(curves: Dict[str, Sequence], title: str) -> Optional[bytes]:
    """Reliability diagram: accuracy against mean confidence per equal-width confidence bin, one line per
    ``curves`` entry ({label: (counts, mean_confidence, accuracy)}, ``ood.reliability_bins``), the diagonal
    for perfect calibration, and the share of images per bin below."""
    figure = new_figure(5.2, 5.6)
    if figure is None:
        return None
    axis, share = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for label, (counts, confidence, accuracy) in curves.items():
        filled = counts > 0
        axis.plot(confidence[filled], accuracy[filled], marker="o", label=label)
        width = 1.0 / len(counts)
        share.bar((np.arange(len(counts)) + 0.5) * width, counts / max(counts.sum(), 1),
                  width=width, alpha=0.5, label=label)
    axis.set_ylabel("accuracy")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.legend(fontsize="small")
    axis.set_title(title)
    share.set_xlabel("confidence (max class probability), 15 bins")
    share.set_ylabel("share")
    return png_bytes(figure)


def score_histograms_png(scores: Dict[str, Dict[str, Sequence]], titles: Dict[str, str],
                         title: str) -> Optional[bytes]:
    """One panel per score: histograms of the test set's scores and of each foreign set's
    ({score: {set name: (N,) values}})."""
    figure = new_figure(5.0 * len(scores), 3.8)
    if figure is None:
        return None
    axes = figure.subplots(1, len(scores), squeeze=False)[0]
    for axis, (score, by_set) in zip(axes, scores.items()):
        values = np.concatenate([np.asarray(v, dtype=np.float64) for v in by_set.values()])
        edges = np.linspace(values.min(), values.max() + 1e-12, 51)
        for set_name, v in by_set.items():
            axis.hist(v, bins=edges, density=True, histtype="step", linewidth=1.3, label=set_name)
        axis.set_xlabel(titles.get(score, score))
        axis.set_ylabel("density")
        axis.legend(fontsize="small")
    figure.suptitle(title)
    return png_bytes(figure)
