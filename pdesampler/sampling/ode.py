r"""The augmented probability-flow ODE (Sun et al. eq. (64)) in batches: samples with their
:math:`\log q`, and :math:`\log q` of given points by the backward ODE.

Each batch is one :class:`Solver` run: torchdiffeq on a fixed grid, or adaptive with the step
control of :func:`_step_norm`; samples that blow up are solved again by
:mod:`pdesampler.sampling.refine`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor
from torch.func import vmap
from torchdiffeq import odeint

from pdesampler.losses.base import Dynamics
from pdesampler.ops import Exact, TraceEstimator, vector_jet
from pdesampler.sampling.options import (
    FIXED_STEP_METHODS,
    SamplingOptions,
    ScoringClock,
    ScoringDeadlineError,
    check_count,
    draw_prior,
    prior_log_prob,
    save_indices,
)
from pdesampler.sampling.refine import recover_adaptive, refine_strays
from pdesampler.sampling.results import SampleResult

#: An adaptive solve that needs more steps gives up; the samples that blow up on the rk4 grid are
#: then solved apart on finer rk4 grids, the rest to tolerance again (:mod:`.refine`).
MAX_ADAPTIVE_STEPS = 1_000
FIRST_STEP_FRACTION = 1e-3  # of the time span: the adaptive solvers' first step
logger = logging.getLogger(__name__)

State = tuple[Tensor, Tensor]
T = TypeVar("T")


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


def _augmented_field(
    dynamics: Dynamics,
    estimator: TraceEstimator,
    probes: Callable[[], Tensor],
    clock: ScoringClock,
) -> Callable[[Tensor, State], State]:
    r"""The right-hand side :math:`(t, (x, \ell)) \mapsto (\mu_{ODE}(x, t),
    -\nabla\cdot\mu_{ODE}(x, t))` of the augmented ODE (Sun et al. eq. (64)) for one batch;
    ``probes()`` gives the trace probes of each evaluation (the same tensor each time for fixed
    probes). With exact traces the dynamics' own ``flow_jet`` is used when it has one. Every
    evaluation first checks the ``clock`` (:class:`ScoringDeadlineError` past its deadline)."""
    use_own = dynamics.flow_jet is not None and isinstance(estimator, Exact)
    jet = dynamics.flow_jet if use_own else vector_jet(dynamics.flow_drift, estimator)

    def field(t: Tensor, state: State) -> State:
        clock.check()
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


@dataclass(frozen=True)
class Solver:
    """One augmented ODE solve on ``grid`` (its states at ``grid[out_idx]``) with the resolved
    ``options`` (:meth:`SamplingOptions.resolved`)."""

    dynamics: Dynamics
    options: SamplingOptions
    grid: Tensor
    out_idx: list[int]

    def field(self, x: Tensor) -> Callable[[Tensor, State], State]:
        """The augmented field for the batch ``x``, with its own probes."""
        b, d = x.shape
        estimator = self.options.estimator
        probes = _probe_source(estimator, self.options.fresh_probes, b, d, x.dtype, x.device)
        return _augmented_field(self.dynamics, estimator, probes, self.options.clock)

    def on_grid(self, start: State, method: str, refine: int = 1) -> State:
        """A fixed-step solve on the grid with each step cut into ``refine`` steps."""
        fine = torch.linspace(
            float(self.grid[0]), float(self.grid[-1]), refine * (len(self.grid) - 1) + 1,
            dtype=self.grid.dtype, device=self.grid.device,
        )  # fmt: skip
        t_eval = fine[[refine * i for i in self.out_idx]]
        options = {"grid_constructor": lambda func, y0, t: fine}
        return odeint(self.field(start[0]), start, t_eval, method=method, options=options)

    def adaptive(self, start: State) -> State:
        """The adaptive solve to tolerance; raises ``AssertionError`` where torchdiffeq gives
        up (more than :data:`MAX_ADAPTIVE_STEPS` steps, or underflow in dt)."""
        opts = self.options
        options = {
            "norm": _step_norm(x_only=not isinstance(opts.estimator, Exact)),
            "max_num_steps": MAX_ADAPTIVE_STEPS,
            # torchdiffeq's first-step guess h0 = 0.01 |y0| / |f(y0)| can step far outside the
            # time span where the drift is slow at t_start (the gradient flow at t = 1), and a
            # non-finite trial there sets h = 0: start small and let the step control grow it.
            "first_step": FIRST_STEP_FRACTION * abs(float(self.grid[-1] - self.grid[0])),
        }
        return odeint(self.field(start[0]), start, self.grid[self.out_idx], method=opts.method,
                      rtol=opts.rtol, atol=opts.atol, options=options)  # fmt: skip

    def integrate(self, x_start: Tensor, ell_start: Tensor) -> State:
        """The states ``(xs, ells)`` at ``grid[out_idx]``: a fixed-step method on the grid, its
        samples that blow up on finer grids (:func:`~.refine.refine_strays`); an adaptive one to
        tolerance, and where it gives up, the recovery of :func:`~.refine.recover_adaptive`."""
        start, method = (x_start, ell_start), self.options.method
        if method in FIXED_STEP_METHODS:
            return refine_strays(self, start, method)
        try:
            return self.adaptive(start)
        except AssertionError as err:  # torchdiffeq: max_num_steps exceeded, or underflow in dt
            logger.warning("%s gave up on a batch of %d (%s)", method, x_start.shape[0], err)
        return recover_adaptive(self, start)


def _solve_augmented(
    dynamics: Dynamics,
    x_start: Tensor,
    ell_start: Tensor,
    t_start: float,
    t_end: float,
    options: SamplingOptions,
    save_indices: list[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Integrate :math:`(x, \ell)` from ``t_start`` to ``t_end`` for one batch.

    Fixed-step methods use the grid ``linspace(t_start, t_end, steps + 1)``; adaptive ones
    choose their own steps (:meth:`Solver.integrate`). Returns the final ``x`` and ``ell``, the
    saved states of ``x`` (``(len(save_indices), b, d)``) and their times.
    """
    steps = options.steps
    grid = torch.linspace(t_start, t_end, steps + 1, dtype=x_start.dtype, device=x_start.device)
    out_idx = sorted({0, steps, *save_indices})
    pos = [out_idx.index(i) for i in save_indices]
    xs, ells = Solver(dynamics, options, grid, out_idx).integrate(x_start, ell_start)
    return xs[-1], ells[-1], xs[pos], grid[out_idx][pos]


