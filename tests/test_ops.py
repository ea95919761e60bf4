"""Operators against analytic derivatives (float64, 1e-10) and Hutchinson's unbiasedness."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import vmap

from pdesampler import ops
from pdesampler.nets import MLP

DTYPE = torch.float64


def _batch(d: int, n: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=DTYPE)
    t = torch.rand(n, generator=gen, dtype=DTYPE)
    return x, t, gen


def _matrices(d: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=gen, dtype=DTYPE)
    b = torch.randn(d, generator=gen, dtype=DTYPE)
    return A, b


@pytest.mark.parametrize("d", [1, 3, 20, 100])
def test_quadratic_form_gradient_laplacian_time_derivative(d: int) -> None:
    """f = (1 + t^2) x^T A x / 2 + sin(t) b.x: grad = (1+t^2) sym(A) x + sin(t) b,
    Lap = (1 + t^2) tr(A), d/dt f = t x^T A x + cos(t) b.x."""
    A, b = _matrices(d)
    x, t, _ = _batch(d)

    def f(x, t):
        return 0.5 * (1 + t**2) * x @ A @ x + torch.sin(t) * (b @ x)

    sym = 0.5 * (A + A.T)
    grad = vmap(ops.gradient(f))(x, t)
    expected_grad = (1 + t**2)[:, None] * (x @ sym.T) + torch.sin(t)[:, None] * b
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-10)

    lap = ops.batched(ops.laplacian(f))(x, t)
    torch.testing.assert_close(lap, (1 + t**2) * torch.trace(A), rtol=0, atol=1e-10)

    dt = vmap(ops.time_derivative(f))(x, t)
    expected_dt = t * torch.einsum("ni,ij,nj->n", x, A, x) + torch.cos(t) * (x @ b)
    torch.testing.assert_close(dt, expected_dt, rtol=0, atol=1e-10)

    jet = ops.batched(ops.scalar_jet(f))(x, t)
    torch.testing.assert_close(jet.value, vmap(f)(x, t), rtol=0, atol=1e-10)
    torch.testing.assert_close(jet.dt, expected_dt, rtol=0, atol=1e-10)
    torch.testing.assert_close(jet.grad, expected_grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(jet.lap, lap, rtol=0, atol=1e-10)


@pytest.mark.parametrize("d", [1, 4, 50])
def test_divergence_of_polynomial_field(d: int) -> None:
    """F_i = t x_i^3 + (A x)_i: div F = 3 t sum x_i^2 + tr(A)."""
    A, _ = _matrices(d)
    x, t, _ = _batch(d)
    F = lambda x, t: t * x**3 + A @ x
    div = ops.batched(ops.divergence(F))(x, t)
    torch.testing.assert_close(div, 3 * t * (x**2).sum(-1) + torch.trace(A), rtol=0, atol=1e-10)
    jet = ops.batched(ops.vector_jet(F))(x, t)
    torch.testing.assert_close(jet.value, t[:, None] * x**3 + x @ A.T, rtol=0, atol=1e-10)


@pytest.mark.parametrize("d", [2, 7])
def test_gaussian_log_density_laplacian(d: int) -> None:
    """log N(x; m(t), s(t)^2 I): Lap = -d / s^2, d/dt via the closed form."""
    x, t, _ = _batch(d)
    m = torch.linspace(-1, 1, d, dtype=DTYPE)

    def logp(x, t):
        s = 1 + t
        return -0.5 * ((x - t * m) ** 2).sum() / s**2 - d * torch.log(s)

    jet = ops.batched(ops.scalar_jet(logp))(x, t)
    s = 1 + t
    torch.testing.assert_close(jet.lap, -d / s**2, rtol=0, atol=1e-10)
    r = x - t[:, None] * m
    expected_dt = (r @ m) / s**2 + (r**2).sum(-1) / s**3 - d / s
    torch.testing.assert_close(jet.dt, expected_dt, rtol=0, atol=1e-10)


def test_operators_on_mlp_match_dense_jacobians() -> None:
    d = 6
    torch.manual_seed(0)
    net = MLP(d, d, width=16, depth=2, zero_init=False).double()
    pot = MLP(d, 1, width=16, depth=2, zero_init=False).double()
    x, t, _ = _batch(d)
    J = vmap(torch.func.jacrev(net, argnums=0))(x, t)
    div = ops.batched(ops.divergence(net))(x, t)
    torch.testing.assert_close(div, torch.diagonal(J, dim1=1, dim2=2).sum(-1), rtol=0, atol=1e-10)
    H = vmap(torch.func.hessian(pot, argnums=0))(x, t)
    lap = ops.batched(ops.laplacian(pot))(x, t)
    torch.testing.assert_close(lap, torch.diagonal(H, dim1=1, dim2=2).sum(-1), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(kind: str) -> None:
    """The mean over many probes lies within 3 standard errors of the exact trace."""
    d, n = 5, 4000
    A, _ = _matrices(d, seed=3)
    F = lambda x, t: A @ x + t * torch.sin(x)
    x0 = torch.randn(1, d, dtype=DTYPE, generator=torch.Generator().manual_seed(5))
    x, t = x0.expand(n, d), torch.full((n,), 0.7, dtype=DTYPE)
    exact = ops.batched(ops.divergence(F))(x[:1], t[:1])[0]
    est = ops.Hutchinson(1, kind, torch.Generator().manual_seed(11))
    samples = ops.batched(ops.divergence(F, est), est)(x, t)
    err = (samples.mean() - exact).abs()
    se = samples.std() / math.sqrt(n)
    assert se > 0
    assert err < 3 * se, f"{kind}: |mean - exact| = {err:.4f}, 3 SE = {3 * se:.4f}"

    def f(x, t):
        return (x @ A @ x) * 0.5 + t * torch.cos(x).sum()

    exact_lap = ops.batched(ops.laplacian(f))(x[:1], t[:1])[0]
    lap_samples = ops.batched(ops.laplacian(f, est), est)(x, t)
    se = lap_samples.std() / math.sqrt(n)
    assert (lap_samples.mean() - exact_lap).abs() < 3 * se


def test_hutchinson_with_many_probes_has_smaller_variance() -> None:
    d, n = 8, 500
    A, _ = _matrices(d, seed=4)
    F = lambda x, t: A @ x
    x, t = torch.zeros(n, d, dtype=DTYPE), torch.zeros(n, dtype=DTYPE)
    one = ops.Hutchinson(1, generator=torch.Generator().manual_seed(0))
    many = ops.Hutchinson(16, generator=torch.Generator().manual_seed(0))
    var_one = ops.batched(ops.divergence(F, one), one)(x, t).var()
    var_many = ops.batched(ops.divergence(F, many), many)(x, t).var()
    assert var_many < var_one / 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_operators_keep_dtype(dtype: torch.dtype) -> None:
    f = lambda x, t: (x**2).sum() * t
    x, t = torch.randn(3, 4, dtype=dtype), torch.rand(3, dtype=dtype)
    jet = ops.batched(ops.scalar_jet(f))(x, t)
    assert all(v.dtype == dtype for v in jet)
    torch.testing.assert_close(jet.lap, 8 * t)


def test_hutchinson_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rademacher"):
        ops.Hutchinson(1, kind="uniform")
    with pytest.raises(ValueError, match="n_probes"):
        ops.Hutchinson(0)


def test_one_rademacher_probe_adds_the_coupling_penalty_to_a_squared_residual() -> None:
    """docs/math.md, section 8: over the 2^d Rademacher probes (an exact expectation),
    E[(v^T A v - tr A)^2] = 1/2 sum_{i != j} (A_ij + A_ji)^2 for the divergence of F(x) = A x;
    zero for a diagonal A (no penalty where the flow needs no coupling)."""
    import itertools

    d = 3
    A = torch.randn(d, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for field in (A, torch.diag(torch.diag(A))):
        jet = ops.vector_jet(lambda x, t, M=field: M @ x, ops.Hutchinson(n_probes=1))
        x, t = torch.randn(d, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
        signs = itertools.product((-1.0, 1.0), repeat=d)
        errors = [
            jet(x, t, torch.tensor([s], dtype=torch.float64)).div - field.trace() for s in signs
        ]
        sym = field + field.T
        penalty = 0.5 * ((sym**2).sum() - (torch.diag(sym) ** 2).sum())
        assert torch.allclose(torch.stack(errors).pow(2).mean(), penalty, atol=1e-12)
    assert penalty == 0
