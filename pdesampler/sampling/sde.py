r"""SDE samples by Euler-Maruyama (:func:`pdesampler.euler_maruyama.euler_maruyama`), with the
path log-density ratio of a trajectory baseline and finer grids, along the same Brownian paths,
for samples that blow up."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from pdesampler.euler_maruyama import Step, euler_maruyama, on_batch
from pdesampler.losses.base import Dynamics
from pdesampler.losses.trajectory import path_log_ratio
from pdesampler.sampling.options import (
    SamplingOptions,
    ScoringDeadlineError,
    check_count,
    draw_prior,
    prior_log_prob,
    save_indices,
)
from pdesampler.sampling.refine import refine_until_finite
from pdesampler.sampling.results import SampleResult

logger = logging.getLogger(__name__)


@dataclass
class BrownianNoise:
    r"""The standardized Brownian increments :math:`\xi_k \sim \mathcal{N}(0, I)` of
    :func:`sample_paths` on ``grid``, for the rows ``rows`` of its ``(n, d)`` draws:
    ``generator`` from ``state`` replays the same draws.

    ``refine`` splits each step of length :math:`h` into ``m`` equal sub-steps
    (:meth:`fine_grid`) by the Brownian bridge, with fresh draws from ``fresh``: given the
    step's increment :math:`\Delta W = \sqrt h\,\xi`, the sub-increments
    :math:`\zeta_j - \bar\zeta + \Delta W/m`, :math:`\zeta_j \sim \mathcal{N}(0, h/m)`, have
    exactly the bridge's conditional law and sum to :math:`\Delta W`, so a finer solve follows
    the same Brownian path. Each is divided by the square root of its sub-step as the fine grid
    holds it, so that the scheme's :math:`\sqrt{|\Delta t_j|}\,\xi_j` gives it back even where
    rounding makes the sub-steps of a float32 grid unequal.
    """

    generator: torch.Generator
    state: Tensor
    grid: Tensor
    n: int
    d: int
    dtype: torch.dtype
    rows: Tensor | None = None
    refine: int = 1
    fresh: torch.Generator | None = None

    def fine_grid(self) -> Tensor:
        """``grid`` with each step cut into ``refine`` equal sub-steps."""
        m, grid = self.refine, self.grid
        if m == 1:
            return grid
        dt = (grid[1:] - grid[:-1]) / m
        j = torch.arange(m, dtype=grid.dtype, device=grid.device)
        return torch.cat([(grid[:-1, None] + j * dt[:, None]).reshape(-1), grid[-1:]])

    def __iter__(self) -> Iterator[Tensor]:
        """Per grid step, the ``(refine, b, d)`` increments (on the CPU; moved by the caller)."""
        self.generator.set_state(self.state)
        sub_steps = self.fine_grid().diff().abs().cpu().reshape(-1, self.refine)
        for k in range(len(self.grid) - 1):
            xi = torch.randn(self.n, self.d, generator=self.generator, dtype=self.dtype)
            xi = xi if self.rows is None else xi[self.rows.cpu()]
            if self.refine == 1:
                yield xi[None]
                continue
            h = (self.grid[k + 1] - self.grid[k]).abs().cpu()
            zeta = (h / self.refine).sqrt() * torch.randn(
                self.refine, *xi.shape, generator=self.fresh, dtype=self.dtype
            )
            increments = zeta - zeta.mean(0) + h.sqrt() * xi / self.refine
            yield increments / sub_steps[k].sqrt()[:, None, None]


def sample_paths(
    dynamics: Dynamics, n: int, generator: torch.Generator, options: SamplingOptions
) -> SampleResult:
    """:func:`pdesampler.sampling.sample_sde`: ``n`` prior draws moved by ``sde_steps``
    Euler-Maruyama steps; samples that end non-finite get finer grids (not a trajectory
    baseline's: its path weights live on its grid)."""
    check_count(n)
    opts = options.resolved(dynamics, generator)
    indices = save_indices(opts.sde_steps, opts.n_saved)
    grid = torch.linspace(
        dynamics.t0, dynamics.t1, opts.sde_steps + 1, dtype=opts.dtype, device=opts.device
    )
    x0 = draw_prior(dynamics.prior, n, generator, opts.dtype, opts.device)
    noise = BrownianNoise(generator, generator.get_state(), grid, n, x0.shape[1], opts.dtype)
    try:
        x, log_q, saved = _em_path(dynamics, x0, noise, opts, indices)
    except ScoringDeadlineError:  # the budget ran out on the way: every sample unscored
        opts.clock.drop(n)
        x, saved = torch.full_like(x0, torch.nan), [torch.full_like(x0, torch.nan)] * len(indices)
        log_q = None if dynamics.reference is None else torch.full_like(x0[:, 0], torch.nan)
    else:
        stray = ~torch.isfinite(x).all(1)
        if dynamics.reference is None and stray.any():
            _refine_strays(dynamics, x0, stray, noise, opts, indices, x, saved)
    if not indices:
        return SampleResult(x, log_q, x0)
    return SampleResult(x, log_q, x0, torch.stack(saved), grid[indices])


def _em_path(
    dynamics: Dynamics,
    x0: Tensor,
    noise: BrownianNoise,
    options: SamplingOptions,
    indices: list[int],
) -> tuple[Tensor, Tensor | None, list[Tensor]]:
    r"""Euler-Maruyama from ``x0`` along ``noise.grid``, each step cut into the ``noise.refine``
    sub-steps of its increments, the drift evaluated in batches; returns the end states, a
    trajectory baseline's :math:`\log p_{prior}(X_0) - \sum_k [\log b_k - \log f_k]` (the path
    log-ratio of :func:`~pdesampler.losses.trajectory.path_log_ratio`) and the states at the
    grid indices ``indices``."""
    reference, m = dynamics.reference, noise.refine
    log_q = prior_log_prob(dynamics.prior, x0) if reference is not None else None
    saved = [x0.clone()] if 0 in indices else []
    per_point = on_batch(dynamics.drift)

    def drift(x: Tensor, t: Tensor) -> Tensor:
        options.clock.check()
        return torch.cat([per_point(x[sl], t) for sl in options.batches(x.shape[0])])

    def record(step: Step) -> Tensor:
        nonlocal log_q
        if reference is not None:
            log_q = log_q - path_log_ratio(
                reference, step.x, step.x_next, step.noise, step.t, step.t_next
            )
        if (step.index + 1) % m == 0 and (step.index + 1) // m in indices:
            saved.append(step.x_next)
        return step.x_next

    xi = (sub.to(x0.device) for block in noise for sub in block)
    x = euler_maruyama(drift, dynamics.diffusion, noise.fine_grid(), xi, x0.clone(), record)
    return x, log_q, saved


def _refine_strays(
    dynamics: Dynamics,
    x0: Tensor,
    stray: Tensor,
    noise: BrownianNoise,
    options: SamplingOptions,
    indices: list[int],
    x: Tensor,
    saved: list[Tensor],
) -> None:
    """Solve the samples that blew up (``stray``) again on grids
    :data:`~.refine.GRID_REFINEMENTS` times finer, along the same Brownian paths (``noise``
    replayed, bridged with fresh draws from its generator); each keeps its first finite end
    state (in place in ``x`` and ``saved``)."""
    logger.warning("%d of %d SDE samples blow up on the %d-step Euler-Maruyama grid; they get "
                   "finer grids along the same Brownian paths", int(stray.sum()), x.shape[0],
                   len(noise.grid) - 1)  # fmt: skip
    replay = torch.Generator()

    def solve(rows: Tensor, refine: int) -> Tensor:
        fine = dataclasses.replace(noise, generator=replay, rows=rows, refine=refine,
                                   fresh=noise.generator)  # fmt: skip
        x_r, _, saved_r = _em_path(dynamics, x0[rows], fine, options, indices)
        x[rows] = x_r
        for whole, part in zip(saved, saved_r, strict=True):
            whole[rows] = part
        return ~torch.isfinite(x_r).all(1)

    refine_until_finite(stray, x.shape[0], solve, "Euler-Maruyama", options)
