"""The messages of issue 31, item 9: each one line that says what is wrong and what to do, with nothing else
printed before it (no numpy or matplotlib warning, no advice that does not apply)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ssgan.cli import main
from tests.conftest import TINY_OVERRIDES


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("messages") / "run"
    assert main(["fit", "--run-dir", str(path), *TINY_OVERRIDES]) == 0
    return path


def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Warning" not in err, err
    return err


def _npz(path, x):
    y = np.arange(len(x)) % 10
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    return path


def test_an_image_array_of_two_channels_last_names_its_shape(tmp_path, capsys):
    path = _npz(tmp_path / "c.npz", np.zeros((30, 8, 8, 2), np.uint8))
    assert main(["fit", "--run-dir", str(tmp_path / "r"), *TINY_OVERRIDES, "dataset.source=npz",
                 f"dataset.path={path}"]) == 2
    err = _one_line(capsys)
    assert "(30, 8, 8, 2)" in err and "2 channels" in err, err


def test_a_text_file_named_npz_gets_no_advice_to_load_it_unsafely(run, tmp_path, capsys):
    (tmp_path / "text.npz").write_text("hello")
    assert main(["predict", str(run), str(tmp_path / "text.npz"), "--device", "cpu"]) == 2
    err = _one_line(capsys)
    assert "allow_pickle" not in err and "not a zip archive" in err, err


def test_an_all_nan_npz_is_one_line_without_numpys_warning(tmp_path, capsys):
    path = _npz(tmp_path / "n.npz", np.full((30, 8, 8), np.nan, np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be printed before the error
        assert main(["fit", "--run-dir", str(tmp_path / "r"), *TINY_OVERRIDES, "dataset.source=npz",
                     f"dataset.path={path}"]) == 2
    assert "NaN" in _one_line(capsys)


@pytest.mark.parametrize("override", ["dataset.path=a b(c", "train.lr=1e-3)"])
def test_an_override_hydra_cannot_parse_says_to_quote_the_value(override, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", override]) == 2
    assert "quote" in _one_line(capsys)


def test_a_misspelt_key_suggests_the_field_not_a_plus(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "train.lrr=0.1"]) == 2
    err = _one_line(capsys)
    assert "+train.lrr" not in err and "train.lr" in err and "no such field" in err, err


def test_predict_on_a_tiny_image_gives_advice_that_predict_can_take(run, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "one.png")
    assert main(["predict", str(run), str(tmp_path / "one.png"), "--device", "cpu"]) == 2
    err = _one_line(capsys)
    assert "dataset.resize" not in err and "8x8" in err, err


def test_resume_of_a_checkpoint_file_points_to_its_run_directory(run, capsys):
    assert main(["fit", "--resume", str(run / "checkpoint.pt")]) == 2
    err = _one_line(capsys)
    assert "no such run directory" not in err and f"--resume {run}" in err, err


def test_unicode_class_names_draw_without_glyph_warnings():
    pytest.importorskip("matplotlib")
    from ssgan.plots import confusion_matrix_png

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert confusion_matrix_png([[1, 0], [0, 1]], ["猫", "犬\U0001F415"], "classes") is not None
