"""Tests of the exact targets (docs/targets.md) against references computed here, independently of
the package: scipy quadrature for log Z, entropies and CDFs, Monte Carlo importance sampling for
the mixtures, and the papers' constants."""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy import integrate, optimize, special, stats
from torch.func import grad, jacfwd, vmap

from pdesampler.targets import (
    GMM9,
    GMM40,
    BreastCancerLogReg,
    FabManyWell,
    Funnel,
    Gaussian,
    GaussianMixture,
    ManyWell,
    StudentMixture,
    Target,
    UniformGMM,
    tail_exponent,
)

CONFIGS = Path(__file__).resolve().parents[1] / "pdesampler" / "configs" / "target"
LOG_2PI = math.log(2 * math.pi)
Tensor = torch.Tensor


# ----------------------------------------------------------------------------- references
def quad_1d(f: Callable[[float], float], modes: list[float], lo: float = -8.0, hi: float = 8.0):
    """Z, E[x], E[x^2], E[f], all for p = exp(f) / Z, and the CDF on [lo, hi] by scipy.quad."""

    def moment(g: Callable[[float], float]) -> float:
        return integrate.quad(lambda x: g(x) * math.exp(f(x)), lo, hi, points=modes, limit=200,
                              epsabs=1e-13, epsrel=1e-12)[0]  # fmt: skip

    z = moment(lambda x: 1.0)
    return z, moment(lambda x: x) / z, moment(lambda x: x * x) / z, moment(f) / z


def many_well_f(delta: float) -> Callable[[float], float]:
    return lambda x: -((x * x - delta) ** 2)


def fab_f(x: float) -> float:
    return -(x**4 - 6 * x**2 - 0.5 * x)


FAB_MODES = sorted(float(r.real) for r in np.roots([4.0, 0.0, -12.0, -0.5]))


def cdf_by_quad(f: Callable[[float], float], lo: float, hi: float, n: int = 2001):
    """The CDF of exp(f) on [lo, hi]: quad over each cell of a grid, then linear interpolation
    (error about 1e-6, far below what the KS tests below can resolve)."""
    nodes = np.linspace(lo, hi, n)
    cells = [
        integrate.quad(lambda x: math.exp(f(x)), a, b)[0] for a, b in itertools.pairwise(nodes)
    ]
    cdf = np.concatenate([[0.0], np.cumsum(cells)])
    cdf /= cdf[-1]
    return lambda x: np.interp(x, nodes, cdf)


def gauss_legendre_2d(
    target: Target, lo: float, hi: float, panels: int, order: int = 16
) -> tuple[Tensor, Tensor]:
    """Composite Gauss-Legendre rule on ``[lo, hi]^2`` (``panels`` per axis, ``order`` nodes per
    panel): the target's ``log_prob`` at the nodes and the quadrature weights, both flat."""
    nodes, weights = special.roots_legendre(order)
    edges = np.linspace(lo, hi, panels + 1)
    half = 0.5 * (edges[1] - edges[0])
    axis = torch.from_numpy((0.5 * (edges[:-1, None] + edges[1:, None]) + half * nodes).ravel())
    w = torch.from_numpy(np.tile(half * weights, panels))
    log_p = torch.cat([target.log_prob(c) for c in torch.cartesian_prod(axis, axis).split(50_000)])
    return log_p, torch.outer(w, w).flatten()


def log_z_2d(target: Target, lo: float, hi: float, panels: int) -> float:
    log_p, w = gauss_legendre_2d(target, lo, hi, panels)
    return math.log(float((w * log_p.exp()).sum()))


