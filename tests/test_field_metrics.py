"""Tests of the benchmark metrics (ELBO, EUBO, forward ESS, entropic mode coverage,
field_metrics) against closed forms, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from pdesampler import metrics
from pdesampler.targets import Gaussian, GaussianMixture

Normal = torch.distributions.Normal


def gaussian_kl(m1: float, s1: float, m2: float, s2: float) -> float:
    """KL(N(m1, s1^2) || N(m2, s2^2)) per coordinate."""
    return math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


def test_elbo_and_eubo_are_plain_means_of_the_log_weights() -> None:
    log_rho = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    log_q = torch.tensor([0.0, -1.0, 1.5], dtype=torch.float64)
    assert metrics.elbo(log_rho, log_q) == pytest.approx(-1.0 / 3, abs=1e-15)
    assert metrics.eubo(log_rho, log_q) == pytest.approx(-1.0 / 3, abs=1e-15)
    assert metrics.elbo(log_rho, log_q) == metrics.log_z_lower_bound(log_rho - log_q)
    assert metrics.eubo(torch.tensor([0.0]), torch.tensor([-math.inf])) == math.inf


@pytest.mark.parametrize("dim", [1, 3])
def test_elbo_is_log_z_minus_kl_and_eubo_log_z_plus_kl_for_gaussians(dim: int) -> None:
    """q = N(0, 1.2^2 I), target rho = Z N(0.5, 0.8^2 I) with log Z = 1.7."""
    log_Z, n = 1.7, 400_000
    target = Gaussian(mean=0.5, std=0.8, dim=dim, log_Z=log_Z)
    q = Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.2, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    x_q = 1.2 * torch.randn(n, dim, generator=gen, dtype=torch.float64)
    x_p = target.sample(n, gen)
    log_w_q = target.log_prob(x_q) - q.log_prob(x_q).sum(1)
    log_w_p = target.log_prob(x_p) - q.log_prob(x_p).sum(1)
    elbo = metrics.elbo(target.log_prob(x_q), q.log_prob(x_q).sum(1))
    eubo = metrics.eubo(target.log_prob(x_p), q.log_prob(x_p).sum(1))
    kl_qp, kl_pq = dim * gaussian_kl(0, 1.2, 0.5, 0.8), dim * gaussian_kl(0.5, 0.8, 0, 1.2)
    se_q, se_p = float(log_w_q.std()) / math.sqrt(n), float(log_w_p.std()) / math.sqrt(n)
    assert elbo == pytest.approx(log_Z - kl_qp, abs=5 * se_q)
    assert eubo == pytest.approx(log_Z + kl_pq, abs=5 * se_p)


def test_forward_ess_hand_values_and_invariances() -> None:
    log_w = torch.log(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    assert metrics.forward_ess(log_w) == pytest.approx(9 / (7 * 1.75), rel=1e-14)
    assert metrics.forward_ess(log_w + 1234.5) == pytest.approx(9 / (7 * 1.75), rel=1e-12)
    assert metrics.forward_ess(torch.full((10,), -3.0, dtype=torch.float64)) == 1.0
    assert metrics.forward_ess(torch.tensor([0.0, math.inf])) == 0.0
    assert metrics.forward_ess(torch.tensor([0.0, -math.inf])) == 0.0
    with pytest.raises(ValueError, match="NaN"):
        metrics.forward_ess(torch.tensor([0.0, math.nan]))


def test_forward_ess_is_one_when_q_is_the_target() -> None:
    target = Gaussian(mean=[1.0, -2.0], std=[0.5, 2.0], log_Z=3.0)
    x = target.sample(1000, torch.Generator().manual_seed(0))
    log_q = target.log_prob(x) - target.log_Z
    assert metrics.forward_ess(target.log_prob(x) - log_q) == pytest.approx(1.0, abs=1e-12)


def test_forward_ess_matches_the_closed_form_of_a_wide_gaussian_proposal() -> None:
    """p = N(0, 1), q = N(0, s^2): Z^2 / E_q[w^2] = 1 / int p^2 / q = sqrt(2 - 1/s^2) / s; the
    reverse ESS from q-samples estimates the same number."""
    s, n = 1.5, 400_000
    exact = math.sqrt(2 - 1 / s**2) / s
    gen = torch.Generator().manual_seed(1)
    p = Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    q = Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
    x_p = torch.randn(n, generator=gen, dtype=torch.float64)
    x_q = s * torch.randn(n, generator=gen, dtype=torch.float64)
    assert metrics.forward_ess(p.log_prob(x_p) - q.log_prob(x_p)) == pytest.approx(exact, abs=5e-3)
    rev = metrics.effective_sample_size(p.log_prob(x_q) - q.log_prob(x_q))
    assert rev == pytest.approx(exact, abs=5e-3)


def test_entropic_mode_coverage_closed_forms() -> None:
    uniform = torch.arange(40).repeat(25)
    assert metrics.entropic_mode_coverage(uniform, 40) == pytest.approx(1.0, abs=1e-15)
    assert metrics.entropic_mode_coverage(torch.full((100,), 7), 40) == 0.0
    half = torch.tensor([0, 1] * 50)
    assert metrics.entropic_mode_coverage(half, 4) == pytest.approx(0.5, abs=1e-15)
    with pytest.raises(ValueError, match="K >= 2"):
        metrics.entropic_mode_coverage(half, 1)
    with pytest.raises(ValueError, match="lie in"):
        metrics.entropic_mode_coverage(torch.tensor([0, 5]), 3)


def test_field_metrics_on_an_exact_model_of_a_mixture() -> None:
    target = GaussianMixture([[-5.0, 0.0], [5.0, 0.0], [0.0, 5.0], [0.0, -5.0]], 0.5, log_Z=2.0)
    gen = torch.Generator().manual_seed(0)
    x, y = target.sample(4000, gen), target.sample(4000, gen)
    log_q_x, log_q_y = target.log_prob(x) - 2.0, target.log_prob(y) - 2.0
    out = metrics.field_metrics(
        target.log_prob(x),
        log_q_x,
        log_Z=2.0,
        model_samples=x,
        target=target,
        log_rho_target=target.log_prob(y),
        log_q_target=log_q_y,
    )
    for key in ("elbo", "eubo", "log_Z_is"):
        assert out[key] == pytest.approx(2.0, abs=1e-12)
    for key in ("ess_rev", "ess_fwd"):
        assert out[key] == pytest.approx(1.0, abs=1e-12)
    assert out["log_Z_error_elbo"] == pytest.approx(0.0, abs=1e-12)
    assert out["log_Z_error_is"] == pytest.approx(0.0, abs=1e-12)
    assert out["emc"] == pytest.approx(1.0, abs=2e-3)


def test_field_metrics_without_optional_inputs_reports_none() -> None:
    log_rho = torch.tensor([0.0, -1.0, math.nan], dtype=torch.float64)
    out = metrics.field_metrics(log_rho, torch.zeros(3, dtype=torch.float64))
    assert out["elbo"] == -math.inf  # a failed sample: weight 0, the bound is -inf
    assert out["ess_rev"] == pytest.approx(
        metrics.effective_sample_size(torch.tensor([0.0, -1.0, -math.inf]))
    )
    for key in ("eubo", "ess_fwd", "emc", "log_Z_error_elbo", "log_Z_error_is"):
        assert out[key] is None


def test_field_metrics_leaves_the_forward_terms_out_after_a_failed_backward_solve() -> None:
    zeros = torch.zeros(4, dtype=torch.float64)
    log_q_target = torch.tensor([0.0, math.nan, 0.0, 0.0], dtype=torch.float64)
    out = metrics.field_metrics(zeros, zeros, log_rho_target=zeros, log_q_target=log_q_target)
    assert out["eubo"] is None and out["ess_fwd"] is None
    assert out["elbo"] == 0.0 and out["ess_rev"] == 1.0
