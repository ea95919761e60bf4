r"""The dynamics of every catalogue entry transport its prior to the target (float64).

For each entry, ``exact_solutions.build_exact`` installs the closed-form Gaussian solution, so
the entry's :meth:`~pdesampler.losses.base.Residual.dynamics` is known exactly:

* **ODE** (and the probability-flow ODE, Sun et al. eq. (66), of each SDE entry). The flow
  drift is the velocity of a Gaussian path :math:`N(m_t, s_t^2 I)`, whose flow map is the affine map
  ``path.map(x0, t0, t1)``. ``sample_ode`` (rk4, 3/8 rule) must reproduce that map point by
  point, and its :math:`\log q` the change of variables
  :math:`\log q(x_1) = \log p_{prior}(x_0) - \log p_{t_0}(x_0) + \log p_{t_1}(x_1)`, both to
  ``1e-4`` (the step counts below keep the rk4 error near ``1e-5``; it falls like ``h^4``).
  The start term :math:`\log p_{prior} - \log p_{t_0}` vanishes except for ``score`` and
  ``gradflow``, whose paths start at the OU law :math:`N(a m, (a^2 s^2 + 1 - a^2) I)` with
  :math:`a = e^{-B/2}`, only approximately the prior.
* **Moments of the pushforward**, without statistical error: the sample mean and std of the
  pushed points must equal the affine transform of the prior sample's own mean and std. Against
  the *target* moments the same holds up to the prior mismatch, which is of order ``a``
  (bounded from ``a`` alone), so a strong-noise variant makes it negligible.
* **SDE** (Euler-Maruyama). With the exact solutions the drift is affine, ``mu = c + B x``, so
  the law of the Euler-Maruyama chain itself is Gaussian with a mean and covariance given by a
  recursion (:func:`euler_maruyama_law`). The sample must match that law within 5 standard
  errors (pure statistics), and that law must match the target within a discretization
  allowance (weak order 1: ``O(dt)``, plus the score prior mismatch ``e^{-5}``).

Two adaptations of the closed forms, neither touching the package:

* The closed-form corrections :math:`\varphi = (V - \dots)/c(t)` are ``0/0`` where the
  parametrization's weight :math:`c(t)` vanishes (``t = 0`` or ``T``), and rk4 evaluates the
  drift at both ends. There :math:`c\,\varphi = 0` exactly, so :func:`exact_entry` evaluates
  :math:`\varphi` at a time clamped ``1e-6 T`` away from each end where ``c`` vanishes, which
  leaves :math:`c\,\varphi` exact there and changes nothing elsewhere.
* The samplers pass ``t.expand(n)`` (a stride-0 view) through ``vmap``; the closed-form
  velocities take a forward-mode derivative in ``t``, which ``torch.func.jvp`` refuses on such
  a view. :func:`exact_entry` hands the drifts ``t.clone()``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch
from exact_solutions import Fn, build_exact
from torch import Tensor
from torch.func import vmap

from pdesampler.losses import CATALOGUE
from pdesampler.losses.base import Dynamics
from pdesampler.sampling import SampleResult, sample_ode, sample_sde

F64 = torch.float64
NAMES = list(CATALOGUE)
SDE_NAMES = ["logfp", "logfp_anneal", "sb", "score"]
ODE_NAMES = [name for name in NAMES if name not in SDE_NAMES]

#: rk4 steps per entry. Measured rk4 errors (max over points of x and of log q): ~3e-8
#: (displacement paths), ~6e-6 (geometric and Hopf-Cole paths), ~7e-6 (gradflow) and ~4e-5
#: (score: the constant beta = 10 makes the reversed OU path the stiffest; error in x ~1.2e-5).
RK4_STEPS = {
    "logce": 10,
    "ot": 10,
    "learned": 10,
    "logfp": 10,
    "logce_anneal": 12,
    "linear": 12,
    "logfp_anneal": 12,
    "sb": 12,
    "gradflow": 28,
    "score": 64,
}
#: Strong-noise variants whose prior mismatch a = exp(-B/2) = exp(-10.03) = 4.4e-5 is negligible:
#: the linear VP schedule up to beta_max = 40. (A constant sigma = 6 would do as well but is
#: stiff: rk4 then needs ~200 steps.) Score with the linear schedule is the same OU path as
#: gradflow, read backwards.
STRONG = {
    "gradflow": {"beta_max": 40.0},
    "score": {"schedule": "linear", "beta_max": 40.0},
}
STRONG_STEPS = 32

ODE_TOL = 1e-4
N_POINTWISE = 32  # the flow-map checks are pointwise: a few points suffice
N_MOMENTS = 20_000  # for the moment checks of the ODE entries (gradflow: fewer, it is costly)
N_MOMENTS_GRADFLOW = 4_000
N_SDE = 20_000
SDE_STEPS = 400


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add contention on a loaded machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- exact entries
def exact_entry(name: str, d: int, **kw):
    """The entry with its closed-form solution: ``(residual, target, path, dynamics)``, with
    the two adaptations of the module docstring."""
    residual, target, info = build_exact(name, d, **kw)
    density = residual.density
    if density.correction is not None:
        phi, T = density.correction, residual.T
        weight_vanishes = [float(density.coefficients(scalar(s))[2]) == 0 for s in (0.0, T)]
        lo = 1e-6 * T if weight_vanishes[0] else 0.0
        hi = T - 1e-6 * T if weight_vanishes[1] else T
        density.correction = Fn(lambda x, t: phi(x, t.clamp(lo, hi)))
    dyn = residual.dynamics()
    drift, flow = dyn.drift, dyn.flow_drift
    dyn = dataclasses.replace(
        dyn, drift=lambda x, t: drift(x, t.clone()), flow_drift=lambda x, t: flow(x, t.clone())
    )
    return residual, target, info["path"], dyn


def scalar(t: float) -> Tensor:
    return torch.tensor(t, dtype=F64)


def prior_log_prob(prior, x: Tensor) -> Tensor:
    return prior.log_prob(x) - (prior.log_Z or 0.0)


def ode_run(name: str, d: int, strong: bool = False):
    """One rk4 run of the entry's flow ODE from its prior (cached: several tests read it)."""
    return _ode_run(name, d, strong)


