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
    error_axis.plot([r["epoch"] for r in evaluated], [r["test_error"] for r in evaluated], marker=".")
    error_axis.set_xlabel("epoch")
    error_axis.set_ylabel("test error (%), averaged weights")
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
