"""Tests of ssgan/optim.py: the official improved-gan Adam, epsilon inside the square root (docs/method.md sec. 6)."""

from __future__ import annotations

import io

import pytest
import torch

from ssgan.optim import OfficialAdam, make_optimizer


def reference_adam(p: torch.Tensor, grads: list[torch.Tensor], lr: float, beta1: float, beta2: float,
                   eps: float) -> list[torch.Tensor]:
    """improved-gan's nn.adam_updates, step by step: p -= lr * m_hat / sqrt(v_hat + eps). Returns p after
    each step."""
    m, v, out = torch.zeros_like(p), torch.zeros_like(p), []
    p = p.clone()
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
        p = p - lr * m_hat / torch.sqrt(v_hat + eps)
        out.append(p.clone())
    return out


def _run(optimizer_cls, p0: torch.Tensor, grads: list[torch.Tensor], **kwargs) -> list[torch.Tensor]:
    p = torch.nn.Parameter(p0.clone())
    opt = optimizer_cls([p], **kwargs)
    out = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        out.append(p.detach().clone())
    return out


def _grads(n_steps: int, shape: tuple, scale: float, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen, dtype=torch.float64) * scale for _ in range(n_steps)]


@pytest.mark.parametrize("scale", [1.0, 1e-5])
def test_matches_improved_gan_reference(scale):
    p0 = torch.randn(3, 4, dtype=torch.float64)
    grads = _grads(6, (3, 4), scale)
    settings = dict(lr=3e-3, betas=(0.5, 0.999), eps=1e-8)
    ours = _run(OfficialAdam, p0, grads, **settings)
    expected = reference_adam(p0, grads, settings["lr"], *settings["betas"], settings["eps"])
    for step, (a, b) in enumerate(zip(ours, expected)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=f"step {step + 1}")