def assert_moments(x: Tensor, mean: Tensor, std: Tensor, k: float = 5.0) -> None:
    """Per-coordinate sample mean and std within ``k`` standard errors of the exact values."""
    n = x.shape[0]
    centred = x - mean
    se_mean = std / math.sqrt(n)
    # delta method: Var(s) ~ Var((X - mu)^2) / (4 sigma^2 n)
    se_std = (centred**2).var(0).sqrt() / (2 * std * math.sqrt(n))
    assert ((x.mean(0) - mean).abs() < k * se_mean).all(), (x.mean(0) - mean) / se_mean
    assert ((x.std(0) - std).abs() < k * se_std).all(), (x.std(0) - std) / se_std


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- log Z
def test_gmm9_log_z_by_2d_quadrature():
    target = GMM9()
    assert target.log_Z == 0.0
    assert abs(log_z_2d(target, -10.0, 10.0, 20)) < 1e-10


def test_weighted_mixture_log_z_by_2d_quadrature():
    target = GaussianMixture([[0.0, 0.0], [3.0, -1.0]], [[1.0, 0.5], [0.3, 2.0]], [1.0, 3.0], 1.7)
    assert abs(log_z_2d(target, -15.0, 15.0, 30) - 1.7) < 1e-10


@pytest.mark.parametrize(("target", "half"), [(GMM9(), 10.0), (GMM40(), 60.0)], ids=["9", "40"])
def test_mixture_log_z_by_importance_sampling(target, half):
    # uniform proposal on [-half, half]^2, which holds all of the mass
    n = 100_000
    x = (torch.rand(n, 2, generator=gen(1), dtype=torch.float64) * 2 - 1) * half
    w = (target.log_prob(x) + 2 * math.log(2 * half)).exp()
    z, se = float(w.mean()), float(w.std() / math.sqrt(n))
    assert abs(z - math.exp(target.log_Z)) < 5 * se
    assert se < 0.02  # the test has power


@pytest.mark.parametrize(("dim", "m", "delta"), [(5, 5, 4.0), (50, 5, 2.0), (7, 3, 1.0)])
def test_many_well_log_z_by_1d_quadrature(dim, m, delta):
    target = ManyWell(dim, m, delta)
    z1 = quad_1d(many_well_f(delta), [-math.sqrt(delta), math.sqrt(delta)])[0]
    expected = m * math.log(z1) + 0.5 * (dim - m) * LOG_2PI
    assert target.dim == dim
    assert abs(target.log_Z - expected) < 1e-10


@pytest.mark.parametrize(
    "target",
    [ManyWell(2, 2, 4.0), ManyWell(2, 1, 2.0), FabManyWell(2)],
    ids=["2/2/4", "2/1/2", "fab"],
)
def test_2d_wells_log_z_by_2d_quadrature(target):
    # a full 2-D integral of the package's log_prob: checks it against the factorized log Z
    assert abs(log_z_2d(target, -7.0, 7.0, 28) - target.log_Z) < 1e-10


def test_fab_many_well_constants():
    z1 = quad_1d(fab_f, FAB_MODES)[0]
    assert abs(z1 - 11784.50927) < 1e-4
    log_z_2d = math.log(z1) + 0.5 * LOG_2PI
    assert abs(log_z_2d - 10.293480) < 1e-5
    assert abs(FabManyWell(2).log_Z - log_z_2d) < 1e-10
    assert abs(FabManyWell(8).log_Z - 41.1739) < 1e-4
    assert abs(FabManyWell(32).log_Z - 164.6957) < 1e-4


# ----------------------------------------------------------------------------- references
@pytest.mark.parametrize(("dim", "m", "delta"), [(5, 5, 4.0), (50, 5, 2.0)])
def test_many_well_stddevs_and_entropy(dim, m, delta):
    target = ManyWell(dim, m, delta)
    f = many_well_f(delta)
    z1, mean, second, e_f = quad_1d(f, [-math.sqrt(delta), math.sqrt(delta)])
    assert abs(mean) < 1e-12
    expected_std = torch.tensor([math.sqrt(second)] * m + [1.0] * (dim - m), dtype=torch.float64)
    torch.testing.assert_close(target.stddevs, expected_std, rtol=1e-10, atol=0)
    expected_entropy = m * (math.log(z1) - e_f) + 0.5 * (dim - m) * (1 + LOG_2PI)
    assert abs(target.entropy - expected_entropy) < 1e-9


