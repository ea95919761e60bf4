r"""Matrix-free Gauss-Newton for least-squares problems :math:`L(\theta) = \|r(\theta)\|^2`.

The optimizer knows nothing about PDEs. It sees a residual closure ``residual_fn(params) -> (M,)``
over a fixed batch, usually ``lambda p: functional_call(residual_module, p, (x, t))``, and
optionally an explicit Jacobian closure ``point_jacobian_fn(params) -> (M, P)`` in the same row
order (see :func:`~pdesampler.linearization.per_point_jacobian`).

Conventions (Sun et al. section 4; docs/math.md, section 9). :math:`J = \partial r / \partial \theta` is the Jacobian of the
already weighted stacked vector :math:`r = (\sqrt{\alpha_k/N}\, r_k(x_i, t_i))_{k,i}`, so

.. math:: G = J^\top J = \tfrac1N J_{raw}^\top J_{raw}, \qquad
          g = J^\top r = \tfrac12 \nabla L,

and one outer step is

.. math:: \delta = (G + \varepsilon I)^{-1} g, \qquad \theta \leftarrow \theta - \eta\,\delta,

with :math:`\eta` from a line search on :math:`L` (Sun et al. section 4 writes :math:`\nabla L` for
:math:`2g`; the factor 2 is absorbed in the step length). With :math:`\eta = 1` and
:math:`\varepsilon \to 0` this is the exact Gauss-Newton step; for a residual linear in
:math:`\theta` it lands on the least-squares optimum. The direction comes from one of
(:mod:`pdesampler.optim.linalg`)

- ``"cg"``: conjugate gradient on :math:`G v = J^\top (J v)`, matrix-free, with the Jacobian
  products of :func:`~pdesampler.linearization.linearize` (``jacobian_product``: ``"double_vjp"``
  or ``"jvp"``).
- ``"woodbury"``: when :math:`M < P`,
  :math:`\delta = J^\top (J J^\top + \varepsilon I)^{-1} r`, one :math:`M \times M` Cholesky
  solve with the explicit Jacobian; the same vector as the damped solve above.
- ``"dense"``: :math:`(J^\top J + \varepsilon I)^{-1} g` with the explicit Jacobian, one
  :math:`P \times P` Cholesky solve.

Precision: the optimizer keeps its own detached copy of the parameters in ``config.dtype``
(``None`` keeps theirs) and calls the closures with it; the closures must build their inputs
``x, t`` in that dtype. The module's own parameters change only when the result is written
back (:meth:`~pdesampler.optim.finetuner.FineTuner.copy_to`), each in its original dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pdesampler.checks import at_least, check_fields, one_of, within
from pdesampler.linearization import (
    JACOBIAN_PRODUCTS,
    Linearization,
    Params,
    ResidualFn,
    linearize,
    unflatten,
)
from pdesampler.optim.finetuner import (
    Batch,
    FinetuneConfig,
    FineTuner,
    StepHook,
    StepInfo,
)
from pdesampler.optim.linalg import (
    DTYPES,
    GRAM_PRECISIONS,
    CGResult,
    JacobianFn,
    conjugate_gradient,
    damped_direction_explicit,
    full_jacobian,
    num_params,
)

__all__ = [
    "GN_RULES",
    "GaussNewton",
    "GaussNewtonConfig",
    "line_search",
    "run_gauss_newton",
]


@dataclass
class GaussNewtonConfig(FinetuneConfig):
    r"""Settings of :class:`GaussNewton` and :func:`run_gauss_newton`.

    Attributes:
        steps: outer steps for :func:`run_gauss_newton` (``None``: until ``max_seconds`` ends).
        damping: :math:`\varepsilon` in :math:`(G + \varepsilon I)^{-1}`.
        solver: ``"auto"`` (Woodbury when ``M < P``, a ``point_jacobian_fn`` is given and the
            ``(M, P)`` Jacobian fits ``jacobian_max_bytes``; CG otherwise), ``"cg"``,
            ``"woodbury"`` or ``"dense"`` (the last two use ``torch.func.jacrev`` of the whole
            residual when no ``point_jacobian_fn`` is given: small problems only).
        jacobian_product: how CG computes :math:`J v`, ``"double_vjp"`` or ``"jvp"`` (see
            :func:`~pdesampler.linearization.linearize`).
        cg_max_iter: CG iteration limit.
        cg_rtol: CG relative residual tolerance.
        warm_start: start CG from ``warm_factor`` times the previous direction.
        warm_factor: the warm-start factor (0.95 in the Hessian-free PINN code of Dangel, Müller, Zeinhofer).
        jacobian_max_bytes: memory budget of the explicit Jacobian for ``solver="auto"``.
        line_search: ``"grid"`` (the best of :math:`\eta = 2^{-k}`, ``k = 0..grid_max_k``,
            as in ENGD) or ``"armijo"`` (backtracking from :math:`\eta = 1`).
        grid_max_k: the smallest grid step is :math:`2^{-k_{max}}`.
        grid_early_stop: stop the grid scan (from :math:`\eta = 1` down) at the first rise of
            the loss after a decrease, instead of evaluating all ``grid_max_k + 1`` steps.
        armijo_beta: backtracking factor.
        armijo_c: sufficient-decrease constant.
        armijo_max_tries: trial steps before the step is rejected.
        dtype: ``"float32"``, ``"float64"`` or ``None`` (keep the parameters' dtype).
        max_seconds: wall-clock budget of :func:`run_gauss_newton` (``None``: no limit).
        nan_patience: consecutive non-finite steps tolerated before a ``RuntimeError``.
        adaptive_damping: Levenberg-Marquardt control of :math:`\varepsilon`: divide it by
            ``damping_factor`` after a step accepted with :math:`\eta \ge 1/2`, multiply it
            after a rejected step or one with :math:`\eta < 1/4`, within
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
        check_fields(self, GN_RULES)


#: The checks of :class:`GaussNewtonConfig`, in order.
GN_RULES = {
    "solver": one_of(("auto", "cg", "woodbury", "dense")),
    "line_search": one_of(("grid", "armijo")),
    "line_search_batch": one_of(("same", "fresh")),
    "jacobian_product": one_of(JACOBIAN_PRODUCTS),
    "dtype": one_of((None, *DTYPES)),
    "gram_dtype": one_of(GRAM_PRECISIONS),
    "damping": at_least(0),
    "curvature_fraction": within(0, 1, open_low=True),
}


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
    r"""The step :math:`\eta` along :math:`\theta - \eta\,\delta` and the loss there.

    ``slope`` is :math:`dL/d\eta` at 0, that is :math:`-2 g^\top \delta`. ``"grid"`` returns the
    best :math:`\eta = 2^{-k}`, scanning from :math:`\eta = 1` down and, with
    ``grid_early_stop``, stopping at the first rise of the loss after a decrease; ``"armijo"``
    returns the first :math:`\eta = \beta^j` with
    :math:`L(\eta) \le L_0 + c\,\eta\,\mathrm{slope}`. Either returns ``(0.0, loss0)`` unless
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


class GaussNewton(FineTuner):
    """Damped Gauss-Newton with a line search (Sun et al. section 4); see the module docstring.
    Arguments and attributes as :class:`~pdesampler.optim.finetuner.FineTuner`, with a
    :class:`GaussNewtonConfig`."""

    NAME = "Gauss-Newton"

    def __init__(self, params: nn.Module | Mapping[str, Tensor], config: GaussNewtonConfig) -> None:
        super().__init__(params, config)
        self._previous: Tensor | None = None
        self.damping = config.damping

    def _step(self, batch: Batch) -> StepInfo:
        """One outer step on one batch: direction, line search, and the update if it helps.

        ``batch.search_fn`` (optional) is the residual on another batch: the line search then
        accepts a step only if it lowers that loss (Armijo uses the slope on
        ``residual_fn``'s batch). ``batch.curvature_fn`` (optional, CG only) is the residual on
        a subset of the batch whose Gramian products CG uses in place of the whole batch's."""
        lin = linearize(batch.residual_fn, self.params, self.config.jacobian_product)
        loss0 = float(lin.loss)
        gradient = lin.gradient()
        solver = self._choose_solver(lin.residual.numel(), batch.point_jacobian_fn)
        if not (math.isfinite(loss0) and bool(torch.isfinite(gradient).all())):
            return self._non_finite(loss0, solver, "non-finite loss or gradient")
        direction, cg_iters, cg_res = self._direction(lin, gradient, solver, batch)
        if not bool(torch.isfinite(direction).all()):
            self._previous = None
            return self._non_finite(loss0, solver, "non-finite direction", cg_iters, cg_res)
        self._previous = direction
        slope = -2.0 * float(gradient.dot(direction))
        step_dict = unflatten(direction, self.params)
        if batch.search_fn is not None:
            loss0 = float(batch.search_fn(self.params).square().sum())
        search_fn = batch.search_fn or batch.residual_fn
        eta, loss1 = line_search(search_fn, self.params, step_dict, loss0, slope, self.config)
        self._adapt_damping(eta)
        if eta == 0.0:
            info = StepInfo(loss0, loss0, 0.0, cg_iters, cg_res, solver, 0.0, False, "no decrease")
        else:
            self.params = {n: p - eta * step_dict[n] for n, p in self.params.items()}
            info = StepInfo(loss0, loss1, eta, cg_iters, cg_res, solver, 0.0, True)
        info.damping = self.damping
        return info

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
    def _direction(
        self, lin: Linearization, gradient: Tensor, solver: str, batch: Batch
    ) -> tuple[Tensor, int, float | None]:
        r""":math:`\delta = (G + \varepsilon I)^{-1} g` by ``solver``, with CG's iterations
        and final relative residual (``0, None`` for the explicit solvers)."""
        if solver == "cg":
            curvature = lin
            if batch.curvature_fn is not None:
                curvature = linearize(batch.curvature_fn, self.params, self.config.jacobian_product)
            return self._cg_direction(curvature, gradient)
        jacobian_fn = batch.point_jacobian_fn or (lambda p: full_jacobian(batch.residual_fn, p))
        return self._explicit_direction(lin, jacobian_fn, solver), 0, None

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
    return GaussNewton(module, config).run(module, make_batch_fns, progress, on_step)
