"""``torch.compile`` for the Adam phase's loss, with a fallback to eager execution.

On CPU a compiled residual loss (forward and backward) runs 1.6-6 times faster per Adam step
than eager ``torch.func`` (``benchmarks/bench_compile.py``; docs/results/bench_compile.md), for
a one-off compilation of 3-45 s (about 2 minutes at d = 50 with a cold cache). TorchDynamo
(torch 2.13) cannot trace forward-over-reverse products or a ``jvp`` along per-point probes, so
:mod:`pdesampler.ops` takes Laplacians and Hutchinson divergences reverse-mode while compiling;
a residual of one's own that still does not compile runs eagerly after one warning
(:class:`CompiledOrEager`).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable

import torch

__all__ = [
    "COMPILE_MIN_SECONDS",
    "COMPILE_MIN_STEPS",
    "COMPILE_SECONDS_PER_DIM",
    "CompiledOrEager",
    "should_compile",
]

log = logging.getLogger(__name__)

#: ``compile="auto"`` compiles on CPU when the Adam phase runs at least this many seconds
#: (``max_seconds``) or, without a time budget, this many steps: enough that the one-off
#: compilation pays for itself. It took 14 s alone and 65 s with two runs side by side on GMM-9
#: (2 cores, 2026-12-04), for a 1.4x faster step there; a 120 s budget then lost steps.
COMPILE_MIN_SECONDS, COMPILE_MIN_STEPS = 300.0, 1000
#: ... and at least this many seconds per dimension: at d = 50 a cold compilation took 118 of a
#: 150 s budget (suite=paper, MW 50/5/2 score: 81 steps, against 207 eagerly in a rerun).
COMPILE_SECONDS_PER_DIM = 10.0


def should_compile(
    setting: bool | str,
    device: torch.device,
    steps: int,
    max_seconds: float | None,
    dim: int = 1,
) -> bool:
    """Resolve ``optim.compile``: ``True`` / ``False``, or ``"auto"``: on CPU only, for an
    Adam phase of at least ``max(COMPILE_MIN_SECONDS, COMPILE_SECONDS_PER_DIM * dim)`` seconds
    (or :data:`COMPILE_MIN_STEPS` steps when it has no time budget)."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ValueError(f"optim.compile must be true, false or 'auto', got {setting!r}")
    if torch.device(device).type != "cpu":
        return False
    if max_seconds is not None:
        return max_seconds >= max(COMPILE_MIN_SECONDS, COMPILE_SECONDS_PER_DIM * dim)
    return steps >= COMPILE_MIN_STEPS


class CompiledOrEager:
    """``torch.compile(fn)`` that falls back to ``fn`` for good (with one warning) the first time
    compiling or running the compiled code raises; :attr:`compiled` says which runs. An error of
    ``fn`` itself is raised again by the eager call, so nothing is hidden.

    Building one resets TorchDynamo's caches (``torch.compiler.reset``): a bound ``loss`` of a
    new residual would otherwise be a recompilation of the same code, and after eight of them
    (``recompile_limit``) TorchDynamo runs it eagerly without a word, as a benchmark that trains
    several residuals in one process does."""

    def __init__(self, fn: Callable, name: str) -> None:
        self.fn, self.name = fn, name
        torch.compiler.reset()
        self._compiled: Callable | None = torch.compile(fn)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def __call__(self, *args, **kwargs):
        if self._compiled is None:
            return self.fn(*args, **kwargs)
        level = torch._C._functorch.maybe_current_level()
        try:
            return self._compiled(*args, **kwargs)
        except Exception as err:  # any compiler failure: run eagerly instead
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            reason = " ".join(lines[:2] or [type(err).__name__])[:240]  # inductor: "raised:" + why
        log.warning("torch.compile cannot compile %s (%s); running it eagerly", self.name, reason)
        self._compiled = None
        _release_leaked_transforms(level)
        return self.fn(*args, **kwargs)


#: How many leaked forward-AD levels :func:`_release_leaked_transforms` looks for.
_MAX_LEAKED_LEVELS = 8


def _release_leaked_transforms(level_before: int | None) -> None:
    """Undo what a compilation that failed part-way left behind.

    - Dispatch-key guards. The failure's traceback holds, in reference cycles, the guards
      TorchDynamo and FakeTensor entered while tracing. The garbage collector destroys them at
      some later moment, and each puts back the key sets it saved, which were those of the
      trace: a ``vmap`` running at that moment (or any later one) then fails with "Cannot
      access storage of BatchedTensorImpl". The cycles are collected here, at once, inside a
      guard that keeps the caller's key sets.
    - Forward-mode AD levels. Inductor (torch 2.13) can fail inside a traced
      ``torch.func.jvp`` after entering the dual level and never exit it (seen on MW 50/5/2
      logFP-anneal); every later ``jvp`` then raises "Nested forward mode AD is not supported".
      The levels the Python API does not hold (above ``forward_ad._current_level``) are
      exited, newest first.
    - A functorch transform left on the interpreter stack (above ``level_before``, the
      caller's own) cannot be undone safely, so that case stops with a message."""
    with torch._C._PreserveDispatchKeyGuard():
        gc.collect()
    known = torch.autograd.forward_ad._current_level
    for level in range(known + _MAX_LEAKED_LEVELS, known, -1):
        try:
            torch._C._exit_dual_level(level=level)
        except RuntimeError:  # not the newest level, or none entered
            continue
    if torch._C._functorch.maybe_current_level() != level_before:
        raise RuntimeError(
            "a failed torch.compile left a torch.func transform active; rerun with "
            "optim.compile=false"
        )
