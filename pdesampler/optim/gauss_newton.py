"""Matrix-free Gauss-Newton for least-squares problems :math:`L(\\theta) = \\|r(\\theta)\\|^2`.

The optimizer knows nothing about PDEs. It sees a residual closure ``residual_fn(params) -> (M,)``
over a fixed batch, usually ``lambda p: functional_call(residual_module, p, (x, t))``, and
optionally an explicit Jacobian closure ``point_jacobian_fn(params) -> (M, P)`` in the same row
order (see :func:`per_point_jacobian`).

Conventions (Sun et al. section 4; docs/math.md, section 9). :math:`J = \\partial r / \\partial \\theta` is the Jacobian of the
already weighted stacked vector :math:`r = (\\sqrt{\\alpha_k/N}\\, r_k(x_i, t_i))_{k,i}`, so

.. math:: G = J^\\top J = \\tfrac1N J_{raw}^\\top J_{raw}, \\qquad
          g = J^\\top r = \\tfrac12 \\nabla L,

and one outer step is

.. math:: \\delta = (G + \\varepsilon I)^{-1} g, \\qquad \\theta \\leftarrow \\theta - \\eta\\,\\delta,

with :math:`\\eta` from a line search on :math:`L` (Sun et al. section 4 writes :math:`\\nabla L` for
:math:`2g`; the factor 2 is absorbed in the step length). With :math:`\\eta = 1` and
:math:`\\varepsilon \\to 0` this is the exact Gauss-Newton step; for a residual linear in
:math:`\\theta` it lands on the least-squares optimum. The direction comes from one of

- ``"cg"``: conjugate gradient on :math:`G v = J^\\top (J v)`, matrix-free. :math:`J^\\top u` comes
  from one ``torch.func.vjp`` per outer step that every CG iteration reuses, and :math:`J v` by
  default from the vjp of that linear map :math:`u \\mapsto J^\\top u` (``"double_vjp"``: no
  forward recomputation, about twice as fast as ``torch.func.jvp`` on MLP residuals with
  Laplacians), or from ``torch.func.jvp`` (``"jvp"``: recomputes the forward pass; for residuals
  whose operations lack a double backward). ``torch.func.linearize`` is not used: it cannot
  trace residuals that nest forward-mode AD, such as forward-over-reverse Laplacians.
- ``"woodbury"``: when :math:`M < P`,
  :math:`\\delta = J^\\top (J J^\\top + \\varepsilon I)^{-1} r`, one :math:`M \\times M` Cholesky
  solve with the explicit Jacobian; the same vector as the damped solve above.
- ``"dense"``: :math:`(J^\\top J + \\varepsilon I)^{-1} g` with the explicit Jacobian, one
  :math:`P \\times P` Cholesky solve.

Precision: the optimizer keeps its own detached copy of the parameters in ``config.dtype``
(``None`` keeps theirs) and calls the closures with it; the closures must build their inputs
``x, t`` in that dtype. The module's own parameters change only when the result is written
back (:meth:`GaussNewton.copy_to`), each in its original dtype.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap
from tqdm.auto import tqdm

Params = dict[str, Tensor]
ResidualFn = Callable[[Params], Tensor]
JacobianFn = Callable[[Params], Tensor]
# ``on_step(steps, elapsed_seconds, parameters)``: called by the optimizers' run loops after
# every step, for example to snapshot the model along the way.
StepHook = Callable[[int, float, Mapping[str, Tensor]], None]

__all__ = [
    "GRAM_PRECISIONS",
    "CGResult",
    "GaussNewton",
    "GaussNewtonConfig",
    "Linearization",
    "StepHook",
    "StepInfo",
    "conjugate_gradient",
    "damped_direction_explicit",
    "flatten",
    "full_jacobian",
    "gram_solve",
    "gramian_vector_product",
    "line_search",
    "linearize",
    "per_point_jacobian",
    "run_gauss_newton",
    "unflatten",
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Precisions of the explicit Gram solves: "mixed" forms J J^T in the working dtype and factorizes
# it in float64 (half the cost of a float64 product, with a float64 Cholesky).
GRAM_PRECISIONS = (*DTYPES, "mixed")
# The allowed values of GaussNewtonConfig's string options.
_CHOICES = {
    "solver": ("auto", "cg", "woodbury", "dense"),
    "line_search": ("grid", "armijo"),
    "line_search_batch": ("same", "fresh"),
    "jacobian_product": ("double_vjp", "jvp"),
    "dtype": (None, *DTYPES),
    "gram_dtype": GRAM_PRECISIONS,
}


def check_choices(config: object, choices: Mapping[str, tuple]) -> None:
    """Raise a one-line ``ValueError`` naming the first option of ``config`` not allowed."""
    for key, allowed in choices.items():
        value = getattr(config, key)
        if value not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {value!r}")


# ---------------------------------------------------------------------- parameter vectors
def flatten(tensors: Mapping[str, Tensor]) -> Tensor:
    """Concatenate a dict of tensors into one vector, in the dict's order."""
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def unflatten(vector: Tensor, like: Mapping[str, Tensor]) -> Params:
    """Split a vector into a dict shaped like ``like`` (the inverse of :func:`flatten`)."""
    sizes = [t.numel() for t in like.values()]
    chunks = torch.split(vector, sizes)
    return {name: c.view_as(t) for (name, t), c in zip(like.items(), chunks, strict=True)}


