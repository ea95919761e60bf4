r"""A residual linearized at the parameters: its value and its Jacobian products.

A residual closure ``residual_fn(params) -> (M,)`` maps a parameter dict to the stacked
residual vector :math:`r(\theta)`; :math:`J = \partial r / \partial \theta` is its ``(M, P)``
Jacobian. :func:`linearize` evaluates :math:`r` once and returns the products :math:`J v` and
:math:`J^\top u` without forming :math:`J` (Sun et al. section 4; docs/math.md, section 9). The
second-order fine-tuners (:mod:`pdesampler.optim`) step on them, and the residual checks
(:mod:`pdesampler.losses.validate`) try them before a fine-tuning phase.

:math:`J^\top u` comes from one ``torch.func.vjp``, reused by every product, and :math:`J v`
either from the vjp of that linear map :math:`u \mapsto J^\top u` (``"double_vjp"``: no
forward recomputation, about twice as fast as ``torch.func.jvp`` on MLP residuals with
Laplacians) or from ``torch.func.jvp`` (``"jvp"``: recomputes the forward pass; for residuals
whose operations lack a double backward). ``torch.func.linearize`` is not used: it cannot trace
residuals that nest forward-mode AD, such as forward-over-reverse Laplacians.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

__all__ = [
    "JACOBIAN_PRODUCTS",
    "Linearization",
    "Params",
    "ResidualFn",
    "flatten",
    "linearize",
    "per_point_jacobian",
    "unflatten",
]

Params = dict[str, Tensor]
ResidualFn = Callable[[Params], Tensor]
#: The ways :func:`linearize` forms :math:`J v`.
JACOBIAN_PRODUCTS = ("double_vjp", "jvp")


def flatten(tensors: Mapping[str, Tensor]) -> Tensor:
    """Concatenate a dict of tensors into one vector, in the dict's order."""
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def unflatten(vector: Tensor, like: Mapping[str, Tensor]) -> Params:
    """Split a vector into a dict shaped like ``like`` (the inverse of :func:`flatten`)."""
    sizes = [t.numel() for t in like.values()]
    chunks = torch.split(vector, sizes)
    return {name: c.view_as(t) for (name, t), c in zip(like.items(), chunks, strict=True)}


@dataclass
class Linearization:
    r"""The residual at :math:`\theta` with its Jacobian products, for one outer step.

    Attributes:
        residual: :math:`r(\theta)`, shape ``(M,)``.
        jvp: ``v (P,) -> J v (M,)``.
        vjp: ``u (M,) -> J^T u (P,)`` (reuses the reverse-mode graph of this linearization).
    """

    residual: Tensor
    jvp: Callable[[Tensor], Tensor]
    vjp: Callable[[Tensor], Tensor]

    @property
    def loss(self) -> Tensor:
        r""":math:`L = \|r\|^2`."""
        return self.residual.square().sum()

    def gradient(self) -> Tensor:
        r""":math:`g = J^\top r = \tfrac12 \nabla L`, shape ``(P,)``."""
        return self.vjp(self.residual)

    def gramian_vector_product(self, v: Tensor) -> Tensor:
        r""":math:`G v = J^\top (J v)`."""
        return self.vjp(self.jvp(v))


def linearize(
    residual_fn: ResidualFn, params: Params, jacobian_product: str = "double_vjp"
) -> Linearization:
    r"""Evaluate ``residual_fn`` at ``params`` (detached) and return its Jacobian products.

    ``jacobian_product`` picks how :math:`J v` is computed: ``"double_vjp"`` as the vjp of the
    linear map :math:`u \mapsto J^\top u` (reverse over reverse, no new forward pass),
    ``"jvp"`` by ``torch.func.jvp`` (forward mode, recomputes the residual).
    """
    residual, vjp_fn = vjp(residual_fn, params)

    def vector_jacobian(u: Tensor) -> Tensor:
        return flatten(vjp_fn(u)[0])

    if jacobian_product == "double_vjp":
        transpose_fn = vjp(vector_jacobian, torch.zeros_like(residual))[1]

        def jacobian_vector(v: Tensor) -> Tensor:
            return transpose_fn(v)[0]

    elif jacobian_product == "jvp":

        def jacobian_vector(v: Tensor) -> Tensor:
            return jvp(residual_fn, (params,), (unflatten(v, params),))[1]

    else:
        raise ValueError(
            f"jacobian_product must be 'double_vjp' or 'jvp', got {jacobian_product!r}"
        )
    return Linearization(residual.detach(), jacobian_vector, vector_jacobian)


def per_point_jacobian(
    module: nn.Module, params: Params, x: Tensor, t: Tensor, chunk_size: int | None = None
) -> Tensor:
    r"""The ``(K N, P)`` Jacobian of ``module(x, t)`` for a pointwise residual, row order as in
    ``Residual.forward`` (term-major).

    Each point's ``K`` terms are ``module.forward`` on a batch of one, differentiated with
    ``torch.func.jacrev`` and vmapped over the points (``chunk_size`` points at a time). The
    one-point vector carries the weight :math:`\sqrt{\alpha_k / 1}`, so the rows are scaled by
    :math:`1/\sqrt N`, then reordered from point-major ``(N, K)`` to term-major ``(K, N)``.
    The residual must be deterministic (for example the ``Exact`` trace estimator).
    """
    if not getattr(module, "pointwise", True):
        raise ValueError(f"{type(module).__name__} is not pointwise; use the CG solver instead")

    def one_point(p: Params, xi: Tensor, ti: Tensor) -> Tensor:
        return functional_call(module, p, (xi.unsqueeze(0), ti.unsqueeze(0)), tie_weights=False)

    jac = vmap(jacrev(one_point), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, x, t)
    n, k = next(iter(jac.values())).shape[:2]
    point_major = torch.cat([jac[name].reshape(n, k, -1) for name in params], dim=2)
    return point_major.transpose(0, 1).reshape(k * n, -1) / math.sqrt(n)
