"""Tests of the trained run at the command line: ``ssgan sample`` (the grid and the score of generated
samples, Salimans et al. 2016, sec. 4) and ``ssgan predict`` on image files and folders; and of the
sample-quality functions of ssgan/evaluate.py. Inception-v3 itself is not loaded: no weights are at hand."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn

import ssgan
from ssgan.cli import main
from ssgan.evaluate import (discriminator_classifier, inception_classifier, inception_input, inception_weights_path,
                            sample_class_probs, sample_score)
from tests.conftest import TINY_OVERRIDES

CLASSIFIER_SCORE = "classifier score (the run's own discriminator, not the Inception Score): "


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as `ssgan fit` writes it (same path: compose, convert, train.fit with run_dir)."""
    from ssgan.config import compose
    from ssgan.train import fit

    run_dir = tmp_path_factory.mktemp("runs") / "run"
    fit(compose(TINY_OVERRIDES), run_dir=run_dir)
    return run_dir


@pytest.fixture
def empty_hub(tmp_path):
    """A torch hub cache without Inception-v3 weights."""
    saved = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(saved)


# ----------------------------------------------------------------------------------------------- sample

def test_sample_writes_a_grid(run_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", str(run_dir), "--n", "16", "--out", str(out), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 16 samples to {out}"
    with Image.open(out) as image:  # 4 x 4 images of 8 x 8 drawn 6 times larger (48 x 48), 1-pixel padding
        assert image.size == (4 * (48 + 1) + 1,) * 2


def test_the_run_shows_its_samples_at_a_size_a_person_can_see(run_dir):
    with Image.open(run_dir / "samples.png") as image:  # 100 digits of 8 x 8 pixels: 91 pixels before
        assert min(image.size) >= 400


def test_score_beside_an_existing_grid_keeps_the_grid(run_dir, empty_hub, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert main(["sample", str(run), "--n", "4", "--device", "cpu"]) == 0  # RUN/grid.png
    grid = (run / "grid.png").read_bytes()
    capsys.readouterr()
    assert main(["sample", str(run), "--score", "--n-score", "20", "--splits", "2", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1].startswith(CLASSIFIER_SCORE)
    assert "grid.png exists" in captured.err and (run / "grid.png").read_bytes() == grid


def test_sample_never_overwrites(run_dir, capsys):
    assert main(["sample", str(run_dir), "--n", "4", "--device", "cpu"]) == 0  # default RUN_DIR/grid.png
    before = (run_dir / "grid.png").read_bytes()
    assert main(["sample", str(run_dir), "--n", "9", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already exists" in err and "--out" in err
    assert (run_dir / "grid.png").read_bytes() == before


def test_score_falls_back_to_the_discriminator(run_dir, empty_hub, capsys):
    from ssgan.checkpoint import load_run

    assert main(["sample", str(run_dir), "--no-grid", "--score", "--n-score", "40", "--splits", "2",
                 "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(CLASSIFIER_SCORE)
    mean, std = (float(v) for v in re.fullmatch(r"(\S+) \+- (\S+)", line[len(CLASSIFIER_SCORE):]).groups())
    run = load_run(run_dir)
    expected = sample_score(run.generator, discriminator_classifier(run.discriminator), 40, 2,
                            run.config.train.batch_size, torch.Generator().manual_seed(0))
    assert (mean, std) == pytest.approx(expected, abs=1e-3)
    assert 1.0 <= mean <= 10.0


def test_inception_without_weights_is_exit_code_2(run_dir, empty_hub, capsys):
    assert main(["sample", str(run_dir), "--no-grid", "--score", "--classifier", "inception",
                 "--n-score", "10", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Inception-v3 weights" in err and str(empty_hub) in err


@pytest.mark.parametrize("argv, fragment", [
    (["--n", "0"], "--n=0"),
    (["--no-grid"], "--score"),
    (["--score", "--splits", "-1"], "--splits"),
])
def test_sample_bad_options(run_dir, capsys, argv, fragment):
    assert main(["sample", str(run_dir), *argv]) == 2
    assert fragment in capsys.readouterr().err


def test_score_is_k_for_uniform_confident_and_1_for_constant_predictions(run_dir):
    from ssgan.checkpoint import load_run

    gen = load_run(run_dir).generator

    def uniform_confident(x):  # each batch of 20 holds every one of 10 classes twice, with certainty
        return torch.eye(10)[torch.arange(len(x)) % 10]

    def constant(x):
        return torch.full((len(x), 10), 0.1)

    assert sample_score(gen, uniform_confident, 40, 2, 20) == pytest.approx((10.0, 0.0))
    assert sample_score(gen, constant, 40, 2, 20) == pytest.approx((1.0, 0.0))


def test_samples_are_drawn_in_full_batches(run_dir):
    """The generator normalises with batch statistics: 7 samples are the first 7 of a batch of 20."""
    from ssgan.checkpoint import load_run

    gen = load_run(run_dir).generator
    shapes = []
    probs = sample_class_probs(gen, lambda x: shapes.append(x.shape) or torch.ones(len(x), 2) / 2, 27, 20)
    assert probs.shape == (27, 2) and [s[0] for s in shapes] == [20, 7]


# ------------------------------------------------------------------------------ Inception-v3 (no weights)

def test_no_inception_weights_in_an_empty_cache(empty_hub):
    assert inception_weights_path() is None
    assert inception_classifier("unit") is None
    (empty_hub / "checkpoints").mkdir(parents=True)
    (empty_hub / "checkpoints" / "inception_v3_google-0cc3c7bd.pth").touch()
    assert inception_weights_path() == empty_hub / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"


@pytest.mark.parametrize("scaling, white", [("unit", 1.0), ("symmetric", 1.0), ("cifar", 127.5 / 128)])
def test_inception_input_is_3x299x299_with_imagenet_normalisation(scaling, white):
    x = torch.full((2, 1, 8, 8), white)  # white grey images in the recipe's scale
    out = inception_input(x, scaling)
    assert out.shape == (2, 3, 299, 299)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(out[:, :, 150, 150], expected.expand(2, 3), atol=1e-5, rtol=0)


def test_inception_classifier_with_a_stand_in_network():
    stand_in = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 5))
    classify = inception_classifier("symmetric", "cpu", model=stand_in)
    probs = classify(torch.rand(4, 3, 32, 32) * 2 - 1)
    assert probs.shape == (4, 5) and torch.allclose(probs.sum(1), torch.ones(4))


# ----------------------------------------------------------------------------- predict on image files

@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    """12 digits as 8x8 greyscale PNGs (0..255) in two sub-folders, and the same images as uint8."""
    root = tmp_path_factory.mktemp("images")
    images = np.round(load_digits().images[:12] * 255 / 16).astype(np.uint8)
    for i, image in enumerate(images):
        (root / f"part{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(image, mode="L").save(root / f"part{i % 2}" / f"digit{i:02d}.png")
    return root, images


def test_predict_folder_by_class_name(run_dir, digit_folder, capsys):
    root, images = digit_folder
    assert main(["predict", str(run_dir), str(root), "--device", "cpu", "--batch-size", "5"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    files = sorted(root.rglob("*.png"))
    assert [r[0] for r in rows] == [str(p) for p in files]
    order = [int(p.stem[-2:]) for p in files]
    est = ssgan.load(run_dir)
    names = [est.class_names_[list(est.classes_).index(v)] for v in est.predict(images[order])]
    assert [r[1] for r in rows] == names  # predict prints the class names


def test_predict_image_files_and_proba_csv(run_dir, digit_folder, tmp_path, capsys):
    root, images = digit_folder
    files = [root / "part0" / "digit00.png", root / "part1" / "digit03.png"]
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run_dir), *map(str, files), "--proba", "--out", str(out)]) == 0
    rows = out.read_text().strip().splitlines()
    assert rows[0] == "input,class," + ",".join(f"p_{k}" for k in range(10))
    probs = np.array([[float(v) for v in row.split(",")[2:]] for row in rows[1:]])
    np.testing.assert_allclose(probs, ssgan.load(run_dir).predict_proba(images[[0, 3]]), atol=1e-6)


def test_predict_npz_of_raw_digit_values(run_dir, tmp_path, capsys):
    """load_digits() images (0..16) are scaled like the builtin digits, not as 0..255."""
    raw = load_digits().images[:6]
    np.savez(tmp_path / "raw.npz", x=raw)
    np.savez(tmp_path / "unit.npz", x=raw / 16.0)
    assert main(["predict", str(run_dir), str(tmp_path / "raw.npz"), "--proba"]) == 0
    assert main(["predict", str(run_dir), str(tmp_path / "unit.npz"), "--proba"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = "\t".join(["input", "class", *(f"p_{k}" for k in range(10))])  # --proba names the classes
    assert lines[0] == lines[7] == header
    assert [line.split("\t")[1:] for line in lines[1:7]] == [line.split("\t")[1:] for line in lines[8:]]


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p.mkdir(), "no images found"),
    (lambda p: p.with_suffix(".npz").write_text("junk"), "not a readable .npz"),
])
def test_predict_bad_inputs_are_exit_code_2(run_dir, tmp_path, capsys, make, fragment):
    target = tmp_path / "input"
    make(target)
    item = target if target.exists() else target.with_suffix(".npz")
    assert main(["predict", str(run_dir), str(item)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err


def test_score_and_fid_through_the_quality_path_with_a_stand_in_inception(run_dir, tmp_path, monkeypatch, capsys):
    """With the quality extra and (here: stand-in) weights, --score --fid report torch-fidelity's IS and FID."""
    from ssgan import quality
    from tests.test_quality import StandIn

    torch.manual_seed(0)
    stand_in = StandIn()
    monkeypatch.setattr(quality, "unavailable_reason", lambda: None)
    monkeypatch.setattr(quality, "inception_weights_available", lambda: tmp_path / "weights.pth")
    monkeypatch.setattr(quality, "inception_feature_extractor", lambda *args, **kwargs: stand_in)
    assert main(["sample", str(run_dir), "--no-grid", "--score", "--fid", "--n-score", "40", "--splits", "2",
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(quality.INCEPTION_SCORE_NAME) and lines[1].startswith(quality.FID_NAME)
    assert float(lines[1].split(": ")[1].split()[0]) > 0


def test_fid_without_the_weights_is_exit_code_2(run_dir, empty_hub, capsys):
    assert main(["sample", str(run_dir), "--no-grid", "--score", "--fid", "--n-score", "10"]) == 2
    assert "--fid needs the Inception weights" in capsys.readouterr().err