def test_fab_many_well_stddevs_entropy_and_deep_well():
    target = FabManyWell(8)
    z1, mean, second, e_f = quad_1d(fab_f, FAB_MODES)
    std1 = math.sqrt(second - mean**2)
    torch.testing.assert_close(target.stddevs, torch.tensor([std1, 1.0] * 4, dtype=torch.float64))
    entropy_pair = math.log(z1) - e_f + 0.5 * (1 + LOG_2PI)
    assert abs(entropy_pair - 1.71858) < 1e-5  # the reference of docs/targets.md
    assert abs(target.entropy - 4 * entropy_pair) < 1e-9
    assert abs(target.entropy - 6.874) < 5e-4
    p_deep = integrate.quad(lambda x: math.exp(fab_f(x)), 0.0, 8.0)[0] / z1
    assert abs(p_deep - 0.8443) < 5e-5


def test_mixture_entropies():
    gmm9 = GMM9()
    log_p, w = gauss_legendre_2d(gmm9, -10.0, 10.0, 20)
    assert abs(gmm9.entropy - float(-(w * log_p.exp() * log_p).sum())) < 1e-9
    # nearly log 9 plus the entropy of N(0, 0.3 I); the overlap of the components lowers it
    separated = math.log(9) + 1 + LOG_2PI + math.log(0.3)
    assert 0 < separated - gmm9.entropy < 1e-4
    gmm40 = GMM40()
    assert abs(gmm40.entropy - 6.859) < 5e-4  # the reference of docs/targets.md
    assert gmm40.entropy_stderr == 0.0  # 2-D: computed by quadrature
    estimate, se = gmm40.entropy_mc(40_000, gen(3))
    assert abs(estimate - gmm40.entropy) < 5 * se
    assert se < 0.01


def test_gaussian_mixture_monte_carlo_entropy_in_3d():
    target = GaussianMixture([[0.0, 0.0, 0.0]], [1.0, 2.0, 3.0])  # one component: closed form
    target.ENTROPY_SAMPLES = 20_000
    exact = Gaussian([0.0, 0.0, 0.0], [1.0, 2.0, 3.0]).entropy
    assert target.entropy_stderr > 0
    assert abs(target.entropy - exact) < 5 * target.entropy_stderr


def test_gmm40_means_and_std():
    target = GMM40()
    assert target.means.shape == (40, 2)
    torch.testing.assert_close(
        target.means[0], torch.tensor([-0.2995, 21.4577], dtype=torch.float64), rtol=0, atol=1e-4
    )
    with torch.random.fork_rng():  # FAB's construction, on the global RNG
        torch.manual_seed(0)
        fab_means = (torch.rand(40, 2) - 0.5) * 2 * 40
    assert torch.equal(target.means, fab_means.double())
    softplus_1 = math.log1p(math.e)
    assert abs(softplus_1 - 1.31326) < 1e-5
    torch.testing.assert_close(target.stds, torch.full((40, 2), softplus_1, dtype=torch.float64))
    lower, upper = target.box
    assert (lower <= target.means - 5 * softplus_1 + 1e-12).all()
    assert (upper >= target.means + 5 * softplus_1 - 1e-12).all()


def test_boxes():
    torch.testing.assert_close(GMM9().box[1], torch.full((2,), 5 + 5 * math.sqrt(0.3)).double())
    assert abs(GMM9().box[1][0] - 7.74) < 5e-3  # sde_sampler's domain
    for target, f in [(ManyWell(5, 5, 4.0), many_well_f(4.0)), (FabManyWell(2), fab_f)]:
        lower, upper = float(target.box[0][0]), float(target.box[1][0])
        f_max = max(f(x) for x in np.linspace(-4, 4, 80001))
        # the double-well coordinate's density is ~1e-10 of its maximum at the box edges
        for edge in (lower, upper):
            assert -23.1 < f(edge) - f_max < -22.9
    mw50 = ManyWell(50, 5, 2.0)
    assert torch.equal(mw50.box[1][5:], torch.full((45,), 5.0, dtype=torch.float64))
    assert FabManyWell(4).box[1][1] == 5.0


