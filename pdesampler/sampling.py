"""Sampling from a :class:`~pdesampler.losses.base.Dynamics`, with exact log-likelihoods.

Everything here follows Sun et al., Appendix B.2 (docs/math.md, section 6):

* **ODE** (:func:`sample_ode`). Draw :math:`X_{t_0} \\sim p_{prior}` and integrate, from
  :math:`t_0` to :math:`t_1`, the probability-flow ODE together with the instantaneous
  change of variables (Sun et al. eq. (64))

  .. math::
      \\frac{dX_t}{dt} = \\mu_{ODE}(X_t, t), \\qquad
      \\frac{d}{dt} \\log p(X_t, t) = -\\nabla\\cdot\\mu_{ODE}(X_t, t),

  started from :math:`\\log p(X_{t_0}, t_0) = \\log p_{prior}(X_{t_0})`. Then
  :math:`\\log q(X_{t_1}) = \\log p_{prior}(X_{t_0}) - \\int_{t_0}^{t_1}
  \\nabla\\cdot\\mu_{ODE}(X_t, t)\\,dt`. ``t1 < t0`` integrates backwards in time (the
  gradient-flow interpolation, Chemseddine et al. eq. (27)); the formula is the same.
* **SDE** (:func:`sample_sde`). Euler-Maruyama for :math:`dX = \\mu\\,dt + \\sigma(t)\\,dW`
  (Sun et al. eq. (2)). Its samples have no tractable density; likelihoods come from the probability-flow ODE
  :math:`\\mu_{ODE} = \\mu - \\tfrac12 \\sigma\\sigma^\\top\\nabla V` (Sun et al. eq. (66)), which has the same
  marginals (``Dynamics.flow_drift``).
* **Likelihood of given points** (:func:`log_density`). Integrate the same augmented ODE from
  :math:`t_1` back to :math:`t_0`; this gives the forward NLL on exact target samples.
* :func:`sample` dispatches on ``Dynamics.stochastic`` and returns both the samples and the
  flow likelihoods (:class:`SamplingOutput`).

Solvers are torchdiffeq's: ``"rk4"`` is its fixed-grid ``RK4`` class, whose step is
``rk4_alt_step_func`` in ``torchdiffeq/_impl/rk_common.py``, i.e. Kutta's 3/8 rule
(:math:`k_2` at :math:`t + h/3`, :math:`k_3` at :math:`t + 2h/3`, weights
:math:`(1, 3, 3, 1)/8`), the rule Sun et al. use; ``"euler"`` and ``"midpoint"`` are the other
fixed-grid choices, and ``"dopri5"`` (and ``"dopri8"``, ``"bosh3"``) are adaptive with
``rtol``/``atol``. ``"auto"`` takes the dynamics' own ``ode_method``: rk4, except for the
gradient flow, whose backward ODE is stiff (dopri5).

Divergences are :func:`pdesampler.ops.vector_jet` of the pointwise drift, vmapped over the
points, with the exact trace by default or a Hutchinson estimator for large ``d``. By default
Hutchinson probes are drawn **once per ODE solve** (one probe set per trajectory, per batch) and
held fixed for all drift evaluations, as in FFJORD: the augmented ODE is then a deterministic
ODE for each trajectory. The trajectories never depend on the probes, and the log-density a
fixed-step solver returns is linear in its per-stage trace estimates, so ``log_q`` is an
*unbiased* estimate of the exact-trace solver's ``log_q`` (hence of the true one up to solver
error); its variance is that of a single Hutchinson estimate of the time-integrated trace and
does not shrink with more steps. With ``fresh_probes=True`` the probes are redrawn at every drift
evaluation: still unbiased (each stage estimate is), with a variance that falls roughly like
``1 / steps`` because the errors of the independent stages average out; this costs one probe
draw per evaluation and is the better choice for evaluation in high ``d`` (log-weight noise
lowers the ESS and biases the importance-sampling log Z). With an adaptive solver and a
Hutchinson estimator the step-size control looks at ``x`` only, so that the step sequence is
independent of the probes and the estimate stays unbiased in both modes.

Conventions: all randomness comes from the CPU ``generator`` passed in (prior draws, Brownian
increments, Hutchinson probes unless the estimator carries its own CPU generator); it is drawn on
the CPU and then moved to ``device``. Work runs under :func:`torch.no_grad` in batches of
``batch_size`` points, so no graph on module parameters is kept and memory stays bounded
(``torch.func`` transforms inside still differentiate with respect to ``x``). The dtype and
device are the explicit arguments, else those of ``module``'s first floating parameter or
buffer, else float32 on the CPU.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import vmap
from torchdiffeq import odeint

from pdesampler.checks import NON_NEGATIVE_INT, POSITIVE_OR_NONE, check
from pdesampler.losses.base import Dynamics
from pdesampler.losses.trajectory import path_log_ratio
from pdesampler.ops import Exact, TraceEstimator, vector_jet
from pdesampler.targets import Target

__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_STEP_METHODS",
    "SampleResult",
    "SamplingOutput",
    "ScoringClock",
    "log_density",
    "refinement_budget",
    "resolve_dtype_device",
    "sample",
    "sample_ode",
    "sample_sde",
    "scoring_budget",
    "scoring_expired",
]

FIXED_STEP_METHODS = ("euler", "midpoint", "rk4")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3")
#: An adaptive solve that needs more steps gives up; the samples that blow up on the rk4 grid are
#: then solved apart on finer rk4 grids (:data:`GRID_REFINEMENTS`), the rest to tolerance again.
#: Samples that blow up on a fixed grid get the same finer grids of their own method. Samples
#: non-finite on every grid are counted and dropped by the evaluation.
MAX_ADAPTIVE_STEPS = 1_000
GRID_REFINEMENTS = (4, 16, 64)  # steps per grid step tried for samples that blow up
#: The refined solves of a batch's strays may cost at most this many grid solves of the whole
#: batch (in sample-steps): a finer level that would exceed it is skipped, so a badly trained
#: model whose trajectories truly blow up cannot multiply the evaluation time by 84.
REFINEMENT_BUDGET = 16
FIRST_STEP_FRACTION = 1e-3  # of the time span: the adaptive solvers' first step
DEFAULT_BATCH_SIZE = 4096
logger = logging.getLogger(__name__)

State = tuple[Tensor, Tensor]


# --------------------------------------------------------------------------- results


@dataclass
class SampleResult:
    """Samples of one process.

    Attributes:
        x: the samples :math:`X_{t_1}`, shape ``(n, d)``.
        log_q: :math:`\\log q(X_{t_1})` from the change of variables (Sun et al. eq. (64)), shape ``(n,)``;
            ``None`` for SDE samples.
        x0: the prior draws :math:`X_{t_0}`, shape ``(n, d)``.
        trajectory: ``n_saved`` evenly spaced states, shape ``(n_saved, n, d)``, or ``None``.
        times: the times of ``trajectory``, shape ``(n_saved,)``, or ``None``.
    """

    x: Tensor
    log_q: Tensor | None
    x0: Tensor
    trajectory: Tensor | None = None
    times: Tensor | None = None


@dataclass
class SamplingOutput:
    """What evaluation needs from a model's dynamics (see :func:`sample`).

    Which metric uses which field:

    * ``samples``: sample-quality metrics, i.e. Sinkhorn W2, energy distance, Delta std and the
      cross-entropy :math:`-\\mathrm{mean}\\log p_{target}(x)` (SDE samples for an SDE).
    * ``flow_samples`` and ``flow_log_q``: everything that needs :math:`\\log q`, i.e. the
      log-weights :math:`\\log w = \\log\\rho(x) - \\log q(x)` (:meth:`log_weights`), hence
      Delta log Z, the log Z lower bound and its importance-sampling version, and ESS.
    * The forward NLL uses neither: it is :func:`log_density` on exact target samples.

    For an ODE the two sets coincide (``flow_samples is samples``).

    Attributes:
        samples: the model's samples at ``t1``, ``(n, d)``.
        flow_samples: samples of the probability-flow ODE, ``(n, d)``.
        flow_log_q: their log-density under the model, ``(n,)``.
        stochastic: whether ``samples`` came from the SDE.
        trajectory: ``(n_saved, n, d)`` states of the process that made ``samples``, or ``None``.
        times: the times of ``trajectory``, or ``None``.
    """

    samples: Tensor
    flow_samples: Tensor
    flow_log_q: Tensor
    stochastic: bool
    trajectory: Tensor | None = None
    times: Tensor | None = None

    def log_weights(self, target: Target) -> Tensor:
        """:math:`\\log w = \\log\\rho(x) - \\log q(x)` on the flow samples (Sun et al. eq. (65))."""
        return target.log_prob(self.flow_samples) - self.flow_log_q


# --------------------------------------------------------------------------- helpers


def resolve_dtype_device(
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    module: nn.Module | None = None,
    *,
    default_dtype: torch.dtype = torch.float32,
    default_device: torch.device | str = "cpu",
) -> tuple[torch.dtype, torch.device]:
    """The dtype and device to sample in: explicit arguments first, then the first floating
    parameter or buffer of ``module``, then the defaults (float32 on the CPU)."""
    if module is not None and (dtype is None or device is None):
        tensors = [*module.parameters(), *module.buffers()]
        ref = next((p for p in tensors if p.is_floating_point()), None)
        if ref is not None:
            dtype = dtype or ref.dtype
            device = device or ref.device
    return dtype or default_dtype, torch.device(device or default_device)


def _batches(n: int, batch_size: int | None) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``batch_size`` (``None``: one slice)."""
    size = n if batch_size is None else int(batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _draw_prior(prior: Target, n: int, generator: torch.Generator, dtype, device) -> Tensor:
    """``n`` prior draws, made on the CPU with ``generator`` and then moved."""
    return prior.sample(n, generator=generator).to(dtype=dtype, device=device)


def _prior_log_prob(prior: Target, x: Tensor) -> Tensor:
    """The normalized :math:`\\log p_{prior}(x)`: ``log_prob`` minus ``log_Z`` when it is known
    (a Target's ``log_prob`` is :math:`\\log\\rho`); otherwise ``log_prob`` as given."""
    log_z = getattr(prior, "log_Z", None)
    return prior.log_prob(x) - (log_z or 0.0)


def _with_generator(estimator: TraceEstimator, generator: torch.Generator | None) -> TraceEstimator:
    """The estimator, drawing from ``generator`` if it is random and carries none of its own."""
    owns_none = getattr(estimator, "generator", False) is None
    if generator is not None and owns_none and dataclasses.is_dataclass(estimator):
        return dataclasses.replace(estimator, generator=generator)
    return estimator


def _draw_probes(estimator: TraceEstimator, n: int, d: int, dtype, device) -> Tensor:
    """One fixed probe set for a batch: ``(n, k, d)`` per point, or a shared ``(k, d)``.
    Drawn on the CPU (generators are CPU generators), then moved."""
    cpu = torch.device("cpu")
    return estimator.probes(n, d, dtype=dtype, device=cpu).to(device)


def _probe_source(
    estimator: TraceEstimator, fresh: bool, n: int, d: int, dtype, device
) -> Callable[[], Tensor]:
    """The probes of each drift evaluation in one solve: one draw reused throughout, or (with
    ``fresh`` and a random estimator) a new draw every time."""
    if fresh and not isinstance(estimator, Exact):
        return lambda: _draw_probes(estimator, n, d, dtype, device)
    fixed = _draw_probes(estimator, n, d, dtype, device)
    return lambda: fixed


def _resolve_method(method: str, dynamics: Dynamics) -> str:
    """``"auto"`` is the dynamics' own ``ode_method`` (dopri5 for the stiff gradient flow)."""
    resolved = dynamics.ode_method if method == "auto" else method
    if resolved not in FIXED_STEP_METHODS + ADAPTIVE_METHODS:
        raise ValueError(
            f"unknown ODE method {method!r}; choose one of "
            f"{('auto', *FIXED_STEP_METHODS, *ADAPTIVE_METHODS)}"
        )
    return resolved


def _check_count(n: int) -> None:
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")


def _save_indices(steps: int, n_saved: int) -> list[int]:
    """Grid indices of ``n_saved`` evenly spaced states on a grid of ``steps`` steps (the last
    state when ``n_saved == 1``)."""
    if n_saved < 0:
        raise ValueError(f"n_saved must be >= 0, got {n_saved}")
    if n_saved > steps + 1:
        raise ValueError(f"n_saved={n_saved} exceeds the {steps + 1} grid points")
    if n_saved == 0:
        return []
    if n_saved == 1:
        return [steps]
    return torch.linspace(0, steps, n_saved).round().long().tolist()


def _augmented_field(
    dynamics: Dynamics, estimator: TraceEstimator, probes: Callable[[], Tensor]
) -> Callable[[Tensor, State], State]:
    """The right-hand side :math:`(t, (x, \\ell)) \\mapsto (\\mu_{ODE}(x, t),
    -\\nabla\\cdot\\mu_{ODE}(x, t))` of the augmented ODE (Sun et al. eq. (64)) for one batch; ``probes()``
    gives the trace probes of each evaluation (the same tensor each time for fixed probes).
    With exact traces the dynamics' own ``flow_jet`` is used when it has one."""
    use_own = dynamics.flow_jet is not None and isinstance(estimator, Exact)
    jet = dynamics.flow_jet if use_own else vector_jet(dynamics.flow_drift, estimator)

    def field(t: Tensor, state: State) -> State:
        x, v = state[0], probes()
        out = vmap(jet, in_dims=(0, 0, 0 if v.dim() == 3 else None))(
            x, t.expand(x.shape[0]).contiguous(), v
        )
        return out.value, -out.div

    return field


def _step_norm(x_only: bool) -> Callable[[State], Tensor]:
    """The RMS norm for adaptive step control: of ``x`` alone with Hutchinson traces (so that the
    steps do not depend on the probes), else of ``(x, log q)``. A non-finite error counts as
    infinite, so a trial step that overflows on a stiff drift is rejected and shortened
    (torchdiffeq would otherwise turn NaN into a NaN step size)."""

    def norm(state: State) -> Tensor:
        parts = state[:1] if x_only else state
        value = torch.cat([p.reshape(-1) for p in parts]).pow(2).mean().sqrt()
        return torch.where(torch.isfinite(value), value, torch.full_like(value, torch.inf))

    return norm


def _solve_augmented(
    dynamics: Dynamics,
    x_start: Tensor,
    ell_start: Tensor,
    t_start: float,
    t_end: float,
    *,
    estimator: TraceEstimator,
    method: str,
    steps: int,
    rtol: float,
    atol: float,
    save_indices: list[int],
    fresh_probes: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Integrate :math:`(x, \\ell)` from ``t_start`` to ``t_end`` for one batch.

    Fixed-step methods use the grid ``linspace(t_start, t_end, steps + 1)``; adaptive ones
    choose their own steps (:meth:`_Solver.integrate`). Returns the final ``x`` and ``ell``, the saved
    states of ``x`` (``(len(save_indices), b, d)``) and their times.
    """
    grid = torch.linspace(t_start, t_end, steps + 1, dtype=x_start.dtype, device=x_start.device)
    out_idx = sorted({0, steps, *save_indices})
    pos = [out_idx.index(i) for i in save_indices]
    solver = _Solver(dynamics, estimator, fresh_probes, method, rtol, atol, grid, out_idx)
    xs, ells = solver.integrate(x_start, ell_start)
    return xs[-1], ells[-1], xs[pos], grid[out_idx][pos]


@dataclass(frozen=True)
class _Solver:
    """One augmented ODE solve on ``grid`` (its states at ``grid[out_idx]``), with the recovery of
    an adaptive solve that gives up (:meth:`integrate`)."""

    dynamics: Dynamics
    estimator: TraceEstimator
    fresh_probes: bool
    method: str
    rtol: float
    atol: float
    grid: Tensor
    out_idx: list[int]

    def _field(self, x: Tensor) -> Callable[[Tensor, State], State]:
        b, d = x.shape
        probes = _probe_source(self.estimator, self.fresh_probes, b, d, x.dtype, x.device)
        return _augmented_field(self.dynamics, self.estimator, probes)

    def on_grid(self, start: State, method: str, refine: int = 1) -> State:
        """A fixed-step solve on the grid with each step cut into ``refine`` steps."""
        fine = torch.linspace(
            float(self.grid[0]), float(self.grid[-1]), refine * (len(self.grid) - 1) + 1,
            dtype=self.grid.dtype, device=self.grid.device,
        )  # fmt: skip
        t_eval = fine[[refine * i for i in self.out_idx]]
        options = {"grid_constructor": lambda func, y0, t: fine}
        return odeint(self._field(start[0]), start, t_eval, method=method, options=options)

    def integrate(self, x_start: Tensor, ell_start: Tensor) -> State:
        """The states ``(xs, ells)`` at ``grid[out_idx]``.

        A fixed-step method solves on the grid; the samples whose trajectory turns non-finite
        there (a drift too stiff for the step, e.g. :math:`\\nabla\\log\\rho \\sim x^3` at a
        stray point) are solved again on finer grids of the same method
        (:data:`GRID_REFINEMENTS`), each keeping its first finite trajectory: the samples that
        were finite keep their solution, so the result on a well-resolved model is unchanged.

        One adaptive step size serves the whole batch, so a few stray samples on which the drift
        is stiff can make the solver give up on all of them (torchdiffeq: too many steps, or
        underflow in dt). Then one cheap pass flags them: rk4 on the grid and on a 2x finer
        grid, a sample being stiff where either is non-finite or the two differ by more than
        :func:`_disagree` allows. The other samples are solved to tolerance once more (if that
        gives up too, they keep the 2x rk4 solution), and the stiff ones get rk4 on grids
        refined until their trajectories stay finite (:data:`GRID_REFINEMENTS`, within the
        refinement budget). The work per batch is so bounded by two adaptive solves and the
        refinement budget.
        """
        start = (x_start, ell_start)
        if self.method in FIXED_STEP_METHODS:
            return self._with_strays_refined(start, self.method)
        options = {
            "norm": _step_norm(x_only=not isinstance(self.estimator, Exact)),
            "max_num_steps": MAX_ADAPTIVE_STEPS,
            # torchdiffeq's first-step guess h0 = 0.01 |y0| / |f(y0)| can step far outside the
            # time span where the drift is slow at t_start (the gradient flow at t = 1), and a
            # non-finite trial there sets h = 0: start small and let the step control grow it.
            "first_step": FIRST_STEP_FRACTION * abs(float(self.grid[-1] - self.grid[0])),
        }
        t_eval, b = self.grid[self.out_idx], x_start.shape[0]
        try:
            return odeint(self._field(x_start), start, t_eval, method=self.method,
                          rtol=self.rtol, atol=self.atol, options=options)  # fmt: skip
        except AssertionError as err:  # torchdiffeq: max_num_steps exceeded, or underflow in dt
            logger.warning("%s gave up on a batch of %d (%s)", self.method, b, err)
        coarse, fine = self.on_grid(start, "rk4"), self.on_grid(start, "rk4", refine=2)
        blown = _stray_rows(*coarse)
        stiff = blown | _stray_rows(*fine) | _disagree(coarse, fine, self.rtol, self.atol)
        xs, ells = fine
        if blown.any():
            logger.warning("%d of %d samples blow up on the rk4 grid; they get finer grids",
                           int(blown.sum()), b)  # fmt: skip
        calm = ~stiff
        if stiff.any() and calm.any() and not scoring_expired():
            try:  # one more adaptive solve, without the samples that made it give up
                xs[:, calm], ells[:, calm] = odeint(
                    self._field(x_start[calm]), (x_start[calm], ell_start[calm]), t_eval,
                    method=self.method, rtol=self.rtol, atol=self.atol, options=options,
                )  # fmt: skip
            except AssertionError as err:
                logger.warning("%s gave up again on %d samples; they keep rk4 on a 2x finer grid "
                               "(%s)", self.method, int(calm.sum()), err)  # fmt: skip
        elif not stiff.any():
            logger.warning("no sample of the %d stands out on the rk4 grid; all keep rk4 on a 2x "
                           "finer grid", b)  # fmt: skip
        if stiff.any():
            xs[:, stiff], ells[:, stiff] = self._refined(
                (x_start[stiff], ell_start[stiff]), (xs[:, stiff], ells[:, stiff]), "rk4", b
            )
        return xs, ells

    def _with_strays_refined(self, start: State, method: str) -> State:
        """A fixed-step solve on the grid whose non-finite samples get finer grids."""
        xs, ells = self.on_grid(start, method)
        stray = _stray_rows(xs, ells)
        if stray.any():
            logger.warning("%d of %d samples blow up on the %d-step %s grid; they get finer grids",
                           int(stray.sum()), xs.shape[1], len(self.grid) - 1, method)  # fmt: skip
            xs[:, stray], ells[:, stray] = self._refined(
                (start[0][stray], start[1][stray]), (xs[:, stray], ells[:, stray]), method,
                xs.shape[1],
            )  # fmt: skip
        return xs, ells

    def _refined(self, start: State, coarse: State, method: str, n_batch: int) -> State:
        """``method`` on ever finer grids (:func:`_refine_until_finite`) for samples whose
        ``coarse`` solution is non-finite; each keeps its first finite trajectory (else the
        finest one)."""
        xs, ells = coarse

        def solve(idx: Tensor, refine: int) -> Tensor:
            xs[:, idx], ells[:, idx] = self.on_grid((start[0][idx], start[1][idx]), method, refine)
            return _stray_rows(xs[:, idx], ells[:, idx])

        todo = torch.ones(xs.shape[1], dtype=torch.bool, device=xs.device)
        _refine_until_finite(todo, n_batch, solve, method)
        return xs, ells


@contextmanager
def refinement_budget(budget: int) -> Iterator[None]:
    """Within the block, the refined solves of a batch's strays may cost at most ``budget``
    grid solves of the batch (:data:`REFINEMENT_BUDGET` outside it; 0: no refinement, strays
    stay non-finite). ``sampler.refine_budget`` sets it for a run's evaluation: refinement can
    multiply a badly trained model's sampling time by ``1 + budget``."""
    global REFINEMENT_BUDGET
    check("refine_budget", budget, NON_NEGATIVE_INT)
    before, REFINEMENT_BUDGET = REFINEMENT_BUDGET, budget
    try:
        yield
    finally:
        REFINEMENT_BUDGET = before


@dataclass
class ScoringClock:
    """The wall-clock budget of a scoring block (:func:`scoring_budget`): its ``deadline``
    (``time.perf_counter`` seconds, ``None``: none) and the samples ``unscored`` so far."""

    deadline: float | None = None
    unscored: int = 0

    def expired(self) -> bool:
        return self.deadline is not None and time.perf_counter() >= self.deadline


_CLOCK = ScoringClock()


@contextmanager
def scoring_budget(max_seconds: float | None) -> Iterator[ScoringClock]:
    """Within the block, sampling and log-density solves stop ``max_seconds`` after its start
    (``None``: no limit): a batch not begun by then comes back as NaN, and refinement of stray
    samples stops, leaving them non-finite. Those samples are counted in the yielded clock's
    ``unscored``; the evaluation gives them weight 0, as any failed sample."""
    global _CLOCK
    check("max_seconds", max_seconds, POSITIVE_OR_NONE)
    deadline = None if max_seconds is None else time.perf_counter() + max_seconds
    before, _CLOCK = _CLOCK, ScoringClock(deadline)
    try:
        yield _CLOCK
    finally:
        _CLOCK = before


def scoring_expired() -> bool:
    """Whether the enclosing :func:`scoring_budget` has run out."""
    return _CLOCK.expired()


def _unscored(n: int) -> bool:
    """Past the scoring deadline: count ``n`` samples as unscored and return ``True``."""
    if n and _CLOCK.expired():
        _CLOCK.unscored += n
        logger.warning("scoring budget spent: %d samples left unscored", n)
        return True
    return False


def _refine_until_finite(
    stray: Tensor, n_batch: int, solve: Callable[[Tensor, int], Tensor], scheme: str
) -> None:
    """The refinement ladder shared by the ODE and SDE solvers: for each level of
    :data:`GRID_REFINEMENTS` within :data:`REFINEMENT_BUDGET` grid solves of ``n_batch``
    samples, ``solve(rows, refine)`` solves the ``stray`` rows again on a grid ``refine`` times
    finer, keeps their result and returns which of them are still non-finite; ``stray`` is
    updated in place."""
    spent = 0
    for refine in GRID_REFINEMENTS:
        rows = stray.nonzero().squeeze(1)
        if _unscored(len(rows)):
            return
        spent += refine * len(rows)
        if not _affordable(spent, len(rows), refine, n_batch):
            return
        stray[rows] = solve(rows, refine)
        if not stray.any():
            return
    logger.warning("%d samples are non-finite even on a %dx finer %s grid",
                   int(stray.sum()), GRID_REFINEMENTS[-1], scheme)  # fmt: skip


def _affordable(spent: int, n_left: int, refine: int, n_batch: int) -> bool:
    """Whether refined solves costing ``spent`` sample-steps (per grid step) so far, this level
    included, stay within :data:`REFINEMENT_BUDGET` grid solves of ``n_batch`` samples; if not,
    the ``n_left`` samples stay non-finite, with a warning."""
    if spent <= REFINEMENT_BUDGET * n_batch:
        return True
    logger.warning("%d samples stay non-finite: a %dx finer grid for them would exceed the "
                   "refinement budget of %d grid solves of the batch of %d", n_left, refine,
                   REFINEMENT_BUDGET, n_batch)  # fmt: skip
    return False


#: A sample is stiff where rk4 on the grid and on a 2x finer grid differ by more than this many
#: times the median sample's difference (in units of the solver's tolerances): rk4's error goes as h^4,
#: so an adaptive solver must cut its step about 10x more for such a sample than for the median.
STIFF_FACTOR = 1e4


def _disagree(coarse: State, fine: State, rtol: float, atol: float) -> Tensor:
    r"""Per sample: whether the two solutions differ by more than :data:`STIFF_FACTOR` times the
    median sample, and by more than the tolerance, in the scaled error
    :math:`\max |a - b| / (\text{atol} + \text{rtol} |b|)` over times, coordinates and
    :math:`\ell`."""

    def scaled(a: Tensor, b: Tensor) -> Tensor:
        err = (a - b).abs() / (atol + rtol * b.abs())
        return err.reshape(*err.shape[:2], -1).amax(2).amax(0)

    err = torch.maximum(scaled(coarse[0], fine[0]), scaled(coarse[1], fine[1]))
    err = torch.nan_to_num(err, nan=math.inf)
    return (err > STIFF_FACTOR * err.median().clamp_min(1.0)) & (err > 1.0)


def _stray_rows(xs: Tensor, ells: Tensor) -> Tensor:
    """Per sample: whether any of its states ``xs`` (``(times, b, d)``) or log-densities ``ells``
    (``(times, b)``) is NaN/Inf."""
    finite = lambda states: torch.isfinite(states.reshape(*states.shape[:2], -1)).all(2).all(0)
    return ~(finite(xs) & finite(ells))


# --------------------------------------------------------------------------- public API


@torch.no_grad()
def sample_ode(
    dynamics: Dynamics,
    n: int,
    *,
    generator: torch.Generator,
    method: str = "auto",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    estimator: TraceEstimator | None = None,
    fresh_probes: bool = False,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    module: nn.Module | None = None,
    n_saved: int = 0,
) -> SampleResult:
    """Samples and log-densities of the probability-flow ODE (Sun et al. App. B.2, eq. (64)).

    Draws :math:`X_{t_0} \\sim p_{prior}` and integrates from ``t0`` to ``t1``

    .. math::
        \\frac{d}{dt}\\begin{pmatrix} X_t \\\\ \\ell_t \\end{pmatrix} =
        \\begin{pmatrix} \\mu_{ODE}(X_t, t) \\\\ -\\nabla\\cdot\\mu_{ODE}(X_t, t) \\end{pmatrix},
        \\qquad \\ell_{t_0} = \\log p_{prior}(X_{t_0}),

    so that :math:`\\ell_{t_1} = \\log q(X_{t_1})`. ``dynamics.flow_drift`` is used (it equals
    ``drift`` for an ODE; for an SDE it is the probability-flow drift, Sun et al. eq. (66)).

    Args:
        dynamics: the drift, prior and time span.
        n: the number of samples.
        generator: CPU generator for the prior draws (and Hutchinson probes, unless the
            estimator has its own generator).
        method: ``"rk4"`` (torchdiffeq's 3/8-rule RK4), ``"euler"``, ``"midpoint"`` on a fixed
            grid of ``steps`` steps, an adaptive ``"dopri5"`` (``"dopri8"``, ``"bosh3"``), or
            ``"auto"``: ``dynamics.ode_method``.
        steps: grid steps for fixed-step methods (and the grid ``n_saved`` snaps to).
        rtol: relative tolerance of adaptive methods.
        atol: absolute tolerance of adaptive methods.
        estimator: trace estimator for the divergence; exact by default.
        fresh_probes: redraw Hutchinson probes at every evaluation of the drift instead of once
            per batch (per trajectory); see the module docstring.
        batch_size: points per ODE solve (``None``: all at once).
        dtype: the dtype to integrate in (default: ``module``'s, else float32).
        device: the device to integrate on (default: ``module``'s, else CPU).
        module: a module whose parameters fix the default dtype and device.
        n_saved: the number of evenly spaced states to return for plots (on the fixed grid).

    Returns:
        A :class:`SampleResult` with ``x``, ``log_q``, ``x0`` and, when ``n_saved > 0``,
        ``trajectory`` of shape ``(n_saved, n, d)`` and ``times``.
    """
    method = _resolve_method(method, dynamics)
    _check_count(n)
    dtype, device = resolve_dtype_device(dtype, device, module)
    estimator = _with_generator(estimator or Exact(), generator)
    save_indices = _save_indices(steps, n_saved)
    x0 = _draw_prior(dynamics.prior, n, generator, dtype, device)
    xs, log_qs, trajs, times = [], [], [], None
    for sl in _batches(n, batch_size):
        if _unscored(len(x0[sl])):
            xs.append(torch.full_like(x0[sl], torch.nan))
            log_qs.append(torch.full_like(x0[sl, 0], torch.nan))
            trajs.append(torch.full((len(save_indices), *x0[sl].shape), torch.nan).to(x0))
            continue
        x, ell, traj, times = _solve_augmented(
            dynamics,
            x0[sl],
            _prior_log_prob(dynamics.prior, x0[sl]),
            dynamics.t0,
            dynamics.t1,
            estimator=estimator,
            method=method,
            steps=steps,
            rtol=rtol,
            atol=atol,
            save_indices=save_indices,
            fresh_probes=fresh_probes,
        )
        xs.append(x)
        log_qs.append(ell)
        trajs.append(traj)
    trajectory = torch.cat(trajs, dim=1) if save_indices else None
    if times is None and save_indices:  # every batch unscored
        times = torch.linspace(dynamics.t0, dynamics.t1, steps + 1).to(x0)[save_indices]
    return SampleResult(
        torch.cat(xs), torch.cat(log_qs), x0, trajectory, times if save_indices else None
    )


@torch.no_grad()
def log_density(
    dynamics: Dynamics,
    x: Tensor,
    *,
    method: str = "auto",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    estimator: TraceEstimator | None = None,
    fresh_probes: bool = False,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    module: nn.Module | None = None,
) -> Tensor:
    """The model's :math:`\\log q(x)` at time ``t1`` for given points (the forward NLL).

    Integrates the augmented ODE of :func:`sample_ode` backwards, from :math:`t_1` (with
    :math:`X_{t_1} = x`, :math:`\\ell_{t_1} = 0`) to :math:`t_0`, so that
    :math:`\\ell_{t_0} = -\\int_{t_1}^{t_0}\\nabla\\cdot\\mu_{ODE}\\,dt =
    \\int_{t_0}^{t_1}\\nabla\\cdot\\mu_{ODE}(X_t, t)\\,dt`, and returns

    .. math:: \\log q(x) = \\log p_{prior}(X_{t_0}) - \\int_{t_0}^{t_1}
        \\nabla\\cdot\\mu_{ODE}(X_t, t)\\,dt.

    Args:
        dynamics: the drift, prior and time span (``flow_drift`` is integrated).
        x: the points, shape ``(n, d)``.
        method: as in :func:`sample_ode`.
        steps: as in :func:`sample_ode`.
        rtol: as in :func:`sample_ode`.
        atol: as in :func:`sample_ode`.
        estimator: trace estimator (exact by default).
        fresh_probes: as in :func:`sample_ode`.
        batch_size: points per ODE solve (``None``: all at once).
        generator: CPU generator for Hutchinson probes (unused by the exact estimator).
        dtype: the dtype to integrate in (default: ``module``'s, else ``x``'s).
        device: the device (default: ``module``'s, else ``x``'s).
        module: a module whose parameters fix the default dtype and device.

    Returns:
        :math:`\\log q(x)`, shape ``(n,)``.
    """
    method = _resolve_method(method, dynamics)
    dtype, device = resolve_dtype_device(
        dtype, device, module, default_dtype=x.dtype, default_device=x.device
    )
    estimator = _with_generator(estimator or Exact(), generator)
    x = x.to(dtype=dtype, device=device)
    out = []
    for sl in _batches(x.shape[0], batch_size):
        x_start = x[sl]
        if _unscored(len(x_start)):
            out.append(torch.full((len(x_start),), torch.nan, dtype=dtype, device=device))
            continue
        x0, integral, _, _ = _solve_augmented(
            dynamics,
            x_start,
            torch.zeros(x_start.shape[0], dtype=dtype, device=device),
            dynamics.t1,
            dynamics.t0,
            estimator=estimator,
            method=method,
            steps=steps,
            rtol=rtol,
            atol=atol,
            save_indices=[],
            fresh_probes=fresh_probes,
        )
        out.append(_prior_log_prob(dynamics.prior, x0) - integral)
    return torch.cat(out)


@torch.no_grad()
def sample_sde(
    dynamics: Dynamics,
    n: int,
    *,
    generator: torch.Generator,
    steps: int = 1000,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    module: nn.Module | None = None,
    n_saved: int = 0,
) -> SampleResult:
    """Euler-Maruyama samples of :math:`dX = \\mu(X, t)\\,dt + \\sigma(t)\\,dW` (Sun et al. eq. (2)).

    On the grid :math:`t_k = t_0 + k\\,\\Delta t`, :math:`\\Delta t = (t_1 - t_0)/K`,

    .. math:: X_{k+1} = X_k + \\mu(X_k, t_k)\\,\\Delta t
        + \\sigma(t_k)\\sqrt{|\\Delta t|}\\,\\xi_k, \\qquad \\xi_k \\sim \\mathcal{N}(0, I),

    which also covers decreasing time (:math:`\\Delta t < 0`). Noise is drawn for all ``n``
    points at each step from ``generator`` on the CPU, so the result does not depend on
    ``batch_size``; only the drift evaluations are batched.

    Samples whose end state is NaN/Inf (a drift too stiff for the step) are solved again on
    finer grids along the same Brownian paths (:func:`_refine_sde_strays`), within
    :data:`REFINEMENT_BUDGET`; a trajectory baseline keeps its grid (its path weights live on it).

    Args:
        dynamics: the drift, diffusion, prior and time span.
        n: the number of samples.
        generator: CPU generator for the prior draws and the Brownian increments.
        steps: the number ``K`` of steps (the scheme is weak order 1, bias O(dt)).
        batch_size: points per drift evaluation (``None``: all at once).
        dtype: the dtype (default: ``module``'s, else float32).
        device: the device (default: ``module``'s, else CPU).
        module: a module whose parameters fix the default dtype and device.
        n_saved: the number of evenly spaced states to return for plots.

    Returns:
        A :class:`SampleResult` with ``log_q=None``, or for a trajectory baseline
        (``dynamics.reference`` set) the path log-density ratio
        :math:`\\log p_{prior}(X_0) + \\sum_k [\\log f_k - \\log b_k]`, so that
        :math:`\\log\\rho(X_K) - \\log q` is the path-space log-weight
        (:mod:`pdesampler.losses.trajectory`).
    """
    _check_count(n)
    dtype, device = resolve_dtype_device(dtype, device, module)
    save_indices = _save_indices(steps, n_saved)
    grid = torch.linspace(dynamics.t0, dynamics.t1, steps + 1, dtype=dtype, device=device)
    x0 = _draw_prior(dynamics.prior, n, generator, dtype, device)
    noise_state = generator.get_state()
    coarse = _BrownianSteps(generator, noise_state, grid, n, x0.shape[1], dtype)
    x, log_q, saved = _euler_maruyama(dynamics, x0, coarse, batch_size, save_indices)
    stray = ~torch.isfinite(x).all(1)
    if dynamics.reference is None and stray.any():  # a baseline's weights are tied to its grid
        _refine_sde_strays(dynamics, x0, stray, grid, generator, noise_state, batch_size,
                           save_indices, x, saved)  # fmt: skip
    if not save_indices:
        return SampleResult(x, log_q, x0)
    return SampleResult(x, log_q, x0, torch.stack(saved), grid[save_indices])


@dataclass
class _BrownianSteps:
    """The Brownian increments of ``sample_sde`` over the grid steps, for the rows ``rows`` of its
    ``(n, d)`` draws: ``generator`` from ``state`` replays the same draws. ``refine`` splits each
    step into that many equal sub-steps by the Brownian bridge, with fresh draws from ``fresh``:
    given the step's increment :math:`\\Delta W`, sub-increments :math:`\\zeta_j -
    \\bar\\zeta + \\Delta W/m`, :math:`\\zeta_j \\sim \\mathcal{N}(0, h/m)`, have exactly the
    bridge's conditional law, so a finer solve follows the same Brownian path."""

    generator: torch.Generator
    state: Tensor
    grid: Tensor
    n: int
    d: int
    dtype: torch.dtype
    rows: Tensor | None = None
    refine: int = 1
    fresh: torch.Generator | None = None

    def __iter__(self) -> Iterator[Tensor]:
        """Per grid step, the ``(refine, b, d)`` increments (on the CPU; moved by the caller)."""
        self.generator.set_state(self.state)
        for k in range(len(self.grid) - 1):
            h = (self.grid[k + 1] - self.grid[k]).abs().cpu()
            xi = torch.randn(self.n, self.d, generator=self.generator, dtype=self.dtype)
            step = h.sqrt() * (xi if self.rows is None else xi[self.rows.cpu()])
            if self.refine == 1:
                yield step[None]
                continue
            zeta = (h / self.refine).sqrt() * torch.randn(
                self.refine, *step.shape, generator=self.fresh, dtype=self.dtype
            )
            yield zeta - zeta.mean(0) + step / self.refine


def _euler_maruyama(
    dynamics: Dynamics, x0: Tensor, increments: _BrownianSteps, batch_size, save_indices
) -> tuple[Tensor, Tensor | None, list[Tensor]]:
    """Euler-Maruyama from ``x0`` along ``increments.grid``, each step cut into the sub-steps of
    its increments; returns the end states, a baseline's path log-ratio and the states at the
    grid indices ``save_indices``."""
    grid, reference = increments.grid, dynamics.reference
    drift = vmap(dynamics.drift)
    log_q = _prior_log_prob(dynamics.prior, x0) if reference is not None else None
    x, saved = x0.clone(), [x0.clone()] if 0 in save_indices else []
    for k, dW in enumerate(increments):
        dW = dW.to(x.device)
        dt = (grid[k + 1] - grid[k]) / dW.shape[0]
        for j in range(dW.shape[0]):
            t = grid[k] + j * dt
            t_next = grid[k + 1] if j == dW.shape[0] - 1 else t + dt
            scaled_noise = dynamics.diffusion(t) * dW[j]
            for sl in _batches(x.shape[0], batch_size):
                x_b = x[sl]
                x_next = (
                    x_b + drift(x_b, t.expand(x_b.shape[0]).contiguous()) * dt + scaled_noise[sl]
                )
                if reference is not None:
                    ratio = path_log_ratio(reference, x_b, x_next, scaled_noise[sl], t, t_next)
                    log_q[sl] -= ratio
                x[sl] = x_next
        if k + 1 in save_indices:
            saved.append(x.clone())
    return x, log_q, saved


def _refine_sde_strays(dynamics, x0, stray, grid, generator, noise_state, batch_size,
                       save_indices, x, saved) -> None:  # fmt: skip
    """Solve the samples that blew up (``stray``) again on grids :data:`GRID_REFINEMENTS` times
    finer, along the same Brownian paths; each keeps its first finite end state (in place)."""
    logger.warning("%d of %d SDE samples blow up on the %d-step Euler-Maruyama grid; they get "
                   "finer grids along the same Brownian paths", int(stray.sum()), x.shape[0],
                   len(grid) - 1)  # fmt: skip
    replay = torch.Generator()

    def solve(rows: Tensor, refine: int) -> Tensor:
        steps = _BrownianSteps(replay, noise_state, grid, x.shape[0], x.shape[1], x.dtype,
                               rows, refine, generator)  # fmt: skip
        x_r, _, saved_r = _euler_maruyama(dynamics, x0[rows], steps, batch_size, save_indices)
        x[rows] = x_r
        for whole, part in zip(saved, saved_r, strict=True):
            whole[rows] = part
        return ~torch.isfinite(x_r).all(1)

    _refine_until_finite(stray, x.shape[0], solve, "Euler-Maruyama")


def sample(
    dynamics: Dynamics,
    n: int,
    *,
    generator: torch.Generator,
    method: str = "auto",
    steps: int = 100,
    sde_steps: int = 1000,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    estimator: TraceEstimator | None = None,
    fresh_probes: bool = False,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    module: nn.Module | None = None,
    n_saved: int = 0,
) -> SamplingOutput:
    """Samples and likelihoods for evaluation, by the kind of dynamics (Sun et al. App. B.2).

    * ODE (``dynamics.stochastic`` false): one :func:`sample_ode` run gives both the samples
      and their :math:`\\log q`.
    * SDE: :func:`sample_sde` (``sde_steps`` Euler-Maruyama steps) gives ``samples``; a separate
      :func:`sample_ode` run of the probability-flow drift (Sun et al. eq. (66)) gives ``flow_samples`` and
      ``flow_log_q``. Both draw from ``generator`` in turn (SDE first), so they are independent.
    * Trajectory baseline (``dynamics.reference`` set): the SDE samples are also the flow
      samples, and ``flow_log_q`` is their path log-density ratio, so that the log-weights are
      the exact path-space Radon-Nikodym derivative (:mod:`pdesampler.losses.trajectory`).

    See :class:`SamplingOutput` for which metric uses which field. The arguments are those of
    :func:`sample_ode` and :func:`sample_sde`; ``n_saved`` states are kept of the process that
    makes ``samples``.
    """
    common = dict(batch_size=batch_size, dtype=dtype, device=device, module=module)
    ode = dict(
        method=method,
        steps=steps,
        rtol=rtol,
        atol=atol,
        estimator=estimator,
        fresh_probes=fresh_probes,
    )
    if not dynamics.stochastic:
        res = sample_ode(dynamics, n, generator=generator, n_saved=n_saved, **ode, **common)
        return SamplingOutput(res.x, res.x, res.log_q, False, res.trajectory, res.times)
    sde = sample_sde(dynamics, n, generator=generator, steps=sde_steps, n_saved=n_saved, **common)
    if dynamics.reference is not None:  # path-space weights of the SDE samples themselves
        return SamplingOutput(sde.x, sde.x, sde.log_q, True, sde.trajectory, sde.times)
    flow = sample_ode(dynamics, n, generator=generator, **ode, **common)
    return SamplingOutput(sde.x, flow.x, flow.log_q, True, sde.trajectory, sde.times)