def num_params(params: Mapping[str, Tensor]) -> int:
    """The number of scalars in a parameter dict."""
    return sum(t.numel() for t in params.values())


# ---------------------------------------------------------------------- Jacobian products
@dataclass
class Linearization:
    """The residual at :math:`\\theta` with its Jacobian products, for one outer step.

    Attributes:
        residual: :math:`r(\\theta)`, shape ``(M,)``.
        jvp: ``v (P,) -> J v (M,)``.
        vjp: ``u (M,) -> J^T u (P,)`` (reuses the reverse-mode graph of this linearization).
    """

    residual: Tensor
    jvp: Callable[[Tensor], Tensor]
    vjp: Callable[[Tensor], Tensor]

    @property
    def loss(self) -> Tensor:
        """:math:`L = \\|r\\|^2`."""
        return self.residual.square().sum()

    def gradient(self) -> Tensor:
        """:math:`g = J^\\top r = \\tfrac12 \\nabla L`, shape ``(P,)``."""
        return self.vjp(self.residual)

    def gramian_vector_product(self, v: Tensor) -> Tensor:
        """:math:`G v = J^\\top (J v)`."""
        return self.vjp(self.jvp(v))


def linearize(
    residual_fn: ResidualFn, params: Params, jacobian_product: str = "double_vjp"
) -> Linearization:
    """Evaluate ``residual_fn`` at ``params`` (detached) and return its Jacobian products.

    ``jacobian_product`` picks how :math:`J v` is computed: ``"double_vjp"`` as the vjp of the
    linear map :math:`u \\mapsto J^\\top u` (reverse over reverse, no new forward pass),
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


def gramian_vector_product(
    residual_fn: ResidualFn, params: Params, v: Tensor, jacobian_product: str = "double_vjp"
) -> Tensor:
    """One product :math:`G v = J^\\top (J v)` (use :func:`linearize` to reuse the ``vjp``)."""
    return linearize(residual_fn, params, jacobian_product).gramian_vector_product(v)


def full_jacobian(residual_fn: ResidualFn, params: Params) -> Tensor:
    """The explicit ``(M, P)`` Jacobian by ``torch.func.jacrev``: M reverse passes over the
    whole batch, so only for small problems; prefer :func:`per_point_jacobian`."""
    jac = jacrev(residual_fn)(params)
    rows = next(iter(jac.values())).shape[0]
    return torch.cat([jac[name].reshape(rows, -1) for name in params], dim=1)


def per_point_jacobian(
    module: nn.Module, params: Params, x: Tensor, t: Tensor, chunk_size: int | None = None
) -> Tensor:
    """The ``(K N, P)`` Jacobian of ``module(x, t)`` for a pointwise residual, row order as in
    ``Residual.forward`` (term-major).

    Each point's ``K`` terms are ``module.forward`` on a batch of one, differentiated with
    ``torch.func.jacrev`` and vmapped over the points (``chunk_size`` points at a time). The
    one-point vector carries the weight :math:`\\sqrt{\\alpha_k / 1}`, so the rows are scaled by
    :math:`1/\\sqrt N`, then reordered from point-major ``(N, K)`` to term-major ``(K, N)``.
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


