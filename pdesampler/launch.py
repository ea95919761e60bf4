"""Running the runs of a suite: local processes, N at a time, or one SLURM job each (submitit),
with a lock per run directory so that two suites on the same results never run one run twice.

Every launcher runs :func:`run_job`, which starts the command line of :mod:`pdesampler.app` for
one run in a child process, so a run behaves the same whoever launches it. The executors share one interface,
``executor.submit(fn, *args).result()``:

* ``local``: a :class:`concurrent.futures.ThreadPoolExecutor` of ``jobs`` threads, each waiting
  on one child process that uses ``cpu_count // jobs`` torch threads;
* ``slurm``: ``submitit.AutoExecutor(cluster="slurm")``, one job per run, with the parameters
  of ``suite.slurm`` (``timeout_min``, ``cpus_per_task``, ``gpus_per_node``, ``mem_gb``,
  ``slurm_partition``, ...);
* ``submitit_local``: the same submitit interface on this machine (submitit's local executor),
  for testing the SLURM path without a cluster.

A child started by a suite dies with it (``PR_SET_PDEATHSIG`` on Linux): a suite killed with
SIGKILL leaves no run behind holding its lock, and the interrupted run resumes from its
checkpoint when the suite is run again.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LAUNCHERS",
    "LOCKED_EXIT",
    "RunJob",
    "RunLockedError",
    "follow_parent",
    "is_locked",
    "make_executor",
    "run_job",
    "run_lock",
]

RUN_MODULE = "pdesampler.app"
LAUNCHERS = ("local", "slurm", "submitit_local")
LOCK_FILE = ".lock"
#: The exit status of a run whose directory another process holds (EX_TEMPFAIL).
LOCKED_EXIT = 75
#: How often :func:`launch_all` looks for finished jobs.
POLL_SECONDS = 0.5
_PARENT_ENV = "PDESAMPLER_PARENT_PID"


class RunLockedError(RuntimeError):
    """Another process is running this run directory."""


@dataclass(frozen=True)
class RunJob:
    """One run of a suite: its name, its Hydra overrides and its directory."""

    name: str
    overrides: tuple[str, ...]
    out_dir: Path


@contextmanager
def run_lock(out_dir: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir/.lock`` (``flock``; the kernel drops it when the
    process dies, even by SIGKILL), or raise :class:`RunLockedError` naming the holder."""
    path = Path(out_dir) / LOCK_FILE
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise RunLockedError(
                f"{out_dir} is being run by another process (pid {holder}); wait for it or "
                "run another directory"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_locked(out_dir: str | Path) -> bool:
    """Whether another process holds ``out_dir``'s run lock now."""
    if not (Path(out_dir) / LOCK_FILE).exists():
        return False
    try:
        with run_lock(out_dir):
            return False
    except RunLockedError:
        return True


def run_job(job: RunJob, threads: int | None = None) -> int:
    """Run ``python -m pdesampler.app`` with the job's overrides in a child process that dies with
    this one; its output goes to ``out_dir/run.log``. Returns the exit status."""
    job.out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", RUN_MODULE, *job.overrides, f"out_dir={job.out_dir}"]
    env = {**os.environ, _PARENT_ENV: str(os.getpid())}
    if threads is not None:
        cmd.append(f"threads={threads}")
        env["OMP_NUM_THREADS"] = str(threads)
    with (job.out_dir / "run.log").open("a") as log:
        start = time.time()
        log.write(f"\n[start {start:.3f}] $ {' '.join(cmd)}\n")
        log.flush()
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        log.write(f"[end {time.time():.3f}] exit {code}\n")
    return code


def follow_parent() -> None:
    """In a child started by :func:`run_job`: die (SIGKILL) when the parent dies. Linux only;
    a no-op elsewhere or outside a suite."""
    parent = os.environ.get(_PARENT_ENV)
    if parent is None or not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(1)


def make_executor(launcher: str, folder: Path, jobs: int, slurm: Mapping[str, Any] | None):
    """An executor with ``submit(fn, *args) -> future`` (``future.result()`` waits): see the
    module docstring. ``folder`` holds submitit's logs and pickles."""
    if launcher == "local":
        return ThreadPoolExecutor(max_workers=jobs)
    try:
        import submitit
    except ImportError as err:
        raise ImportError(
            f"suite.launcher={launcher} needs submitit: pip install -e '.[launchers]'"
        ) from err
    cluster = "slurm" if launcher == "slurm" else "local"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(**dict(slurm or {}))
    return executor


def threads_per_run(launcher: str, jobs: int, slurm: Mapping[str, Any] | None) -> int:
    """Torch threads of each run: its share of this machine's cores, or its SLURM CPUs."""
    if launcher == "slurm":
        return int((slurm or {}).get("cpus_per_task", 1))
    return max(1, (os.cpu_count() or 1) // jobs)


def launch_all(
    jobs: Sequence[RunJob],
    launcher: str,
    n_parallel: int,
    folder: Path,
    slurm=None,
    on_done: Callable[[RunJob, int | str], None] | None = None,
) -> dict[str, int | str]:
    """Run every job and wait for all; ``{name: exit status, or the error of a failed job}``.
    ``on_done(job, outcome)`` is called as each job ends, in the order they end."""
    if not jobs:
        return {}
    threads = threads_per_run(launcher, n_parallel, slurm)
    executor = make_executor(launcher, folder, n_parallel, slurm)
    pending = {job.name: (job, executor.submit(run_job, job, threads)) for job in jobs}
    outcome: dict[str, int | str] = {}
    while pending:
        for name, (job, future) in list(pending.items()):
            if not future.done():
                continue
            del pending[name]
            try:
                outcome[name] = future.result()
            except Exception as err:  # a submitit job that died (timeout, node failure, ...)
                outcome[name] = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
            if on_done is not None:
                on_done(job, outcome[name])
        if pending:
            time.sleep(POLL_SECONDS)
    if isinstance(executor, ThreadPoolExecutor):
        executor.shutdown()
    return {job.name: outcome[job.name] for job in jobs}
