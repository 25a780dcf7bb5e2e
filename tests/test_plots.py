"""ssgan/plots.py: figures as PNG bytes without pyplot's global state, and None (with a logged note) without
matplotlib."""

from __future__ import annotations

import builtins

import pytest

from ssgan import plots

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_curve_and_a_confusion_matrix_are_png_files():
    pytest.importorskip("matplotlib")
    history = [{"epoch": e, "test_error": 50.0 / e, "loss_sup": 1.0 / e, "loss_unl": 0.5, "loss_fake": 0.4,
                "loss_g": 0.3} for e in (1, 2, 3)]
    assert plots.curve_png(history, "a run").startswith(PNG)
    assert plots.confusion_matrix_png([[3, 1], [0, 4]], ["a", "b"], "confusion").startswith(PNG)
    assert plots.curve_png([], "nothing yet") is None


def test_without_matplotlib_there_is_no_figure_and_a_note(monkeypatch, caplog):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert plots.confusion_matrix_png([[1]], ["a"], "t") is None
    assert "matplotlib is not installed" in caplog.text