# ----------------------------------------------------------------------------- samplers
def mixture_mean_std(target: GaussianMixture) -> tuple[Tensor, Tensor]:
    w = target.log_weights.exp()
    mean = w @ target.means
    var = w @ target.stds**2 + w @ (target.means - mean) ** 2  # law of total variance
    return mean, var.sqrt()


@pytest.mark.parametrize(
    "target",
    [
        GMM9(),
        GMM40(),
        GaussianMixture([[0.0, 0.0], [3.0, -1.0]], [[1.0, 0.5], [0.3, 2.0]], [1.0, 3.0], 1.7),
    ],
    ids=["gmm9", "gmm40", "weighted"],
)
def test_mixture_sample_moments(target):
    x = target.sample(100_000, gen(4))
    assert x.shape == (100_000, 2) and x.dtype == torch.float64 and x.device.type == "cpu"
    mean, std = mixture_mean_std(target)
    torch.testing.assert_close(target.stddevs, std, rtol=1e-12, atol=0)
    assert_moments(x, mean, std)


@pytest.mark.parametrize(("dim", "m", "delta"), [(5, 5, 4.0), (50, 5, 2.0)])
def test_many_well_samples(dim, m, delta):
    target = ManyWell(dim, m, delta)
    x = target.sample(20_000, gen(5))
    assert x.shape == (20_000, dim) and x.dtype == torch.float64
    _, _, second, _ = quad_1d(many_well_f(delta), [-math.sqrt(delta), math.sqrt(delta)])
    std = torch.tensor([math.sqrt(second)] * m + [1.0] * (dim - m), dtype=torch.float64)
    assert_moments(x, torch.zeros(dim, dtype=torch.float64), std)
    cdf = cdf_by_quad(many_well_f(delta), -4.0, 4.0)
    assert stats.kstest(x[:, :m].flatten().numpy(), cdf).pvalue > 1e-3
    if m < dim:
        assert stats.kstest(x[:, m:].flatten().numpy(), "norm").pvalue > 1e-3
    lower, upper = target.box
    assert ((x >= lower) & (x <= upper)).all(1).double().mean() > 0.999


def test_fab_many_well_samples():
    target = FabManyWell(8)
    n = 40_000
    x = target.sample(n, gen(6))
    assert x.shape == (n, 8) and x.dtype == torch.float64
    _, mean1, second, _ = quad_1d(fab_f, FAB_MODES)
    mean = torch.tensor([mean1, 0.0] * 4, dtype=torch.float64)
    std = torch.tensor([math.sqrt(second - mean1**2), 1.0] * 4, dtype=torch.float64)
    assert_moments(x, mean, std)
    x1 = x[:, 0::2].flatten()
    p_deep = float((x1 > 0).double().mean())
    assert abs(p_deep - 0.8443) < 5 * math.sqrt(0.8443 * 0.1557 / x1.numel())
    assert stats.kstest(x1.numpy(), cdf_by_quad(fab_f, -4.0, 4.0)).pvalue > 1e-3
    assert stats.kstest(x[:, 1::2].flatten().numpy(), "norm").pvalue > 1e-3
    # the pairs are independent: no correlation between x_{2i} and the other coordinates
    corr = torch.corrcoef(x.T) - torch.eye(8, dtype=torch.float64)
    assert corr.abs().max() < 5 / math.sqrt(n)


ALL_TARGETS = [
    Gaussian(1.0, 0.5, dim=2),
    GMM9(),
    ManyWell(5, 5, 4.0),
    FabManyWell(8),
]


