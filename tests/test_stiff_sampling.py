r"""The gradient flow's backward ODE on a stiff case with a known answer.

The gradient-flow drift (Chemseddine et al.) is :math:`v = -\tfrac{\beta}2(\nabla\log p_t + x)`,
integrated from ``t = 1`` back to ``t = 0``. For a target :math:`\mathcal{N}(m, s^2)` and a
constant :math:`\beta` its path is the OU law :math:`p_t = \mathcal{N}(a_t m, v_t)`,
:math:`a_t = e^{-\beta t/2}`, :math:`v_t = a_t^2 s^2 + 1 - a_t^2`, so it relaxes at the rate
:math:`\beta/(2 v_t)`, up to :math:`\beta/(2 s^2) = 4000` for :math:`s = 0.05`, :math:`\beta = 20`:
stiff near ``t = 0``, as :math:`\nabla\log\rho \sim -4x^3` makes the many-wells stiff where
samples stray. The flow map is :math:`x_0 = m + s(x_1 - a_1 m)/\sqrt{v_1}` and
:math:`\log q(x_0) = \log\mathcal{N}(x_1; 0, 1) - \log(s/\sqrt{v_1})`. A fixed rk4 grid misses
them; ``method="auto"`` (the gradient flow's dopri5) recovers them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pdesampler import sampling
from pdesampler.losses import Dynamics, gradflow
from pdesampler.ops import Exact
from pdesampler.sampling import SamplingOptions, ode, sample_ode
from pdesampler.sampling.ode import _solve_augmented
from pdesampler.targets import Gaussian

F64 = torch.float64
M, S, BETA = 1.0, 0.05, 20.0


def a(t: Tensor) -> Tensor:
    return torch.exp(-BETA * t / 2)


def v(t: Tensor) -> Tensor:
    return a(t) ** 2 * S**2 + 1 - a(t) ** 2


def drift(x: Tensor, t: Tensor) -> Tensor:
    """:math:`-\\tfrac{\\beta}2(\\nabla\\log p_t(x) + x)` with the exact OU score."""
    return -BETA / 2 * (-(x - a(t) * M) / v(t) + x)


def stiff_dynamics() -> Dynamics:
    prior = Gaussian(0.0, 1.0, dim=1).double()
    return Dynamics(drift, prior, 1.0, 0.0, ode_method="dopri5")


def errors(method: str) -> tuple[float, float]:
    """Max errors in x and log q against the exact flow map, for 256 prior points."""
    out = sample_ode(stiff_dynamics(), 256, generator=torch.Generator().manual_seed(0),
                     method=method, steps=100, dtype=F64)  # fmt: skip
    one = torch.tensor(1.0, dtype=F64)
    x1 = out.x0
    exact = M + S * (x1 - a(one) * M) / v(one).sqrt()
    log_q = -0.5 * x1[:, 0] ** 2 - 0.5 * math.log(2 * math.pi) - math.log(S) + 0.5 * v(one).log()
    err_x = (out.x - exact).abs().max().nan_to_num(torch.inf)
    err_log_q = (out.log_q - log_q).abs().max().nan_to_num(torch.inf)
    return float(err_x), float(err_log_q)


def test_gradflow_samples_with_an_adaptive_solver_by_default() -> None:
    residual = gradflow(Gaussian(0.0, 1.0, dim=2), net={"width": 4, "depth": 1})
    assert residual.dynamics().ode_method == "dopri5"


def test_stiff_backward_ode_is_exact_with_auto_where_fixed_rk4_fails() -> None:
    rk4_x, rk4_log_q = errors("rk4")
    assert rk4_x > 1.0 and rk4_log_q > 1.0, (rk4_x, rk4_log_q)  # stiff for 100 rk4 steps
    auto_x, auto_log_q = errors("auto")
    assert auto_x < 1e-4 and auto_log_q < 1e-3, (auto_x, auto_log_q)


def test_a_slow_start_does_not_throw_the_first_step_out_of_the_time_span() -> None:
    """At t = 1 the flow above barely moves, so torchdiffeq's own first-step guess
    (0.01 |y0| / |f(y0)|, about 44 here) would evaluate the drift at t = -43, where it
    overflows; the solver then gave up on a lone sample. The first step is now a fixed share of
    the span, and every lone sample is solved to tolerance."""
    for x1 in (-2.0, 0.5, 2.5):
        dyn = Dynamics(drift, Gaussian(0.0, 1.0, dim=1).double(), 1.0, 0.0, ode_method="dopri5")
        x, _, _, _ = _solve_augmented(
            dyn, torch.tensor([[x1]], dtype=F64), torch.zeros(1, dtype=F64), 1.0, 0.0,
            SamplingOptions(estimator=Exact(), method="dopri5", steps=100, rtol=1e-5, atol=1e-5),
            save_indices=[],
        )  # fmt: skip
        one = torch.tensor(1.0, dtype=F64)
        assert abs(x.item() - (M + S * (x1 - a(one) * M) / v(one).sqrt().item())) < 1e-4


def test_an_overflowing_trial_step_counts_as_an_infinite_error() -> None:
    from pdesampler.sampling.ode import _step_norm

    state = (torch.tensor([[1.0, float("nan")]]), torch.tensor([3.0]))
    assert _step_norm(x_only=True)(state) == torch.inf
    finite = _step_norm(x_only=False)((torch.tensor([[3.0, 4.0]]), torch.tensor([0.0])))
    assert math.isclose(finite.item(), math.sqrt(25 / 3), rel_tol=1e-6)


def test_an_adaptive_solve_that_gives_up_falls_back_to_the_fixed_grid(caplog, monkeypatch) -> None:
    """dx/dt = x^3 from N(0, 1/4) blows up before t = 1 wherever |x0| > 1/sqrt(2): dopri5 cannot
    pass the singularity; one rk4 pass flags the samples that blow up, they are tried on finer
    rk4 grids (and stay non-finite: the true solution is), and the small starts stay exact.
    (A cap of 300 steps keeps the test quick.)"""
    monkeypatch.setattr(ode, "MAX_ADAPTIVE_STEPS", 300)
    prior = Gaussian(0.0, 0.5, dim=1).double()
    blowup = Dynamics(lambda x, t: x**3, prior, 0.0, 1.0, ode_method="dopri5")
    out = sample_ode(blowup, 16, generator=torch.Generator().manual_seed(0), steps=50, dtype=F64)
    assert "blow up on the rk4 grid" in caplog.text
    assert "non-finite even on a 64x finer rk4 grid" in caplog.text
    small = out.x0[:, 0].abs() < 0.5
    exact = out.x0[small] / (1 - 2 * out.x0[small] ** 2).sqrt()  # x(1) of dx/dt = x^3
    assert torch.allclose(out.x[small], exact, rtol=1e-4)
    assert not torch.isfinite(out.x[~small]).all()


def test_a_few_exploding_samples_do_not_spoil_the_rest_of_the_batch(monkeypatch) -> None:
    """The stiff Gaussian flow above plus a term that blows up in finite time beyond x = 4
    (``dy/ds = 1e3 y^3`` backwards): dopri5 cannot finish a batch holding such a sample, and a
    fixed rk4 fallback for the whole batch would spoil every sample (the test above). Bisecting
    the batch keeps the exact answer for every sample whose path stays below x = 4."""

    def exploding(x: Tensor, t: Tensor) -> Tensor:
        return drift(x, t) - 1e3 * torch.relu(x - 4.0) ** 3

    monkeypatch.setattr(ode, "MAX_ADAPTIVE_STEPS", 300)
    prior = Gaussian(0.0, 2.0, dim=1).double()
    dyn = Dynamics(exploding, prior, 1.0, 0.0, ode_method="dopri5")
    out = sample_ode(dyn, 16, generator=torch.Generator().manual_seed(18), dtype=F64)
    x1, one = out.x0[:, 0], torch.tensor(1.0, dtype=F64)
    calm = x1 < 2.9  # |x_t| <= a_t M + |x1| < 4 along the whole path
    assert calm.sum() == 15 and x1.max() > 4.5  # and one sample that blows up
    exact = M + S * (x1 - a(one) * M) / v(one).sqrt()
    log_q = prior.log_prob(out.x0) - math.log(S) + 0.5 * v(one).log()
    assert (out.x[calm, 0] - exact[calm]).abs().max() < 1e-4
    assert (out.log_q[calm] - log_q[calm]).abs().max() < 1e-3


def test_stiff_strays_are_solved_on_a_finer_grid_and_the_rest_to_tolerance(
    caplog, monkeypatch
) -> None:
    """In 2-D, dy/dt = -c y and dz/dt = 0 with c = 3000 where z > 0, else c = 1: the stiff
    samples need more steps than dopri5's cap (300 here), and rk4 on the 100-step grid blows up
    on them (|R(-30)| ~ 3e4 per step) while a 16x finer grid is stable. So the strays end at
    y = 0 with log q = log p_prior + 3000 (the divergence is -c) and the rest are solved to
    tolerance: y0 e^{-1}, log q = log p_prior + 1."""

    def two_speed(x: Tensor, t: Tensor) -> Tensor:
        rate = torch.where(x[..., 1:] > 0, 3000.0, 1.0).to(x)
        return torch.cat([-rate * x[..., :1], torch.zeros_like(rate)], dim=-1)

    monkeypatch.setattr(ode, "MAX_ADAPTIVE_STEPS", 300)
    prior = Gaussian(0.0, 1.0, dim=2).double()
    dyn = Dynamics(two_speed, prior, 0.0, 1.0, ode_method="dopri5")
    out = sample_ode(dyn, 16, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert "blow up on the rk4 grid" in caplog.text and "non-finite even" not in caplog.text
    y0, fast = out.x0[:, 0], out.x0[:, 1] > 0
    assert 0 < fast.sum() < 16
    log_p0 = prior.log_prob(out.x0)
    assert out.x[fast, 0].abs().max() < 1e-10
    assert torch.allclose(out.log_q[fast], log_p0[fast] + 3000.0, rtol=0, atol=1e-8)
    assert torch.allclose(out.x[~fast, 0], y0[~fast] * math.exp(-1.0), rtol=1e-5)
    assert torch.allclose(out.log_q[~fast], log_p0[~fast] + 1.0, rtol=0, atol=1e-5)
    assert torch.equal(out.x[:, 1], out.x0[:, 1])


def test_samples_that_blow_up_on_a_fixed_grid_get_finer_grids_and_the_rest_keep_theirs(
    caplog,
) -> None:
    """The two-speed flow above with ``method="rk4"``: on the 100-step grid the stiff samples
    (z > 0, rate 3000) blow up and are solved again on finer rk4 grids (4x still blows up, 16x is
    stable), ending at y = 0 with log q = log p_prior + 3000; the calm samples keep exactly their
    100-step solution (y0 e^{-1} to rk4's accuracy). Before, the strays came back as NaN (the
    score loss on MW 5/5/4: 9464 of 10 000 flow samples)."""

    def two_speed(x: Tensor, t: Tensor) -> Tensor:
        rate = torch.where(x[..., 1:] > 0, 3000.0, 1.0).to(x)
        return torch.cat([-rate * x[..., :1], torch.zeros_like(rate)], dim=-1)

    prior = Gaussian(0.0, 1.0, dim=2).double()
    dyn = Dynamics(two_speed, prior, 0.0, 1.0)  # rk4 is the default ode_method
    gen = lambda: torch.Generator().manual_seed(3)
    out = sample_ode(dyn, 16, generator=gen(), method="rk4", steps=100, dtype=F64)
    y0, fast = out.x0[:, 0], out.x0[:, 1] > 0
    assert f"{int(fast.sum())} of 16 samples blow up on the 100-step rk4 grid" in caplog.text
    assert "non-finite even" not in caplog.text and 0 < fast.sum() < 16
    log_p0 = prior.log_prob(out.x0)
    assert out.x[fast, 0].abs().max() < 1e-10
    assert torch.allclose(out.log_q[fast], log_p0[fast] + 3000.0, rtol=0, atol=1e-8)
    assert torch.allclose(out.x[~fast, 0], y0[~fast] * math.exp(-1.0), rtol=1e-8)
    calm_only = Dynamics(two_speed, prior, 0.0, 1.0)
    x0_calm = out.x0[~fast]
    same = ode.Solver(calm_only, SamplingOptions(method="rk4", estimator=Exact()),
                      torch.linspace(0.0, 1.0, 101, dtype=F64), [0, 100])  # fmt: skip
    xs, _ = same.on_grid((x0_calm, log_p0[~fast]), "rk4")
    assert torch.equal(xs[-1], out.x[~fast])  # the finite samples' solution is untouched


def test_sde_samples_that_blow_up_get_finer_grids_along_the_same_brownian_path(caplog) -> None:
    """dy = -c y dt + dW/2, dz = dW/2 with c = 3000 where z > 0, else 1, in float32: on the
    100-step Euler-Maruyama grid |1 - c h| = 29 per step overflows, and so does the 4x grid; the
    16x grid is stable (c h = 1.9). The strays come back finite, with y(1) ~ N(0, 1/(8c)), and
    along the same Brownian path: z, pure Brownian motion, ends where the coarse grid puts it
    (the bridge's sub-increments sum to the coarse ones); samples with z < 0 throughout keep
    exactly the coarse solution."""

    def two_speed(c_fast: float):
        def drift(x: Tensor, t: Tensor) -> Tensor:
            rate = torch.where(x[..., 1:] > 0, c_fast, 1.0).to(x)
            return torch.cat([-rate * x[..., :1], torch.zeros_like(rate)], dim=-1)

        return Dynamics(drift, Gaussian(0.0, 1.0, dim=2), 0.0, 1.0, stochastic=True, flow_drift=drift,
                        diffusion=lambda t: torch.full_like(t, 0.5))  # fmt: skip

    kw = dict(steps=100, dtype=torch.float32)
    out = sampling.sample_sde(
        two_speed(3000.0), 64, generator=torch.Generator().manual_seed(0), **kw
    )
    calm = sampling.sample_sde(
        two_speed(1.0), 64, generator=torch.Generator().manual_seed(0), n_saved=101, **kw
    )
    assert "blow up on the 100-step Euler-Maruyama grid" in caplog.text
    assert "non-finite even" not in caplog.text and torch.isfinite(out.x).all()
    z_path = calm.trajectory[:-1, :, 1]  # z at every drift evaluation of the coarse solve
    negative, positive = (z_path < 0).all(0), (z_path > 0).all(0)
    assert negative.sum() > 10 and positive.sum() > 10
    assert torch.allclose(out.x[:, 1], calm.x[:, 1], atol=1e-5)  # same Brownian path
    assert torch.equal(out.x[negative], calm.x[negative])
    assert out.x[positive, 0].abs().max() < 0.05  # 7 sd of N(0, 1/24000)


def test_refinement_stops_at_its_budget_for_trajectories_that_truly_blow_up(caplog) -> None:
    """dx/dt = x^3 from N(0, 1) on a fixed rk4 grid: about half the samples truly blow up
    before t = 1, so no grid saves them. With a budget of 4 grid solves of the batch
    (``sampler.refine_budget=4``), the 4x level (4 per stray) fits and the 16x level (16 more
    per stray) does not: it is skipped with a warning, the strays stay non-finite and the others
    keep their exact solution. The default budget comes back after the block."""
    blowup = Dynamics(lambda x, t: x**3, Gaussian(0.0, 1.0, dim=1).double(), 0.0, 1.0)
    out = sample_ode(blowup, 16, generator=torch.Generator().manual_seed(0), method="rk4",
                     steps=50, dtype=F64, refine_budget=4)  # fmt: skip
    assert sampling.REFINEMENT_BUDGET == 16
    small = out.x0[:, 0].abs() < 0.5
    n_stray = int((out.x0[:, 0].abs() > 2**-0.5).sum())
    assert 4 <= n_stray <= 16  # 4 n + 16 n > 4 * 16
    assert f"{n_stray} samples stay non-finite: a 16x finer grid" in caplog.text
    assert "64x" not in caplog.text
    exact = out.x0[small] / (1 - 2 * out.x0[small] ** 2).sqrt()
    assert torch.allclose(out.x[small], exact, rtol=1e-4)
    assert not torch.isfinite(out.x[~small & (out.x0[:, 0].abs() > 2**-0.5)]).any()
