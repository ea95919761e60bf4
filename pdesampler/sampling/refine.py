r"""Samples that blow up are solved again on finer grids.

A drift too stiff for the step (e.g. :math:`\nabla\log\rho \sim x^3` at a stray point) makes a
few trajectories non-finite on the sampling grid, or makes an adaptive solver give up on the
whole batch. The ODE samples concerned get finer grids of their own method
(:func:`refine_strays`) or, after an adaptive solve gave up, of rk4 (:func:`recover_adaptive`);
the SDE samples get finer Euler-Maruyama grids along the same Brownian paths
(:mod:`pdesampler.sampling.sde`). All climb the same ladder (:func:`refine_until_finite`),
within the options' ``refine_budget`` and ``clock``. Samples non-finite on every grid are
counted and dropped by the evaluation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from pdesampler.sampling.options import SamplingOptions, ScoringDeadlineError

if TYPE_CHECKING:
    from pdesampler.sampling.ode import Solver

GRID_REFINEMENTS = (4, 16, 64)  # steps per grid step tried for samples that blow up
#: A sample is stiff where rk4 on the grid and on a 2x finer grid differ by more than this many
#: times the median sample's difference (in units of the solver's tolerances): rk4's error goes
#: as h^4, so an adaptive solver must cut its step about 10x more for such a sample than for the
#: median.
STIFF_FACTOR = 1e4
logger = logging.getLogger(__name__)

State = tuple[Tensor, Tensor]


def refine_strays(solver: Solver, start: State, method: str) -> State:
    """A fixed-step solve on the grid; the samples whose trajectory turns non-finite there are
    solved again on finer grids of the same method (:data:`GRID_REFINEMENTS`), each keeping its
    first finite trajectory: the samples that were finite keep their solution, so the result on
    a well-resolved model is unchanged."""
    xs, ells = solver.on_grid(start, method)
    stray = _stray_rows(xs, ells)
    if stray.any():
        logger.warning("%d of %d samples blow up on the %d-step %s grid; they get finer grids",
                       int(stray.sum()), xs.shape[1], len(solver.grid) - 1, method)  # fmt: skip
        xs[:, stray], ells[:, stray] = _refined(
            solver, (start[0][stray], start[1][stray]), (xs[:, stray], ells[:, stray]), method,
            xs.shape[1],
        )  # fmt: skip
    return xs, ells


def recover_adaptive(solver: Solver, start: State) -> State:
    """The states of an adaptive solve that gave up on the batch ``start``.

    One adaptive step size serves the whole batch, so a few stray samples on which the drift
    is stiff can make the solver give up on all of them (torchdiffeq: too many steps, or
    underflow in dt). Then one cheap pass flags them: rk4 on the grid and on a 2x finer grid, a
    sample being stiff where either is non-finite or the two differ by more than
    :func:`_disagree` allows. The other samples are solved to tolerance once more (if that
    gives up too, they keep the 2x rk4 solution), and the stiff ones get rk4 on grids refined
    until their trajectories stay finite (:data:`GRID_REFINEMENTS`, within the refinement
    budget). The work per batch is so bounded by two adaptive solves and the refinement budget.
    """
    (x_start, ell_start), opts, b = start, solver.options, start[0].shape[0]
    coarse, fine = solver.on_grid(start, "rk4"), solver.on_grid(start, "rk4", refine=2)
    blown = _stray_rows(*coarse)
    stiff = blown | _stray_rows(*fine) | _disagree(coarse, fine, opts.rtol, opts.atol)
    xs, ells = fine
    if blown.any():
        logger.warning("%d of %d samples blow up on the rk4 grid; they get finer grids",
                       int(blown.sum()), b)  # fmt: skip
    calm = ~stiff
    if stiff.any() and calm.any() and not opts.clock.expired():
        try:  # one more adaptive solve, without the samples that made it give up
            xs[:, calm], ells[:, calm] = solver.adaptive((x_start[calm], ell_start[calm]))
        except AssertionError as err:
            logger.warning("%s gave up again on %d samples; they keep rk4 on a 2x finer grid "
                           "(%s)", opts.method, int(calm.sum()), err)  # fmt: skip
        except ScoringDeadlineError:
            logger.warning("the scoring budget ran out; %d samples keep rk4 on a 2x finer grid",
                           int(calm.sum()))  # fmt: skip
    elif not stiff.any():
        logger.warning("no sample of the %d stands out on the rk4 grid; all keep rk4 on a 2x "
                       "finer grid", b)  # fmt: skip
    if stiff.any():
        xs[:, stiff], ells[:, stiff] = _refined(
            solver, (x_start[stiff], ell_start[stiff]), (xs[:, stiff], ells[:, stiff]), "rk4", b
        )
    return xs, ells


def _refined(solver: Solver, start: State, coarse: State, method: str, n_batch: int) -> State:
    """``method`` on ever finer grids (:func:`refine_until_finite`) for samples whose
    ``coarse`` solution is non-finite; each keeps its first finite trajectory (else the
    finest one)."""
    xs, ells = coarse

    def solve(idx: Tensor, refine: int) -> Tensor:
        xs[:, idx], ells[:, idx] = solver.on_grid((start[0][idx], start[1][idx]), method, refine)
        return _stray_rows(xs[:, idx], ells[:, idx])

    todo = torch.ones(xs.shape[1], dtype=torch.bool, device=xs.device)
    if refine_until_finite(todo, n_batch, solve, method, solver.options):
        xs[:, todo], ells[:, todo] = torch.nan, torch.nan  # unscored, not a coarse solution
    return xs, ells


def refine_until_finite(
    stray: Tensor,
    n_batch: int,
    solve: Callable[[Tensor, int], Tensor],
    scheme: str,
    options: SamplingOptions,
) -> bool:
    """The refinement ladder shared by the ODE and SDE solvers: for each level of
    :data:`GRID_REFINEMENTS` within ``options.refine_budget`` grid solves of ``n_batch``
    samples, ``solve(rows, refine)`` solves the ``stray`` rows again on a grid ``refine`` times
    finer, keeps their result and returns which of them are still non-finite; ``stray`` is
    updated in place. Returns whether the deadline of ``options.clock``, before a level or
    during it, cut the ladder short: the rows still ``stray`` are then counted as unscored."""
    spent = 0
    for refine in GRID_REFINEMENTS:
        rows = stray.nonzero().squeeze(1)
        if options.clock.skip(len(rows)):
            return True
        spent += refine * len(rows)
        if not _affordable(spent, len(rows), refine, n_batch, options.refine_budget):
            return False
        try:
            stray[rows] = solve(rows, refine)
        except ScoringDeadlineError:
            options.clock.drop(len(rows))
            return True
        if not stray.any():
            return False
    logger.warning("%d samples are non-finite even on a %dx finer %s grid",
                   int(stray.sum()), GRID_REFINEMENTS[-1], scheme)  # fmt: skip
    return False


def _affordable(spent: int, n_left: int, refine: int, n_batch: int, budget: int) -> bool:
    """Whether refined solves costing ``spent`` sample-steps (per grid step) so far, this level
    included, stay within ``budget`` grid solves of ``n_batch`` samples; if not, the ``n_left``
    samples stay non-finite, with a warning."""
    if spent <= budget * n_batch:
        return True
    logger.warning("%d samples stay non-finite: a %dx finer grid for them would exceed the "
                   "refinement budget of %d grid solves of the batch of %d", n_left, refine,
                   budget, n_batch)  # fmt: skip
    return False


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
