"""Trajectory baselines (PIS, DIS) against closed-form optimal controls on Gaussian targets.

For an unnormalized Gaussian target :math:`Z\\,\\mathcal N(m, v I)`:

* PIS (Brownian reference :math:`dX = \\bar\\sigma dW` from 0): the optimal (Föllmer) control is
  :math:`u^* = \\bar\\sigma\\nabla\\log h`, :math:`h(x, t) = \\mathbb E[\\rho(X_T)/p^{ref}_T(X_T)
  | X_t = x] \\propto \\mathcal N(x; c, 1/a + \\bar\\sigma^2(T - t))` with
  :math:`a = 1/v - 1/(\\bar\\sigma^2 T)` and :math:`c = m / (v a)`.
* DIS (VP reference): :math:`u^* = \\sigma(t)\\nabla\\log p_Y(x, T - t)`, where the OU marginal
  started at the target is :math:`p_Y(s) = \\mathcal N(m\\alpha_s, v\\alpha_s^2 + 1 - \\alpha_s^2)`,
  :math:`\\alpha_s = e^{-B(s)/2}`, :math:`B(s) = \\int_0^s\\beta`; the prior is :math:`p_Y(T)`.

With these controls the path weight is :math:`Z` almost surely in continuous time, so the KL
loss tends to :math:`-\\log Z` and the log-variance loss to 0 as the step shrinks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_cli import FAST, run_cli
from torch import Tensor, nn

from pdesampler.evaluate import evaluate
from pdesampler.losses import BASELINES
from pdesampler.losses.trajectory import (
    BrownianReference,
    TrajectoryLoss,
    VPReference,
    dis_lv,
    pis_kl,
    pis_lv,
)
from pdesampler.published import published_row
from pdesampler.sampling import sample
from pdesampler.targets import Gaussian
from pdesampler.train import train

MEAN, VAR, LOG_Z, DIM = 1.0, 0.25, 0.7, 2


def _target() -> Gaussian:
    return Gaussian(MEAN, math.sqrt(VAR), dim=DIM, log_Z=LOG_Z).double()


class ClosedForm(nn.Module):
    """A control given by a function of one point; the dummy parameter fixes dtype."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.dtype_anchor = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.fn(x, t)


def pis_optimal(steps: int, sigma: float = math.sqrt(0.2), T: float = 5.0) -> TrajectoryLoss:
    a = 1 / VAR - 1 / (sigma**2 * T)
    c = MEAN / (VAR * a)
    control = ClosedForm(lambda x, t: -sigma * (x - c) / (1 / a + sigma**2 * (T - t)))
    return TrajectoryLoss(_target(), BrownianReference(DIM, sigma, T), control, steps=steps)


def _vp_marginal(beta_min: float, beta_max: float, T: float, s: Tensor | float):
    B = beta_min * s + (beta_max - beta_min) * s**2 / (2 * T)
    alpha = torch.exp(-torch.as_tensor(B, dtype=torch.float64) / 2)
    return MEAN * alpha, VAR * alpha**2 + 1 - alpha**2


def dis_optimal(steps: int, beta_min=0.1, beta_max=10.0, T=1.0) -> TrajectoryLoss:
    mean_T, var_T = _vp_marginal(beta_min, beta_max, T, T)
    prior = Gaussian(float(mean_T), float(var_T.sqrt()), dim=DIM).double()
    reference = VPReference(DIM, beta_min, beta_max, T, prior=prior)

    def control(x: Tensor, t: Tensor) -> Tensor:
        mean, var = _vp_marginal(beta_min, beta_max, T, T - t)
        return reference.diffusion(t) * -(x - mean) / var

    return TrajectoryLoss(_target(), reference, ClosedForm(control), steps=steps)