def test_several_parameters_and_groups_match_reference():
    p0s = [torch.randn(2, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    grads = [_grads(4, p.shape, 1e-3, seed=i) for i, p in enumerate(p0s)]
    params = [torch.nn.Parameter(p.clone()) for p in p0s]
    opt = OfficialAdam([{"params": [params[0]]}, {"params": [params[1]], "lr": 1e-2}], lr=3e-4)
    for step in range(4):
        for p, g in zip(params, grads):
            p.grad = g[step].clone()
        opt.step()
    for p, p0, g, lr in zip(params, p0s, grads, (3e-4, 1e-2)):
        torch.testing.assert_close(p.detach(), reference_adam(p0, g, lr, 0.5, 0.999, 1e-8)[-1])


def test_epsilon_inside_the_sqrt_differs_from_torch_adam_on_tiny_gradients():
    """With |g| ~ 1e-6, sqrt(v_hat + 1e-8) ~ 1e-4 damps the step ~100x; torch's sqrt(v_hat) + 1e-8 does not."""
    p0 = torch.zeros(4, dtype=torch.float64)
    grads = [torch.full((4,), 1e-6, dtype=torch.float64)] * 3
    settings = dict(lr=1e-3, betas=(0.5, 0.999), eps=1e-8)
    official = _run(OfficialAdam, p0, grads, **settings)[-1]
    torch_adam = _run(torch.optim.Adam, p0, grads, **settings)[-1]
    assert torch_adam[0].item() == pytest.approx(-3e-3, rel=0.02)  # ~lr per step
    assert official[0].item() == pytest.approx(-3e-3 * 1e-6 / (1e-12 + 1e-8) ** 0.5, rel=0.02)
    assert abs(official[0].item()) < abs(torch_adam[0].item()) / 50
    # with large gradients the epsilon is negligible and the two agree
    big = [torch.full((4,), 1.0, dtype=torch.float64)] * 3
    torch.testing.assert_close(_run(OfficialAdam, p0, big, **settings)[-1],
                               _run(torch.optim.Adam, p0, big, **settings)[-1], rtol=1e-6, atol=0)


def test_state_dict_round_trip_continues_identically():
    p0 = torch.randn(6, dtype=torch.float64)
    grads = _grads(6, (6,), 0.1)
    p = torch.nn.Parameter(p0.clone())
    opt = OfficialAdam([p], lr=1e-2)
    for g in grads[:3]:
        p.grad = g.clone()
        opt.step()
    buffer = io.BytesIO()
    torch.save({"param": p.detach().clone(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    q = torch.nn.Parameter(saved["param"])
    resumed = OfficialAdam([q], lr=1e-2)
    resumed.load_state_dict(saved["opt"])
    for g in grads[3:]:
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        resumed.step()
        torch.testing.assert_close(q.detach(), p.detach(), rtol=0, atol=0)
    torch.testing.assert_close(p.detach(), reference_adam(p0, grads, 1e-2, 0.5, 0.999, 1e-8)[-1])
    assert resumed.state[q]["step"] == 6


def test_parameters_without_gradient_are_left_alone():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = OfficialAdam([a, b], lr=0.1)
    a.grad = torch.ones(2)
    opt.step()
    assert not torch.equal(a.detach(), torch.ones(2))
    torch.testing.assert_close(b.detach(), torch.ones(2))
    assert b not in opt.state


def test_closure_is_evaluated_and_its_loss_returned():
    p = torch.nn.Parameter(torch.tensor([2.0]))
    opt = OfficialAdam([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(4.0)
    assert p.item() == pytest.approx(2.0 - 0.1, rel=1e-4)  # first step: lr * sign(g)


def test_make_optimizer():
    p = [torch.nn.Parameter(torch.zeros(1))]
    assert isinstance(make_optimizer(p, "official_adam", 1e-3, (0.5, 0.999), 1e-8), OfficialAdam)
    torch_adam = make_optimizer(p, "torch_adam", 1e-3, (0.5, 0.999), 1e-8)
    assert type(torch_adam) is torch.optim.Adam and torch_adam.defaults["eps"] == 1e-8
    with pytest.raises(ValueError):
        make_optimizer(p, "sgd", 1e-3, (0.5, 0.999), 1e-8)
    with pytest.raises(ValueError):
        OfficialAdam(p, lr=0.0)


def test_the_capturable_form_equals_the_official_adam_over_300_steps_with_an_lr_change():
    """train.cuda_graph's optimizer: step count, bias corrections and lr as device tensors (no host work)."""
    from ssgan.optim import set_lr

    torch.manual_seed(0)
    p0 = [torch.randn(50, 20), torch.randn(20)]
    plain = [torch.nn.Parameter(p.clone()) for p in p0]
    captured = [torch.nn.Parameter(p.clone()) for p in p0]
    opt_plain = OfficialAdam(plain, lr=3e-3, betas=(0.5, 0.999), eps=1e-8)
    opt_captured = OfficialAdam(captured, lr=3e-3, betas=(0.5, 0.999), eps=1e-8, capturable=True)
    for step in range(300):
        if step == 150:  # as the schedule changes lr between epochs
            set_lr(opt_plain, 1e-3)
            set_lr(opt_captured, 1e-3)
        grads = [torch.randn_like(p) * 1e-2 for p in p0]
        for params, opt in ((plain, opt_plain), (captured, opt_captured)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(plain, captured):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    assert opt_captured.param_groups[0]["step_t"].item() == 300 and opt_captured.param_groups[0]["lr_t"].item() \
        == pytest.approx(1e-3)
    # checkpoints of both forms are the same plain state: each loads into the other
    state = opt_captured.state_dict()
    assert state["state"][0]["step"] == 300 and "lr_t" not in state["param_groups"][0]
    again = OfficialAdam([torch.nn.Parameter(p.detach().clone()) for p in captured], capturable=True)
    again.load_state_dict(state)
    assert again.param_groups[0]["step_t"].item() == 300 and again.param_groups[0]["lr_t"].item() == \
        pytest.approx(1e-3)


def test_a_state_loads_into_the_form_of_the_optimizer_it_is_loaded_into():
    """A checkpoint of a captured run resumed without capture, and the other way round, keeps the running
    optimizer's form (torch.optim keeps the saved groups' options, capturable among them)."""
    p = torch.nn.Parameter(torch.randn(4))
    captured = OfficialAdam([p], lr=1e-3, capturable=True)
    p.grad = torch.ones(4)
    captured.step()
    plain = OfficialAdam([torch.nn.Parameter(p.detach().clone())], lr=1e-3)
    plain.load_state_dict(captured.state_dict())
    assert plain.param_groups[0]["capturable"] is False and "step_t" not in plain.param_groups[0]
    plain.param_groups[0]["params"][0].grad = torch.ones(4)
    plain.step()  # the plain form, not a KeyError of the capturable one
    assert plain.state[plain.param_groups[0]["params"][0]]["step"] == 2
    again = OfficialAdam([torch.nn.Parameter(p.detach().clone())], lr=1e-3, capturable=True)
    again.load_state_dict(plain.state_dict())
    assert again.param_groups[0]["capturable"] is True and again.param_groups[0]["step_t"].item() == 2


def test_state_dict_leaves_the_live_state_alone():
    """The capturable form keeps its step on the device; saving writes the plain form's integer step into
    the saved copy only, never into the optimizer's own state."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = OfficialAdam([p], lr=0.1, capturable=True)
    p.grad = torch.ones(3)
    opt.step()
    saved = opt.state_dict()
    assert saved["state"][0]["step"] == 1
    assert "step" not in opt.state[p]
    p.grad = torch.ones(3)
    opt.step()
    assert saved["state"][0]["step"] == 1 and opt.state_dict()["state"][0]["step"] == 2


def test_the_compiled_update_is_the_capturable_update():
    """Equivalence kind of ``OfficialAdam.compile_update``: ``official_adam_update`` (the update written tensor
    by tensor, what inductor fuses into one loop per tensor) runs the capturable form's operations in its
    order, bit-identical to it uncompiled; compiled, the last bits may differ (dynamo itself rewrites
    ``addcmul_``; inductor's loops round on their own), so the compiled update agrees to float32 rounding."""
    from ssgan.optim import official_adam_update

    torch.manual_seed(0)
    shapes = [(5, 3), (3,), (2, 2, 2)]
    start = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(4)]

    def run(form):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = OfficialAdam(params, lr=0.003, capturable=form != "plain")
        if form == "compiled":
            opt.compile_update("eager")
        elif form == "per_tensor":
            opt._update = official_adam_update
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
        state = opt.state_dict()["state"]
        return [t for i, p in enumerate(params) for t in (p.detach(), state[i]["exp_avg"], state[i]["exp_avg_sq"])]

    capturable, per_tensor, compiled = run("capturable"), run("per_tensor"), run("compiled")
    assert all(torch.equal(a, b) for a, b in zip(capturable, per_tensor))
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(capturable, compiled))
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(run("plain"), compiled))


@pytest.mark.parametrize("idle", ["none", "one", "group"])
def test_the_fused_average_is_the_polyak_update_after_the_step(idle):
    """Equivalence kind of ``OfficialAdam.average_into``: the Polyak update fused into the compiled update's
    loop moves each average exactly as ``polyak_update`` after the step does (here bit for bit: the backend
    ``eager`` runs the same operations), whatever the rate tensor holds at each step; an idle parameter (no
    gradient), or a whole parameter group without gradients, is not stepped, its average still moves."""
    from ssgan.optim import polyak_update

    torch.manual_seed(0)
    shapes = [(5, 3), (3,), (2, 2, 2)]
    start = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(4)]
    rates = [1.0, 0.5, 0.25, 0.001]  # a debiased average's rates, filled in before each step

    def run(fused):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        averages = [torch.zeros(s) for s in shapes]
        opt = OfficialAdam([{"params": params[:2]}, {"params": params[2:]}], lr=0.003)
        opt.compile_update("eager")
        rate = torch.zeros(())
        if fused:
            opt.average_into(averages, rate)
        for step_grads, r in zip(grads, rates):
            for i, (p, g) in enumerate(zip(params, step_grads)):
                idle_here = (idle == "one" and i == 1) or (idle == "group" and i == 2)
                p.grad = None if idle_here else g.clone()
            rate.fill_(r)
            opt.step()
            if not fused:
                polyak_update(averages, params, 0.0, rate)
        return params, averages

    (p_fused, a_fused), (p_plain, a_plain) = run(True), run(False)
    torch._dynamo.reset()
    assert all(torch.equal(a, b) for a, b in zip(p_fused, p_plain))
    assert all(torch.equal(a, b) for a, b in zip(a_fused, a_plain))
    assert not torch.equal(a_fused[0], torch.zeros(5, 3))


def test_the_fused_average_needs_the_compiled_update_and_one_average_per_parameter():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    opt = OfficialAdam(params)
    with pytest.raises(RuntimeError, match="compile_update first"):
        opt.average_into([torch.zeros(3), torch.zeros(2)], torch.zeros(()))
    opt.compile_update("eager")
    with pytest.raises(ValueError, match="one average per parameter"):
        opt.average_into([torch.zeros(3)], torch.zeros(()))


def test_the_debiased_rate_keeps_the_average_equal_to_the_zero_started_one_over_one_minus_decay_to_the_n():
    from ssgan.optim import debiased_rate

    decay, values = 0.9999, torch.randn(50, dtype=torch.float64)
    official, debiased = torch.zeros((), dtype=torch.float64), torch.full((), 123.0, dtype=torch.float64)
    for n, p in enumerate(values, 1):
        official = decay * official + (1 - decay) * p
        debiased = debiased + debiased_rate(decay, n) * (p - debiased)
        assert torch.allclose(debiased, official / (1 - decay ** n), rtol=1e-9)
    assert debiased_rate(decay, 1) == 1.0 and debiased_rate(0.0, 5) == 1.0
    assert abs(debiased_rate(decay, 10 ** 9) - (1 - decay)) < 1e-12  # the official rate once 1 - decay^n ~ 1
