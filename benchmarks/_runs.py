"""Benchmark arms as separate ``benchmarks/run.py`` processes: one torch thread each, ``jobs``
at a time, each in its own directory, so that a finished arm is never redone (its
``metrics.json`` is complete) and arms compare at equal wall time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
#: Scoring kept light for screening: no figures, no NLL, 4000 samples.
SCREEN = [
    "eval.figures=false", "eval.nll=false", "eval.n_samples=4000", "eval.sinkhorn_max_samples=1000",
    "progress=false", "threads=1",
]  # fmt: skip


def arm_name(overrides: Sequence[str]) -> str:
    """A directory name for an override list: ``optim.lr=1e-2 optim.schedule=cosine`` ->
    ``lr-1e-2__schedule-cosine`` (no ``=`` or ``,``: it goes into a Hydra override)."""
    parts = [o.split("=", 1) for o in overrides]
    return "__".join(f"{k.rsplit('.', 1)[-1]}-{v}" for k, v in parts) or "default"


def target_override(problem: str) -> str:
    """``gmm9`` -> ``target=gmm9`` (its preset applies); ``unseen_targets.Banana`` ->
    ``target._target_=unseen_targets.Banana`` (the default rule applies)."""
    return f"target._target_={problem}" if "." in problem else f"target={problem}"


def run_arm(out: Path, overrides: Sequence[str]) -> Path:
    """``benchmarks/run.py`` with ``overrides`` into ``out`` in a child process with one torch
    thread (its output in ``out/log.txt``); returns ``out`` at once if it is complete."""
    if (out / "metrics.json").exists():
        return out
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), *overrides, f"out_dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "w") as log:
        subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    return out


def read(out: Path) -> dict | None:
    """The run's metrics, or ``None`` if it did not finish."""
    path = out / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def run_all(
    jobs: Sequence[tuple[Path, Sequence[str]]],
    parallel: int,
    label: Callable[[Path], str] = lambda out: out.name,
) -> list[dict | None]:
    """Run ``(out, overrides)`` jobs, ``parallel`` at a time, printing a line as each ends;
    returns their metrics in the order given."""
    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        futures = {pool.submit(run_arm, out, overrides): out for out, overrides in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            m = read(future.result()) or {}
            print(
                f"[{done}/{len(jobs)} {time.perf_counter() - start:5.0f} s] {label(futures[future])}: "
                f"ESS {m.get('ess')} dlogZ {m.get('dlogZ')} steps {m.get('steps')}"
                f"{'' if m else ' FAILED (see log.txt)'}",
                flush=True,
            )
    return [read(out) for out, _ in jobs]
