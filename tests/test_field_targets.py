"""Tests of the field's benchmark targets (Neal's funnel, GMM-40 in 50-d, FAB ManyWell-32,
breast-cancer logistic regression) against references computed here: scipy quadrature and
densities, Monte Carlo importance sampling, direct NumPy formulas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy import integrate, special, stats

from pdesampler.losses.validate import validate_target
from pdesampler.targets import (
    BayesianLogisticRegression,
    BreastCancerLogReg,
    FabManyWell,
    Funnel,
    StudentMixture,
    UniformGMM,
)
from pdesampler.targets.logreg import DATA, breast_cancer_design, laplace

CONFIGS = Path(__file__).resolve().parents[1] / "pdesampler" / "configs" / "target"
LOG_2PI = math.log(2 * math.pi)


@pytest.fixture(scope="module")
def cancer() -> BreastCancerLogReg:
    return BreastCancerLogReg()


@pytest.mark.parametrize(
    ("name", "cls", "dim"),
    [
        ("funnel", Funnel, 10),
        ("gmm40_50d", UniformGMM, 50),
        ("fab_mw32", FabManyWell, 32),
        ("logreg_cancer", BreastCancerLogReg, 31),
        ("mos_50d", StudentMixture, 50),
    ],
)
def test_configs_build_valid_targets(name, cls, dim) -> None:
    target = instantiate(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    assert isinstance(target, cls) and target.dim == dim
    validate_target(target)
    assert torch.isfinite(target.log_prob(torch.stack(target.box).float())).all()


# ----------------------------------------------------------------------------- funnel


def test_funnel_log_prob_is_the_product_of_its_conditionals() -> None:
    target = Funnel(dim=10, scale=3.0)
    x = torch.randn(50, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    x0, rest = x[:, :1].numpy(), x[:, 1:].numpy()
    ref = stats.norm.logpdf(x0[:, 0], 0, 3) + stats.norm.logpdf(rest, 0, np.exp(x0 / 2)).sum(1)
    np.testing.assert_allclose(target.log_prob(x).numpy(), ref, rtol=1e-12, atol=1e-10)


def test_funnel_2d_integrates_to_one_by_quadrature() -> None:
    """The trapezoid rule in (x_0, u) with x_1 = u e^{x_0 / 2} (Jacobian e^{x_0 / 2}) on
    [-36, 36] x [-12, 12]: spectrally accurate for these Gaussian integrands."""
    target = Funnel(dim=2, scale=3.0)
    x0 = torch.linspace(-36, 36, 1441, dtype=torch.float64)
    u = torch.linspace(-12, 12, 481, dtype=torch.float64)
    g0, gu = torch.meshgrid(x0, u, indexing="ij")
    points = torch.stack([g0, gu * torch.exp(g0 / 2)], -1).reshape(-1, 2)
    integrand = (target.log_prob(points) + g0.reshape(-1) / 2).exp().reshape(g0.shape)
    z = torch.trapezoid(torch.trapezoid(integrand, u, dim=1), x0).item()
    assert z == pytest.approx(1.0, abs=1e-10)
    assert target.log_Z == 0.0


def test_funnel_10d_normalization_by_importance_sampling() -> None:
    """Z = E_q[rho / q] with q: x_0 ~ N(0, 3^2), x_i | x_0 ~ N(0, 2 e^{x_0}) (wider than rho)."""
    target = Funnel()
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = 3 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    rest = math.sqrt(2) * torch.exp(x0 / 2) * torch.randn(n, 9, generator=gen, dtype=torch.float64)
    log_q = torch.from_numpy(
        stats.norm.logpdf(x0[:, 0].numpy(), 0, 3)
        + stats.norm.logpdf(rest.numpy(), 0, math.sqrt(2) * np.exp(x0.numpy() / 2)).sum(1)
    )
    log_w = target.log_prob(torch.cat([x0, rest], 1)) - log_q
    w = log_w.exp()
    z, se = float(w.mean()), float(w.std() / math.sqrt(n))
    assert abs(z - 1.0) < 4 * se + 1e-3, (z, se)


def test_funnel_exact_samples_moments_entropy_and_box() -> None:
    target = Funnel()
    x = target.sample(200_000, torch.Generator().manual_seed(3))
    assert x[:, 0].std().item() == pytest.approx(3.0, rel=0.01)
    white = x[:, 1:] / torch.exp(x[:, :1] / 2)  # N(0, 1) given x_0
    assert white.mean().item() == pytest.approx(0.0, abs=0.01)
    assert white.std().item() == pytest.approx(1.0, rel=0.005)
    assert target.stddevs[1].item() == pytest.approx(math.exp(9 / 4), rel=1e-12)
    entropy_mc = -target.log_prob(x).mean().item()
    assert entropy_mc == pytest.approx(target.entropy, abs=0.05)
    lower, upper = target.box
    outside = ((x < lower) | (x > upper)).double().mean(0)
    np.testing.assert_allclose(outside.numpy(), Funnel.BOX_TAIL, atol=4e-4)


# ----------------------------------------------------------------------------- GMM-40 in 50-d


def test_gmm40_50d_means_are_reproducible_and_uniform_on_the_cube() -> None:
    target = UniformGMM()
    means = target.means
    assert means.shape == (40, 50)
    np.testing.assert_allclose(means[0, :3].numpy(), [-0.2995, 21.4577, -32.9218], atol=1e-4)
    assert float(means.abs().max()) <= 40.0
    again = UniformGMM()
    assert torch.equal(again.means, means)
    assert torch.equal(target.mode_weights, torch.full((40,), 1 / 40, dtype=torch.float64))


def test_gmm40_50d_density_and_exact_samples() -> None:
    target = UniformGMM()
    mean0 = target.means[:1]
    # at a mean, the other modes (all > 5 std away in each of 50 coordinates) do not count
    expected = -math.log(40) - 25 * LOG_2PI
    assert target.log_prob(mean0).item() == pytest.approx(expected, abs=1e-10)
    x = target.sample(100_000, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(x.mean(0).numpy(), target.means.mean(0).numpy(), atol=0.5)
    np.testing.assert_allclose(x.std(0).numpy(), target.stddevs.numpy(), rtol=0.02)
    counts = torch.bincount(target.mode_of(x[:4000]), minlength=40)
    assert int((counts > 0).sum()) == 40


# ----------------------------------------------------------------------------- FAB ManyWell-32


def test_fab_mw32_reference_against_quadrature_and_samples() -> None:
    target = FabManyWell(32)
    x1_z, _ = integrate.quad(lambda t: math.exp(-(t**4 - 6 * t**2 - 0.5 * t)), -8, 8, points=[0])
    log_z_pair = math.log(x1_z) + 0.5 * LOG_2PI
    assert log_z_pair == pytest.approx(10.293480, abs=1e-6)
    assert target.log_Z == pytest.approx(16 * log_z_pair, abs=1e-9)
    assert target.log_Z == pytest.approx(164.6957, abs=1e-4)
    x = target.sample(100_000, torch.Generator().manual_seed(0))
    p_deep = (x[:, 0::2] > 0).double().mean().item()
    assert p_deep == pytest.approx(0.8443, abs=0.003)
    assert x[:, 1::2].std().item() == pytest.approx(1.0, rel=0.005)
    np.testing.assert_allclose(x.std(0).numpy(), target.stddevs.numpy(), rtol=0.02)


# ----------------------------------------------------------------------------- logistic regression


def test_breast_cancer_design_is_standardized_with_an_intercept() -> None:
    design, labels = breast_cancer_design()
    assert design.shape == (569, 31) and labels.shape == (569,)
    assert torch.equal(design[:, 0], torch.ones(569, dtype=torch.float64))
    np.testing.assert_allclose(design[:, 1:].mean(0).numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(design[:, 1:].std(0, correction=0).numpy(), 1.0, rtol=1e-12)
    assert int((labels == 1).sum()) == 357 and int((labels == -1).sum()) == 212


def test_logreg_log_prob_matches_numpy(cancer) -> None:
    with (DATA / "breast_cancer.npz").open("rb") as f, np.load(f) as data:
        raw, t = data["features"], data["labels"]
    feats = (raw - raw.mean(0)) / raw.std(0)
    design = np.hstack([np.ones((569, 1)), feats])
    y = 2.0 * t - 1.0
    w = np.random.default_rng(0).normal(size=(7, 31)) * 0.5
    log_lik = -np.logaddexp(0.0, -y[None, :] * (w @ design.T)).sum(1)
    log_prior = stats.multivariate_normal(np.zeros(31), np.eye(31)).logpdf(w)
    ours = cancer.log_prob(torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(ours, log_prior + log_lik, rtol=1e-12, atol=1e-9)
    assert cancer.log_prob(torch.from_numpy(w).float()).dtype == torch.float32


def test_logreg_reference_agrees_with_importance_sampling(cancer) -> None:
    """log Z by plain importance sampling from a multivariate Student-t (10 degrees of freedom)
    on the Laplace approximation, scale inflated by 1.2: an estimator independent of the
    annealed reference. Its ESS is only about 5 %, so the check is loose (0.05)."""
    w_map, cov = laplace(cancer.signed_design, 1.0)
    chol, d, df, inflate, n = torch.linalg.cholesky(cov), 31, 10.0, 1.2, 100_000
    gen = torch.Generator().manual_seed(0)
    normal = torch.randn(n, d, generator=gen, dtype=torch.float64)
    chi2 = torch.from_numpy(stats.chi2.ppf(torch.rand(n, generator=gen).double().numpy(), df))
    u = normal * torch.sqrt(df / chi2)[:, None]
    log_t = special.gammaln((df + d) / 2) - special.gammaln(df / 2) - d / 2 * math.log(df * math.pi)
    log_q = log_t - chol.diagonal().log().sum() - d * math.log(inflate)
    log_q = log_q - (df + d) / 2 * torch.log1p((u * u).sum(1) / df)
    log_w = cancer.log_prob(w_map + inflate * u @ chol.T) - log_q
    estimate = float(torch.logsumexp(log_w, 0)) - math.log(n)
    assert estimate == pytest.approx(cancer.log_Z, abs=0.05)
    assert cancer.log_Z_stderr < 0.01


def test_logreg_reference_record_matches_the_class(cancer) -> None:
    record = json.loads((DATA / "breast_cancer_reference.json").read_text())
    assert record["log_Z"] == pytest.approx(BreastCancerLogReg.LOG_Z_REF, abs=5e-5)
    assert record["log_Z_stderr"] == pytest.approx(BreastCancerLogReg.LOG_Z_STDERR, rel=0.01)
    assert record["repeats"] == BreastCancerLogReg.REF_REPEATS
    assert cancer.stddevs.shape == (31,) and (cancer.stddevs > 0).all()
    # the box (Laplace +-5 std) holds the posterior mean
    assert ((cancer.posterior_mean > cancer.box[0]) & (cancer.posterior_mean < cancer.box[1])).all()


def test_logreg_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="-1 or \\+1"):
        BayesianLogisticRegression(torch.ones(3, 2), torch.tensor([0.0, 1.0, 1.0]))


# ----------------------------------------------------------------------------- Student-t mixture


def test_student_mixture_density_matches_scipy_and_is_normalized() -> None:
    target = StudentMixture(n_modes=3, dim=2, df=2.0, half_width=10.0)
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 8
    locs = target.locs.numpy()
    comps = np.stack([stats.t.logpdf(x.numpy() - m, 2.0).sum(1) for m in locs], 1)
    ref = special.logsumexp(comps, axis=1) - math.log(3)
    np.testing.assert_allclose(target.log_prob(x).numpy(), ref, rtol=1e-12)
    # d = 1 by quadrature: the mixture integrates to 1
    one = StudentMixture(n_modes=4, dim=1)

    def density(t: float) -> float:
        return math.exp(float(one.log_prob(torch.tensor([[t]], dtype=torch.float64))))

    z, _ = integrate.quad(density, -np.inf, np.inf, limit=400)
    assert z == pytest.approx(1.0, abs=1e-7)


def test_student_mixture_exact_samples_follow_their_components() -> None:
    target = StudentMixture()
    x = target.sample(20_000, torch.Generator().manual_seed(0))
    modes = target.mode_of(x)
    centred = x - target.locs[modes]
    # the median of |t_2| is sqrt(2 / 3) (its CDF at q is q / sqrt(2 + q^2))
    assert centred.abs().median().item() == pytest.approx(math.sqrt(2 / 3), rel=0.02)
    assert torch.bincount(modes, minlength=10).min() > 1800
