"""Training: the Adam phase's NaN guard, checkpoint/resume, seeding, and config errors."""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch

from pdesampler.losses import logce, pis_kl
from pdesampler.optim import adam as adam_module
from pdesampler.optim.adam import (
    AdamConfig,
    NonFiniteLossError,
    learning_rate,
    run_adam,
)
from pdesampler.targets import Gaussian
from pdesampler.train import train

NET = {"width": 8, "depth": 1}


def small_residual(seed: int = 0):
    torch.manual_seed(seed)
    return logce(Gaussian(mean=0.5, std=0.8, dim=2), net=NET)


def params_of(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def fixed_batch_loss(residual) -> float:
    gen = torch.Generator().manual_seed(123)
    x = 2 * torch.randn(2048, 2, generator=gen)
    t = torch.rand(2048, generator=gen)
    return float(residual.loss(x, t)[0].detach())


def test_same_seed_same_result_and_loss_decreases() -> None:
    results = []
    for _ in range(2):
        residual = small_residual()
        before = fixed_batch_loss(residual)
        out = train(residual, adam={"steps": 100}, batch_size=128, seed=3, progress=False)
        results.append((params_of(residual), out.final_loss, before, fixed_batch_loss(residual)))
    for a, b in zip(results[0][0], results[1][0], strict=True):
        assert torch.equal(a, b)
    assert results[0][1] == results[1][1]
    before, after = results[0][2], results[0][3]
    assert after < 0.5 * before


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path) -> None:
    reference = small_residual()
    train(reference, adam={"steps": 20}, batch_size=64, seed=1, progress=False)

    class InterruptError(Exception):
        pass

    residual = small_residual()
    adam = {"steps": 20, "checkpoint_every": 10}
    calls = {"n": 0}
    original_loss = residual.loss

    def flaky_loss(x, t):
        calls["n"] += 1
        if calls["n"] == 15:
            raise InterruptError
        return original_loss(x, t)

    residual.loss = flaky_loss
    with pytest.raises(InterruptError):
        train(residual, adam=adam, batch_size=64, seed=1, checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").exists()
    resumed = small_residual(seed=99)  # different init: everything must come from the checkpoint
    out = train(resumed, adam=adam, batch_size=64, seed=1, checkpoint_dir=tmp_path, progress=False)
    assert out.adam.steps == 20
    for a, b in zip(params_of(reference), params_of(resumed), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    again = small_residual(seed=5)  # a finished run is loaded, not retrained
    train(again, adam=adam, batch_size=64, seed=1, checkpoint_dir=tmp_path, progress=False)
    for a, b in zip(params_of(reference), params_of(again), strict=True):
        assert torch.equal(a, b)


def test_nan_guard_skips_then_stops() -> None:
    w = torch.nn.Parameter(torch.ones(3))
    model = torch.nn.Module()
    model.w = w
    calls = {"n": 0}

    def loss_fn(step):
        calls["n"] += 1
        loss = (w**2).sum()
        if calls["n"] in (3, 4):
            loss = loss * float("nan")
        return loss, {}

    result = run_adam(model, loss_fn, AdamConfig(steps=10, nan_patience=3), progress=False)
    assert result.steps == 10 and result.skipped == 2
    assert torch.isfinite(w).all()

    def always_nan(step):
        return (w**2).sum() * float("inf") * 0, {}

    with pytest.raises(NonFiniteLossError, match="consecutive non-finite"):
        run_adam(model, always_nan, AdamConfig(steps=10, nan_patience=4), progress=False)


def test_abs_and_squares_form_adds_the_mean_absolute_residual_and_trains() -> None:
    """Máté & Fleuret's loss: sum_k alpha_k mean(|r_k| + r_k^2), from the same residual terms;
    an Adam run on it lowers the mean square too; an unknown form is named."""
    residual = small_residual().double()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    t = torch.rand(64, generator=gen, dtype=torch.float64)
    terms = residual.residuals(x, t)
    squares, parts = residual.loss(x, t)
    both, parts_both = residual.loss(x, t, form="abs_and_squares")
    expected = sum(w * (terms[k].abs().mean() + terms[k].square().mean())
                   for k, w in residual.weights.items())  # fmt: skip
    assert torch.allclose(both, expected, rtol=1e-12)
    assert torch.allclose(squares, sum(w * parts[k] for k, w in residual.weights.items()))
    assert both > squares and parts_both.keys() == parts.keys()
    with pytest.raises(ValueError, match="loss form must be 'squares' or 'abs_and_squares'"):
        residual.loss(x, t, form="l1")
    trained = small_residual()
    before = fixed_batch_loss(trained)
    adam = {"steps": 100, "loss_form": "abs_and_squares"}
    train(trained, adam=adam, batch_size=128, seed=3, progress=False)
    assert fixed_batch_loss(trained) < 0.5 * before
    with pytest.raises(ValueError, match="loss_form must be 'squares' or 'abs_and_squares'"):
        AdamConfig(loss_form="abs")


def test_tempered_target_is_the_power_of_rho_in_every_residual_term() -> None:
    """With ``target_power`` beta, logCE on N(m, s^2) has the residual of logCE on the target
    rho^beta = Z_B N(m, s^2 / beta) (log Z_B chosen so that the two log-densities agree), for
    the same weights: value, time derivative, gradient and Laplacian of log rho all scale."""
    beta, mean, std, dim = 0.3, 0.5, 0.8, 2
    log_z_b = (
        0.5 * dim * (math.log(2 * math.pi * std**2 / beta) - beta * math.log(2 * math.pi * std**2))
    )
    torch.manual_seed(0)
    tempered = logce(Gaussian(mean=mean, std=std, dim=dim), net=NET).double()
    exact = logce(Gaussian(mean=mean, std=std / math.sqrt(beta), dim=dim, log_Z=log_z_b), net=NET)
    exact = exact.double()
    exact.load_state_dict(tempered.state_dict())
    tempered.density.target_power.fill_(beta)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, dim, generator=gen, dtype=torch.float64)
    t = torch.rand(16, generator=gen, dtype=torch.float64)
    for name, value in tempered.residuals(x, t).items():
        assert torch.allclose(value, exact.residuals(x, t)[name], atol=1e-10), name


def test_tempering_ramps_the_power_to_one_and_is_refused_where_it_cannot_apply() -> None:
    residual, powers = small_residual(), []
    adam = {"steps": 30, "temper_from": 0.3, "temper_until": 0.5}

    def record(steps, elapsed, params) -> None:
        powers.append(float(residual.density.target_power))

    train(residual, adam=adam, batch_size=32, seed=0, progress=False, on_step=record)
    assert powers[0] == pytest.approx(0.3) and powers[5] == pytest.approx(0.3 + 0.7 * 5 / 15)
    assert all(a <= b for a, b in itertools.pairwise(powers))
    assert powers[15:] == [1.0] * 15 and float(residual.density.target_power) == 1.0
    assert "target_power" not in residual.state_dict()  # saved weights load without it
    powers.clear()  # a ramp over the whole phase ends below 1; the model is left untempered
    adam_whole = {**adam, "temper_until": 1.0}
    train(residual, adam=adam_whole, batch_size=32, seed=0, progress=False, on_step=record)
    assert powers[-1] < 1.0 and float(residual.density.target_power) == 1.0
    with pytest.raises(ValueError, match="temper_from must be a number in \\(0, 1\\] or null"):
        AdamConfig(temper_from=0.0)
    with pytest.raises(ValueError, match="apply to PDE residuals"):
        train(pis_kl(Gaussian(dim=2)), adam=adam, progress=False)


def test_unknown_config_keys_are_named() -> None:
    with pytest.raises(ValueError, match="unknown AdamConfig keys \\['stepz'\\]"):
        train(small_residual(), adam={"stepz": 3}, progress=False)
    with pytest.raises(ValueError, match="unknown collocation 'grid'"):
        train(small_residual(), adam={"steps": 1}, collocation="grid", progress=False)


def test_wall_clock_budget_stops_training() -> None:
    out = train(
        small_residual(), adam={"steps": 10**6}, batch_size=32, max_seconds=1.0, progress=False
    )
    assert 0 < out.adam.steps < 10**6
    assert out.adam.seconds < 5.0


def test_seconds_per_step_leave_out_the_first_step() -> None:
    """A slow first step (compilation) is reported apart: ``sec_per_it`` averages the others."""
    weight = torch.nn.Parameter(torch.ones(3))
    module = torch.nn.Module()
    module.weight = weight

    def loss_fn(step: int):
        time.sleep(0.5 if step == 0 else 0.01)
        return (weight**2).sum(), {}

    result = run_adam(module, loss_fn, AdamConfig(steps=4), progress=False)
    assert result.first_step_seconds >= 0.5
    assert result.seconds_per_step == pytest.approx(
        (result.seconds - result.first_step_seconds) / 3
    )
    assert 0.01 <= result.seconds_per_step < 0.1 < result.seconds / result.steps


def test_gauss_newton_phase_runs_after_adam_and_does_not_increase_loss() -> None:
    residual = small_residual()
    out = train(
        residual,
        adam={"steps": 30},
        gn={"method": "gauss_newton", "steps": 3, "cg_max_iter": 50},
        batch_size=64,
        progress=False,
    )
    assert len(out.gn_history) == 3
    for step in out.gn_history:
        assert step["loss_after"] <= step["loss_before"]


def test_gauss_newton_keeps_shared_parameters_trainable() -> None:
    """score shares its density module with its drift; after GN every parameter is still an
    nn.Parameter that Adam can train (torch's functional_call with tied weights would not)."""
    from pdesampler.losses import score

    torch.manual_seed(0)
    residual = score(Gaussian(mean=0.5, std=0.8, dim=2), net=NET)
    train(
        residual,
        adam={"steps": 5},
        gn={"method": "gauss_newton", "steps": 2, "cg_max_iter": 10},
        batch_size=32,
        progress=False,
    )
    params = dict(residual.named_parameters())
    assert params and all(
        isinstance(p, torch.nn.Parameter) and p.requires_grad for p in params.values()
    )
    train(residual, adam={"steps": 3}, batch_size=32, progress=False)


@pytest.mark.parametrize("schedule", ["exponential", "cosine", "warmup_cosine", "wsd"])
def test_every_schedule_runs_from_lr_to_lr_final(schedule: str) -> None:
    cfg = AdamConfig(lr=1e-2, lr_final=1e-4, schedule=schedule, warmup=0.1, decay=0.3)
    assert learning_rate(cfg, 0.0) == pytest.approx(1e-4)  # warm-up starts at lr_final
    assert learning_rate(cfg, 0.1) == pytest.approx(1e-2)
    assert learning_rate(cfg, 1.0) == pytest.approx(1e-4)
    rates = [learning_rate(cfg, p / 100) for p in range(10, 101)]
    assert all(a >= b - 1e-15 for a, b in itertools.pairwise(rates))  # no rise after warm-up


def test_schedules_match_their_closed_forms() -> None:
    lr0, lr1 = 1e-2, 1e-4
    exp = AdamConfig(lr=lr0, lr_final=lr1)
    cos = AdamConfig(lr=lr0, lr_final=lr1, schedule="cosine")
    warm = AdamConfig(lr=lr0, lr_final=lr1, schedule="warmup_cosine", warmup=0.2)
    wsd = AdamConfig(lr=lr0, lr_final=lr1, schedule="wsd", warmup=0.1, decay=0.25)
    for p in (0.0, 0.3, 0.5, 0.77, 1.0):
        assert learning_rate(exp, p) == pytest.approx(lr0 * (lr1 / lr0) ** p)
        assert learning_rate(cos, p) == pytest.approx(
            lr1 + (lr0 - lr1) * (1 + math.cos(math.pi * p)) / 2
        )
    assert learning_rate(warm, 0.1) == pytest.approx((lr0 + lr1) / 2)  # half-way up the ramp
    assert learning_rate(warm, 0.6) == pytest.approx((lr0 + lr1) / 2)  # half-way down the cosine
    assert learning_rate(wsd, 0.05) == pytest.approx((lr0 + lr1) / 2)
    assert learning_rate(wsd, 0.5) == lr0 == learning_rate(wsd, 0.75)  # stable
    assert learning_rate(wsd, 0.875) == pytest.approx(math.sqrt(lr0 * lr1))  # geometric mid-decay
    assert learning_rate(AdamConfig(lr=lr0, schedule="constant"), 0.9) == lr0
    with pytest.raises(ValueError, match="schedule must be exponential"):
        AdamConfig(schedule="step")


def test_a_wall_clock_budget_is_not_cut_short_by_a_default_step_cap(monkeypatch) -> None:
    """``steps=None`` (the config default) runs to the budget; the schedule then follows the
    elapsed time, and without a budget it stops at ``DEFAULT_STEPS`` (50 here)."""
    monkeypatch.setattr(adam_module, "DEFAULT_STEPS", 50)
    weight = torch.nn.Parameter(torch.ones(3))
    module = torch.nn.Module()
    module.weight = weight

    def loss_fn(step: int):
        return (weight**2).sum(), {}

    timed = run_adam(module, loss_fn, AdamConfig(max_seconds=1.0), progress=False)
    assert timed.steps > 50 and timed.seconds >= 1.0
    assert timed.history[-1]["lr"] < 2e-4  # annealed to lr_final = 1e-4 on elapsed time
    plain = run_adam(module, loss_fn, AdamConfig(), progress=False)
    assert plain.steps == 50