# ---------------------------------------------------------------------- linear solvers
class CGResult(NamedTuple):
    """Solution of :math:`A x = b` by CG, the iterations used and the final relative residual
    :math:`\\|b - A x\\| / \\|b\\|` (from the CG recursion)."""

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
    """Solve :math:`A x = b` for symmetric positive definite :math:`A` given as ``matvec``.

    Stops when :math:`\\|b - A x\\| \\le` ``rtol`` :math:`\\|b\\|`, after ``max_iter``
    products, or when round-off makes a curvature :math:`p^\\top A p` non-positive. A warm start
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
    """Solve :math:`(A + \\varepsilon I) y = b` for a symmetric PSD ``A`` by Cholesky; if that
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
    """:math:`(J J^\\top + \\varepsilon I)^{-1} b` for an explicit ``(M, P)`` Jacobian: one
    ``M x M`` Cholesky solve in ``precision`` (see :data:`GRAM_PRECISIONS`); the result has the
    Jacobian's dtype."""
    product, solve = _gram_dtypes(jacobian.dtype, precision)
    wide = jacobian.to(product)
    gram = (wide @ wide.T).to(solve)
    return damped_cholesky_solve(gram, rhs.to(solve), eps).to(jacobian.dtype)


def damped_direction_explicit(
    jacobian: Tensor, residual: Tensor, eps: float, solver: str, precision: str | None = None
) -> Tensor:
    """:math:`(J^\\top J + \\varepsilon I)^{-1} J^\\top r` from an explicit ``(M, P)`` Jacobian.

    ``"woodbury"`` computes it as :math:`J^\\top (J J^\\top + \\varepsilon I)^{-1} r` (an
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


# ---------------------------------------------------------------------- configuration
@dataclass
class GaussNewtonConfig:
    """Settings of :class:`GaussNewton` and :func:`run_gauss_newton`.

    Attributes:
        steps: outer steps for :func:`run_gauss_newton` (``None``: until ``max_seconds`` ends).
        damping: :math:`\\varepsilon` in :math:`(G + \\varepsilon I)^{-1}`.
        solver: ``"auto"`` (Woodbury when ``M < P``, a ``point_jacobian_fn`` is given and the
            ``(M, P)`` Jacobian fits ``jacobian_max_bytes``; CG otherwise), ``"cg"``,
            ``"woodbury"`` or ``"dense"`` (the last two use ``torch.func.jacrev`` of the whole
            residual when no ``point_jacobian_fn`` is given: small problems only).
        jacobian_product: how CG computes :math:`J v`, ``"double_vjp"`` or ``"jvp"`` (see
            :func:`linearize`).
        cg_max_iter: CG iteration limit.
        cg_rtol: CG relative residual tolerance.
        warm_start: start CG from ``warm_factor`` times the previous direction.
        warm_factor: the warm-start factor (0.95 in the Hessian-free PINN code of Dangel, Müller, Zeinhofer).
        jacobian_max_bytes: memory budget of the explicit Jacobian for ``solver="auto"``.
        line_search: ``"grid"`` (the best of :math:`\\eta = 2^{-k}`, ``k = 0..grid_max_k``,
            as in ENGD) or ``"armijo"`` (backtracking from :math:`\\eta = 1`).
        grid_max_k: the smallest grid step is :math:`2^{-k_{max}}`.
        grid_early_stop: stop the grid scan (from :math:`\\eta = 1` down) at the first rise of
            the loss after a decrease, instead of evaluating all ``grid_max_k + 1`` steps.
        armijo_beta: backtracking factor.
        armijo_c: sufficient-decrease constant.
        armijo_max_tries: trial steps before the step is rejected.
        dtype: ``"float32"``, ``"float64"`` or ``None`` (keep the parameters' dtype).
        max_seconds: wall-clock budget of :func:`run_gauss_newton` (``None``: no limit).
        nan_patience: consecutive non-finite steps tolerated before a ``RuntimeError``.
        adaptive_damping: Levenberg-Marquardt control of :math:`\\varepsilon`: divide it by
            ``damping_factor`` after a step accepted with :math:`\\eta \\ge 1/2`, multiply it
            after a rejected step or one with :math:`\\eta < 1/4`, within
            ``[damping_min, damping_max]``.
        line_search_batch: ``"same"`` (the line search uses the step's batch) or ``"fresh"``
            (:func:`pdesampler.train.train` gives it an independent batch, so that a step that
            only fits its own batch is rejected; with fewer residuals than parameters an exact
            step interpolates its batch).
        gram_dtype: precision of the Gram matrix and its Cholesky solve in ``"woodbury"`` and
            ``"dense"``: ``"float64"`` (the default: cheap at ``M <= 8k``, and a float32 Gram
            matrix with small damping often fails to factorize), ``"float32"``, or
            ``"mixed"`` (product in the working dtype, Cholesky in float64).
        curvature_fraction: CG's Gramian products use the first ``curvature_fraction`` of the
            batch's points (:func:`pdesampler.train.train` passes that ``curvature_fn``) while
            the gradient uses the whole batch: subsampled-curvature Hessian-free GN.
    """

    steps: int | None = 100
    damping: float = 1e-5
    solver: str = "auto"
    jacobian_product: str = "double_vjp"
    cg_max_iter: int = 500
    cg_rtol: float = 1e-6
    warm_start: bool = True
    warm_factor: float = 0.95
    jacobian_max_bytes: float = 2e9
    line_search: str = "grid"
    grid_max_k: int = 30
    grid_early_stop: bool = True
    armijo_beta: float = 0.8
    armijo_c: float = 1e-2
    armijo_max_tries: int = 20
    dtype: str | None = None
    max_seconds: float | None = None
    nan_patience: int = 5
    adaptive_damping: bool = False
    damping_factor: float = 3.0
    damping_min: float = 1e-8
    damping_max: float = 1e2
    line_search_batch: str = "same"
    gram_dtype: str = "float64"
    curvature_fraction: float = 1.0

    def __post_init__(self) -> None:
        check_choices(self, _CHOICES)
        if self.damping < 0:
            raise ValueError(f"damping must be >= 0, got {self.damping}")
        if not 0 < self.curvature_fraction <= 1:
            raise ValueError(f"curvature_fraction must be in (0, 1], got {self.curvature_fraction}")


@dataclass
class StepInfo:
    """The record of one outer step.

    Attributes:
        loss_before: :math:`L(\\theta)` on the step's batch.
        loss_after: :math:`L` after the step (equal to ``loss_before`` when rejected).
        step_size: the applied :math:`\\eta` (0 when rejected).
        cg_iters: CG iterations (0 for the explicit solvers).
        cg_rel_residual: CG's final relative residual (``None`` for the explicit solvers).
        solver: the solver used.
        seconds: wall-clock seconds of the step.
        accepted: whether the parameters changed.
        reason: why a step was rejected (``""`` when accepted).
        damping: the damping :math:`\\varepsilon` after the step (it changes only with
            ``adaptive_damping``).
    """

    loss_before: float
    loss_after: float
    step_size: float
    cg_iters: int
    cg_rel_residual: float | None
    solver: str
    seconds: float
    accepted: bool
    reason: str = ""
    damping: float | None = None


# ---------------------------------------------------------------------- line search
def _loss_at(residual_fn: ResidualFn, params: Params, direction: Params, eta: float) -> float:
    trial = {name: p - eta * direction[name] for name, p in params.items()}
    loss = float(residual_fn(trial).detach().square().sum())
    return loss if math.isfinite(loss) else math.inf


def line_search(
    residual_fn: ResidualFn,
    params: Params,
    direction: Params,
    loss0: float,
    slope: float,
    config: GaussNewtonConfig,
) -> tuple[float, float]:
    """The step :math:`\\eta` along :math:`\\theta - \\eta\\,\\delta` and the loss there.

    ``slope`` is :math:`dL/d\\eta` at 0, that is :math:`-2 g^\\top \\delta`. ``"grid"`` returns the
    best :math:`\\eta = 2^{-k}`, scanning from :math:`\\eta = 1` down and, with
    ``grid_early_stop``, stopping at the first rise of the loss after a decrease; ``"armijo"``
    returns the first :math:`\\eta = \\beta^j` with
    :math:`L(\\eta) \\le L_0 + c\\,\\eta\\,\\mathrm{slope}`. Either returns ``(0.0, loss0)`` unless
    the loss strictly decreases.
    """
    if config.line_search == "grid":
        best_eta, best_loss = 0.0, loss0
        for k in range(config.grid_max_k + 1):
            loss = _loss_at(residual_fn, params, direction, 2.0**-k)
            if loss < best_loss:
                best_eta, best_loss = 2.0**-k, loss
            elif best_eta > 0 and config.grid_early_stop:
                break
        return best_eta, best_loss
    if slope >= 0:
        return 0.0, loss0
    eta = 1.0
    for _ in range(config.armijo_max_tries):
        loss = _loss_at(residual_fn, params, direction, eta)
        if loss < loss0 and loss <= loss0 + config.armijo_c * eta * slope:
            return eta, loss
        eta *= config.armijo_beta
    return 0.0, loss0


# ---------------------------------------------------------------------- the optimizer
class FineTuner:
    """What the fine-tuners share: a detached working copy of the parameters, the step
    history, the NaN guard and the write-back (:class:`GaussNewton`,
    :class:`~pdesampler.optim.spring.Spring`).

    Args:
        params: an ``nn.Module`` (its parameters that require grad) or a dict of tensors. The
            optimizer works on a detached copy in ``config.dtype``.
        config: the settings (``dtype`` and ``nan_patience`` are read here).

    Attributes:
        params: the current parameters (detached, working dtype).
        history: one :class:`StepInfo` per step.
    """

    NAME = "fine-tuner"
    #: Steps when the config gives neither ``steps`` nor ``max_seconds``.
    DEFAULT_STEPS = 100

    def __init__(self, params: nn.Module | Mapping[str, Tensor], config) -> None:
        if isinstance(params, nn.Module):
            params = {n: p for n, p in params.named_parameters() if p.requires_grad}
        if not params:
            raise ValueError(f"{self.NAME} needs at least one parameter")
        self.config = config
        dtype = DTYPES[config.dtype] if config.dtype else None
        self.params: Params = {n: p.detach().to(dtype=dtype, copy=True) for n, p in params.items()}
        self.history: list[StepInfo] = []
        self._bad_steps = 0

    @property
    def dtype(self) -> torch.dtype:
        """The working dtype: the closures' inputs must use it."""
        return next(iter(self.params.values())).dtype

    def copy_to(self, module: nn.Module) -> None:
        """Write the current parameters into ``module``, each in its own dtype."""
        own = dict(module.named_parameters())
        with torch.no_grad():
            for name, value in self.params.items():
                own[name].copy_(value)

    def _reject(
        self,
        loss0: float,
        solver: str,
        start: float,
        reason: str,
        cg_iters: int = 0,
        cg_res: float | None = None,
    ) -> StepInfo:
        """Record a step that changed nothing; raise after ``nan_patience`` in a row."""
        self._bad_steps += 1
        info = self._record(
            StepInfo(loss0, loss0, 0.0, cg_iters, cg_res, solver, 0.0, False, reason), start
        )
        if self._bad_steps >= self.config.nan_patience:
            raise RuntimeError(
                f"{self.NAME}: {self._bad_steps} consecutive non-finite steps ({reason}, "
                f"last loss {loss0}); parameters left at the last finite step"
            )
        return info

    def _record(self, info: StepInfo, start: float) -> StepInfo:
        info.seconds = time.perf_counter() - start
        self.history.append(info)
        return info


class GaussNewton(FineTuner):
    """Damped Gauss-Newton with a line search (Sun et al. section 4); see the module docstring.
    Arguments and attributes as :class:`FineTuner`, with a :class:`GaussNewtonConfig`."""

    NAME = "Gauss-Newton"

    def __init__(self, params: nn.Module | Mapping[str, Tensor], config: GaussNewtonConfig) -> None:
        super().__init__(params, config)
        self._previous: Tensor | None = None
        self.damping = config.damping

    def step(
        self,
        residual_fn: ResidualFn,
        point_jacobian_fn: JacobianFn | None = None,
        search_fn: ResidualFn | None = None,
        curvature_fn: ResidualFn | None = None,
    ) -> StepInfo:
        """One outer step on one batch: direction, line search, and the update if it helps.

        ``search_fn`` (optional) is the residual on another batch: the line search then accepts
        a step only if it lowers that loss (Armijo uses the slope on ``residual_fn``'s batch).
        ``curvature_fn`` (optional, CG only) is the residual on a subset of the batch whose
        Gramian products CG uses in place of the whole batch's."""
        start = time.perf_counter()
        lin = linearize(residual_fn, self.params, self.config.jacobian_product)
        loss0 = float(lin.loss)
        gradient = lin.gradient()
        solver = self._choose_solver(lin.residual.numel(), point_jacobian_fn)
        if not (math.isfinite(loss0) and bool(torch.isfinite(gradient).all())):
            return self._reject(loss0, solver, start, "non-finite loss or gradient")
        if solver == "cg":
            curvature = lin
            if curvature_fn is not None:
                curvature = linearize(curvature_fn, self.params, self.config.jacobian_product)
            direction, cg_iters, cg_res = self._cg_direction(curvature, gradient)
        else:
            jacobian_fn = point_jacobian_fn or (lambda p: full_jacobian(residual_fn, p))
            direction = self._explicit_direction(lin, jacobian_fn, solver)
            cg_iters, cg_res = 0, None
        if not bool(torch.isfinite(direction).all()):
            self._previous = None
            return self._reject(loss0, solver, start, "non-finite direction", cg_iters, cg_res)
        self._bad_steps = 0
        self._previous = direction
        slope = -2.0 * float(gradient.dot(direction))
        step_dict = unflatten(direction, self.params)
        if search_fn is not None:
            loss0 = float(search_fn(self.params).square().sum())
        eta, loss1 = line_search(
            search_fn or residual_fn, self.params, step_dict, loss0, slope, self.config
        )
        self._adapt_damping(eta)
        if eta == 0.0:
            info = StepInfo(loss0, loss0, 0.0, cg_iters, cg_res, solver, 0.0, False, "no decrease")
        else:
            self.params = {n: p - eta * step_dict[n] for n, p in self.params.items()}
            info = StepInfo(loss0, loss1, eta, cg_iters, cg_res, solver, 0.0, True)
        info.damping = self.damping
        return self._record(info, start)

    def _adapt_damping(self, eta: float) -> None:
        """Levenberg-Marquardt: less damping after a near-full step, more after a short one."""
        cfg = self.config
        if not cfg.adaptive_damping:
            return
        if eta >= 0.5:
            self.damping = max(self.damping / cfg.damping_factor, cfg.damping_min)
        elif eta < 0.25:
            self.damping = min(self.damping * cfg.damping_factor, cfg.damping_max)

    # ------------------------------------------------------------------ helpers
    def _cg_direction(self, lin: Linearization, gradient: Tensor) -> CGResult:
        damping = self.damping
        return conjugate_gradient(
            lambda v: lin.gramian_vector_product(v) + damping * v,
            gradient,
            self._warm_start(),
            self.config.cg_max_iter,
            self.config.cg_rtol,
        )

    def _explicit_direction(
        self, lin: Linearization, jacobian_fn: JacobianFn, solver: str
    ) -> Tensor:
        jacobian = jacobian_fn(self.params)
        expected = (lin.residual.numel(), num_params(self.params))
        if tuple(jacobian.shape) != expected:
            raise ValueError(
                f"point_jacobian_fn returned shape {tuple(jacobian.shape)}; expected (M, P) = "
                f"{expected}, rows in the residual's order"
            )
        return damped_direction_explicit(
            jacobian, lin.residual, self.damping, solver, self.config.gram_dtype
        )

    def _choose_solver(self, num_residuals: int, point_jacobian_fn: JacobianFn | None) -> str:
        if self.config.solver != "auto":
            return self.config.solver
        total = num_params(self.params)
        jacobian_bytes = num_residuals * total * self.dtype.itemsize
        fits = jacobian_bytes <= self.config.jacobian_max_bytes
        explicit = point_jacobian_fn is not None and fits
        return "woodbury" if explicit and num_residuals < total else "cg"

    def _warm_start(self) -> Tensor | None:
        if not self.config.warm_start or self._previous is None:
            return None
        return self.config.warm_factor * self._previous


def step_limit(steps: int | None, max_seconds: float | None, default: int) -> float:
    """The step cap of a phase (Adam's or a fine-tuner's): ``steps`` when given; with
    ``steps=None``, none (``inf``) under a wall-clock budget ``max_seconds`` and ``default``
    without one."""
    if steps is not None:
        return steps
    return math.inf if max_seconds else default


def step_indices(steps: int | None, max_seconds: float | None, default: int) -> Iterator[int]:
    """Step indices until :func:`step_limit` or the wall-clock budget ``max_seconds`` runs
    out."""
    start = time.perf_counter()
    limit = step_limit(steps, max_seconds, default)
    for step in itertools.count() if math.isinf(limit) else range(int(limit)):
        if max_seconds is not None and time.perf_counter() - start >= max_seconds:
            return
        yield step


def run_finetuner_loop(
    optimizer: FineTuner,
    module: nn.Module,
    make_batch_fns: Callable[[int], tuple],
    progress: bool = True,
    on_step: StepHook | None = None,
    resample_every: int = 1,
) -> list[StepInfo]:
    """Step ``optimizer`` for ``config.steps`` steps or ``config.max_seconds``, on the closures
    of ``make_batch_fns(step)`` (called every ``resample_every`` steps, the batch reused in
    between); ``on_step(steps, elapsed, params)`` after each step. The parameters are written
    back into ``module`` at the end, also when the run stops with an error."""
    config = optimizer.config
    bar = tqdm(total=config.steps, disable=not progress, desc=optimizer.NAME, leave=False)
    fns: tuple = ()
    start = time.perf_counter()
    try:
        for step in step_indices(config.steps, config.max_seconds, optimizer.DEFAULT_STEPS):
            if step % resample_every == 0:
                fns = make_batch_fns(step)
            info = optimizer.step(*fns)
            if on_step is not None:
                on_step(step + 1, time.perf_counter() - start, optimizer.params)
            bar.set_postfix(loss=f"{info.loss_before:.4e}", eta=f"{info.step_size:.3g}")
            bar.update()
    finally:
        bar.close()
        optimizer.copy_to(module)
    return optimizer.history


def run_gauss_newton(
    module: nn.Module,
    make_batch_fns: Callable[[int], tuple[ResidualFn, JacobianFn | None]],
    config: GaussNewtonConfig,
    progress: bool = True,
    on_step: StepHook | None = None,
) -> list[StepInfo]:
    """Run :class:`GaussNewton` on ``module`` for ``config.steps`` steps or ``config.max_seconds``.

    ``make_batch_fns(step)`` returns the closures for that step's batch: ``residual_fn`` and
    ``point_jacobian_fn`` (or ``None``), both taking the parameter dict in the working dtype
    (``config.dtype``), for example
    ``lambda p: functional_call(residual, p, (x.to(dtype), t.to(dtype)))``. The accepted
    parameters are written back into ``module`` in their original dtypes at the end, also when
    the run stops with an error. ``on_step`` (optional) sees the working parameters after each
    step. Returns the history of :class:`StepInfo`.
    """
    return run_finetuner_loop(
        GaussNewton(module, config), module, make_batch_fns, progress, on_step
    )
