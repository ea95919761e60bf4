"""Training: the Adam phase's NaN guard, checkpoint/resume, seeding, and config errors."""

from __future__ import annotations

import pytest
import torch

from pdesampler.losses import logce
from pdesampler.optim.adam import AdamConfig, NonFiniteLossError, run_adam
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


def test_gauss_newton_phase_runs_after_adam_and_does_not_increase_loss() -> None:
    residual = small_residual()
    out = train(
        residual,
        adam={"steps": 30},
        gn={"steps": 3, "cg_max_iter": 50},
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
        gn={"steps": 2, "cg_max_iter": 10},
        batch_size=32,
        progress=False,
    )
    params = dict(residual.named_parameters())
    assert params and all(
        isinstance(p, torch.nn.Parameter) and p.requires_grad for p in params.values()
    )
    train(residual, adam={"steps": 3}, batch_size=32, progress=False)
