"""Collocation samplers: the gradient flow's OU points (Chemseddine et al. eq. (32)), the
trajectory sampler's spread, the trajectory cache's other points, and the option check of
make_collocation."""

from __future__ import annotations

import dataclasses

import torch

from pdesampler.collocation import (
    BoxSampler,
    OUSampler,
    TrajectorySampler,
    make_collocation,
)
from pdesampler.losses import gradflow, learned, linear, logce
from pdesampler.losses.parts import LinearBeta
from pdesampler.targets import Gaussian

BOX = (-torch.ones(2) * 4, torch.ones(2) * 4)


def sampler(**kw) -> OUSampler:
    return OUSampler(BOX, torch.Generator().manual_seed(0), torch.float64, **kw)


def test_points_are_the_ou_interpolation_of_the_box() -> None:
    """x_t = a_t u + s_t n: per coordinate, variance a_t^2 * 8^2 / 12 + 1 - a_t^2 at each t."""
    x, t = sampler(t_min=0.3)(200_000)
    assert t.min() >= 0.3 and t.max() <= 1.0
    a = LinearBeta().signal_scale(t)
    n = x / (a[:, None] ** 2 * 64 / 12 + 1 - a[:, None] ** 2).sqrt()
    assert n.mean().abs() < 0.01 and (n.var() - 1).abs() < 0.01


def test_trajectory_spread_widens_the_starts_and_keeps_the_paths() -> None:
    """With the velocity zeroed the paths stand still, so every time point holds the starts:
    N(0, spread^2 I) for ``spread``, the prior N(0, I) without it."""
    residual = linear(Gaussian(mean=1.0, std=0.5, dim=2)).double()
    for p in residual.parameters():
        p.data.zero_()  # v = 0: x_t = x_0 along each path
    for spread in (1.0, 2.5):
        sample = TrajectorySampler(torch.Generator().manual_seed(0), torch.float64, spread=spread)
        sample.bind(residual)
        x, t = sample(51 * 4000)
        assert x.shape == (51 * 4000, 2) and t.unique().numel() == 51
        # 4000 distinct starts: 5 standard errors of the std and of the mean
        assert (x.std(0) / spread - 1).abs().max() < 0.05
        assert x.mean(0).abs().max() < 5 * spread / 4000**0.5
    try:
        TrajectorySampler(torch.Generator(), spread=0.0)
    except ValueError as err:
        assert "spread" in str(err)
    else:
        raise AssertionError("spread = 0 was accepted")


def test_spread_names_a_prior_without_a_mean() -> None:
    """A custom prior with only ``sample`` gets a one-line error, not an AttributeError."""

    class BarePrior:
        def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
            return torch.randn(n, 2, generator=generator, dtype=torch.float64)

    residual = linear(Gaussian(mean=1.0, std=0.5, dim=2)).double()
    own = residual.dynamics
    residual.dynamics = lambda: dataclasses.replace(own(), prior=BarePrior())
    sample = TrajectorySampler(torch.Generator().manual_seed(0), torch.float64, spread=2.0)
    sample.bind(residual)
    try:
        sample(51 * 4)
    except ValueError as err:
        assert "BarePrior has no `mean`" in str(err) and "\n" not in str(err)
    else:
        raise AssertionError("spread about a prior without a mean was accepted")
    plain = TrajectorySampler(torch.Generator().manual_seed(0), torch.float64)
    plain.bind(residual)
    assert plain(51 * 4)[0].shape == (51 * 4, 2)  # without spread no mean is needed


def test_an_option_the_sampler_does_not_take_is_named() -> None:
    target = Gaussian(mean=1.0, std=0.5, dim=2)
    cases = [(logce(target), "box", "spread"), (learned(target), "default", "n_trajectories")]
    for residual, kind, option in cases:
        try:
            make_collocation(kind, residual, torch.Generator(), **{option: 2})
        except ValueError as err:
            assert f"takes no option '{option}'" in str(err) and "\n" not in str(err)
        else:
            raise AssertionError(f"{kind} accepted {option}")
    assert make_collocation("default", learned(target), torch.Generator(), spread=2.0).spread == 2


def test_the_cache_mixes_its_paths_with_the_losss_own_uniform_points() -> None:
    """The gradient flow's cache draws its other points from the OU interpolation (its own
    sampler), logCE's from the box; the cached half lies on the paths' ``n_times`` grid."""
    target = Gaussian(mean=1.0, std=0.5, dim=2)
    options = {"n_trajectories": 40, "n_times": 11, "every": 10, "fraction": 0.5}
    for residual, base in ((gradflow(target), OUSampler), (logce(target), BoxSampler)):
        generator = torch.Generator().manual_seed(0)
        cache = make_collocation(
            "trajectory_cache", residual.double(), generator, dtype=torch.float64, **options
        )
        assert type(cache.base) is base
        cache.update(0)
        grid = cache.cache[1].unique()
        assert grid.numel() == 11
        x, t = cache(1000)
        on_grid = (t[:, None] - grid).abs().min(-1).values < 1e-12
        assert x.shape == (1000, 2) and on_grid.sum() == 500


def test_the_ou_points_follow_the_losss_own_schedule() -> None:
    """gradflow(beta_max=10): the OU points are a_t u + s_t n with that loss's a_t, not the
    default beta_max = 20's (at t = 1: a = 0.080 against 0.0066)."""
    residual = gradflow(Gaussian(mean=1.0, std=0.5, dim=2), beta_max=10.0).double()
    generator = torch.Generator().manual_seed(0)
    sample = make_collocation("ou", residual, generator, dtype=torch.float64, t_min=0.9)
    x, t = sample(200_000)
    lo, hi = sample.lo, sample.hi
    a = LinearBeta(0.1, 10.0).signal_scale(t)[:, None]
    mean = a * (lo + hi) / 2
    n = (x - mean) / (a**2 * (hi - lo) ** 2 / 12 + 1 - a**2).sqrt()
    assert n.mean().abs() < 0.01 and (n.var() - 1).abs() < 0.01
    cache = make_collocation("trajectory_cache", residual, generator, dtype=torch.float64)
    assert cache.base.beta.beta_max == 10.0


def test_rad_draws_points_in_proportion_to_their_residual() -> None:
    """RAD's pool probabilities are eps^k / mean(eps^k) + c, normalized, with eps the weighted
    squared residual of each point; with c = 0 a batch drawn from the pool carries a larger
    mean residual than the pool itself, and with fraction 0 it is the box's own draw."""
    torch.manual_seed(0)
    residual = logce(Gaussian(mean=1.0, std=0.5, dim=2), net={"width": 8, "depth": 1}).double()
    gen = torch.Generator().manual_seed(0)
    rad = make_collocation("rad", residual, gen, dtype=torch.float64, pool=512, k=2.0, c=0.5)
    rad.update(0)
    (x, t), p = rad.points, rad.probabilities
    terms = residual.residuals(x, t)
    eps = sum(w * terms[name].detach() ** 2 for name, w in residual.weights.items())
    expected = eps**2 / (eps**2).mean() + 0.5
    assert torch.allclose(p, expected / expected.sum())
    greedy = make_collocation(
        "rad", residual, gen, dtype=torch.float64, pool=512, c=0.0, fraction=1.0
    )
    greedy.update(0)
    xb, tb = greedy(4096)
    errors = greedy.point_errors(xb, tb)
    assert errors.mean() > 1.5 * greedy.point_errors(*greedy.points).mean()
    plain = make_collocation("rad", residual, gen, dtype=torch.float64, fraction=0.0)
    plain.update(0)
    assert plain(64)[0].shape == (64, 2)
