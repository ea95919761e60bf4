r"""SPRING: Gauss-Newton with Kaczmarz-style momentum on fresh batches.

Goldshlager, Abrahamsen, Lin, *A Kaczmarz-inspired approach to accelerate the optimization of
neural network wavefunctions* (J. Comput. Phys. 2024); Guzmán-Cordero, Dangel, Goldshlager,
Zeinhofer (NeurIPS 2025) for PINNs. With :math:`r_k` the weighted stacked residual of batch
:math:`k` (``Residual.forward``: the :math:`\sqrt{\alpha/N}` scaling is inside, so the loss is
:math:`\|r_k\|^2`) and :math:`J_k` its Jacobian, one step is

.. math::
    \zeta_k = r_k - \mu J_k \phi_{k-1}, \qquad
    \phi_k = J_k^\top (J_k J_k^\top + \lambda I)^{-1} \zeta_k + \mu\, \phi_{k-1}, \qquad
    \theta \leftarrow \theta - \eta_k \phi_k,\quad
    \eta_k = \min(\eta, \sqrt{C} / \|\phi_k\|).

:math:`\phi_k` is the smallest change of the previous direction :math:`\mu \phi_{k-1}` that
solves the damped linearized problem of the new batch, so the components outside the batch's
row space survive instead of being overwritten. With :math:`\mu = 0` it is the damped
Woodbury Gauss-Newton step :math:`J^\top (J J^\top + \lambda I)^{-1} r` of
:mod:`pdesampler.optim.gauss_newton` (Sun et al. section 4) with a fixed, capped step length. The
optional bias correction divides :math:`\phi_k` by :math:`\sqrt{1 - \mu^{2k}}` before the step.

The ``N x N`` system is solved either by Cholesky on the explicit per-point Jacobian
(``"woodbury"``, with the Gram matrix in ``gram_dtype`` precision, float64 by default) or matrix-free
(``"cg"``): conjugate gradient in residual space on :math:`(J J^\top + \lambda I) y = \zeta`
with the Jacobian products of :func:`~pdesampler.linearization.linearize`, for batches too
large to form :math:`J`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pdesampler.checks import at_least, check_fields, one_of, within
from pdesampler.linearization import Linearization, ResidualFn, linearize, unflatten
from pdesampler.optim.finetuner import Batch, FinetuneConfig, FineTuner, StepHook, StepInfo
from pdesampler.optim.linalg import (
    DTYPES,
    GRAM_PRECISIONS,
    JacobianFn,
    conjugate_gradient,
    gram_solve,
    num_params,
)

__all__ = ["SPRING_RULES", "Spring", "SpringConfig", "run_spring"]


@dataclass
class SpringConfig(FinetuneConfig):
    r"""Settings of :class:`Spring` and :func:`run_spring`.

    Attributes:
        steps: outer steps for :func:`run_spring` (``None``: until ``max_seconds`` ends).
        lr: the fixed step length :math:`\eta`.
        momentum: :math:`\mu` (0 gives the damped Woodbury Gauss-Newton step).
        damping: :math:`\lambda`, in the units of the :math:`1/\sqrt N`-scaled residual.
        norm_cap: :math:`C`: the step :math:`\eta_k \phi_k` has norm at most :math:`\sqrt C`.
        bias_correction: divide :math:`\phi_k` by :math:`\sqrt{1 - \mu^{2k}}`.
        solver: ``"woodbury"`` (explicit per-point Jacobian, Cholesky), ``"cg"`` (matrix-free
            CG in residual space) or ``"auto"`` (Woodbury when a ``point_jacobian_fn`` is given
            and the Jacobian fits ``jacobian_max_bytes``).
        gram_dtype: precision of the ``N x N`` Gram matrix and its solve (``"woodbury"``):
            ``"float64"``, ``"float32"`` or ``"mixed"`` (product in the working dtype,
            Cholesky in float64).
        cg_max_iter: CG iteration limit (``"cg"``).
        cg_rtol: CG relative residual tolerance (``"cg"``).
        jacobian_max_bytes: memory budget of the explicit Jacobian for ``solver="auto"``.
        resample_every: :func:`run_spring` draws a new batch every this many steps.
        dtype: working dtype of the parameters (``None`` keeps theirs).
        max_seconds: wall-clock budget of :func:`run_spring` (``None``: no limit).
        nan_patience: consecutive non-finite steps tolerated before a ``RuntimeError``.
    """

    steps: int | None = 500
    lr: float = 0.1
    momentum: float = 0.99
    damping: float = 1e-4
    norm_cap: float = 0.1
    bias_correction: bool = False
    solver: str = "auto"
    gram_dtype: str = "mixed"
    cg_max_iter: int = 100
    cg_rtol: float = 1e-6
    jacobian_max_bytes: float = 2e9
    resample_every: int = 1
    dtype: str | None = None
    max_seconds: float | None = None
    nan_patience: int = 5

    def __post_init__(self) -> None:
        check_fields(self, SPRING_RULES)


#: The checks of :class:`SpringConfig`, in order.
SPRING_RULES = {
    "solver": one_of(("auto", "woodbury", "cg")),
    "gram_dtype": one_of(GRAM_PRECISIONS),
    "dtype": one_of((None, *DTYPES)),
    "momentum": within(0, 1, open_high=True),
    "lr": at_least(0, strict=True),
    "norm_cap": at_least(0, strict=True),
    "damping": at_least(0),
    "resample_every": at_least(1),
}


class Spring(FineTuner):
    r"""SPRING on any residual closure; see the module docstring. Arguments and attributes as
    :class:`~pdesampler.optim.finetuner.FineTuner`, with a :class:`SpringConfig`, and:

    Attributes:
        direction: :math:`\phi_k` as a flat vector (``None`` before the first step).
    """

    NAME = "SPRING"
    DEFAULT_STEPS = 500

    def __init__(self, params: nn.Module | Mapping[str, Tensor], config: SpringConfig) -> None:
        super().__init__(params, config)
        self.direction: Tensor | None = None
        self._accepted = 0

    def _step(self, batch: Batch) -> StepInfo:
        r"""One SPRING step on one batch: :math:`\zeta_k`, :math:`\phi_k` and the capped update.
        ``batch.search_fn`` and ``batch.curvature_fn`` are ignored: the step length is fixed
        and capped, with no line search, and the curvature is the batch's own."""
        cfg = self.config
        lin, jacobian = self._linearize(batch.residual_fn, batch.point_jacobian_fn)
        loss0 = float(lin.loss)
        if not math.isfinite(loss0):
            return self._non_finite(loss0, "", "non-finite loss")
        zeta = lin.residual
        if self.direction is not None and cfg.momentum > 0:
            zeta = lin.residual - cfg.momentum * lin.jvp(self.direction)
        update, cg_iters, cg_res = self._minimal_update(lin, jacobian, zeta)
        solver = "cg" if jacobian is None else "woodbury"
        direction = update if self.direction is None else update + cfg.momentum * self.direction
        if not bool(torch.isfinite(direction).all()):
            return self._non_finite(loss0, solver, "non-finite direction", cg_iters, cg_res)
        self.direction = direction
        self._accepted += 1
        eta = self._move(direction)
        return StepInfo(
            loss0, math.nan, eta, cg_iters, cg_res, solver, 0.0, True, damping=cfg.damping
        )

    # ------------------------------------------------------------------ helpers
    def _linearize(
        self, residual_fn: ResidualFn, point_jacobian_fn: JacobianFn | None
    ) -> tuple[Linearization, Tensor | None]:
        """The batch's linearization, and its explicit Jacobian when the step uses it
        (Woodbury; ``None`` for CG)."""
        residual = self._explicit_residual(residual_fn, point_jacobian_fn)
        if residual is None:
            return linearize(residual_fn, self.params, self.config.jacobian_product), None
        jacobian = point_jacobian_fn(self.params)
        return Linearization(residual, jacobian.__matmul__, jacobian.T.__matmul__), jacobian

    def _minimal_update(
        self, lin: Linearization, jacobian: Tensor | None, zeta: Tensor
    ) -> tuple[Tensor, int, float | None]:
        r""":math:`J^\top (J J^\top + \lambda I)^{-1} \zeta`, by Cholesky on the explicit
        ``jacobian`` or by CG in residual space, with CG's iterations and final relative
        residual (``0, None`` for Cholesky)."""
        cfg = self.config
        if jacobian is not None:
            return jacobian.T @ gram_solve(jacobian, zeta, cfg.damping, cfg.gram_dtype), 0, None
        result = conjugate_gradient(
            lambda u: lin.jvp(lin.vjp(u)) + cfg.damping * u,
            zeta,
            max_iter=cfg.cg_max_iter,
            rtol=cfg.cg_rtol,
        )
        return lin.vjp(result.solution), result.iterations, result.rel_residual

    def _move(self, direction: Tensor) -> float:
        r"""Step along :math:`\phi_k` (bias-corrected on request) by
        :math:`\eta_k = \min(\eta, \sqrt{C} / \|\phi_k\|)`; returns :math:`\eta_k`."""
        cfg = self.config
        applied = direction
        if cfg.bias_correction and cfg.momentum > 0:
            applied = direction / math.sqrt(1 - cfg.momentum ** (2 * self._accepted))
        norm = float(applied.norm())
        eta = min(cfg.lr, math.sqrt(cfg.norm_cap) / norm) if norm > 0 else 0.0
        step = unflatten(applied, self.params)
        self.params = {n: p - eta * step[n] for n, p in self.params.items()}
        return eta

    def _explicit_residual(
        self, residual_fn: ResidualFn, point_jacobian_fn: JacobianFn | None
    ) -> Tensor | None:
        """The batch's residual when the step uses the explicit Jacobian (Woodbury), else
        ``None`` (CG). ``"auto"`` needs the row count, so the residual it evaluates is reused."""
        cfg = self.config
        if cfg.solver == "cg":
            return None
        if point_jacobian_fn is None:
            if cfg.solver == "woodbury":
                raise ValueError(
                    "SPRING solver='woodbury' needs a point_jacobian_fn (a pointwise residual "
                    "with the exact trace estimator); use solver='cg'"
                )
            return None
        with torch.no_grad():
            residual = residual_fn(self.params).detach()
        jacobian_bytes = residual.numel() * num_params(self.params) * self.dtype.itemsize
        fits = cfg.solver == "woodbury" or jacobian_bytes <= cfg.jacobian_max_bytes
        return residual if fits else None


def run_spring(
    module: nn.Module,
    make_batch_fns: Callable[[int], tuple],
    config: SpringConfig,
    progress: bool = True,
    on_step: StepHook | None = None,
) -> list[StepInfo]:
    """Run :class:`Spring` on ``module`` for ``config.steps`` steps or ``config.max_seconds``.

    ``make_batch_fns(step)`` returns the closures of a batch, as for
    :func:`~pdesampler.optim.gauss_newton.run_gauss_newton`; it is called every
    ``config.resample_every`` steps and the batch is reused in between. ``on_step`` (optional)
    sees the working parameters after each step. The parameters are written back into
    ``module`` at the end, also when the run stops with an error.
    """
    return Spring(module, config).run(module, make_batch_fns, progress, on_step)