@pytest.mark.parametrize("target", ALL_TARGETS, ids=lambda t: type(t).__name__)
def test_samples_depend_only_on_the_generator(target):
    state = torch.get_rng_state()
    a, b = target.sample(64, gen(7)), target.sample(64, gen(7))
    c = target.sample(64, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)


def test_gmm40_leaves_global_rng_untouched():
    state = torch.get_rng_state()
    target = GMM40()
    target.sample(100, gen(9))
    assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------- autodiff
def many_well_grad_lap(x: Tensor, m: int, delta: float) -> tuple[Tensor, Tensor]:
    g = torch.cat([-4 * x[:, :m] * (x[:, :m] ** 2 - delta), -x[:, m:]], dim=1)
    lap = -(12 * x[:, :m] ** 2 - 4 * delta).sum(1) - (x.shape[1] - m)
    return g, lap


def fab_grad_lap(x: Tensor) -> tuple[Tensor, Tensor]:
    x1, x2 = x[:, 0::2], x[:, 1::2]
    g = torch.stack([-(4 * x1**3 - 12 * x1 - 0.5), -x2], dim=-1).reshape(x.shape)
    lap = -(12 * x1**2 - 12).sum(1) - x2.shape[1]
    return g, lap


def gaussian_grad_lap(x: Tensor) -> tuple[Tensor, Tensor]:
    return -(x - 1.0) / 0.25, torch.full((x.shape[0],), -2 / 0.25, dtype=x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("target", "analytic"),
    [
        (ManyWell(5, 3, 4.0), lambda x: many_well_grad_lap(x, 3, 4.0)),
        (FabManyWell(4), fab_grad_lap),
        (Gaussian(1.0, 0.5, dim=2), gaussian_grad_lap),
    ],
    ids=["many_well", "fab", "gaussian"],
)
def test_grad_and_laplacian_under_vmap(target, analytic, dtype):
    x = torch.randn(16, target.dim, generator=gen(10), dtype=torch.float64).to(dtype) * 1.5

    def point(p: Tensor) -> Tensor:
        return target.log_prob(p.unsqueeze(0)).squeeze(0)

    g = vmap(grad(point))(x)
    lap = vmap(lambda p: torch.diagonal(jacfwd(grad(point))(p)).sum())(x)
    g_ref, lap_ref = analytic(x.double())
    assert g.dtype == dtype and lap.dtype == dtype
    tol = {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 0}
    torch.testing.assert_close(g.double(), g_ref, **tol)
    torch.testing.assert_close(lap.double(), lap_ref, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("target", [GMM9(), GMM40()], ids=["gmm9", "gmm40"])
def test_mixture_grad_under_vmap(target, dtype):
    x = target.sample(32, gen(11)).to(dtype)
    g = vmap(grad(lambda p: target.log_prob(p.unsqueeze(0)).squeeze(0)))(x)
    # analytic: the responsibility-weighted sum of the component scores
    z = (x.double().unsqueeze(1) - target.means) / target.stds
    resp = torch.softmax(target.log_weights - 0.5 * (z * z).sum(-1), dim=1)
    g_ref = (resp.unsqueeze(-1) * (-z / target.stds)).sum(1)
    assert g.dtype == dtype
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(g.double(), g_ref, **tol)


@pytest.mark.parametrize("target", [*ALL_TARGETS, GMM40()], ids=lambda t: type(t).__name__)
def test_log_prob_float32_matches_float64(target):
    x = target.sample(256, gen(12))
    lp64 = target.log_prob(x)
    lp32 = target.log_prob(x.float())
    assert lp64.shape == (256,) and lp32.dtype == torch.float32
    torch.testing.assert_close(lp32.double(), lp64, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("target", [*ALL_TARGETS, GMM40()], ids=lambda t: type(t).__name__)
def test_log_prob_on_cuda(target):
    x = target.sample(64, gen(13))
    lp = target.log_prob(x.cuda())
    assert lp.device.type == "cuda"
    torch.testing.assert_close(lp.cpu(), target.log_prob(x))
    g = vmap(grad(lambda p: target.log_prob(p.unsqueeze(0)).squeeze(0)))(x.cuda().float())
    assert g.device.type == "cuda" and g.dtype == torch.float32
    moved = copy.deepcopy(target).to("cuda")  # buffers on the GPU: samples stay float64 on CPU
    assert torch.equal(moved.sample(64, gen(13)), x)
    torch.testing.assert_close(moved.log_prob(x.cuda()).cpu(), target.log_prob(x))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("target", [*ALL_TARGETS, GMM40()], ids=lambda t: type(t).__name__)
def test_log_prob_rejects_bad_shapes(target):
    d = target.dim
    for bad in (torch.zeros(3, d + 1), torch.zeros(d), torch.zeros(2, 3, d)):
        with pytest.raises(ValueError, match=re.escape(f"(N, {d}), got {tuple(bad.shape)}")):
            target.log_prob(bad)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ManyWell(5, 6, 4.0), r"0 <= m <= dim, got dim=5, m=6"),
        (lambda: ManyWell(0, 0, 4.0), r"dim >= 1"),
        (lambda: FabManyWell(7), r"even dim >= 2, got 7"),
        (lambda: FabManyWell(0), r"even dim >= 2, got 0"),
        (lambda: GaussianMixture([0.0, 1.0], 1.0), r"shape \(K, d\), got \(2,\)"),
        (lambda: GaussianMixture([[0.0, 1.0]] * 3, [1.0, 2.0, 3.0]), r"\(3, 2\), got \(3,\)"),
        (lambda: GaussianMixture([[0.0, 1.0]] * 3, 1.0, [1.0, 2.0]), r"\(3,\), got \(2,\)"),
        (lambda: GaussianMixture([[0.0, 1.0]], -1.0), r"positive"),
        (lambda: GaussianMixture([[0.0, 1.0]] * 2, 1.0, [1.0, 0.0]), r"positive"),
    ],
)
def test_bad_constructor_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# ----------------------------------------------------------------------------- configs
EXPECTED_CONFIGS = {
    "gaussian": (Gaussian, 2, 0.0),
    "gmm9": (GMM9, 2, 0.0),
    "gmm40": (GMM40, 2, 0.0),
    "mw5": (ManyWell, 5, -0.541056),
    "mw50": (ManyWell, 50, 42.817243),
    "fab_mw8": (FabManyWell, 8, 41.1739),
    "fab_mw32": (FabManyWell, 32, 164.6957),
    "funnel": (Funnel, 10, 0.0),
    "gmm40_50d": (UniformGMM, 50, 0.0),
    "mos_50d": (StudentMixture, 50, 0.0),
    "logreg_cancer": (BreastCancerLogReg, 31, -55.2225),
}
#: Configs whose target has no exact sampler (tests/test_field_targets.py builds them).
NO_SAMPLER = {"logreg_cancer"}


