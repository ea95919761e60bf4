"""The settings of a sampling run (:class:`SamplingOptions`), its wall-clock budget
(:class:`ScoringClock`) and the helpers the ODE and SDE solvers share."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pdesampler.checks import NON_NEGATIVE_INT, POSITIVE_OR_NONE, check
from pdesampler.losses.base import Dynamics
from pdesampler.ops import Exact, TraceEstimator
from pdesampler.targets import Target

__all__ = [
    "ADAPTIVE_METHODS",
    "DEFAULT_BATCH_SIZE",
    "FIXED_STEP_METHODS",
    "REFINEMENT_BUDGET",
    "SamplingOptions",
    "ScoringClock",
    "ScoringDeadlineError",
    "resolve_dtype_device",
]

FIXED_STEP_METHODS = ("euler", "midpoint", "rk4")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3")
#: The refined solves of a batch's strays may cost at most this many grid solves of the whole
#: batch (in sample-steps): a finer level that would exceed it is skipped, so a badly trained
#: model whose trajectories truly blow up cannot multiply the evaluation time by 84.
REFINEMENT_BUDGET = 16
DEFAULT_BATCH_SIZE = 4096
logger = logging.getLogger(__name__)


class ScoringDeadlineError(Exception):
    """The scoring clock ran out inside a solve (:meth:`ScoringClock.check`); the solve's
    samples are unscored."""


@dataclass
class ScoringClock:
    """The wall-clock budget of the solves that share it: past its ``deadline``
    (``time.perf_counter`` seconds, ``None``: none) a batch not begun comes back as NaN, a
    solve under way stops at its next drift evaluation (:meth:`check`) and its batch comes
    back as NaN, and refinement of stray samples stops, leaving them non-finite. Those samples
    are counted in ``unscored``; the evaluation gives them weight 0, as any failed sample."""

    deadline: float | None = None
    unscored: int = 0

    @classmethod
    def after(cls, max_seconds: float | None) -> ScoringClock:
        """A clock that runs out ``max_seconds`` from now (``None``: never)."""
        check("max_seconds", max_seconds, POSITIVE_OR_NONE)
        return cls(None if max_seconds is None else time.perf_counter() + max_seconds)

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def check(self) -> None:
        """Raise :class:`ScoringDeadlineError` past the deadline (called by every drift evaluation
        of a solve, so that no solve outlasts the budget by more than one evaluation)."""
        if self.expired():
            raise ScoringDeadlineError

    def skip(self, n: int) -> bool:
        """Past the deadline: count ``n`` samples as unscored and return ``True``."""
        if n and self.expired():
            self.drop(n)
            return True
        return False

    def drop(self, n: int) -> None:
        """Count ``n`` samples as unscored."""
        self.unscored += n
        logger.warning("scoring budget spent: %d samples left unscored", n)


@dataclass(frozen=True)
class SamplingOptions:
    """The settings of :func:`~pdesampler.sampling.sample_ode`,
    :func:`~pdesampler.sampling.log_density`, :func:`~pdesampler.sampling.sample_sde` and
    :func:`~pdesampler.sampling.sample`, which take them as keyword arguments of these names.

    Attributes:
        method: ``"rk4"`` (torchdiffeq's 3/8-rule RK4), ``"euler"``, ``"midpoint"`` on a fixed
            grid of ``steps`` steps, an adaptive ``"dopri5"`` (``"dopri8"``, ``"bosh3"``), or
            ``"auto"``: ``dynamics.ode_method``.
        steps: ODE grid steps for fixed-step methods (and the grid ``n_saved`` snaps to).
        sde_steps: Euler-Maruyama steps (weak order 1, bias O(dt)).
        rtol: relative tolerance of adaptive methods.
        atol: absolute tolerance of adaptive methods.
        estimator: trace estimator for the divergence; exact by default.
        fresh_probes: redraw Hutchinson probes at every evaluation of the drift instead of once
            per batch (per trajectory); see :mod:`pdesampler.sampling`.
        batch_size: points per solve (``None``: all at once).
        dtype: the dtype to integrate in (default: ``module``'s, else float32, else ``x``'s
            for :func:`~pdesampler.sampling.log_density`).
        device: the device, with the same defaults.
        module: a module whose parameters fix the default dtype and device.
        n_saved: the number of evenly spaced states to return for plots (on the fixed grid).
        refine_budget: the refined solves of a batch's stray samples may cost at most this
            many grid solves of the batch (0: no refinement, strays stay non-finite).
        clock: the wall-clock budget; its ``unscored`` counts the samples it cut off.
    """

    method: str = "auto"
    steps: int = 100
    sde_steps: int = 1000
    rtol: float = 1e-5
    atol: float = 1e-5
    estimator: TraceEstimator | None = None
    fresh_probes: bool = False
    batch_size: int | None = DEFAULT_BATCH_SIZE
    dtype: torch.dtype | None = None
    device: torch.device | str | None = None
    module: nn.Module | None = None
    n_saved: int = 0
    refine_budget: int = REFINEMENT_BUDGET
    clock: ScoringClock = field(default_factory=ScoringClock)

    def __post_init__(self) -> None:
        check("refine_budget", self.refine_budget, NON_NEGATIVE_INT)
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")

    @classmethod
    def of(cls, options: SamplingOptions | None, settings: dict[str, Any]) -> SamplingOptions:
        """``options`` (default: the defaults) with the fields named in ``settings`` replaced."""
        return dataclasses.replace(options or cls(), **settings)

    def resolved(
        self,
        dynamics: Dynamics,
        generator: torch.Generator | None,
        default_dtype: torch.dtype = torch.float32,
        default_device: torch.device | str = "cpu",
    ) -> SamplingOptions:
        """The options with ``method`` (``"auto"``: the dynamics' own ``ode_method``),
        ``dtype``, ``device`` (:func:`resolve_dtype_device`) and ``estimator`` (exact by
        default, drawing from ``generator`` if random and without a generator) filled in."""
        method = dynamics.ode_method if self.method == "auto" else self.method
        if method not in FIXED_STEP_METHODS + ADAPTIVE_METHODS:
            raise ValueError(
                f"unknown ODE method {self.method!r}; choose one of "
                f"{('auto', *FIXED_STEP_METHODS, *ADAPTIVE_METHODS)}"
            )
        dtype, device = resolve_dtype_device(
            self.dtype, self.device, self.module,
            default_dtype=default_dtype, default_device=default_device,
        )  # fmt: skip
        estimator = _with_generator(self.estimator or Exact(), generator)
        return dataclasses.replace(
            self, method=method, dtype=dtype, device=device, estimator=estimator
        )

    def batches(self, n: int) -> Iterator[slice]:
        """Consecutive slices of ``range(n)`` of at most ``batch_size`` (``None``: one)."""
        size = n if self.batch_size is None else int(self.batch_size)
        for start in range(0, n, size):
            yield slice(start, min(start + size, n))


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


def _with_generator(estimator: TraceEstimator, generator: torch.Generator | None) -> TraceEstimator:
    """The estimator, drawing from ``generator`` if it is random and carries none of its own."""
    owns_none = getattr(estimator, "generator", False) is None
    if generator is not None and owns_none and dataclasses.is_dataclass(estimator):
        return dataclasses.replace(estimator, generator=generator)
    return estimator


def check_count(n: int) -> None:
    """Refuse a sample count below 1."""
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")


def save_indices(steps: int, n_saved: int) -> list[int]:
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


def draw_prior(prior: Target, n: int, generator: torch.Generator, dtype, device) -> Tensor:
    """``n`` prior draws, made on the CPU with ``generator`` and then moved."""
    return prior.sample(n, generator=generator).to(dtype=dtype, device=device)


def prior_log_prob(prior: Target, x: Tensor) -> Tensor:
    r"""The normalized :math:`\log p_{prior}(x)`: ``log_prob`` minus ``log_Z`` when it is known
    (a Target's ``log_prob`` is :math:`\log\rho`); otherwise ``log_prob`` as given."""
    log_z = getattr(prior, "log_Z", None)
    return prior.log_prob(x) - (log_z or 0.0)
