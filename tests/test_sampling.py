"""Tests of :mod:`pdesampler.sampling` against closed-form Gaussian dynamics (float64).

The main ODE is the Gaussian path :math:`X_t = m(t) + A(t) Z`, :math:`Z \\sim N(0, I)`, with
:math:`m(t) = t\\,m_1` and :math:`A(t) = I + t (L_1 - I)` for a lower-triangular :math:`L_1`
with positive diagonal (diagonal :math:`L_1 = \\mathrm{diag}(s_1)` gives the per-coordinate
std :math:`s(t) = 1 + t (s_1 - 1)`). Its drift is
:math:`\\mu(x, t) = m_1 + (L_1 - I) A(t)^{-1} (x - m(t))`, the pushforward at ``t = 1`` is
:math:`N(m_1, L_1 L_1^\\top)` exactly, and the map :math:`Z \\mapsto X_t` is known, so
samples, trajectories and log-densities all have closed forms.

The SDE is the Ornstein-Uhlenbeck process :math:`dX = -X\\,dt + \\sqrt2\\,dW` from
:math:`N(3, 0.5^2 I)`: :math:`m(t) = 3 e^{-t}`, :math:`v(t) = 0.25 e^{-2t} + 1 - e^{-2t}`,
and its probability-flow drift is :math:`-x - \\nabla\\log p_t(x) = -x + (x - m(t)) / v(t)`.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import MultivariateNormal, Normal

from pdesampler.losses.base import Dynamics
from pdesampler.ops import Hutchinson
from pdesampler.sampling import (
    SampleResult,
    log_density,
    sample,
    sample_ode,
    sample_sde,
)
from pdesampler.targets import Gaussian

F64 = torch.float64
M1 = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
L_TRI = torch.tensor([[2.0, 0.0, 0.0], [0.6, 0.5, 0.0], [-0.4, 0.3, 1.5]], dtype=F64)
L_DIAG = torch.diag(torch.tensor([2.0, 0.5, 1.5], dtype=F64))
D = 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: intra-op threads only add contention (on a loaded 2-core machine
    the default 2 threads made this file 4x slower), so run it single-threaded."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- closed forms


def path_A(L1: Tensor, t: Tensor | float) -> Tensor:
    eye = torch.eye(L1.shape[0], dtype=L1.dtype)
    return eye + t * (L1 - eye)


def path_drift(m1: Tensor, L1: Tensor):
    """:math:`\\mu(x, t) = m_1 + (L_1 - I) A(t)^{-1} (x - t m_1)` for one point."""
    eye = torch.eye(L1.shape[0], dtype=L1.dtype)

    def drift(x: Tensor, t: Tensor) -> Tensor:
        y = torch.linalg.solve_triangular(path_A(L1, t), (x - t * m1).unsqueeze(-1), upper=False)
        return m1 + ((L1 - eye) @ y).squeeze(-1)

    return drift


def forward_path(L1: Tensor = L_TRI) -> Dynamics:
    prior = Gaussian(mean=0.0, std=1.0, dim=D)
    return Dynamics(drift=path_drift(M1, L1), prior=prior, t0=0.0, t1=1.0)


def backward_path() -> Dynamics:
    """The diagonal path run from ``t0 = 1`` (prior :math:`N(m_1, s_1^2)`) to ``t1 = 0``."""
    prior = Gaussian(mean=M1, std=L_DIAG.diagonal())
    return Dynamics(drift=path_drift(M1, L_DIAG), prior=prior, t0=1.0, t1=0.0)


def mvn_log_prob(x: Tensor, mean: Tensor, L: Tensor) -> Tensor:
    return MultivariateNormal(mean, scale_tril=L).log_prob(x)


def std_normal_log_prob(x: Tensor) -> Tensor:
    return Normal(0.0, 1.0).log_prob(x).sum(-1)


OU_M0, OU_S0 = 3.0, 0.5


def ou_mean_var(t: Tensor | float) -> tuple[Tensor, Tensor]:
    t = torch.as_tensor(t, dtype=F64)
    decay = torch.exp(-t)
    return OU_M0 * decay, OU_S0**2 * decay**2 + 1 - decay**2


def ou_dynamics(d: int = 2) -> Dynamics:
    def drift(x: Tensor, t: Tensor) -> Tensor:
        return -x

    def flow_drift(x: Tensor, t: Tensor) -> Tensor:
        mean, var = ou_mean_var(t)
        return -x + (x - mean) / var  # -x - (1/2) * 2 * grad log p_t(x)

    return Dynamics(
        drift=drift,
        prior=Gaussian(mean=OU_M0, std=OU_S0, dim=d),
        t0=0.0,
        t1=1.0,
        diffusion=lambda t: math.sqrt(2.0) * torch.ones_like(t),
        flow_drift=flow_drift,
        stochastic=True,
    )


def assert_moments(x: Tensor, mean: Tensor, var: Tensor, n_se: float = 5.0) -> None:
    """Sample mean and variance within ``n_se`` standard errors of the exact values."""
    n = x.shape[0]
    se_mean = (var / n).sqrt()
    se_var = var * math.sqrt(2.0 / (n - 1))
    assert ((x.mean(0) - mean).abs() < n_se * se_mean).all(), (x.mean(0), mean)
    assert ((x.var(0) - var).abs() < n_se * se_var).all(), (x.var(0), var)


# --------------------------------------------------------------------------- ODE


@pytest.mark.parametrize(
    ("method", "kwargs", "tol"),
    [
        ("rk4", {"steps": 100}, 1e-6),
        ("dopri5", {"rtol": 1e-9, "atol": 1e-9}, 1e-6),
        ("euler", {"steps": 100}, 5e-2),
    ],
)
def test_ode_pushforward_is_exact(method: str, kwargs: dict, tol: float) -> None:
    res = sample_ode(forward_path(), 1000, generator=gen(), method=method, dtype=F64, **kwargs)
    assert isinstance(res, SampleResult)
    assert res.x.shape == (1000, D) and res.log_q.shape == (1000,) and res.x.dtype == F64
    # the flow map Z -> m1 + L1 Z, and the exact density of its pushforward
    assert torch.allclose(res.x, M1 + res.x0 @ L_TRI.T, rtol=0, atol=tol)
    exact = mvn_log_prob(res.x, M1, L_TRI)
    assert (res.log_q - exact).abs().max() < tol
    assert_moments(res.x, M1, (L_TRI @ L_TRI.T).diagonal())


def test_trajectory_follows_the_path() -> None:
    res = sample_ode(forward_path(), 64, generator=gen(), dtype=F64, steps=100, n_saved=5)
    assert res.trajectory.shape == (5, 64, D)
    assert torch.allclose(res.times, torch.linspace(0, 1, 5, dtype=F64))
    assert torch.equal(res.trajectory[0], res.x0) and torch.equal(res.trajectory[-1], res.x)
    for state, t in zip(res.trajectory, res.times, strict=True):
        expected = t * M1 + res.x0 @ path_A(L_TRI, t).T
        assert torch.allclose(state, expected, rtol=0, atol=1e-8)


def test_backward_time_ode() -> None:
    dyn = backward_path()
    res = sample_ode(dyn, 1000, generator=gen(1), dtype=F64, steps=100)
    s1 = L_DIAG.diagonal()
    assert torch.allclose(res.x, (res.x0 - M1) / s1, rtol=0, atol=1e-7)
    assert (res.log_q - std_normal_log_prob(res.x)).abs().max() < 1e-6
    assert_moments(res.x, torch.zeros(D, dtype=F64), torch.ones(D, dtype=F64))
    res = sample_ode(dyn, 200, generator=gen(1), dtype=F64, method="dopri5", rtol=1e-9, atol=1e-9)
    assert (res.log_q - std_normal_log_prob(res.x)).abs().max() < 1e-6


def test_log_density_matches_closed_form() -> None:
    x = 3.0 * torch.randn(300, D, generator=gen(2), dtype=F64)
    log_q = log_density(forward_path(), x, method="rk4", steps=100)
    assert log_q.shape == (300,) and log_q.dtype == F64
    assert (log_q - mvn_log_prob(x, M1, L_TRI)).abs().max() < 1e-6
    log_q = log_density(backward_path(), x, method="rk4", steps=100)
    assert (log_q - std_normal_log_prob(x)).abs().max() < 1e-6
    log_q = log_density(forward_path(), x, method="dopri5", rtol=1e-9, atol=1e-9)
    assert (log_q - mvn_log_prob(x, M1, L_TRI)).abs().max() < 1e-6


def test_log_density_inverts_sampling() -> None:
    res = sample_ode(forward_path(), 100, generator=gen(3), dtype=F64)
    assert torch.allclose(log_density(forward_path(), res.x, steps=100), res.log_q, atol=1e-8)


def test_unnormalized_prior_is_normalized() -> None:
    """A prior with ``log_Z`` set still gives normalized log-densities."""
    dyn = forward_path()
    dyn.prior = Gaussian(mean=0.0, std=1.0, dim=D, log_Z=5.0)
    res = sample_ode(dyn, 50, generator=gen(), dtype=F64)
    assert (res.log_q - mvn_log_prob(res.x, M1, L_TRI)).abs().max() < 1e-6


def hutchinson_errors(kind: str, method: str, fresh: bool, n: int = 1000) -> Tensor:
    """Hutchinson ``log_q`` minus the closed form, per sample (seed shared with the exact run)."""
    kw = dict(dtype=F64, method=method, steps=50, rtol=1e-7, atol=1e-7)
    exact = sample_ode(forward_path(), n, generator=gen(4), **kw)
    est = Hutchinson(1, kind)
    hutch = sample_ode(forward_path(), n, generator=gen(4), estimator=est, fresh_probes=fresh, **kw)
    # probes are drawn after the prior and never move the trajectories
    assert torch.allclose(hutch.x, exact.x, rtol=0, atol=1e-6)
    return hutch.log_q - mvn_log_prob(hutch.x, M1, L_TRI)


@pytest.mark.parametrize(
    ("kind", "method", "fresh"),
    [
        ("rademacher", "rk4", False),
        ("gaussian", "rk4", False),
        ("rademacher", "dopri5", False),
        ("rademacher", "rk4", True),
        ("gaussian", "dopri5", True),
    ],
)
def test_hutchinson_log_density_is_unbiased(kind: str, method: str, fresh: bool) -> None:
    err = hutchinson_errors(kind, method, fresh)
    se = err.std() / math.sqrt(err.numel())
    assert err.std() > 1e-3  # the estimator is genuinely random here
    assert err.mean().abs() < 3 * se, (err.mean(), se)


def test_fresh_probes_reduce_variance() -> None:
    fixed = hutchinson_errors("rademacher", "rk4", False, n=500)
    fresh = hutchinson_errors("rademacher", "rk4", True, n=500)
    assert fresh.var() < fixed.var() / 10, (fresh.var(), fixed.var())


def test_hutchinson_uses_its_own_generator() -> None:
    est = Hutchinson(2, generator=gen(9))
    a = sample_ode(forward_path(), 20, generator=gen(), dtype=F64, estimator=est, steps=10)
    est = Hutchinson(2, generator=gen(9))
    b = sample_ode(forward_path(), 20, generator=gen(), dtype=F64, estimator=est, steps=10)
    assert torch.equal(a.log_q, b.log_q)


def test_ode_batching_matches_one_batch() -> None:
    kw = dict(dtype=F64, steps=20, n_saved=3)
    one = sample_ode(forward_path(), 50, generator=gen(5), batch_size=None, **kw)
    many = sample_ode(forward_path(), 50, generator=gen(5), batch_size=7, **kw)
    assert torch.equal(one.x0, many.x0)
    for a, b in [(one.x, many.x), (one.log_q, many.log_q), (one.trajectory, many.trajectory)]:
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    x = many.x
    assert torch.allclose(
        log_density(forward_path(), x, steps=20, batch_size=None),
        log_density(forward_path(), x, steps=20, batch_size=9),
        rtol=0,
        atol=1e-12,
    )


# --------------------------------------------------------------------------- SDE


def test_sde_ou_marginals() -> None:
    res = sample_sde(ou_dynamics(), 4000, generator=gen(6), steps=200, dtype=F64, n_saved=3)
    assert res.log_q is None and res.x.shape == (4000, 2)
    mean, var = ou_mean_var(1.0)
    assert_moments(res.x, mean.expand(2), var.expand(2))
    assert res.trajectory.shape == (3, 4000, 2)
    assert torch.equal(res.trajectory[0], res.x0) and torch.equal(res.trajectory[-1], res.x)
    assert torch.allclose(res.times, torch.tensor([0.0, 0.5, 1.0], dtype=F64))


def test_sde_backward_time() -> None:
    """dX = t dt + 0.5 dW from t0 = 1 down to t1 = 0: with K steps of h = 1/K the
    Euler-Maruyama mean shift is sum_k t_k (-h) = -(1 + h)/2, the variance 1 + 0.25."""
    steps = 50
    dyn = Dynamics(
        drift=lambda x, t: t * torch.ones_like(x),
        prior=Gaussian(mean=0.0, std=1.0, dim=2),
        t0=1.0,
        t1=0.0,
        diffusion=lambda t: 0.5 * torch.ones_like(t),
        flow_drift=lambda x, t: t * torch.ones_like(x),
        stochastic=True,
    )
    res = sample_sde(dyn, 4000, generator=gen(7), steps=steps, dtype=F64)
    mean = torch.full((2,), -(1 + 1 / steps) / 2, dtype=F64)
    assert_moments(res.x, mean, torch.full((2,), 1.25, dtype=F64))


def test_sde_batching_and_seeds() -> None:
    kw = dict(steps=20, dtype=F64)
    a = sample_sde(ou_dynamics(), 30, generator=gen(1), batch_size=None, **kw)
    b = sample_sde(ou_dynamics(), 30, generator=gen(1), batch_size=4, **kw)
    c = sample_sde(ou_dynamics(), 30, generator=gen(2), **kw)
    assert torch.allclose(a.x, b.x, rtol=0, atol=1e-12)
    assert not torch.allclose(a.x, c.x)


def test_sample_dispatch_sde_uses_probability_flow() -> None:
    out = sample(ou_dynamics(), 2000, generator=gen(8), sde_steps=200, steps=100, dtype=F64)
    assert out.stochastic
    mean, var = ou_mean_var(1.0)
    std = float(var.sqrt())
    assert_moments(out.samples, mean.expand(2), var.expand(2))
    assert_moments(out.flow_samples, mean.expand(2), var.expand(2))
    assert not torch.allclose(out.samples, out.flow_samples)
    exact = Normal(mean, std).log_prob(out.flow_samples).sum(-1)
    assert (out.flow_log_q - exact).abs().max() < 1e-6
    # the exact marginal as the target: every log-weight is log Z
    target = Gaussian(mean=float(mean), std=std, dim=2, log_Z=1.5)
    assert torch.allclose(out.log_weights(target), torch.full((2000,), 1.5, dtype=F64), atol=1e-6)


def test_sample_dispatch_ode() -> None:
    out = sample(forward_path(L_DIAG), 500, generator=gen(), dtype=F64, n_saved=2)
    assert not out.stochastic and out.flow_samples is out.samples
    assert out.trajectory.shape == (2, 500, D)
    target = Gaussian(mean=M1, std=L_DIAG.diagonal(), log_Z=-2.0)
    assert torch.allclose(out.log_weights(target), torch.full((500,), -2.0, dtype=F64), atol=1e-6)


# --------------------------------------------------------------------------- conventions


def test_seeds_reproduce_and_differ() -> None:
    kw = dict(dtype=F64, steps=10)
    a = sample_ode(forward_path(), 20, generator=gen(11), **kw)
    b = sample_ode(forward_path(), 20, generator=gen(11), **kw)
    c = sample_ode(forward_path(), 20, generator=gen(12), **kw)
    assert torch.equal(a.x, b.x) and torch.equal(a.log_q, b.log_q)
    assert not torch.allclose(a.x, c.x)
    s1 = sample_sde(ou_dynamics(), 20, generator=gen(11), **kw)
    s2 = sample_sde(ou_dynamics(), 20, generator=gen(11), **kw)
    assert torch.equal(s1.x, s2.x)


def test_module_dtype_and_no_graph() -> None:
    lin = nn.Linear(D, D)
    dyn = Dynamics(drift=lambda x, t: 0.1 * lin(x), prior=Gaussian(dim=D), t0=0.0, t1=1.0)
    res = sample_ode(dyn, 10, generator=gen(), steps=5, module=lin)
    assert res.x.dtype == torch.float32 and res.log_q.dtype == torch.float32
    assert not res.x.requires_grad and not res.log_q.requires_grad
    x64 = torch.randn(10, D, dtype=F64)
    assert log_density(dyn, x64, steps=5, module=lin).dtype == torch.float32
    assert sample_sde(dyn, 10, generator=gen(), steps=5).x.dtype == torch.float32  # default
    lin.double()
    assert sample_ode(dyn, 10, generator=gen(), steps=5, module=lin).x.dtype == F64


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown ODE method"):
        sample_ode(forward_path(), 4, generator=gen(), method="rk45")
    with pytest.raises(ValueError, match="n_saved"):
        sample_ode(forward_path(), 4, generator=gen(), steps=3, n_saved=5)
    with pytest.raises(ValueError, match="batch_size"):
        sample_ode(forward_path(), 4, generator=gen(), batch_size=0)