def _unless_late(clock: ScoringClock, n: int, solve: Callable[..., T], *args) -> T | None:
    """``solve(*args)`` for a batch of ``n`` samples, or ``None`` (the ``n`` samples counted as
    unscored) when the clock has run out before the batch begins or while it is solved."""
    if clock.skip(n):
        return None
    try:
        return solve(*args)
    except ScoringDeadlineError:
        clock.drop(n)
        return None


def sample_flow(
    dynamics: Dynamics, n: int, generator: torch.Generator, options: SamplingOptions
) -> SampleResult:
    """:func:`pdesampler.sampling.sample_ode`: ``n`` prior draws solved from ``t0`` to ``t1`` in
    batches; a batch past the clock's deadline comes back as NaN."""
    opts = options.resolved(dynamics, generator)
    check_count(n)
    indices = save_indices(opts.steps, opts.n_saved)
    x0 = draw_prior(dynamics.prior, n, generator, opts.dtype, opts.device)
    xs, log_qs, trajs, times = [], [], [], None
    for sl in opts.batches(n):
        solved = _unless_late(
            opts.clock, len(x0[sl]), _solve_augmented, dynamics, x0[sl],
            prior_log_prob(dynamics.prior, x0[sl]), dynamics.t0, dynamics.t1, opts, indices,
        )  # fmt: skip
        if solved is None:
            xs.append(torch.full_like(x0[sl], torch.nan))
            log_qs.append(torch.full_like(x0[sl, 0], torch.nan))
            trajs.append(torch.full((len(indices), *x0[sl].shape), torch.nan).to(x0))
            continue
        x, ell, traj, times = solved
        xs.append(x)
        log_qs.append(ell)
        trajs.append(traj)
    if not indices:
        return SampleResult(torch.cat(xs), torch.cat(log_qs), x0)
    if times is None:  # every batch unscored
        times = torch.linspace(dynamics.t0, dynamics.t1, opts.steps + 1).to(x0)[indices]
    return SampleResult(torch.cat(xs), torch.cat(log_qs), x0, torch.cat(trajs, dim=1), times)


def flow_log_density(
    dynamics: Dynamics, x: Tensor, generator: torch.Generator | None, options: SamplingOptions
) -> Tensor:
    """:func:`pdesampler.sampling.log_density`: the backward ODE from ``x`` at ``t1`` to ``t0``
    in batches; a batch past the clock's deadline comes back as NaN."""
    opts = options.resolved(dynamics, generator, default_dtype=x.dtype, default_device=x.device)
    x = x.to(dtype=opts.dtype, device=opts.device)
    out = []
    for sl in opts.batches(x.shape[0]):
        x_start = x[sl]
        ell_start = torch.zeros(x_start.shape[0], dtype=x.dtype, device=x.device)
        solved = _unless_late(
            opts.clock, len(x_start), _solve_augmented, dynamics, x_start, ell_start,
            dynamics.t1, dynamics.t0, opts, [],
        )  # fmt: skip
        if solved is None:
            out.append(torch.full((len(x_start),), torch.nan, dtype=x.dtype, device=x.device))
            continue
        x0, integral, _, _ = solved
        out.append(prior_log_prob(dynamics.prior, x0) - integral)
    return torch.cat(out)
