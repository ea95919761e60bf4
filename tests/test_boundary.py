"""Boundary conditions of every catalogue entry whose log-density is prescribed or pinned at an
end of its time span, and the noise schedules of score and gradflow (docs/math.md).

``test_exact_solutions.py`` installs closed forms by inverting each entry's own coefficients,
at interior times, so it cannot see a wrong boundary weight. Here the networks are random
(every parameter shifted by noise, so phi, log z and the schedule are far from 0), everything is
float64, and ``V`` is compared at ``t = 0`` and ``t = T`` with closed forms written out below:

* Sun et al. eq. (10) bridges (logce, logfp, ot, sb; the anneal variants with a network log z(t)):
  ``V(x, 0) = log N(x; 0, s0^2 I)`` and ``V(x, T) = log rho(x) - log z(T)``, where log z(T) is
  the entry's estimate of log Z (Sun et al. App. A.1);
* Boltzmann interpolations (linear, learned; Máté & Fleuret): ``V(x, 0) = log p_prior`` and
  ``V(x, 1) = log rho`` before the normalizer ``int_0^t C`` (a function of t alone);
* score (Sun et al. eq. (15)): only the terminal condition ``V(x, T) = log rho`` is imposed;
* gradflow (Chemseddine et al.): ``g_0 = log rho``; the end at t = 1 is learned.

Both ways of evaluating ``V`` are checked: the module's ``forward`` (sampling, scores) and the
``jet`` the residuals use.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import vmap

from pdesampler.losses import make_loss
from pdesampler.losses.parts import LinearBeta
from pdesampler.ops import Exact, batch_probes
from pdesampler.targets import Gaussian

D, PRIOR_STD, T = 3, 1.5, 2.5
NET = {"width": 16, "depth": 2}
TARGET = Gaussian(mean=[0.7, -0.3, 1.1], std=0.6, log_Z=0.37)

BRIDGES = ["logce", "logfp", "logce_anneal", "logfp_anneal", "ot", "sb"]
INTERPOLATIONS = ["linear", "learned"]


def log_prior(x: torch.Tensor, std: float) -> torch.Tensor:
    """:math:`\\log\\mathcal{N}(x; 0, s^2 I)`, written out."""
    d = x.shape[-1]
    return -0.5 * (x**2).sum(-1) / std**2 - 0.5 * d * math.log(2 * math.pi * std**2)


def random_entry(name: str, **kwargs):
    torch.manual_seed(7)
    residual = make_loss(name, TARGET, net=NET, **kwargs).double()
    with torch.no_grad():
        for p in residual.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return residual


def V_both_ways(residual, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``V(x, t)`` from ``density.forward`` and from ``density.jet`` (the residuals' path)."""
    density = residual.density
    times = torch.full((x.shape[0],), float(t), dtype=x.dtype)
    forward = vmap(density.forward)(x, times)
    probes, probe_dim = batch_probes(Exact(), x)
    jet = vmap(
        lambda xi, ti, pi: density.jet(xi, ti, pi, Exact(), laplacian=False).value,
        in_dims=(0, 0, probe_dim),
    )(x, times, probes)
    return forward, jet


