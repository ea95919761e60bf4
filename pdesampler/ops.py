r"""Differential operators on functions of one point ``(x, t)``, built on ``torch.func``.

Every operator takes a function ``f(x, t)`` of a single point, ``x`` of shape ``(d,)`` and ``t``
a scalar tensor, and returns a new function of the same point. Batch with
``torch.func.vmap``::

    div = vmap(divergence(mu))(x, t)          # x: (N, d), t: (N,)

Traces (divergence, Laplacian) are computed by a :class:`TraceEstimator`. The exact estimator
takes the quadratic forms :math:`e_i^\top A e_i` over the standard basis; the Hutchinson
estimator averages :math:`v^\top A v` over random probes ``v`` (Rademacher or Gaussian), which
is unbiased because :math:`\mathbb{E}[v v^\top] = I`. In both cases :math:`A v` is one
forward-mode product (``jvp``), so the exact trace of a ``d``-dimensional field costs ``d``
batched forward-mode passes and no ``d``-fold loop of backward passes.

Probes are per point: an estimator returns a tensor of shape ``(N, k, d)`` for a batch, and the
pointwise operators take the ``(k, d)`` slice as an extra argument ``probes``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import grad, grad_and_value, jvp, vjp, vmap

PointFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "Exact",
    "Hutchinson",
    "ScalarJet",
    "TraceEstimator",
    "VectorJet",
    "divergence",
    "gradient",
    "laplacian",
    "scalar_jet",
    "time_derivative",
    "vector_jet",
]


class TraceEstimator:
    r"""Chooses the probe vectors ``v`` for traces :math:`\mathrm{Tr}(A) \approx c \sum_v v^\top A v`."""

    scale_by_count: bool = False

    def probes(self, n: int, d: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Probe vectors for ``n`` points, shape ``(n, k, d)`` (or ``(k, d)`` when shared)."""
        raise NotImplementedError

    def reduce(self, quadratic_forms: Tensor) -> Tensor:
        r"""Combine the ``k`` values :math:`v^\top A v` into the trace estimate."""
        return quadratic_forms.mean(-1) if self.scale_by_count else quadratic_forms.sum(-1)


