"""The engines: one model's steps on batches (B, ...), never a stack of one; the Engine protocol's state."""

from __future__ import annotations

from dataclasses import replace

import torch

from ssgan import train
from ssgan.engines import STAT_NAMES, SingleEngine
from ssgan.train import fit, fit_grid


def test_one_model_steps_on_unstacked_batches(tiny_config, monkeypatch):
    shapes, original = [], SingleEngine.step

    def recording_step(self, batch):
        shapes.append((tuple(batch.x_lab.shape), tuple(batch.z_d.shape)))
        stats, outputs = original(self, batch)
        shapes.append((tuple(stats.shape), tuple(outputs.shape[:1])))
        return stats, outputs

    monkeypatch.setattr(SingleEngine, "step", recording_step)
    fit(tiny_config)
    b, z = tiny_config.train.batch_size, tiny_config.model.z_dim
    assert shapes[0] == ((b, 1, 8, 8), (b, z)) and shapes[1] == ((len(STAT_NAMES),), (b,))


def test_the_stacked_engine_loads_a_member_s_state_into_its_slice(tiny_config):
    """load_state_dict(payload, index) then state_dict(index) gives the payload back, the other slice kept."""
    captured = {}
    original = train._finish

    def keep_engine(members, engine, data, device):
        captured["engine"] = engine
        return original(members, engine, data, device)

    train._finish, saved = keep_engine, train._finish
    try:
        fit_grid([replace(tiny_config, seed=s) for s in (0, 1)])
    finally:
        train._finish = saved
    engine = captured["engine"]
    first = engine.state_dict(0)
    second = {k: v.clone() for k, v in engine.state_dict(1)["discriminator"].items()}  # state_dict: live tensors
    engine.load_state_dict(first, 1)
    for key in ("discriminator", "generator", "discriminator_avg"):
        for name, value in first[key].items():
            assert torch.equal(engine.state_dict(1)[key][name], value)
            assert torch.equal(engine.state_dict(0)[key][name], value)
    assert not all(torch.equal(a, b) for a, b in zip(first["discriminator"].values(), second.values()))


def test_the_lean_step_trains_one_model_and_stacked_models(tiny_config):
    """train.step=lean runs through the one step body for one model and for stacked ones, and changes the
    random numbers D's noise draws in G's step (so the weights differ from the faithful step's); its
    equivalence in distribution is tests/test_objectives.py's and docs/method.md's."""
    lean = replace(tiny_config, train=replace(tiny_config.train, step="lean"))
    faithful_result, lean_result = fit(tiny_config), fit(lean)
    assert torch.isfinite(torch.tensor(lean_result.history[-1]["loss_g"]))
    assert not torch.equal(next(faithful_result.generator.parameters()), next(lean_result.generator.parameters()))
    stacked = fit_grid([replace(lean, seed=s) for s in (0, 1)])
    assert all(torch.isfinite(torch.tensor(r.history[-1]["loss_g"])) for r in stacked)
