"""The accelerated path against the plain loop: ``Captured`` (static input buffers around ``engine.step``), run
eagerly on the CPU, trains exactly what the plain loop trains; pinned host batches; the CPU pays for none of it."""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest
import torch

from ssgan import accelerate, concurrent, engines, train
from ssgan.accelerate import Captured, PinnedGather, gatherer
from ssgan.train import fit, fit_grid


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture
def busy_config(tiny_config):
    """The temporal ensemble (targets through the static buffers), augmentation and two epochs."""
    return replace(tiny_config, method=replace(tiny_config.method, name="ct_gan_te", ct_weight=1.0,
                                               ct_mode="temporal"),
                   train=replace(tiny_config.train, epochs=2, augment=True))


def test_the_wrapper_run_eagerly_equals_the_plain_loop(busy_config, monkeypatch):
    plain = fit(busy_config)
    wrapped = []

    def single(networks, cfg):
        wrapped.append(Captured(engines.SingleEngine(networks, cfg), torch.device("cpu"), eager=True))
        return wrapped[-1]

    monkeypatch.setattr(train, "SingleEngine", single)
    accelerated = fit(busy_config)
    assert wrapped and wrapped[0].inputs is not None  # every batch went through the static buffers
    assert _equal(plain.discriminator, accelerated.discriminator)
    assert _equal(plain.generator, accelerated.generator)


def test_the_stacked_engine_wrapped_equals_it_plain(tiny_config, monkeypatch):
    cfgs = [replace(tiny_config, seed=s) for s in (0, 1)]
    plain = fit_grid(cfgs)
    monkeypatch.setattr(train, "StackedEngine", lambda networks, cfg, **kw: Captured(
        concurrent.StackedEngine(networks, cfg, **kw), torch.device("cpu"), eager=True))
    for a, b in zip(plain, fit_grid(cfgs)):
        assert _equal(a.discriminator, b.discriminator)


def test_the_captured_configuration_agrees_with_the_plain_loop_to_float32_rounding(busy_config, monkeypatch):
    """What train.cuda_graph builds (capturable optimizers, static buffers), eager: the optimizers' capturable
    form computes the bias corrections in float32, so the weights agree to rounding, not bit for bit."""
    plain = fit(busy_config)
    monkeypatch.setattr(train, "decide_capture", lambda *args, **kwargs: True)
    monkeypatch.setattr(train, "Captured", functools.partial(Captured, eager=True))
    captured = fit(busy_config)
    for a, b in zip(plain.discriminator.state_dict().values(), captured.discriminator.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stacked", [False, True])
def test_a_compiled_step_goes_through_the_captured_configuration_unchanged(busy_config, tiny_config, monkeypatch,
                                                                          stacked):
    """train.compile inside the capture (one model and stacked seeds): the captured configuration run eagerly
    trains what the plain compiled loop trains, bit for bit (the compiled optimizers take their capturable form
    in both; the backend ``eager`` keeps the test fast and the random draws in the eager order)."""
    cfg = busy_config if not stacked else replace(tiny_config, train=replace(tiny_config.train, epochs=2))
    cfg = replace(cfg, train=replace(cfg.train, compile="eager"))
    cfgs = [replace(cfg, seed=s) for s in (0, 1)]
    plain = fit_grid(cfgs) if stacked else [fit(cfg)]
    monkeypatch.setattr(train, "decide_capture", lambda *args, **kwargs: True)
    monkeypatch.setattr(train, "Captured", functools.partial(Captured, eager=True))
    captured = fit_grid(cfgs) if stacked else [fit(cfg)]
    torch._dynamo.reset()
    for a, b in zip(plain, captured):
        assert _equal(a.discriminator, b.discriminator) and _equal(a.generator, b.generator)


def test_the_cpu_path_indexes_the_images_directly():
    x = torch.arange(10.0)[:, None, None, None]
    gather = gatherer(x, torch.device("cpu"))
    assert gather.__self__ is x  # x.__getitem__: no buffers, no copies, no events
    assert gather(torch.tensor([[3, 1]])).flatten().tolist() == [3.0, 1.0]


def test_pinned_batches_wait_for_a_buffer_s_last_copy_before_refilling_it(monkeypatch):
    """From host memory, rows are gathered into pinned buffers used in turn; a buffer is refilled only after
    the copy out of it has finished (a recorded CUDA event, faked here)."""
    events = []

    class FakeEvent:
        def record(self, stream=None):
            events.append(("record", self))

        def synchronize(self):
            events.append(("synchronize", self))

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    x = torch.arange(10.0)[:, None, None, None]
    gather = PinnedGather(x, torch.device("cpu"), n_buffers=2)
    gather.device = torch.device("cuda")  # the events as on CUDA; the copies stay on the CPU here
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *args, **kwargs: self.clone())
    got = [gather(torch.tensor(rows)).flatten().tolist() for rows in ([1, 2], [3, 4], [5, 6])]
    assert got == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert [kind for kind, _ in events] == ["record", "record", "synchronize", "record"]
    assert events[2][1] is events[0][1]  # the third gather reuses the first buffer after its copy


def test_numerics_restore_what_they_change(tiny_config):
    before = torch.are_deterministic_algorithms_enabled()
    with accelerate.numerics(replace(tiny_config.train, deterministic=True), torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before