@dataclass
class Exact(TraceEstimator):
    r"""Exact trace from the standard basis: :math:`\mathrm{Tr}(A) = \sum_i e_i^\top A e_i`."""

    def probes(self, n: int, d: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
        return torch.eye(d, dtype=dtype, device=device)


@dataclass
class Hutchinson(TraceEstimator):
    r"""Hutchinson estimator :math:`\mathrm{Tr}(A) \approx \frac1k \sum_j v_j^\top A v_j`.

    Args:
        n_probes: number ``k`` of probes per point.
        kind: ``"rademacher"`` (entries +-1) or ``"gaussian"`` (standard normal entries).
        generator: the random stream the probes are drawn from (on the probes' device).
    """

    n_probes: int = 1
    kind: str = "rademacher"
    generator: torch.Generator | None = None
    scale_by_count: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("rademacher", "gaussian"):
            raise ValueError(
                f"Hutchinson kind must be 'rademacher' or 'gaussian', got {self.kind!r}"
            )
        if self.n_probes < 1:
            raise ValueError(f"Hutchinson needs n_probes >= 1, got {self.n_probes}")

    def probes(self, n: int, d: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
        shape = (n, self.n_probes, d)
        if self.kind == "gaussian":
            return torch.randn(shape, generator=self.generator, dtype=dtype, device=device)
        bits = torch.randint(0, 2, shape, generator=self.generator, device=device)
        return (2 * bits - 1).to(dtype)


def batch_probes(estimator: TraceEstimator, x: Tensor) -> tuple[Tensor, int | None]:
    """Probes for a batch ``x`` of shape ``(N, d)`` and the ``in_dims`` entry to vmap them with."""
    probes = estimator.probes(x.shape[0], x.shape[-1], dtype=x.dtype, device=x.device)
    return probes, (0 if probes.dim() == 3 else None)


def gradient(f: PointFn) -> PointFn:
    r""":math:`\nabla_x f(x, t)` of a scalar field."""
    return grad(f, argnums=0)


def time_derivative(f: PointFn) -> PointFn:
    r""":math:`\partial_t f(x, t)` of a scalar or vector field, by one forward-mode product."""

    def df_dt(x: Tensor, t: Tensor) -> Tensor:
        value, rate = jvp(lambda s: f(x, s), (t,), (torch.ones_like(t),))
        return rate.to(value.dtype)  # forward AD may promote the tangent of a 0-dim t

    return df_dt


def _quadratic_forms(linear_map: Callable[[Tensor], Tensor], probes: Tensor) -> Tensor:
    r""":math:`v_j^\top A v_j` for each probe row ``v_j``, with ``A v`` given by ``linear_map``."""
    return (vmap(linear_map)(probes) * probes).sum(-1)


class VectorJet(NamedTuple):
    """A vector field and its divergence at one point."""

    value: Tensor
    div: Tensor


class ScalarJet(NamedTuple):
    r"""A scalar field ``f`` at one point with :math:`\partial_t f`, :math:`\nabla_x f` and
    :math:`\Delta_x f` (``lap`` is ``None`` when it was not requested)."""

    value: Tensor
    dt: Tensor
    grad: Tensor
    lap: Tensor | None


def vector_jet(F: PointFn, estimator: TraceEstimator | None = None):
    r"""``(x, t, probes) -> VectorJet``: :math:`F(x, t)` and :math:`\nabla\cdot F(x, t)`.

    One ``jvp`` per probe gives :math:`J_F v` together with the primal :math:`F(x)`. Under
    ``torch.compile``, which cannot trace a ``jvp`` along per-point (Hutchinson) probes (torch
    2.13), one reverse pass and a ``vjp`` per probe give :math:`v^\top J_F^\top v = v^\top
    J_F v` instead.
    """
    estimator = estimator or Exact()

    def jet(x: Tensor, t: Tensor, probes: Tensor) -> VectorJet:
        if torch.compiler.is_compiling():
            values, pull = vjp(lambda y: F(y, t), x)
            div = estimator.reduce(_quadratic_forms(lambda v: pull(v)[0], probes))  # v.J^T v
            return VectorJet(values, div)

        def along(v: Tensor) -> tuple[Tensor, Tensor]:
            return jvp(lambda y: F(y, t), (x,), (v,))

        values, jv = vmap(along)(probes)
        return VectorJet(values[0], estimator.reduce((jv * probes).sum(-1)))

    return jet


def scalar_jet(f: PointFn, estimator: TraceEstimator | None = None, *, laplacian: bool = True):
    r"""``(x, t, probes) -> ScalarJet`` for a scalar field ``f``.

    One reverse pass gives :math:`(\nabla_x f, \partial_t f, f)`; when ``laplacian`` is set,
    forward-mode products of that reverse pass along the probes give :math:`H v` and thus
    :math:`\Delta f = \mathrm{Tr}(H)` in the same computation (forward-over-reverse).
    Under ``torch.compile``, which cannot trace forward-over-reverse (torch 2.13), the products
    are vector-Jacobian products of the reverse pass instead (reverse-over-reverse, the same
    :math:`H v` as :math:`H` is symmetric): slower eagerly, 2-3x faster compiled
    (``benchmarks/bench_compile.py``).
    """
    estimator = estimator or Exact()
    grads_and_value = grad_and_value(f, argnums=(0, 1))

    def jet(x: Tensor, t: Tensor, probes: Tensor) -> ScalarJet:
        if not laplacian:
            (gx, gt), value = grads_and_value(x, t)
            return ScalarJet(value, gt, gx, None)

        if torch.compiler.is_compiling():  # TorchDynamo cannot trace forward-over-reverse
            gx, pull, (gt, value) = vjp(lambda y: grad_x_first(y, t), x, has_aux=True)
            lap = estimator.reduce(_quadratic_forms(lambda v: pull(v)[0], probes))  # H^T v = H v
            return ScalarJet(value, gt, gx, lap)

        def along(v: Tensor):
            return jvp(lambda y: grads_and_value(y, t), (x,), (v,))

        ((gx, gt), value), ((hv, _), _) = vmap(along)(probes)
        lap = estimator.reduce((hv * probes).sum(-1))
        return ScalarJet(value[0], gt[0], gx[0], lap)

    def grad_x_first(x: Tensor, t: Tensor):  # grad_x f, with (d_t f, f) as auxiliary output
        (gx, gt), value = grads_and_value(x, t)
        return gx, (gt, value)

    return jet


def divergence(F: PointFn, estimator: TraceEstimator | None = None):
    """``(x, t, probes) -> div F``: the trace of the Jacobian of a vector field in ``x``."""
    jet = vector_jet(F, estimator)
    return lambda x, t, probes: jet(x, t, probes).div


def laplacian(f: PointFn, estimator: TraceEstimator | None = None):
    """``(x, t, probes) -> Lap f``: the trace of the Hessian of a scalar field in ``x``."""
    jet = scalar_jet(f, estimator)
    return lambda x, t, probes: jet(x, t, probes).lap


def batched(op, estimator: TraceEstimator | None = None):
    """Apply a pointwise trace operator ``op(x, t, probes)`` to a batch ``x: (N, d), t: (N,)``.

    Draws the probes from ``estimator`` (exact by default) and vmaps over the points.
    """
    estimator = estimator or Exact()

    def apply(x: Tensor, t: Tensor):
        probes, in_dim = batch_probes(estimator, x)
        return vmap(op, in_dims=(0, 0, in_dim))(x, t, probes)

    return apply
