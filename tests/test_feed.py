"""The loop's feed (feed.py): stacked batches are the members' single batches side by side."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ssgan.engines import STAT_NAMES
from ssgan.feed import Batches, Member


def _member(cfg, seed: int, labeled) -> Member:
    return Member(replace(cfg, seed=seed), None, np.array(labeled), ["a"], np.random.RandomState([seed, 1]),
                  torch.Generator().manual_seed(seed))


def test_a_stacked_batch_is_each_member_s_own_batch(tiny_config):
    """Slice s of a stacked (S, B, ...) batch holds member s's rows, labels and z, exactly as a Batches of
    member s alone gives them (each member keeps its own data order and z stream)."""
    cfg = replace(tiny_config, train=replace(tiny_config.train, batch_size=4, iters_per_epoch=2))
    x = torch.rand(30, 1, 2, 2)
    y = np.arange(30) % 3
    labeled = ([1, 4, 7, 9, 11], [2, 3, 5, 8, 13])

    def batches(seeds, stacked):
        members = [_member(cfg, s, labeled[s]) for s in seeds]
        feed = Batches(members, x, y, torch.device("cpu"), stacked=stacked, gather=x.__getitem__)
        feed.begin_epoch(2, torch.zeros(*([len(seeds)] if stacked else []), 2, len(STAT_NAMES)))
        return [feed.get(it, it) for it in range(2)]

    together = batches([0, 1], stacked=True)
    for s in (0, 1):
        alone = batches([s], stacked=False)
        for both, one in zip(together, alone):
            for name, tensor in one.tensors().items():
                assert torch.equal(getattr(both, name)[s], tensor), name
    assert together[0].x_lab.shape == (2, 4, 1, 2, 2) and together[0].z_d.shape == (2, 4, cfg.model.z_dim)
    assert not torch.equal(together[0].z_d[0], together[0].z_d[1])


def test_the_lean_step_draws_every_model_s_z_at_once(tiny_config):
    """Equivalence kind of ``train.step=lean``'s z: the same distribution (each entry Uniform[0, 1) from the
    first member's stream, independent across models and steps), one draw instead of 2 S. On the CPU a
    single model's z are even the same numbers (the generator fills a tensor in order); stacked members but
    the first draw other numbers than they would alone."""
    cfg = replace(tiny_config, train=replace(tiny_config.train, batch_size=4, iters_per_epoch=2))
    lean = replace(cfg, train=replace(cfg.train, step="lean"))
    x, y = torch.rand(30, 1, 2, 2), np.arange(30) % 3

    def first_batch(config, seeds):
        members = [_member(config, s, [1, 4, 7, 9, 11]) for s in seeds]
        feed = Batches(members, x, y, torch.device("cpu"), stacked=len(seeds) > 1, gather=x.__getitem__)
        feed.begin_epoch(2, torch.zeros(*([len(seeds)] if len(seeds) > 1 else []), 2, len(STAT_NAMES)))
        return feed.get(0, 0)

    faithful, one = first_batch(cfg, [0]), first_batch(lean, [0])
    assert torch.equal(faithful.z_d, one.z_d) and torch.equal(faithful.z_g, one.z_g)
    stacked_faithful, stacked = first_batch(cfg, [0, 1]), first_batch(lean, [0, 1])
    assert stacked.z_d.shape == stacked_faithful.z_d.shape == (2, 4, cfg.model.z_dim)
    assert torch.equal(stacked.z_d[0], stacked_faithful.z_d[0])  # member 0's stream, in order
    assert not torch.equal(stacked.z_d[1], stacked_faithful.z_d[1])
    assert ((stacked.z_g >= 0) & (stacked.z_g < 1)).all() and not torch.equal(stacked.z_d, stacked.z_g)
