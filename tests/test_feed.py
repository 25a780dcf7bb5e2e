"""The loop's feed (feed.py): the batches of an epoch's order (a resumed one too), stacked batches as the members'
single batches side by side, the lean step's z, the temporal ensemble's targets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from ssgan.engines import STAT_NAMES
from ssgan.feed import Batches, Member, TemporalEnsemble


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
        feed.begin_epoch(2, torch.zeros(len(seeds), 2, len(STAT_NAMES)))
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
        feed.begin_epoch(2, torch.zeros(len(seeds), 2, len(STAT_NAMES)))
        return feed.get(0, 0)

    faithful, one = first_batch(cfg, [0]), first_batch(lean, [0])
    assert torch.equal(faithful.z_d, one.z_d) and torch.equal(faithful.z_g, one.z_g)
    stacked_faithful, stacked = first_batch(cfg, [0, 1]), first_batch(lean, [0, 1])
    assert stacked.z_d.shape == stacked_faithful.z_d.shape == (2, 4, cfg.model.z_dim)
    assert torch.equal(stacked.z_d[0], stacked_faithful.z_d[0])  # member 0's stream, in order
    assert not torch.equal(stacked.z_d[1], stacked_faithful.z_d[1])
    assert ((stacked.z_g >= 0) & (stacked.z_g < 1)).all() and not torch.equal(stacked.z_d, stacked.z_g)


@pytest.mark.parametrize("placement", ["device", "host"])
def test_the_batches_of_a_mid_epoch_start(tiny_config, placement):
    """A resumed epoch starts at its iteration; each batch holds the rows of the epoch's order (labeled
    positions mapped to the subset's rows); from host memory they come through pinned buffers."""
    from ssgan.accelerate import PinnedGather

    x = torch.arange(10.0)[:, None, None, None]  # (10, 1, 1, 1): image k has value k
    cfg = replace(tiny_config, train=replace(tiny_config.train, batch_size=2, iters_per_epoch=3))
    member = Member(cfg, None, np.array([4, 5, 6]), ["a"], np.random.RandomState(0), torch.Generator())
    # positions in the labeled subset, rows of the pool, rows for feature matching: (iterations 3, B 2)
    member.batches = (np.array([[0, 1], [2, 0], [1, 2]]), np.array([[6, 7], [8, 9], [0, 1]]),
                      np.array([[1, 2], [3, 4], [5, 6]]))
    member.iteration, member.stats = 1, torch.ones(1, len(STAT_NAMES))
    batches = Batches([member], x, np.arange(10) + 100, torch.device("cpu"), stacked=False, gather=x.__getitem__)
    if placement == "host":
        batches.gather, batches.on_device = PinnedGather(x, torch.device("cpu")), False
    stats = torch.zeros(1, 3, len(STAT_NAMES))  # (S, iterations, statistics): S = 1 for one model
    assert batches.begin_epoch(3, stats) == 1 and stats[0, :, 0].tolist() == [1.0, 0.0, 0.0]
    seen = [(b.x_lab.flatten().tolist(), b.y_lab.tolist(), b.x_unl.flatten().tolist(), b.x_fm.flatten().tolist())
            for b in (batches.get(1, 4), batches.get(2, 5))]
    assert seen == [([6.0, 4.0], [106, 104], [8.0, 9.0], [3.0, 4.0]),  # labeled positions 2, 0 -> rows 6, 4
                    ([5.0, 6.0], [105, 106], [0.0, 1.0], [5.0, 6.0])]


def test_temporal_ensemble_targets_against_a_direct_computation():
    te = TemporalEnsemble(3, 2, 0.6, torch.device("cpu"))
    rows = torch.tensor([2, 0, 1])
    assert torch.equal(te.targets(rows), torch.zeros(3, 2))  # the first epoch: zero targets
    epochs = [torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])]
    ensemble = torch.zeros(3, 2)
    for e, values in enumerate(epochs, start=1):
        te.record(torch.tensor([0, 1, 2]), values)
        te.end_epoch()
        ensemble = 0.6 * ensemble + 0.4 * values  # CT_CIFAR-10_TE.py: ensemble, then / (1 - 0.6^e)
        torch.testing.assert_close(te.targets(rows), (ensemble / (1 - 0.6 ** e))[rows])
    first = TemporalEnsemble(3, 2, 0.6, torch.device("cpu"))
    first.record(torch.tensor([0, 1, 2]), epochs[0])
    first.end_epoch()
    torch.testing.assert_close(first.targets(rows), epochs[0][rows])  # after one epoch: exactly its values
    restored = TemporalEnsemble(3, 2, 0.6, torch.device("cpu"))
    restored.load_state_dict(te.state_dict())  # a resume: the same targets, bias correction included
    torch.testing.assert_close(restored.targets(rows), te.targets(rows))
