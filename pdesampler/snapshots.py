"""Weights kept during training: a ``train(on_step=...)`` hook that copies the parameters at
wall-clock marks, so that a run's quality against time can be scored after it ends (the scoring
costs no training time)."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["Snapshots", "with_params"]


class Snapshots:
    """``on_step`` hook (``(step, elapsed, params)``, :data:`pdesampler.optim.gauss_newton.StepHook`):
    a copy of the parameters at the first step past each time mark (a copy takes well under a
    millisecond). Time is the optimizer phase's own ``elapsed``, or with ``wall_clock`` the
    seconds since the hook was made (the whole training, Adam and the fine-tuner together).

    ``taken`` holds ``(seconds, step, parameters)`` for each mark passed."""

    def __init__(self, marks: Sequence[float], wall_clock: bool = False) -> None:
        self.marks = list(marks)
        self.taken: list[tuple[float, int, dict[str, Tensor]]] = []
        self.start = time.perf_counter() if wall_clock else None

    def __call__(self, step: int, elapsed: float, params: Mapping[str, Tensor]) -> None:
        if self.start is not None:
            elapsed = time.perf_counter() - self.start
        if self.marks and elapsed >= self.marks[0]:
            self.marks.pop(0)
            self.taken.append((elapsed, step, {k: v.detach().clone() for k, v in params.items()}))


def with_params(module: torch.nn.Module, params: Mapping[str, Tensor]) -> torch.nn.Module:
    """A copy of ``module`` holding ``params`` (a state dict or a parameter dict)."""
    model = copy.deepcopy(module)
    model.load_state_dict(params, strict=False)
    return model