def _losses(loss: TrajectoryLoss, n: int = 4000) -> tuple[float, float]:
    """(KL loss, log-variance loss) on the same paths."""
    _, log_w = loss.simulate(n, torch.Generator().manual_seed(0), detach=True)
    return float(-log_w.mean()), float(log_w.var())


@pytest.mark.parametrize("build", [pis_optimal, dis_optimal], ids=["pis", "dis"])
def test_optimal_control_kl_is_minus_log_z_and_log_variance_vanishes(build):
    coarse_kl, coarse_lv = _losses(build(50))
    fine_kl, fine_lv = _losses(build(400))
    assert abs(fine_kl + LOG_Z) < 0.01, fine_kl
    assert fine_lv < 0.01, fine_lv
    # the remaining gap is discretization error: it shrinks with the step
    assert abs(fine_kl + LOG_Z) < 0.5 * abs(coarse_kl + LOG_Z)
    assert fine_lv < 0.5 * coarse_lv


@pytest.mark.parametrize("build", [pis_optimal, dis_optimal], ids=["pis", "dis"])
def test_perturbed_control_is_clearly_worse(build):
    loss = build(100)
    optimal = loss.control.fn
    loss.control.fn = lambda x, t: optimal(x, t) + 0.5
    kl, lv = _losses(loss)
    assert kl + LOG_Z > 0.05 and lv > 0.05


@pytest.mark.parametrize("reference", ["pis", "dis"])
def test_path_weights_are_unbiased_for_z_with_any_control(reference):
    """E[w] = Z exactly for the discrete weights, whatever the control and step count: a poor
    linear control on 10 steps still gives an unbiased importance-sampling estimate."""
    target = _target()
    ref = BrownianReference(DIM, 1.0, 1.0) if reference == "pis" else VPReference(DIM, 1.0, 3.0)
    control = ClosedForm(lambda x, t: 0.3 - 0.5 * x)
    loss = TrajectoryLoss(target, ref, control, steps=10)
    gen = torch.Generator().manual_seed(1)
    out = sample(loss.dynamics(), 200_000, generator=gen, sde_steps=10, module=loss)
    log_w = out.log_weights(target)
    assert log_w.std() > 0.5  # far from the optimum: the weights vary a lot
    w = log_w.exp()
    ratio = w.mean() / math.exp(LOG_Z)
    stderr = w.std() / math.sqrt(w.numel()) / math.exp(LOG_Z)
    assert stderr < 0.02
    assert abs(ratio - 1) < 4 * stderr


