"""Tests of pdesampler.metrics against hand computations and independent references: scipy's
exact assignment (for W2 between equal-size empirical measures), a numpy V-statistic (for the
energy distance) and closed-form Gaussian entropies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from pdesampler import metrics
from pdesampler.targets import Gaussian

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    """Run every test here on one torch thread. geomloss's Sinkhorn loop is some 200 small
    dense passes; on a shared 2-core machine two torch threads spent most of the time waiting
    on each other (95 s instead of 4 s for this file while another process held a core).
    Results do not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def normal(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=gen(seed), dtype=F64)


def exact_w2(x: torch.Tensor, y: torch.Tensor) -> float:
    """W2 between two uniform empirical measures of equal size: an assignment problem."""
    cost = cdist(x.numpy(), y.numpy(), "sqeuclidean")
    rows, cols = linear_sum_assignment(cost)
    return math.sqrt(cost[rows, cols].mean())


# ----------------------------------------------------------------------------- log weights, ESS


def test_log_weights_is_float64_difference():
    log_rho = torch.tensor([1.0, -2.0, 3.5], dtype=torch.float32)
    log_q = torch.tensor([0.5, -2.0, 4.0], dtype=torch.float32)
    log_w = metrics.log_weights(log_rho, log_q)
    assert log_w.dtype == F64
    torch.testing.assert_close(log_w, torch.tensor([0.5, 0.0, -0.5], dtype=F64))
    with pytest.raises(ValueError, match="shape"):
        metrics.log_weights(log_rho, log_q[:2])


