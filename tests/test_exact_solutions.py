"""The contract every catalogue entry must meet: its residual vanishes at the closed-form
Gaussian solution derived in ``exact_solutions.py`` and is clearly nonzero when perturbed."""

from __future__ import annotations

import pytest
import torch
from exact_solutions import Fn, build_exact

from pdesampler.losses import CATALOGUE, gradflow
from pdesampler.targets import GMM40, ManyWell

NAMES = list(CATALOGUE)


def random_points(residual, n: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = 1.5 * torch.randn(n, residual.dim, generator=gen, dtype=torch.float64)
    t = residual.T * (0.05 + 0.9 * torch.rand(n, generator=gen, dtype=torch.float64))
    return x, t


def perturb(residual) -> None:
    """Add a small smooth bump to one learned function of the entry."""
    owner, attr = next(
        (module, name)
        for module, name in [
            (residual.drift, "net"),
            (residual.drift, "potential"),
            (residual.density, "correction"),
        ]
        if isinstance(getattr(module, name, None), torch.nn.Module)
    )
    exact = getattr(owner, attr)
    setattr(owner, attr, Fn(lambda x, t: exact(x, t) + 0.05 * torch.sin(x.sum() + 3 * t)))


@pytest.mark.parametrize("d", [1, 2, 5])
@pytest.mark.parametrize("name", NAMES)
def test_residual_vanishes_at_exact_solution(name: str, d: int) -> None:
    residual, _, _ = build_exact(name, d)
    x, t = random_points(residual)
    terms = residual.residuals(x, t)
    assert set(terms) == set(residual.weights)
    for key, r in terms.items():
        assert r.dtype == torch.float64
        assert r.abs().max() < 1e-8, f"{name} d={d} term {key}: max |R| = {r.abs().max():.2e}"
    perturb(residual)
    perturbed = residual.residuals(x, t)
    assert max(r.abs().max() for r in perturbed.values()) > 1e-3


@pytest.mark.parametrize("d", [1, 3])
def test_gradflow_following_the_modes_is_exact_on_unit_gaussians(d: int) -> None:
    """With ``follow_modes`` the target term a_t^2 log rho(x / a_t) alone carries the OU path of
    a target N(m, I): the exact psi is a function of t only, while with log rho(x) at a fixed
    argument psi must vary in x. The residual still vanishes at the exact solution."""
    x, t = random_points(build_exact("gradflow", d)[0])
    spreads = {}
    for follow in (False, True):
        residual, _, _ = build_exact("gradflow", d, s=1.0, m_scale=3.0, follow_modes=follow)
        assert residual.residuals(x, t)["pde"].abs().max() < 1e-8
        psi = torch.vmap(residual.density.correction)(x, t)
        at_zero = torch.vmap(residual.density.correction)(torch.zeros_like(x), t)
        spreads[follow] = (psi - at_zero).abs().max()
    assert spreads[True] < 1e-10
    assert spreads[False] > 1.0


@pytest.mark.parametrize("name", ["logce", "logfp_anneal"])
def test_time_horizon_other_than_one(name: str) -> None:
    residual, _, _ = build_exact(name, 2, T=2.5)
    x, t = random_points(residual)
    assert max(r.abs().max() for r in residual.residuals(x, t).values()) < 1e-8


def test_score_linear_schedule_exact() -> None:
    residual, _, _ = build_exact("score", 3, schedule="linear", beta_min=0.1, beta_max=12.0)
    x, t = random_points(residual)
    assert residual.residuals(x, t)["pde"].abs().max() < 1e-8


@pytest.mark.parametrize("name", ["logce", "logfp", "ot", "sb", "linear", "learned"])
def test_log_z_starts_at_the_priors_importance_sampling_estimate(name: str) -> None:
    """``log_z_init="prior"`` (the scalar log z, or the interpolations' rate C_t, whose integral
    over [0, 1] estimates log Z): where the target is the prior times Z, every importance weight
    is Z, so the estimate is log Z exactly; a wider target's estimate is close (the prior
    covers it); anything but a number or "prior" is refused."""
    from pdesampler.losses.parts import prior_log_z
    from pdesampler.losses.transport import make_prior
    from pdesampler.targets import Gaussian

    torch.set_default_dtype(torch.float64)
    try:
        scaled_prior = Gaussian(0.0, 1.0, dim=3, log_Z=7.5)
        residual = CATALOGUE[name](scaled_prior, net={"width": 4, "depth": 1}, log_z_init="prior")
        assert residual.log_z_estimate() == pytest.approx(7.5, abs=1e-10)
        assert CATALOGUE[name](scaled_prior, log_z_init=-2.0).log_z_estimate() == -2.0
        wider = Gaussian(0.5, 1.2, dim=3, log_Z=40.0)
        assert prior_log_z(wider, make_prior(3)) == pytest.approx(40.0, abs=0.05)
        with pytest.raises(ValueError, match="log_z_init must be a finite number or 'prior'"):
            CATALOGUE[name](scaled_prior, log_z_init="zero")
    finally:
        torch.set_default_dtype(torch.float32)


def test_gradflow_follows_the_modes_only_where_tails_are_gaussian() -> None:
    small = {"width": 4, "depth": 1}
    assert gradflow(GMM40(), net=small).density.rho_scale is not None
    assert gradflow(ManyWell(5, 5, 4.0), net=small).density.rho_scale is None
    assert gradflow(GMM40(), net=small, follow_modes=False).density.rho_scale is None
    with pytest.raises(ValueError, match="follow_modes must be true, false or 'auto'"):
        gradflow(GMM40(), net=small, follow_modes="yes")
