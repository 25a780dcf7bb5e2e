"""Shared fixtures: a tiny configuration that trains in well under a second on the CPU."""

from __future__ import annotations

import pytest
import torch

from ssgan.config import Config, DataConfig, MethodConfig, ModelConfig, TrainConfig


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
        train=TrainConfig(epochs=1, iters_per_epoch=2, batch_size=20, lr=0.003, ema_decay=0.9,
                          init_batch=50, progress=False, sample_grid=False, device="cpu"),
        seed=0,
    )


TINY_OVERRIDES = ["train.epochs=1", "train.iters_per_epoch=2", "train.batch_size=20", "train.init_batch=50",
                  "model.d_widths=[32,16]", "model.g_widths=[32]", "model.z_dim=8", "dataset.labels=20",
                  "train.progress=false", "train.device=cpu"]
