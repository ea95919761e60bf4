r"""The linear algebra of the second-order fine-tuners: explicit Jacobians, Gram matrices, and
the damped solves.

With :math:`J` the ``(M, P)`` Jacobian of the stacked residual (:mod:`pdesampler.linearization`
gives its products without forming it), the fine-tuners need

.. math:: (J^\top J + \varepsilon I)^{-1} J^\top r
          = J^\top (J J^\top + \varepsilon I)^{-1} r,

either matrix-free by conjugate gradient on the products (:func:`conjugate_gradient`), or by a
Cholesky solve with the explicit Jacobian: ``M x M`` by the Woodbury identity on the right
(:func:`gram_solve`) or ``P x P`` on the left (:func:`damped_direction_explicit`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import jacrev

from pdesampler.linearization import Params, ResidualFn, linearize

__all__ = [
    "DTYPES",
    "GRAM_PRECISIONS",
    "CGResult",
    "JacobianFn",
    "conjugate_gradient",
    "damped_direction_explicit",
    "full_jacobian",
    "gram_solve",
    "gramian_vector_product",
    "num_params",
]

JacobianFn = Callable[[Params], Tensor]
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Precisions of the explicit Gram solves: "mixed" forms J J^T in the working dtype and factorizes
# it in float64 (half the cost of a float64 product, with a float64 Cholesky).
GRAM_PRECISIONS = (*DTYPES, "mixed")


def num_params(params: Mapping[str, Tensor]) -> int:
    """The number of scalars in a parameter dict."""
    return sum(t.numel() for t in params.values())


# ---------------------------------------------------------------------- Jacobians
def gramian_vector_product(
    residual_fn: ResidualFn, params: Params, v: Tensor, jacobian_product: str = "double_vjp"
) -> Tensor:
    r"""One product :math:`G v = J^\top (J v)` (use :func:`linearize` to reuse the ``vjp``)."""
    return linearize(residual_fn, params, jacobian_product).gramian_vector_product(v)


def full_jacobian(residual_fn: ResidualFn, params: Params) -> Tensor:
    """The explicit ``(M, P)`` Jacobian by ``torch.func.jacrev``: M reverse passes over the
    whole batch, so only for small problems; prefer :func:`pdesampler.linearization.per_point_jacobian`."""
    jac = jacrev(residual_fn)(params)
    rows = next(iter(jac.values())).shape[0]
    return torch.cat([jac[name].reshape(rows, -1) for name in params], dim=1)


# ---------------------------------------------------------------------- linear solvers
class CGResult(NamedTuple):
    r"""Solution of :math:`A x = b` by CG, the iterations used and the final relative residual
    :math:`\|b - A x\| / \|b\|` (from the CG recursion)."""

    solution: Tensor
    iterations: int
    rel_residual: float


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None = None,
    max_iter: int = 500,
    rtol: float = 1e-6,
) -> CGResult:
    r"""Solve :math:`A x = b` for symmetric positive definite :math:`A` given as ``matvec``.

    Stops when :math:`\|b - A x\| \le` ``rtol`` :math:`\|b\|`, after ``max_iter``
    products, or when round-off makes a curvature :math:`p^\top A p` non-positive. A warm start
    ``x0`` that is worse than zero is replaced by zero.
    """
    b_norm = b.norm()
    if b_norm == 0:
        return CGResult(torch.zeros_like(b), 0, 0.0)
    x, res = torch.zeros_like(b), b.clone()
    if x0 is not None:
        warm_res = b - matvec(x0)
        if warm_res.norm() < b_norm:
            x, res = x0.clone(), warm_res
    direction, res_sq = res.clone(), res.dot(res)
    iterations = 0
    while iterations < max_iter and res_sq.sqrt() > rtol * b_norm:
        a_dir = matvec(direction)
        curvature = direction.dot(a_dir)
        if curvature <= 0:  # round-off broke positive definiteness: keep the iterate so far
            break
        alpha = res_sq / curvature
        x.add_(direction, alpha=alpha)
        res.sub_(a_dir, alpha=alpha)
        new_res_sq = res.dot(res)
        direction.mul_(new_res_sq / res_sq).add_(res)
        res_sq = new_res_sq
        iterations += 1
    return CGResult(x, iterations, float(res_sq.sqrt() / b_norm))


def damped_cholesky_solve(gram: Tensor, rhs: Tensor, eps: float) -> Tensor:
    r"""Solve :math:`(A + \varepsilon I) y = b` for a symmetric PSD ``A`` by Cholesky; if that
    fails, warn and use the pseudo-inverse from ``eigh`` (eigenvalues below the round-off
    floor are dropped)."""
    system = gram + eps * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    factor, info = torch.linalg.cholesky_ex(system)
    if info.item() == 0:
        return torch.cholesky_solve(rhs.unsqueeze(1), factor).squeeze(1)
    warnings.warn(
        f"Gauss-Newton: Cholesky of the damped {gram.shape[0]}x{gram.shape[0]} Gram matrix "
        f"failed (eps={eps:g}, dtype={gram.dtype}); using an eigendecomposition pseudo-inverse. "
        "Consider a larger damping, or gram_dtype='float64' (the product in float64 too).",
        RuntimeWarning,
        stacklevel=4,
    )
    values, vectors = torch.linalg.eigh(system)
    floor = values.abs().max() * gram.shape[0] * torch.finfo(gram.dtype).eps
    inverse = torch.where(values > floor, 1.0 / values, torch.zeros_like(values))
    return vectors @ (inverse * (vectors.T @ rhs))


def _gram_dtypes(dtype: torch.dtype, precision: str | None) -> tuple[torch.dtype, torch.dtype]:
    """(product dtype, solve dtype) of a Gram precision: ``None`` keeps ``dtype``, ``"float32"``
    or ``"float64"`` uses it for both, ``"mixed"`` forms the product in ``dtype`` and solves
    in float64."""
    if precision is None:
        return dtype, dtype
    if precision == "mixed":
        return dtype, torch.float64
    return DTYPES[precision], DTYPES[precision]


def gram_solve(jacobian: Tensor, rhs: Tensor, eps: float, precision: str | None = None) -> Tensor:
    r""":math:`(J J^\top + \varepsilon I)^{-1} b` for an explicit ``(M, P)`` Jacobian: one
    ``M x M`` Cholesky solve in ``precision`` (see :data:`GRAM_PRECISIONS`); the result has the
    Jacobian's dtype."""
    product, solve = _gram_dtypes(jacobian.dtype, precision)
    wide = jacobian.to(product)
    gram = (wide @ wide.T).to(solve)
    return damped_cholesky_solve(gram, rhs.to(solve), eps).to(jacobian.dtype)


def damped_direction_explicit(
    jacobian: Tensor, residual: Tensor, eps: float, solver: str, precision: str | None = None
) -> Tensor:
    r""":math:`(J^\top J + \varepsilon I)^{-1} J^\top r` from an explicit ``(M, P)`` Jacobian.

    ``"woodbury"`` computes it as :math:`J^\top (J J^\top + \varepsilon I)^{-1} r` (an
    ``M x M`` solve, :func:`gram_solve`), ``"dense"`` directly (a ``P x P`` solve). The Gram
    matrix and its solve use ``precision`` (see :data:`GRAM_PRECISIONS`; default: the
    Jacobian's dtype); the result has the Jacobian's dtype.
    """
    if solver == "woodbury":
        return jacobian.T @ gram_solve(jacobian, residual, eps, precision)
    if solver == "dense":
        product, solve = _gram_dtypes(jacobian.dtype, precision)
        wide = jacobian.to(product)
        rhs = (wide.T @ residual.to(product)).to(solve)
        step = damped_cholesky_solve((wide.T @ wide).to(solve), rhs, eps)
        return step.to(jacobian.dtype)
    raise ValueError(f"explicit solver must be 'woodbury' or 'dense', got {solver!r}")