@pytest.mark.parametrize("offset", [0.0, 1e4, -1e4])
def test_ess_equal_weights_is_one(offset):
    log_w = torch.full((1000,), offset, dtype=F64)
    assert metrics.effective_sample_size(log_w) == pytest.approx(1.0, abs=1e-12)
    assert metrics.effective_sample_size(log_w.float()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("others", [-math.inf, -1e4, 0.0])
def test_ess_one_dominant_weight_is_one_over_n(others):
    n = 500
    log_w = torch.full((n,), others, dtype=F64)
    log_w[17] = 1e4 if others == 0.0 else 0.0
    assert metrics.effective_sample_size(log_w) == pytest.approx(1 / n, rel=1e-12)


def test_ess_two_valued_weights_by_hand():
    # w = (1, 1, 1, 3): (sum w)^2 / (N sum w^2) = 36 / (4 * 12) = 0.75.
    log_w = torch.tensor([0.0, 0.0, 0.0, math.log(3.0)], dtype=F64)
    for offset in (0.0, 1e4, -3e4):
        assert metrics.effective_sample_size(log_w + offset) == pytest.approx(0.75, rel=1e-12)
    # w = (2, 2, 0, 0) with two zero weights (-inf): 16 / (4 * 8) = 0.5.
    log_w = torch.tensor([math.log(2.0), math.log(2.0), -math.inf, -math.inf], dtype=F64)
    assert metrics.effective_sample_size(log_w) == pytest.approx(0.5, rel=1e-12)


def test_ess_matches_direct_formula_on_moderate_weights():
    log_w = torch.randn(300, generator=gen(0), dtype=F64)
    w = log_w.exp()
    direct = float(w.sum() ** 2 / (len(w) * (w * w).sum()))
    assert metrics.effective_sample_size(log_w) == pytest.approx(direct, rel=1e-12)


def test_ess_non_finite_handling():
    with pytest.raises(ValueError, match="2 NaN and 0 \\+inf"):
        metrics.effective_sample_size(torch.tensor([0.0, math.nan, 1.0, math.nan]))
    with pytest.raises(ValueError, match="0 NaN and 1 \\+inf"):
        metrics.effective_sample_size(torch.tensor([0.0, math.inf]))
    with pytest.raises(ValueError, match="NaN"):
        metrics.log_z_lower_bound(torch.tensor([0.0, math.nan]))
    assert metrics.effective_sample_size(torch.full((3,), -math.inf)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        metrics.effective_sample_size(torch.zeros(0))


# ----------------------------------------------------------------------------- log Z


def test_log_z_estimates_by_hand():
    # w = Z * u with u = (0.5, 1.5): mean(u) = 1 so the IS estimate is exactly log Z, and the
    # lower bound is log Z + mean(log u) = log Z + log(0.75) / 2.
    log_Z = 2.3
    log_w = log_Z + torch.tensor([0.5, 1.5], dtype=F64).log()
    assert metrics.log_z_importance(log_w) == pytest.approx(log_Z, abs=1e-14)
    assert metrics.log_z_lower_bound(log_w) == pytest.approx(log_Z + 0.5 * math.log(0.75))
    assert metrics.delta_log_z(log_Z, metrics.log_z_lower_bound(log_w)) == pytest.approx(
        -0.5 * math.log(0.75)
    )
    assert metrics.delta_log_z(torch.tensor(1.0), 3.5) == pytest.approx(2.5)


def test_log_z_jensen_and_large_offsets():
    # Weights with known mean: u ~ LogNormal(-s^2/2, s^2) has E[u] = 1, E[log u] = -s^2/2.
    s, n, log_Z = 0.5, 20_000, 1e4
    log_w = log_Z - s * s / 2 + s * torch.randn(n, generator=gen(1), dtype=F64)
    lb, is_ = metrics.log_z_lower_bound(log_w), metrics.log_z_importance(log_w)
    assert lb <= is_
    assert lb == pytest.approx(log_Z - s * s / 2, abs=4 * s / math.sqrt(n))
    se_is = math.sqrt(math.exp(s * s) - 1) / math.sqrt(n)  # delta method on log(mean u)
    assert is_ == pytest.approx(log_Z, abs=4 * se_is)
    assert metrics.log_z_importance(torch.tensor([0.0, -math.inf])) == pytest.approx(-math.log(2))


# ----------------------------------------------------------------------------- Sinkhorn W2


def test_sinkhorn_w2_of_a_translate_is_the_shift():
    # For the cost |x-y|^2/2 the debiased Sinkhorn divergence between a cloud and its translate
    # by s is exactly |s|^2 / 2 for every blur (the linear term is constant over couplings), so
    # sqrt(2 * value) must return |s|: this pins the factor 2.
    x = normal(300, 2, seed=2)
    for s in (0.5, 2.0):
        shift = torch.tensor([0.6 * s, -0.8 * s], dtype=F64)
        assert metrics.sinkhorn_w2(x, x + shift) == pytest.approx(s, rel=1e-6)
    assert metrics.sinkhorn_w2(x, x) == pytest.approx(0.0, abs=1e-6)


def test_sinkhorn_w2_matches_exact_assignment():
    # The debiased divergence at blur 0.05 with scaling 0.9 approximates the exact W2 between
    # the two empirical measures (computed here by scipy's assignment solver). Measured offline:
    # -2 to -3 % for two sets of one law (the blur smooths the sub-spacing mismatch), -0.1 % at
    # shift 1; geomloss's default scaling 0.5 would be 25 % low in the first case.
    x, x2 = normal(400, 2, seed=3), normal(400, 2, seed=4)
    floor_exact = exact_w2(x, x2)
    assert metrics.sinkhorn_w2(x, x2) == pytest.approx(floor_exact, rel=0.06)
    y = x2 + torch.tensor([1.0, 0.0], dtype=F64)
    assert metrics.sinkhorn_w2(x, y) == pytest.approx(exact_w2(x, y), rel=0.01)
    # The raw entropic cost (debias=False) carries a positive entropic bias.
    assert metrics.sinkhorn_w2(x, x2, debias=False) > metrics.sinkhorn_w2(x, x2)


def test_sinkhorn_w2_noise_floor_and_shifted_gaussian():
    # x, x2: independent 2-D N(0, I) sets of n = 500. The exact W2 between the laws of x and
    # x2 + s is |s|; between the samples, the triangle inequality with the exact identity
    # W2(x2, x2 + s) = |s| gives | W2(x, x2 + s) - |s| | <= W2(x, x2) = the noise floor. The
    # floor itself decays only like sqrt(log n / n) in 2-D (exact assignment: about 0.26 at
    # n = 500), so it is "about 0" only relative to the shifts tested.
    x, x2 = normal(500, 2, seed=5), normal(500, 2, seed=6)
    floor = metrics.sinkhorn_w2(x, x2)
    assert 0.0 < floor < 0.35
    values = []
    for s in (0.5, 1.0, 2.0):
        value = metrics.sinkhorn_w2(x, x2 + torch.tensor([s, 0.0], dtype=F64))
        assert abs(value - s) <= floor + 0.01
        values.append(value)
    assert floor < values[0] < values[1] < values[2]
    assert values[1] == pytest.approx(1.0, rel=0.1)
    assert values[2] == pytest.approx(2.0, rel=0.05)


def test_sinkhorn_w2_subsampling_is_reproducible():
    x, y = normal(900, 3, seed=7), normal(700, 3, seed=8) + 1.0
    a = metrics.sinkhorn_w2(x, y, max_samples=200, generator=gen(9))
    b = metrics.sinkhorn_w2(x.float(), y.float(), max_samples=200, generator=gen(9))
    assert a == pytest.approx(b, rel=1e-5)  # float32 input is cast to float64
    g = gen(9)  # the same draws, made by hand: first x's subset, then y's
    xs = x[torch.randperm(900, generator=g)[:200]]
    ys = y[torch.randperm(700, generator=g)[:200]]
    assert metrics.sinkhorn_w2(xs, ys, max_samples=None) == pytest.approx(a, rel=1e-12)
    assert metrics.sinkhorn_w2(x, y, max_samples=200) == metrics.sinkhorn_w2(
        x, y, max_samples=200
    )  # default generator: seeded 0
    with pytest.raises(ValueError, match="dimension"):
        metrics.sinkhorn_w2(x, y[:, :2])


def test_sinkhorn_w2_leaves_grad_mode_alone():
    x = normal(50, 2, seed=10)
    with torch.no_grad():
        metrics.sinkhorn_w2(x, x + 1)
        assert not torch.is_grad_enabled()


# ----------------------------------------------------------------------------- energy distance


def energy_reference(x: torch.Tensor, y: torch.Tensor, u_statistic: bool = False) -> float:
    """E|X-Y| - E|X-X'|/2 - E|Y-Y'|/2 with exact distances; V-statistic (diagonal zeros in the
    averages) or U-statistic (diagonal left out)."""
    xn, yn = x.numpy(), y.numpy()
    dxx, dyy, dxy = cdist(xn, xn), cdist(yn, yn), cdist(xn, yn)
    n, m = len(xn), len(yn)
    if u_statistic:
        return dxy.mean() - dxx.sum() / (2 * n * (n - 1)) - dyy.sum() / (2 * m * (m - 1))
    return dxy.mean() - dxx.mean() / 2 - dyy.mean() / 2


def test_energy_distance_is_the_v_statistic():
    # geomloss counts each zero diagonal distance as sqrt(1e-8) = 1e-4, which lowers the value
    # by 1e-4 (1/2n + 1/2m) <= 3e-7 here, under the 1e-6 tolerance.
    x, y = normal(300, 3, seed=11), normal(400, 3, seed=12) * 1.5 + 0.3
    value = metrics.energy_distance(x, y, batch_size=None)
    assert value == pytest.approx(energy_reference(x, y), abs=1e-6)
    assert abs(value - energy_reference(x, y, u_statistic=True)) > 1e-3
    assert metrics.energy_distance(x.float(), y.float(), batch_size=None) == pytest.approx(
        value, abs=1e-6
    )


def test_energy_distance_same_law_and_shift():
    # Same law: the V-statistic's mean is E|X-X'| / n (about 2.51 / n for N(0, I_2), where
    # E|X-X'| = sqrt(pi)), far below the value at shift 1 (about 0.24 for the halved distance).
    n = 1000
    x, x2 = normal(n, 2, seed=13), normal(n, 2, seed=14)
    same = metrics.energy_distance(x, x2)
    assert 0.0 < same < 3 * math.sqrt(math.pi) / n
    shifted = metrics.energy_distance(x, x2 + torch.tensor([1.0, 0.0], dtype=F64))
    assert shifted > 50 * same
    assert shifted > metrics.energy_distance(x, x2 + torch.tensor([0.5, 0.0], dtype=F64))


def test_energy_distance_batches_average():
    x, y = normal(1200, 2, seed=15), normal(1200, 2, seed=16) + 0.2
    batched = metrics.energy_distance(x, y, batch_size=400)
    per_batch = [energy_reference(x[i : i + 400], y[i : i + 400]) for i in range(0, 1200, 400)]
    assert batched == pytest.approx(float(np.mean(per_batch)), abs=1e-6)
    assert metrics.energy_distance(x, y, batch_size=5000) == pytest.approx(
        metrics.energy_distance(x, y, batch_size=None), abs=1e-12
    )
    with pytest.raises(ValueError, match="batch_size"):
        metrics.energy_distance(x, y, batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        metrics.energy_distance(x[:3], y, batch_size=100)


# ----------------------------------------------------------------------------- std, likelihoods


def test_delta_std_by_hand():
    # Columns (0, 2) and (0, 4): unbiased stds sqrt(2) and 2 sqrt(2), mean 1.5 sqrt(2);
    # reference mean (1 + 2) / 2 = 1.5.
    x = torch.tensor([[0.0, 0.0], [2.0, 4.0]])
    expected = abs(1.5 * math.sqrt(2) - 1.5)
    assert metrics.delta_std(x, torch.tensor([1.0, 2.0])) == pytest.approx(expected, rel=1e-12)
    assert metrics.delta_std(x, [1.0, 2.0]) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="shape"):
        metrics.delta_std(x, torch.tensor([1.0, 2.0, 3.0]))


def test_delta_std_on_exact_gaussian_samples_is_small():
    target = Gaussian(mean=[1.0, -1.0, 0.0], std=[0.5, 1.0, 2.0])
    x = target.sample(20_000, gen(17))
    assert metrics.delta_std(x, target.stddevs) < 0.02


def test_cross_entropy_of_exact_samples_is_the_entropy():
    target = Gaussian(mean=[1.0, -2.0], std=[0.5, 2.0], log_Z=3.0)  # unnormalized on purpose
    x = target.sample(20_000, gen(18))
    log_rho = target.log_prob(x)
    se = float(log_rho.std()) / math.sqrt(len(x))  # = sqrt(d / 2) / sqrt(n) in expectation
    value = metrics.cross_entropy(log_rho, target.log_Z)
    assert value == pytest.approx(target.entropy, abs=4 * se)
    assert metrics.cross_entropy(log_rho.float(), torch.tensor(3.0)) == pytest.approx(
        value, abs=1e-4
    )


def test_forward_nll_is_gaussian_cross_entropy():
    # Exact samples of p = N(m_p, diag s_p^2) scored by a wrong model q = N(0, diag s_q^2):
    # E_p[-log q] = d/2 log 2pi + sum log s_q + sum (s_p^2 + m_p^2) / (2 s_q^2) >= H(p).
    p = Gaussian(mean=[1.0, 0.0], std=[0.5, 1.5])
    q = Gaussian(mean=0.0, std=[1.0, 2.0])
    x = p.sample(20_000, gen(19))
    log_q = q.log_prob(x)
    expected = float(
        math.log(2 * math.pi) + q.std.log().sum() + ((p.std**2 + p.mean**2) / (2 * q.std**2)).sum()
    )
    se = float(log_q.std()) / math.sqrt(len(x))
    assert metrics.forward_nll(log_q) == pytest.approx(expected, abs=4 * se)
    assert expected > p.entropy
    assert metrics.forward_nll(p.log_prob(x)) == pytest.approx(p.entropy, abs=0.02)


# --------------------------------------------------------------------------- failed samples
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_importance_summary_counts_failed_samples_as_zero_weight(bad):
    """Weights (1, 3, 0, 0) out of N = 4: mean w = 1, ESS = 16 / (4 * 10) = 0.4, the bound
    mean log w = -inf; whatever the failed entries hold (NaN, +inf or -inf)."""
    log_w = torch.tensor([0.0, math.log(3.0), bad, bad], dtype=torch.float64)
    summary = metrics.importance_summary(log_w)
    assert summary["log_Z_is"] == pytest.approx(0.0, abs=1e-15)
    assert summary["log_Z_lb"] == -math.inf
    assert summary["ess"] == pytest.approx(0.4, rel=1e-14)
    assert summary["one_minus_ess"] == pytest.approx(0.6, rel=1e-14)
    assert summary["n_nonfinite_samples"] == 2


def test_importance_summary_failed_mask_and_all_failed():
    """A sample flagged failed (its coordinates diverged) has weight 0 even with a finite log w;
    when every sample failed, ESS is 0 (not NaN) and log Z_is is -inf."""
    log_w = torch.tensor([math.log(2.0), 5.0, math.log(2.0)], dtype=torch.float64)
    summary = metrics.importance_summary(log_w, failed=torch.tensor([False, True, False]))
    assert summary["log_Z_is"] == pytest.approx(math.log(4.0 / 3.0), rel=1e-14)
    assert summary["ess"] == pytest.approx(16 / (3 * 8), rel=1e-14)
    assert summary["n_nonfinite_samples"] == 1
    every = metrics.importance_summary(torch.tensor([math.nan, math.inf, -math.inf]))
    assert every["ess"] == 0.0 and every["log_Z_is"] == -math.inf
    assert every["log_Z_lb"] == -math.inf and every["n_nonfinite_samples"] == 3


# ----------------------------------------------------------------------------- modes


def test_mode_coverage_by_hand():
    weights = torch.tensor([0.5, 0.25, 0.25], dtype=F64)
    m = metrics.mode_coverage(torch.tensor([0, 0, 0, 1]), weights, torch.tensor([0, 1, 2, 0]))
    assert m["n_modes"] == 3 and m["modes_covered"] == 2 and m["modes_covered_ref"] == 3
    assert m["mode_tv"] == pytest.approx(0.25)  # (0.25 + 0 + 0.25) / 2
    assert m["mode_tv_floor"] == pytest.approx(0.0)
    assert m["modes_missed"] == 0  # no mode expects 10 of 4 samples
    m = metrics.mode_coverage(torch.zeros(40, dtype=torch.long), weights)
    assert m["modes_missed"] == 2 and m["mode_tv"] == pytest.approx(0.5)  # 40 x 0.25 = 10
    assert m["mode_tv_floor"] is None and m["modes_covered_ref"] is None


def test_mode_tv_floor_matches_its_binomial_approximation():
    """Exact draws of 40 equal modes: mean TV close to sum_k sqrt(w_k (1 - w_k) / (2 pi N))."""
    weights = torch.full((40,), 1 / 40, dtype=F64)
    n, g = 10_000, gen(0)
    tvs = [
        metrics.mode_coverage(torch.multinomial(weights, n, True, generator=g), weights)["mode_tv"]
        for _ in range(200)
    ]
    approx = float((weights * (1 - weights) / (2 * math.pi * n)).sqrt().sum())
    assert np.mean(tvs) == pytest.approx(approx, rel=0.05)


@pytest.mark.parametrize(
    "modes, weights, message",
    [
        (torch.tensor([0, 3]), torch.tensor([0.5, 0.5]), r"lie in \[0, 2\)"),
        (torch.tensor([0, 1]), torch.tensor([0.5, 0.4]), "sum to 1"),
        (torch.zeros(0, dtype=torch.long), torch.tensor([1.0]), "N >= 1"),
    ],
)
def test_mode_coverage_rejects_bad_input(modes, weights, message):
    with pytest.raises(ValueError, match=message):
        metrics.mode_coverage(modes, weights)