@functools.cache
def _ode_run(name: str, d: int, strong: bool):
    kw = STRONG[name] if strong else {}
    residual, target, path, dyn = exact_entry(name, d, **kw)
    n = N_POINTWISE
    if name in ODE_NAMES and not strong:
        n = N_MOMENTS_GRADFLOW if name == "gradflow" else N_MOMENTS
    steps = STRONG_STEPS if strong else RK4_STEPS[name]
    out = sample_ode(dyn, n, generator=gen(10 + d), steps=steps, dtype=F64, batch_size=None,
                     method="rk4")  # fmt: skip
    return residual, target, path, dyn, out


def pushed_moments(path, dyn: Dynamics, x0: Tensor) -> tuple[Tensor, Tensor]:
    """The mean and std of ``path.map(x0)`` from those of ``x0`` (the map is affine)."""
    t0, t1 = scalar(dyn.t0), scalar(dyn.t1)
    scale = path.std(t1) / path.std(t0)
    return path.mean(t1) + scale * (x0.mean(0) - path.mean(t0)), scale * x0.std(0)


def ou_prior_mismatch(target, a: float, x0: Tensor) -> tuple[float, float]:
    """Bounds on how far the pushforward's mean and std are from ``target.mean + s x0.mean`` and
    ``s x0.std`` when the path starts at :math:`N(a m, s_0^2 I)`, :math:`s_0^2 = a^2 s^2 + 1 -
    a^2`, instead of the prior N(0, I): the map is :math:`m + (s/s_0)(x - a m)`."""
    m, s = target.mean, float(target.std[0])
    s0 = math.sqrt(a**2 * s**2 + 1 - a**2)
    mean_bound = s * a * float(m.abs().max()) / s0 + s * abs(1 / s0 - 1) * float(
        x0.mean(0).abs().max()
    )
    std_bound = s * abs(1 / s0 - 1) * float(x0.std(0).max())
    return mean_bound, std_bound


def ou_decay(residual) -> float:
    """:math:`a = e^{-B/2}`, :math:`B = \\int_0^T \\beta` (linear or constant beta), of the entry's
    VP-SDE (score: the noising SDE over [0, T]; gradflow: over [0, 1])."""
    beta, T = residual.drift.beta, residual.T
    B = T * float(beta(scalar(0.0)) + beta(scalar(T))) / 2
    return math.exp(-B / 2)