def points(n: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return 2.0 * torch.randn(n, D, generator=gen, dtype=torch.float64)


def assert_close(values: tuple[torch.Tensor, torch.Tensor], expected: torch.Tensor) -> None:
    for v in values:
        torch.testing.assert_close(v, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", BRIDGES)
def test_bridge_starts_at_the_prior_and_ends_at_the_normalized_target(name: str) -> None:
    residual = random_entry(name, prior_std=PRIOR_STD, T=T)
    x = points()
    assert_close(V_both_ways(residual, x, 0.0), log_prior(x, PRIOR_STD))
    log_z_T = residual.log_z_estimate()
    assert abs(log_z_T) > 0.05  # a random log z, so a dropped or doubled log z shows
    end = V_both_ways(residual, x, T)
    assert_close(end, TARGET.log_prob(x).double() - log_z_T)


@pytest.mark.parametrize("name", INTERPOLATIONS)
def test_interpolation_runs_from_the_prior_energy_to_the_target_energy(name: str) -> None:
    residual = random_entry(name, prior_std=PRIOR_STD)
    x = points()
    assert_close(V_both_ways(residual, x, 0.0), log_prior(x, PRIOR_STD))
    assert_close(V_both_ways(residual, x, 1.0), TARGET.log_prob(x).double())


def test_score_ends_at_the_target() -> None:
    residual = random_entry("score", T=T)
    x = points()
    assert_close(V_both_ways(residual, x, T), TARGET.log_prob(x).double())


def test_gradflow_starts_at_the_target() -> None:
    residual = random_entry("gradflow")
    x = points()
    assert_close(V_both_ways(residual, x, 0.0), TARGET.log_prob(x).double())


# ---------------------------------------------------------------------------- noise schedules
TIMES = torch.tensor([0.0, 0.3, 1.0, 1.7, 2.5], dtype=torch.float64)


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_score_schedule_is_the_reversed_vp_sde(schedule: str) -> None:
    """Sun et al. eqs. (15)-(17): the noising SDE dY = -beta(s)/2 Y ds + sqrt(beta(s)) dW,
    reversed at s = T - t:
    sigma(t)^2 = beta(T - t), mu = beta(T - t) grad V + beta(T - t)/2 x."""
    beta_min, beta_max, sigma = 0.2, 12.0, 1.7
    residual = random_entry(
        "score", T=T, schedule=schedule, beta_min=beta_min, beta_max=beta_max, sigma=sigma
    )
    s = T - TIMES
    if schedule == "linear":
        beta = beta_min + (s / T) * (beta_max - beta_min)  # Sun et al. eqs. (73)-(74), unit time
    else:
        beta = torch.full_like(s, sigma**2)
    dynamics = residual.dynamics()
    torch.testing.assert_close(dynamics.diffusion(TIMES) ** 2, beta, rtol=1e-14, atol=0)
    x, grad_V = points(len(TIMES)), torch.randn(len(TIMES), D, dtype=torch.float64)
    A, B = residual.drift.coefficients(TIMES)
    mu = A[:, None] * grad_V + B[:, None] * x
    torch.testing.assert_close(mu, beta[:, None] * grad_V + beta[:, None] / 2 * x)


def test_gradflow_schedule_is_song_et_als_vp_sde() -> None:
    """Chemseddine et al. eq. (31): beta(t) = 0.1 + t (20 - 0.1), v = -(beta(t)/2)(grad g + x)."""
    residual = random_entry("gradflow")
    t = torch.linspace(0, 1, 7, dtype=torch.float64)
    beta = 0.1 + t * (20.0 - 0.1)
    grad_g, x = torch.randn(7, D, dtype=torch.float64), points(7)
    A, B = residual.drift.coefficients(t)
    v = A[:, None] * grad_g + B[:, None] * x
    torch.testing.assert_close(v, -(beta[:, None] / 2) * (grad_g + x))
    assert residual.dynamics().t0 == 1.0 and residual.dynamics().t1 == 0.0  # sampled backwards


def test_gradflow_weight_of_log_rho_cannot_turn_negative() -> None:
    """The weight w(t) = t s(t) + 1 - t of log rho in g_t: by default w = exp(t u(t)) for the
    schedule network u (starting at u = -4), so w(0) = 1 and w > 0 however far u is pushed; the
    free schedule (positive_weight=False) starts at s = 0 (w = 1 - t) and follows its network
    below 0; without a schedule (learn_schedule=False) w = 1 - t. Following the modes, u starts
    at 0 and the weight of log rho(x / a_t) is a_t^2 w(t)."""
    t = torch.linspace(0, 1, 11, dtype=torch.float64)

    def weight_of(**kw):
        loss = make_loss("gradflow", TARGET, net=NET, **kw).double()
        return loss.density.coefficients(t)[0]

    torch.testing.assert_close(weight_of(follow_modes=False), torch.exp(-4.0 * t))
    torch.testing.assert_close(weight_of(follow_modes=False, positive_weight=False), 1 - t)
    torch.testing.assert_close(weight_of(follow_modes=False, learn_schedule=False), 1 - t)
    a = LinearBeta().signal_scale(t)
    torch.testing.assert_close(weight_of(follow_modes=True), a**2)
    for positive in (True, False):
        residual = random_entry("gradflow", positive_weight=positive, follow_modes=False)
        with torch.no_grad():
            residual.density.coefficients.schedule.trunk.output.bias.fill_(-50.0)
        weight, _, _ = residual.density.coefficients(t)
        assert weight[0] == 1.0, positive
        if positive:
            assert (weight > 0).all() and weight[-1] < 1e-15
        else:
            assert weight[-1] < -40.0