def test_log_variance_stays_finite_where_float32_squares_overflow():
    """A float32 DIS whose log-weights are about -1e22 (a target of standard deviation 1e-11,
    as paths into a funnel's neck): their variance, about 1e44, is past float32's range, yet
    the loss and its gradient are finite."""
    torch.manual_seed(0)
    loss = dis_lv(Gaussian(0.0, 1e-11, dim=DIM), steps=10)
    value, _ = loss.path_loss(64, torch.Generator().manual_seed(0))
    _, log_w = loss.simulate(64, torch.Generator().manual_seed(0), detach=True)
    assert log_w.dtype == torch.float32 and log_w.abs().min() > 1e20
    assert math.isfinite(float(value.detach())) and float(value.detach()) > 1e40
    value.backward()
    grads = [p.grad for p in loss.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_sampling_weights_match_the_training_simulation():
    """sampling.sample (through Dynamics) and TrajectoryLoss.simulate give the same log w for
    the same noise, so evaluate's ESS and log Z are those of the trained paths."""
    loss = dis_optimal(20)
    gen = torch.Generator().manual_seed(3)
    out = sample(loss.dynamics(), 500, generator=gen, sde_steps=20, module=loss)
    x, log_w = loss.simulate(500, torch.Generator().manual_seed(3), detach=False)
    torch.testing.assert_close(out.samples, x.detach())
    torch.testing.assert_close(out.log_weights(loss.target), log_w.detach())


def test_gauss_newton_is_refused_with_a_clear_error():
    loss = pis_kl(_target(), net={"width": 8, "depth": 1}, steps=5)
    with pytest.raises(ValueError, match="Gauss-Newton does not apply"):
        train(loss, adam={"steps": 1}, gn={"steps": 1}, progress=False)


def test_training_pis_lv_reaches_the_target_and_evaluate_reports_path_weights():
    target = Gaussian(MEAN, math.sqrt(VAR), dim=DIM, log_Z=LOG_Z)
    loss = pis_lv(target, net={"width": 32, "depth": 2}, steps=20)
    kw = {"n_samples": 2000, "sde_steps": 20, "sinkhorn_max_samples": 300}
    before = evaluate(loss, **kw).metrics
    result = train(loss, adam={"steps": 100, "lr": 1e-2}, batch_size=128, progress=False)
    after = evaluate(loss, **kw).metrics
    assert before["dlogZ"] > 1.0 and before["ess"] < 0.3
    assert after["dlogZ"] < 0.3 and after["ess"] > 0.5 and after["dstd"] < 0.2
    assert after["nll"] is None and "nll" in after["skipped"]
    assert result.summary()["steps"] == 100 and math.isfinite(result.final_loss)


def test_finished_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    kw = {"adam": {"steps": 6, "checkpoint_every": 3}, "batch_size": 32, "progress": False}
    loss = pis_lv(_target(), net={"width": 8, "depth": 1}, steps=5)
    first = train(loss, checkpoint_dir=tmp_path, **kw)
    again = pis_lv(_target(), net={"width": 8, "depth": 1}, steps=5)
    second = train(again, checkpoint_dir=tmp_path, **kw)
    assert second.final_loss == first.final_loss and second.adam.steps == 6
    for a, b in zip(loss.parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"divergence": "l2"}, "unknown divergence"), ({"steps": 0}, "steps must be >= 1")],
)
def test_bad_settings_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrajectoryLoss(_target(), BrownianReference(DIM), nn.Linear(1, 1), **kwargs)


def test_cli_run_of_a_baseline_and_gauss_newton_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_cli("target=gaussian", "loss=dis_lv", "loss.steps=5", *FAST, f"out_dir={out}")
    data = json.loads((out / "metrics.json").read_text())
    for key in ("loss", "dlogZ", "ess", "w2", "dstd", "sec_per_it"):
        assert math.isfinite(data[key]), key
    assert data["nll"] is None and data["gn_steps"] == 0
    proc = run_cli("loss=pis_kl", "optim=adam_gn", *FAST, f"out_dir={tmp_path / 'gn'}", check=False)
    assert proc.returncode != 0
    assert "Gauss-Newton does not apply to the trajectory baseline" in proc.stderr


def test_suites_run_every_baseline_beside_its_published_row() -> None:
    root = Path(__file__).resolve().parents[1] / "pdesampler" / "configs" / "suite"
    problems = {"gmm9": "GMM d=2", "mw5": "MW 5/5/4", "mw50": "MW 50/5/2"}
    expected = {
        "paper": {(t, m) for t in problems for m in BASELINES},
        # the main job, bounded to 15 minutes: PIS on GMM-9
        "quick": {("gmm9", "pis_lv")},
    }
    for suite, want in expected.items():
        runs = OmegaConf.load(root / f"{suite}.yaml").suite.runs
        found = {(r.name.split("_", 1)[0], r.method) for r in runs if r.method in BASELINES}
        assert found == want, suite
        for run in (r for r in runs if r.method in BASELINES):
            assert f"loss={run.method}" in run.overrides
            if suite == "quick":  # equal-time rows; suite=paper sets the published ones beside
                continue
            row = published_row(run.paper.table, run.paper.problem, run.paper.method)
            assert run.paper.problem == problems[run.name.split("_", 1)[0]]
            assert set(row) == {"dlogZ", "w2", "ess", "dstd", "sec_per_it"}