# --------------------------------------------------------------------------- ODE
def test_catalogue_split_into_ode_and_sde():
    assert set(NAMES) == set(RK4_STEPS)
    for name in NAMES:
        dyn = build_exact(name, 1)[0].dynamics()
        assert dyn.stochastic == (name in SDE_NAMES), name
        if not dyn.stochastic:
            assert dyn.flow_drift is dyn.drift
    assert build_exact("gradflow", 1)[0].dynamics().t0 == 1.0  # runs backwards, 1 -> 0


def _pointwise_cases():
    """Every entry in d = 1 and 2 with its defaults, except score in d = 2, which runs its
    strong-noise variant (the linear VP schedule) instead: the constant-beta default needs 64
    rk4 steps at ~0.15 s each on this CPU, and the variant covers the same code in d = 2."""
    cases = [(name, d, False) for name in NAMES for d in (1, 2) if (name, d) != ("score", 2)]
    extra = [("score", 2, True), ("gradflow", 2, True), ("logce", 5, False), ("linear", 5, False)]
    return [*cases, *extra]


@pytest.mark.parametrize(("name", "d", "strong"), _pointwise_cases())
def test_ode_reproduces_exact_flow_map_and_log_density(name: str, d: int, strong: bool):
    """Every point follows the exact flow map, and log q is the exact change of variables."""
    _, _, path, dyn, out = ode_run(name, d, strong)
    t0, t1 = scalar(dyn.t0), scalar(dyn.t1)
    assert out.x.dtype == F64
    exact = path.map(out.x0, dyn.t0, dyn.t1)
    assert (out.x - exact).abs().max() < ODE_TOL
    start = prior_log_prob(dyn.prior, out.x0) - path.log_density(out.x0, t0)
    if name not in ("score", "gradflow"):  # the path starts at the prior exactly
        assert start.abs().max() < 1e-12
    expected = path.log_density(out.x, t1) + start
    assert (out.log_q - expected).abs().max() < ODE_TOL


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("name", ODE_NAMES)
def test_ode_moments_match_exact_transform_of_the_prior_sample(name: str, d: int):
    """The mean and std of the pushed points (20k; 4k for gradflow) equal the exact affine
    transform of the prior sample's own mean and std: deterministic, no statistical error."""
    _, _, path, dyn, out = ode_run(name, d)
    assert out.x.shape[0] >= N_MOMENTS_GRADFLOW
    mean, std = pushed_moments(path, dyn, out.x0)
    assert (out.x.mean(0) - mean).abs().max() < ODE_TOL
    assert (out.x.std(0) - std).abs().max() < ODE_TOL


@pytest.mark.parametrize(
    ("name", "d", "strong"),
    [
        ("gradflow", 1, False),
        ("gradflow", 2, False),
        ("score", 1, False),
        ("gradflow", 2, True),
        ("score", 2, True),
    ],
)
def test_ode_reaches_target_moments_up_to_the_prior_mismatch(name: str, d: int, strong: bool):
    """Against the *target* moments, the prior N(0, I) differs from the OU path's start by
    O(a), a = exp(-B/2): 6.6e-3 for the defaults (score: e^-5), 4.4e-5 in the strong-noise
    variants, which then reach the target's moments to 1e-4."""
    residual, target, _, _, out = ode_run(name, d, strong)
    s = target.std.to(F64)
    ideal_mean, ideal_std = target.mean + s * out.x0.mean(0), s * out.x0.std(0)
    a = ou_decay(residual)
    mean_bound, std_bound = ou_prior_mismatch(target, a, out.x0)
    rk4 = 3e-5  # the rk4 error in x (see RK4_STEPS)
    assert (out.x.mean(0) - ideal_mean).abs().max() <= mean_bound + rk4
    assert (out.x.std(0) - ideal_std).abs().max() <= std_bound + rk4
    if strong:
        assert a < 5e-5 and mean_bound + rk4 < ODE_TOL and std_bound + rk4 < ODE_TOL
    else:
        assert a > 1e-3  # the defaults do not reach 1e-4 without the mismatch term


