"""Shared fixtures: a tiny configuration that trains in well under a second on the CPU."""

from __future__ import annotations

import pytest
import torch

import contextlib
import io
from pathlib import Path

from ssgan.checkpoint import load_run
from ssgan.cli import main
from ssgan.config import Config, DataConfig, MethodConfig, ModelConfig, TrainConfig
from ssgan.data import load_data
from ssgan.evaluate import predict_proba


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny tensors on a 2-core machine: one intra-op thread avoids oversubscription (much faster)."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


@pytest.fixture
def tiny_config() -> Config:
    """The digits data with a small MLP pair, 2 iterations of batch 20."""
    return Config(
        dataset=DataConfig(labels=20),
        model=ModelConfig(d_widths=[32, 16], g_widths=[32], z_dim=8),
        method=MethodConfig(fm_norm=2),
        train=TrainConfig(epochs=1, iters_per_epoch=2, batch_size=20, lr=0.003, ema_decay=0.9, ema_start="init",
                          init_batch=50, progress=False, sample_grid=False, device="cpu"),
        seed=0,
    )


TINY_OVERRIDES = ["train.epochs=1", "train.iters_per_epoch=2", "train.batch_size=20", "train.init_batch=50",
                  "model.d_widths=[32,16]", "model.g_widths=[32]", "model.z_dim=8", "dataset.labels=20",
                  "train.progress=false", "train.device=cpu"]
TINY_SEEDS = [o for o in TINY_OVERRIDES if not o.startswith("dataset.labels=")]  # the tests choose the labels


def direct_probs(run_dir: Path) -> tuple:
    """A run's test probabilities computed here, independently of ssgan.reports."""
    run = load_run(run_dir, "cpu")
    data = load_data(run.config.dataset, run.config.seed)
    return predict_proba(run.discriminator, data.x_test), data.y_test


@pytest.fixture(scope="session")
def seeds_run(tmp_path_factory):
    """``ssgan fit --seeds 2``: seeds 0 and 1 in one run directory; returns the directory and the output."""
    run_dir = tmp_path_factory.mktemp("seeds") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["fit", "--seeds", "2", "--run-dir", str(run_dir), *TINY_SEEDS, "dataset.labels=20"]) == 0
    return run_dir, out.getvalue().strip().splitlines()
