r"""When a suite run on local slots should end, from its runs' training budgets.

The local launcher starts the runs in order, each on the first slot that frees, so run
:math:`k` starts at the earliest end among the slots when its turn comes (list scheduling). A
run that has finished ends when it did; one still waiting or going is expected to end at its
start plus its training budget (``optim.max_seconds`` on its command line) plus an overhead
for start-up and scoring: the mean overhead of the runs that finished, or a default before the
first one. The suite's end is the latest slot's end. A rate-based estimate (runs left times
seconds per run) is off whenever the runs go two at a time or differ in length.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence

from pdesampler.launch import RunJob

__all__ = ["SuiteForecast", "training_budget"]

BUDGET_KEY = "optim.max_seconds="


def training_budget(job: RunJob) -> float | None:
    """The training budget the run's command line sets (its last ``optim.max_seconds``)."""
    values = [o.removeprefix(BUDGET_KEY) for o in job.overrides if o.startswith(BUDGET_KEY)]
    try:
        return float(values[-1]) if values else None
    except ValueError:
        return None


class SuiteForecast:
    """The expected end of ``jobs`` on ``slots`` local slots started at ``start`` (seconds on
    :func:`time.time`'s clock); ``overhead`` is the start-up and scoring time a run is given
    before any has finished."""

    def __init__(
        self, jobs: Sequence[RunJob], slots: int, start: float, overhead: float = 40.0
    ) -> None:
        self.budgets = [training_budget(job) for job in jobs]
        self.names = [job.name for job in jobs]
        self.slots, self.start, self.default_overhead = slots, start, overhead
        self.ended: dict[str, float] = {}
        self.measured: set[str] = set()  # the runs that trained and scored in full

    @property
    def has_budgets(self) -> bool:
        """Whether every run has a training budget (else there is no forecast)."""
        return None not in self.budgets

    def finished(self, name: str, when: float, completed: bool = True) -> None:
        """Record that the run ``name`` ended at ``when``. A run that failed or ran elsewhere
        (``completed=False``) frees its slot but says nothing about the overhead."""
        self.ended[name] = when
        if completed:
            self.measured.add(name)

    def end(self, now: float) -> float | None:
        """The expected end of the last run, or ``None`` when a run has no training budget."""
        if not self.has_budgets:
            return None
        starts, _ = self._schedule(self.default_overhead, now)
        spent = [
            self.ended[name] - begin - budget
            for name, begin, budget in zip(self.names, starts, self.budgets, strict=True)
            if name in self.measured
        ]
        overhead = sum(spent) / len(spent) if spent else self.default_overhead
        return self._schedule(max(overhead, 0.0), now)[1]

    def _schedule(self, overhead: float, now: float) -> tuple[list[float], float]:
        """Each run's start and the last end, runs taking the first free slot in order."""
        free = [self.start] * self.slots
        starts, last = [], self.start
        for name, budget in zip(self.names, self.budgets, strict=True):
            begin = heapq.heappop(free)
            end = self.ended.get(name, max(begin + budget + overhead, now))
            starts.append(begin)
            last = max(last, end)
            heapq.heappush(free, end)
        return starts, last

    def describe(self, now: float | None = None) -> str:
        """``ends about HH:MM`` (local time), or an empty string without a forecast."""
        end = self.end(time.time() if now is None else now)
        return "" if end is None else f"ends about {time.strftime('%H:%M', time.localtime(end))}"