# --------------------------------------------------------------------------- SDE
def euler_maruyama_law(dyn: Dynamics, steps: int, d: int) -> tuple[Tensor, Tensor]:
    """The exact mean and covariance of the Euler-Maruyama chain of ``sample_sde`` for an
    affine drift ``mu(x, t) = c(t) + B(t) x``, started from the prior N(0, I):

        m <- m + (c + B m) dt,   C <- (I + B dt) C (I + B dt)^T + sigma(t)^2 |dt| I.

    ``c`` and ``B`` are read off the drift at 0 and at the unit vectors, on the whole grid in
    one call, and affinity is checked at one more point."""
    grid = torch.linspace(dyn.t0, dyn.t1, steps + 1, dtype=F64)
    eye = torch.eye(d, dtype=F64)
    probe = torch.linspace(-1.0, 1.5, d, dtype=F64)
    points = torch.cat([torch.zeros(1, d, dtype=F64), eye, probe[None]])  # (d + 2, d)
    times = grid[:-1, None].expand(steps, d + 2).reshape(-1)
    values = vmap(dyn.drift)(points.repeat(steps, 1), times).reshape(steps, d + 2, d)
    c = values[:, 0]
    B = (values[:, 1 : d + 1] - c[:, None]).transpose(1, 2)  # B[k] @ e_j = column j
    affine = c + (B @ probe[:, None]).squeeze(-1)
    assert torch.allclose(values[:, -1], affine, rtol=1e-9, atol=1e-9), "drift is not affine"
    sigma_sq = dyn.diffusion(grid[:-1]) ** 2
    mean, cov = torch.zeros(d, dtype=F64), eye.clone()
    for k in range(steps):
        dt = grid[k + 1] - grid[k]
        step = eye + B[k] * dt
        mean = mean + (c[k] + B[k] @ mean) * dt
        cov = step @ cov @ step.T + sigma_sq[k] * dt.abs() * eye
    return mean, cov.diagonal().sqrt()


def law_errors(law: tuple[Tensor, Tensor], target) -> tuple[float, float]:
    mean, std = law
    return float((mean - target.mean).abs().max()), float((std - target.std).abs().max())


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("name", SDE_NAMES)
def test_sde_samples_reach_target_moments(name: str, d: int):
    """20k Euler-Maruyama samples (400 steps) have the target's mean and std within 5 standard
    errors plus the scheme's own bias, computed exactly (:func:`euler_maruyama_law`).

    That bias is Euler-Maruyama's weak error, first order in ``dt``: the chain's law at
    ``dt = 1/400`` is within ``5 dt`` of the target (score, the stiffest, has std bias
    ``3.8 dt``; the others under ``0.6 dt``), halving ``dt`` halves it, and the Richardson
    extrapolation ``2 law(dt) - law(2 dt)`` lands on the target to ``5e-4`` (what remains is
    ``O(dt^2)`` and, for score, the ``e^{-5}`` prior mismatch). A wrong diffusion or drift
    scale would leave an error that does not shrink with ``dt``."""
    _, target, _, dyn = exact_entry(name, d)
    out: SampleResult = sample_sde(
        dyn, N_SDE, generator=gen(100 + d), steps=SDE_STEPS, dtype=F64, batch_size=None
    )
    assert out.log_q is None and out.x.shape == (N_SDE, d)
    assert torch.isfinite(out.x).all()

    # the discretization allowance, exactly, and its first-order behaviour
    em_mean, em_std = law = euler_maruyama_law(dyn, SDE_STEPS, d)
    coarse = euler_maruyama_law(dyn, SDE_STEPS // 2, d)
    mean_bias, std_bias = law_errors(law, target)
    assert max(mean_bias, std_bias) < 5 / SDE_STEPS, (mean_bias, std_bias)
    coarse_std_bias = law_errors(coarse, target)[1]
    assert 1.8 < coarse_std_bias / std_bias < 2.2, (coarse_std_bias, std_bias)
    extrapolated = (2 * law[0] - coarse[0], 2 * law[1] - coarse[1])
    assert max(law_errors(extrapolated, target)) < 5e-4

    # statistics: standard errors of the sample mean and std of a Gaussian sample
    se_mean = em_std / math.sqrt(N_SDE)
    se_std = em_std / math.sqrt(2 * (N_SDE - 1))
    mean, std = out.x.mean(0), out.x.std(0)
    assert ((mean - em_mean).abs() <= 5 * se_mean).all(), (mean, em_mean)
    assert ((std - em_std).abs() <= 5 * se_std).all(), (std, em_std)
    assert ((mean - target.mean).abs() <= 5 * se_mean + mean_bias).all(), (mean, target.mean)
    assert ((std - target.std).abs() <= 5 * se_std + std_bias).all(), (std, target.std)