def test_every_target_config_is_tested():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(EXPECTED_CONFIGS)


@pytest.mark.parametrize("name", sorted(set(EXPECTED_CONFIGS) - NO_SAMPLER))
def test_target_config_instantiates(name):
    cls, dim, log_z = EXPECTED_CONFIGS[name]
    target = instantiate(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    assert type(target) is cls
    assert target.dim == dim
    assert abs(target.log_Z - log_z) < 1e-4
    assert target.log_prob(target.sample(8, gen(14))).shape == (8,)


class _Compact(Target):
    """A density that vanishes outside the unit ball: -log rho is infinite out there."""

    def __init__(self) -> None:
        super().__init__(2, (-torch.ones(2), torch.ones(2)))

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r2 = (x * x).sum(-1)
        return torch.where(r2 < 1, -r2, torch.full_like(r2, -math.inf))


def test_tail_exponent() -> None:
    """-log rho ~ r^p far out: exactly 2 for a Gaussian, near 2 for the mixtures (the nearest
    mode sits off the box centre), 4 for the many-wells, NaN where rho vanishes."""
    assert tail_exponent(Gaussian(mean=[3.0, -1.0, 0.5], std=0.2)) == pytest.approx(2.0, abs=1e-9)
    assert 2.0 < tail_exponent(GMM40()) < 2.5
    assert 2.0 < tail_exponent(GMM9()) < 2.5
    for target in (ManyWell(5, 5, 4.0), ManyWell(50, 5, 2.0), FabManyWell(8)):
        assert tail_exponent(target) == pytest.approx(4.0, abs=0.05)
    assert math.isnan(tail_exponent(_Compact()))


# ----------------------------------------------------------------------------- modes
def test_mixture_modes_are_its_components():
    target = GaussianMixture([[0.0], [2.0]], 1.0, weights=[0.9, 0.1])
    torch.testing.assert_close(target.mode_weights, torch.tensor([0.9, 0.1], dtype=torch.float64))
    # posterior argmax: log 0.9 - x^2 / 2 = log 0.1 - (x - 2)^2 / 2 at x = 1 + log(9) / 2
    boundary = 1 + math.log(9) / 2
    x = torch.tensor([[-3.0], [boundary - 1e-6], [boundary + 1e-6], [9.0]], dtype=torch.float64)
    assert target.mode_of(x).tolist() == [0, 0, 1, 1]
    gmm40 = GMM40()
    assert gmm40.mode_of(gmm40.means).tolist() == list(range(40))


def test_many_well_modes_are_the_sign_patterns():
    target = ManyWell(5, 5, 4)
    assert abs(float(target.well.splits[0])) < 1e-6 and len(target.well.splits) == 1
    torch.testing.assert_close(target.mode_weights, torch.full((32,), 1 / 32, dtype=torch.float64))
    signs = torch.tensor([[1, -1, -1, 1, 1], [-1, -1, -1, -1, -1]], dtype=torch.float64)
    assert target.mode_of(2 * signs).tolist() == [1 + 8 + 16, 0]  # sum_j [x_j > 0] 2^j
    assert ManyWell(3, 0, 2.0).mode_weights.tolist() == [1.0]  # no double well: one mode


def test_fab_many_well_modes_split_at_the_barrier():
    target = FabManyWell(8)
    barrier = optimize.brentq(lambda x: 4 * x**3 - 12 * x - 0.5, -1.0, 1.0)  # f'(x) = 0
    assert abs(float(target.well.splits[0]) - barrier) < 1e-7
    z1 = quad_1d(fab_f, FAB_MODES)[0]
    p_deep = integrate.quad(lambda x: math.exp(fab_f(x)), barrier, 8.0)[0] / z1
    torch.testing.assert_close(
        target.well.segment_masses, torch.tensor([1 - p_deep, p_deep], dtype=torch.float64)
    )
    assert abs(p_deep - 0.8443) < 2e-4  # the deep well, a hair wider than x1 > 0
    # pair i in its deep well adds 2^i; the weights follow the same order
    x = torch.zeros(1, 8, dtype=torch.float64)
    x[0, 0::2] = torch.tensor([1.7, -1.7, -1.7, 1.7], dtype=torch.float64)
    assert target.mode_of(x).tolist() == [1 + 8]
    assert float(target.mode_weights[9]) == pytest.approx(p_deep**2 * (1 - p_deep) ** 2, rel=1e-12)
    samples = target.sample(40_000, torch.Generator().manual_seed(3))
    freq = torch.bincount(target.mode_of(samples), minlength=16).double() / 40_000
    sd = (target.mode_weights * (1 - target.mode_weights) / 40_000).sqrt()
    assert ((freq - target.mode_weights).abs() < 5 * sd).all()


def test_a_well_product_with_too_many_modes_lists_no_weights():
    assert FabManyWell(2 * 20).mode_weights.shape == (2**20,)
    assert FabManyWell(2 * 21).mode_weights is None  # 2^21 > MAX_MODES: mode coverage skipped
