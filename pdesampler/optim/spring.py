"""SPRING: Gauss-Newton with Kaczmarz-style momentum on fresh batches.

Goldshlager, Abrahamsen, Lin, *A Kaczmarz-inspired approach to accelerate the optimization of
neural network wavefunctions* (J. Comput. Phys. 2024); Guzmán-Cordero, Dangel, Goldshlager,
Zeinhofer (NeurIPS 2025) for PINNs. With :math:`r_k` the weighted stacked residual of batch
:math:`k` (``Residual.forward``: the :math:`\\sqrt{\\alpha/N}` scaling is inside, so the loss is
:math:`\\|r_k\\|^2`) and :math:`J_k` its Jacobian, one step is

.. math::
    \\zeta_k = r_k - \\mu J_k \\phi_{k-1}, \\qquad
    \\phi_k = J_k^\\top (J_k J_k^\\top + \\lambda I)^{-1} \\zeta_k + \\mu\\, \\phi_{k-1}, \\qquad
    \\theta \\leftarrow \\theta - \\eta_k \\phi_k,\\quad
    \\eta_k = \\min(\\eta, \\sqrt{C} / \\|\\phi_k\\|).

:math:`\\phi_k` is the smallest change of the previous direction :math:`\\mu \\phi_{k-1}` that
solves the damped linearized problem of the new batch, so the components outside the batch's
row space survive instead of being overwritten. With :math:`\\mu = 0` it is the damped
Woodbury Gauss-Newton step :math:`J^\\top (J J^\\top + \\lambda I)^{-1} r` of
:mod:`pdesampler.optim.gauss_newton` (Sun et al. section 4) with a fixed, capped step length. The
optional bias correction divides :math:`\\phi_k` by :math:`\\sqrt{1 - \\mu^{2k}}` before the step.

The ``N x N`` system is solved either by Cholesky on the explicit per-point Jacobian
(``"woodbury"``, with the Gram matrix in ``gram_dtype`` precision, float64 by default) or matrix-free
(``"cg"``): conjugate gradient in residual space on :math:`(J J^\\top + \\lambda I) y = \\zeta`
with the Jacobian products of :func:`~pdesampler.optim.gauss_newton.linearize`, for batches too
large to form :math:`J`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pdesampler.optim.gauss_newton import (
    DTYPES,
    GRAM_PRECISIONS,
    FineTuner,
    JacobianFn,
    ResidualFn,
    StepHook,
    StepInfo,
    check_choices,
    conjugate_gradient,
    gram_solve,
    linearize,
    num_params,
    run_finetuner_loop,
    unflatten,
)

__all__ = ["Spring", "SpringConfig", "run_spring"]

_CHOICES = {
    "solver": ("auto", "woodbury", "cg"),
    "gram_dtype": GRAM_PRECISIONS,
    "dtype": (None, *DTYPES),
}


@dataclass
class SpringConfig:
    """Settings of :class:`Spring` and :func:`run_spring`.

    Attributes:
        steps: outer steps for :func:`run_spring` (``None``: until ``max_seconds`` ends).
        lr: the fixed step length :math:`\\eta`.
        momentum: :math:`\\mu` (0 gives the damped Woodbury Gauss-Newton step).
        damping: :math:`\\lambda`, in the units of the :math:`1/\\sqrt N`-scaled residual.
        norm_cap: :math:`C`: the step :math:`\\eta_k \\phi_k` has norm at most :math:`\\sqrt C`.
        bias_correction: divide :math:`\\phi_k` by :math:`\\sqrt{1 - \\mu^{2k}}`.
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
        check_choices(self, _CHOICES)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        for key in ("lr", "norm_cap"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        if self.damping < 0:
            raise ValueError(f"damping must be >= 0, got {self.damping}")
        if self.resample_every < 1:
            raise ValueError(f"resample_every must be >= 1, got {self.resample_every}")


class Spring(FineTuner):
    """SPRING on any residual closure; see the module docstring. Arguments and attributes as
    :class:`~pdesampler.optim.gauss_newton.FineTuner`, with a :class:`SpringConfig`, and:

    Attributes:
        direction: :math:`\\phi_k` as a flat vector (``None`` before the first step).
    """

    NAME = "SPRING"
    DEFAULT_STEPS = 500

    def __init__(self, params: nn.Module | Mapping[str, Tensor], config: SpringConfig) -> None:
        super().__init__(params, config)
        self.direction: Tensor | None = None
        self._accepted = 0

    def step(
        self,
        residual_fn: ResidualFn,
        point_jacobian_fn: JacobianFn | None = None,
        search_fn: ResidualFn | None = None,
        curvature_fn: ResidualFn | None = None,
    ) -> StepInfo:
        """One SPRING step on one batch. ``search_fn`` and ``curvature_fn`` are accepted for
        the trainer's common interface and ignored: the step length is fixed and capped, with
        no line search, and the curvature is the batch's own."""
        del search_fn, curvature_fn
        start = time.perf_counter()
        cfg = self.config
        residual = self._explicit_residual(residual_fn, point_jacobian_fn)
        explicit = residual is not None
        if explicit:
            jacobian = point_jacobian_fn(self.params)
            jvp = jacobian.__matmul__
        else:
            lin = linearize(residual_fn, self.params)
            residual, jvp = lin.residual, lin.jvp
        loss0 = float(residual.square().sum())
        if not math.isfinite(loss0):
            return self._reject(loss0, "", start, "non-finite loss")
        zeta = residual
        if self.direction is not None and cfg.momentum > 0:
            zeta = residual - cfg.momentum * jvp(self.direction)
        if explicit:
            solve = gram_solve(jacobian, zeta, cfg.damping, cfg.gram_dtype)
            update, cg_iters, cg_res = jacobian.T @ solve, 0, None
        else:
            result = conjugate_gradient(
                lambda u: lin.jvp(lin.vjp(u)) + cfg.damping * u,
                zeta,
                max_iter=cfg.cg_max_iter,
                rtol=cfg.cg_rtol,
            )
            update, cg_iters, cg_res = (
                lin.vjp(result.solution),
                result.iterations,
                result.rel_residual,
            )
        solver = "woodbury" if explicit else "cg"
        direction = update if self.direction is None else update + cfg.momentum * self.direction
        if not bool(torch.isfinite(direction).all()):
            return self._reject(loss0, solver, start, "non-finite direction", cg_iters, cg_res)
        self._bad_steps = 0
        self.direction = direction
        self._accepted += 1
        applied = direction
        if cfg.bias_correction and cfg.momentum > 0:
            applied = direction / math.sqrt(1 - cfg.momentum ** (2 * self._accepted))
        norm = float(applied.norm())
        eta = min(cfg.lr, math.sqrt(cfg.norm_cap) / norm) if norm > 0 else 0.0
        step = unflatten(applied, self.params)
        self.params = {n: p - eta * step[n] for n, p in self.params.items()}
        info = StepInfo(loss0, math.nan, eta, cg_iters, cg_res, solver, 0.0, True)
        info.damping = cfg.damping
        return self._record(info, start)

    # ------------------------------------------------------------------ helpers
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
    spring = Spring(module, config)
    return run_finetuner_loop(
        spring, module, make_batch_fns, progress, on_step, resample_every=config.resample_every
    )
