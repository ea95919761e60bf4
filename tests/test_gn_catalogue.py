r"""Matrix-free Gauss-Newton on the real catalogue residuals (Sun et al. section 4), float64.

``test_gauss_newton.py`` checks the optimizer on toy residuals; here every catalogue entry is
built with tiny networks (``P <= 500`` parameters, all randomized so that the Jacobian is not
degenerate) on a fixed batch of collocation points, and the CG direction of
:func:`~pdesampler.optim.gauss_newton.linearize` + :func:`conjugate_gradient` must equal

.. math:: \delta = \Big(\frac1N J_{raw}^\top W J_{raw} + \varepsilon I\Big)^{-1}
          \frac1N J_{raw}^\top W r_{raw},

built independently from the explicit ``torch.func.jacrev`` Jacobian of the *unweighted*
residual terms :math:`r_{raw} = (r_k(x_i, t_i))_{k,i}` with :math:`W = \mathrm{diag}(\alpha_k)`
(so the :math:`\sqrt{\alpha_k / N}` weighting of ``Residual.forward`` is checked too), at the
paper's damping :math:`\varepsilon = 10^{-5}`, to relative error ``1e-6``. The Woodbury solve with
the per-point Jacobian must give the same vector, and one full ``GaussNewton.step`` must lower
the loss.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_gauss_newton import assert_cg_matches_dense
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from pdesampler.linearization import flatten, linearize, per_point_jacobian
from pdesampler.losses import CATALOGUE, make_loss
from pdesampler.losses.base import Residual
from pdesampler.optim.gauss_newton import GaussNewton, GaussNewtonConfig
from pdesampler.optim.linalg import (
    conjugate_gradient,
    damped_direction_explicit,
    full_jacobian,
)
from pdesampler.targets import GMM9, Gaussian

F64 = torch.float64
EPS = 1e-5  # Sun et al. section 4
TOL = 1e-6
N_POINTS = 24
NET = {"width": 6, "depth": 1}
TIME_NET = {"width": 4, "depth": 1, "time_features": 1}
WITH_TIME_NET = {"logce_anneal", "logfp_anneal", "linear", "learned", "gradflow"}
BOLTZMANN = {"linear", "learned", "gradflow"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny problems: intra-op threads only add contention."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def gaussian_target() -> Gaussian:
    return Gaussian(mean=[0.5, -0.3], std=[0.8, 1.2], log_Z=0.4)


def build(name: str, n: int = N_POINTS, seed: int = 0):
    """The entry with tiny networks and random parameters, a fixed batch, the detached
    parameters and the residual closure."""
    target = GMM9() if name in BOLTZMANN else gaussian_target()
    kw = {"time_net": TIME_NET} if name in WITH_TIME_NET else {}
    residual = make_loss(name, target, net=NET, **kw).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the output layers start at zero: randomize everything
        for p in residual.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=F64))
    lo, hi = (b.to(F64) for b in target.box)
    x = lo + (hi - lo) * torch.rand(n, target.dim, generator=gen, dtype=F64)
    t = residual.T * (0.05 + 0.9 * torch.rand(n, generator=gen, dtype=F64))
    params = {k: v.detach().clone() for k, v in residual.named_parameters()}

    def residual_fn(p):
        return functional_call(residual, p, (x, t))

    return residual, params, residual_fn, x, t


class RawTerms(nn.Module):
    """The unweighted terms :math:`r_k(x_i, t_i)`, term-major, of a residual."""

    def __init__(self, residual: Residual) -> None:
        super().__init__()
        self.inner = residual

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        terms = self.inner.residuals(x, t)
        return torch.cat([terms[k] for k in self.inner.weights])


def raw_jacobian(residual: Residual, params, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """The unweighted residual vector and its ``(K N, P)`` Jacobian by ``jacrev``, columns in
    the order of ``params``."""
    raw = RawTerms(residual)
    prefixed = {f"inner.{k}": v for k, v in params.items()}

    def fn(p):
        return functional_call(raw, p, (x, t))

    values = fn(prefixed).detach()
    jac = jacrev(fn)(prefixed)
    return values, torch.cat([jac[k].reshape(values.shape[0], -1) for k in prefixed], dim=1)


def explicit_system(residual: Residual, params, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """:math:`A = J_{raw}^\\top W J_{raw} / N + \\varepsilon I` and
    :math:`b = J_{raw}^\\top W r_{raw} / N` from the explicit Jacobian."""
    r_raw, j_raw = raw_jacobian(residual, params, x, t)
    n = x.shape[0]
    weights = torch.cat(
        [torch.full((n,), residual.weights[k], dtype=F64) for k in residual.weights]
    )
    gram = j_raw.T @ (weights[:, None] * j_raw) / n
    gradient = j_raw.T @ (weights * r_raw) / n
    return gram + EPS * torch.eye(gram.shape[0], dtype=F64), gradient


def reference_direction(residual: Residual, params, x: Tensor, t: Tensor) -> Tensor:
    """:math:`A^{-1} b` of :func:`explicit_system`."""
    return torch.linalg.solve(*explicit_system(residual, params, x, t))


def cg_direction(residual_fn, params, jacobian_product: str = "double_vjp"):
    lin = linearize(residual_fn, params, jacobian_product)
    result = conjugate_gradient(
        lambda v: lin.gramian_vector_product(v) + EPS * v,
        lin.gradient(),
        max_iter=2000,
        rtol=1e-12,
    )
    return lin, result


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def num_params(params) -> int:
    return sum(p.numel() for p in params.values())


# ---------------------------------------------------------------------- CG vs explicit
@pytest.mark.parametrize("name", list(CATALOGUE))
def test_cg_direction_matches_explicit_jacobian(name: str):
    """The CG direction solves the explicitly built system: backward error
    ``|A delta - b| / |b| < 1e-10``, and the forward error against ``torch.linalg.solve``
    where the conditioning allows it. With these random tiny networks ``cond(A)`` is 3e6-1e8 at
    ``eps = 1e-5``, except gradflow: 1.4e12 following the modes on GMM-9, where any float64
    solve, the reference included, is only good to about ``cond * 1e-17`` = 1e-5."""
    residual, params, residual_fn, x, t = build(name)
    assert num_params(params) <= 500
    lin, result = cg_direction(residual_fn, params)
    A, b = explicit_system(residual, params, x, t)
    assert torch.isfinite(b).all() and b.norm() > 0
    backward = float((A @ result.solution - b).norm() / b.norm())
    assert backward < 1e-10, (result.iterations, result.rel_residual)
    if torch.linalg.cond(A) < 1e11:
        reference = torch.linalg.solve(A, b)
        assert rel_err(result.solution, reference) < TOL, (result.iterations, result.rel_residual)
    # GN's loss ||r||^2 is the residual's loss: sum_k alpha_k mean(r_k^2)
    loss, _ = residual.loss(x, t)
    assert math.isclose(float(lin.loss), float(loss.detach()), rel_tol=1e-12)


@pytest.mark.parametrize("jacobian_product", ["double_vjp", "jvp"])
def test_cg_matches_dense_when_overdetermined(jacobian_product: str):
    """score with M = 40 residuals > P = 31 parameters, both Jacobian products (the shared
    helper of ``test_gauss_newton.py``, at the paper's damping)."""
    _, params, residual_fn, _, _ = build("score", n=40)
    assert residual_fn(params).numel() > num_params(params)
    assert_cg_matches_dense(
        residual_fn, params, eps=EPS, tol=TOL, jacobian_product=jacobian_product
    )


# ---------------------------------------------------------------------- Woodbury
@pytest.mark.parametrize("name", ["logce", "ot"])  # one term, and two (term-major rows)
def test_woodbury_agrees_with_cg_and_dense(name: str):
    residual, params, residual_fn, x, t = build(name)
    jac = per_point_jacobian(residual, params, x, t)
    assert jac.shape[0] < jac.shape[1]  # M < P: the regime Woodbury is for
    assert torch.allclose(jac, full_jacobian(residual_fn, params), rtol=1e-10, atol=1e-12)
    lin, cg = cg_direction(residual_fn, params)
    woodbury = damped_direction_explicit(jac, lin.residual, EPS, "woodbury")
    dense = damped_direction_explicit(jac, lin.residual, EPS, "dense")
    reference = reference_direction(residual, params, x, t)
    assert rel_err(woodbury, reference) < TOL
    assert rel_err(woodbury, cg.solution) < TOL
    assert rel_err(dense, reference) < TOL


# ---------------------------------------------------------------------- one full step
@pytest.mark.parametrize("solver", ["cg", "woodbury"])
def test_gauss_newton_step_decreases_logce_loss(solver: str):
    residual, params, residual_fn, x, t = build("logce")
    loss0 = float(residual.loss(x, t)[0].detach())
    gn = GaussNewton(residual, GaussNewtonConfig(damping=EPS, solver=solver))
    jacobian_fn = (
        (lambda p: per_point_jacobian(residual, p, x, t)) if solver == "woodbury" else None
    )
    info = gn.step(residual_fn, jacobian_fn)
    assert info.solver == solver and info.accepted and info.step_size > 0
    assert math.isclose(info.loss_before, loss0, rel_tol=1e-12)
    assert info.loss_after < 0.9 * info.loss_before, (info.loss_before, info.loss_after)
    assert not torch.equal(flatten(gn.params), flatten(params))
    gn.copy_to(residual)  # the module now carries the new parameters
    assert math.isclose(float(residual.loss(x, t)[0].detach()), info.loss_after, rel_tol=1e-10)
