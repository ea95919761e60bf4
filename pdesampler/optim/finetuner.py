"""What the second-order fine-tuners share: the settings every config declares, the step record,
the :class:`FineTuner` base with its one abstract step, and the run loop with its step-count
rule (:func:`step_limit`, also Adam's).

A fine-tuner steps on the closures of one collocation batch (:class:`Batch`), each a function of
the parameter dict in the working dtype: the residual, optionally its explicit per-point
Jacobian, the residual on another batch for the line search and the residual on a subset for
the curvature. :meth:`FineTuner.run` draws them from ``make_batch_fns(step)``.
"""

from __future__ import annotations

import itertools
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pdesampler.linearization import Params, ResidualFn
from pdesampler.optim.linalg import DTYPES, JacobianFn

__all__ = [
    "Batch",
    "FineTuner",
    "FinetuneConfig",
    "StepHook",
    "StepInfo",
    "step_indices",
    "step_limit",
]

# ``on_step(steps, elapsed_seconds, parameters)``: called by the optimizers' run loops after
# every step, for example to snapshot the model along the way.
StepHook = Callable[[int, float, Mapping[str, Tensor]], None]


class FinetuneConfig:
    """What every fine-tuner's config declares (the trainer and :meth:`FineTuner.run` read
    these and nothing else). A config that has no such setting inherits the value here.

    Attributes:
        steps: outer steps (``None``: until ``max_seconds`` ends; without a budget the
            fine-tuner's ``DEFAULT_STEPS``).
        max_seconds: wall-clock budget of the run (``None``: no limit).
        dtype: working dtype of the parameters, ``"float32"``, ``"float64"`` or ``None`` (keep
            theirs); the closures' inputs must use it.
        nan_patience: consecutive non-finite steps tolerated before a ``RuntimeError``.
    """

    steps: int | None
    max_seconds: float | None
    dtype: str | None
    nan_patience: int

    @property
    def jacobian_product(self) -> str:
        """How :math:`J v` is formed (:func:`pdesampler.linearization.linearize`)."""
        return "double_vjp"

    @property
    def resample_every(self) -> int:
        """A new batch every this many steps."""
        return 1

    @property
    def line_search_batch(self) -> str:
        """``"fresh"``: the step takes a ``search_fn`` on an independent batch; ``"same"``:
        it takes none."""
        return "same"

    @property
    def curvature_fraction(self) -> float:
        """Below 1, the step takes a ``curvature_fn`` on this share of the batch's points."""
        return 1.0


@dataclass
class StepInfo:
    r"""The record of one outer step.

    Attributes:
        loss_before: :math:`L(\theta)` on the step's batch.
        loss_after: :math:`L` after the step (equal to ``loss_before`` when rejected).
        step_size: the applied :math:`\eta` (0 when rejected).
        cg_iters: CG iterations (0 for the explicit solvers).
        cg_rel_residual: CG's final relative residual (``None`` for the explicit solvers).
        solver: the solver used.
        seconds: wall-clock seconds of the step.
        accepted: whether the parameters changed.
        reason: why a step was rejected (``""`` when accepted).
        damping: the damping :math:`\varepsilon` after the step (it changes only with
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


class Batch(NamedTuple):
    """The closures of one step's batch (see the module docstring)."""

    residual_fn: ResidualFn
    point_jacobian_fn: JacobianFn | None = None
    search_fn: ResidualFn | None = None
    curvature_fn: ResidualFn | None = None


class FineTuner(ABC):
    """A fine-tuner: a detached working copy of the parameters, the step history, the NaN guard
    and the write-back; a subclass fills in :meth:`_step`.

    Args:
        params: an ``nn.Module`` (its parameters that require grad) or a dict of tensors. The
            optimizer works on a detached copy in ``config.dtype``.
        config: the settings (a :class:`FinetuneConfig`).

    Attributes:
        params: the current parameters (detached, working dtype).
        history: one :class:`StepInfo` per step.
    """

    NAME = "fine-tuner"
    #: Steps when the config gives neither ``steps`` nor ``max_seconds``.
    DEFAULT_STEPS = 100

    def __init__(self, params: nn.Module | Mapping[str, Tensor], config: FinetuneConfig) -> None:
        if isinstance(params, nn.Module):
            params = {n: p for n, p in params.named_parameters() if p.requires_grad}
        if not params:
            raise ValueError(f"{self.NAME} needs at least one parameter")
        self.config = config
        dtype = DTYPES[config.dtype] if config.dtype else None
        self.params: Params = {n: p.detach().to(dtype=dtype, copy=True) for n, p in params.items()}
        self.history: list[StepInfo] = []
        self._bad_steps = 0
        self._finite = True

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

    def step(
        self,
        residual_fn: ResidualFn,
        point_jacobian_fn: JacobianFn | None = None,
        search_fn: ResidualFn | None = None,
        curvature_fn: ResidualFn | None = None,
    ) -> StepInfo:
        """One outer step on the closures of one batch (:class:`Batch`), timed and recorded in
        :attr:`history`. A non-finite step changes nothing; ``nan_patience`` of them in a row
        raise a ``RuntimeError``, the parameters left at the last finite step."""
        start = time.perf_counter()
        self._finite = True
        info = self._step(Batch(residual_fn, point_jacobian_fn, search_fn, curvature_fn))
        info.seconds = time.perf_counter() - start
        self.history.append(info)
        self._bad_steps = 0 if self._finite else self._bad_steps + 1
        if not self._finite and self._bad_steps >= self.config.nan_patience:
            raise RuntimeError(
                f"{self.NAME}: {self._bad_steps} consecutive non-finite steps ({info.reason}, "
                f"last loss {info.loss_before}); parameters left at the last finite step"
            )
        return info

    def run(
        self,
        module: nn.Module,
        make_batch_fns: Callable[[int], tuple],
        progress: bool = True,
        on_step: StepHook | None = None,
    ) -> list[StepInfo]:
        """Step for ``config.steps`` steps or ``config.max_seconds``, on the closures of
        ``make_batch_fns(step)`` (called every ``config.resample_every`` steps, the batch reused
        in between); ``on_step(steps, elapsed, params)`` after each step. The parameters are
        written back into ``module`` at the end, also when the run stops with an error. Returns
        the history of :class:`StepInfo`."""
        config = self.config
        bar = tqdm(total=config.steps, disable=not progress, desc=self.NAME, leave=False)
        fns: tuple = ()
        start = time.perf_counter()
        try:
            for step in step_indices(config.steps, config.max_seconds, self.DEFAULT_STEPS):
                if step % config.resample_every == 0:
                    fns = make_batch_fns(step)
                info = self.step(*fns)
                if on_step is not None:
                    on_step(step + 1, time.perf_counter() - start, self.params)
                bar.set_postfix(loss=f"{info.loss_before:.4e}", eta=f"{info.step_size:.3g}")
                bar.update()
        finally:
            bar.close()
            self.copy_to(module)
        return self.history

    @abstractmethod
    def _step(self, batch: Batch) -> StepInfo:
        """Take one step on ``batch``: update :attr:`params` and return the step's record
        (its ``seconds`` are filled in by :meth:`step`), or :meth:`_non_finite`'s."""

    def _non_finite(
        self,
        loss0: float,
        solver: str,
        reason: str,
        cg_iters: int = 0,
        cg_res: float | None = None,
    ) -> StepInfo:
        """The record of a step that met a non-finite value and changed nothing."""
        self._finite = False
        return StepInfo(loss0, loss0, 0.0, cg_iters, cg_res, solver, 0.0, False, reason)


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
