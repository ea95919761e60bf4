"""Suites: lists of runs, each an independent process, collected into one table beside the
published numbers (Sun et al. Tables 2-3; Chemseddine et al. section 4).

A suite config (``configs/suite/<name>.yaml``) names its runs; each run is a list of Hydra
overrides and optionally the published row it reproduces. Rerunning a suite skips runs whose
``metrics.json`` is complete and runs that another process holds (:func:`launch.run_lock`); an
interrupted run resumes from its checkpoint. Runs go out as local processes, ``suite.jobs`` at a
time, or as SLURM jobs (:mod:`pdesampler.launch`).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from pdesampler.checks import NON_NEGATIVE_INT, POSITIVE_INT, check
from pdesampler.launch import LAUNCHERS, LOCKED_EXIT, RunJob, is_locked, launch_all
from pdesampler.published import published_row
from pdesampler.report import METRICS_FILE, run_line, write_suite_outputs
from pdesampler.runner import is_complete
from pdesampler.suite_forecast import SuiteForecast

__all__ = ["collect", "load_suite", "run_dir_name", "run_suite", "suite_seeds"]

TABLE_METRICS = (
    "loss", "dlogZ", "w2", "w2_floor", "ess", "one_minus_ess", "dstd", "energy_distance",
    "energy_floor", "nll", "cross_entropy", "modes_covered", "n_modes", "modes_missed", "mode_tv",
    "mode_tv_floor", "log_Z_lb", "log_z_learned", "sec_per_it", "gn_sec_per_it", "steps",
    "gn_steps", "train_seconds", "score_seconds", "n_unscored", "elbo", "eubo", "ess_fwd",
    "log_Z_error_is", "emc",
)  # fmt: skip
_COUNTS = ("steps", "gn_steps", "n_modes")  # averaged over seeds, then rounded


def _overrides(run: Mapping, suite: DictConfig, scale: str, base: Sequence[str]) -> list[str]:
    """The run's command line: inherited, then the scale's, the suite's and the run's own
    overrides, and last the run's own overrides for this scale (``run.scales[scale]``)."""
    scales = suite.get("scales") or {}
    if scales and scale not in scales:
        raise ValueError(f"unknown scale {scale!r}; available: {list(scales)}")
    own_scale = (run.get("scales") or {}).get(scale, [])
    return [*base, *scales.get(scale, []), *suite.get("common", []), *run.overrides, *own_scale]


def run_suite(cfg: DictConfig, base_overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run every selected run of ``cfg.suite`` that is neither complete nor running elsewhere,
    wait for them, then write the table.

    ``base_overrides`` (seed, device, ...) are passed to every run. ``suite.select`` restricts
    the runs (names, comma-separated); ``suite.max_runs`` stops after that many new runs;
    ``suite.launcher`` (``local`` | ``slurm`` | ``submitit_local``) and ``suite.jobs`` (local
    runs at a time) choose how they run (:mod:`pdesampler.launch`); ``suite.collect_only``
    only writes the table of the complete runs. ``suite.seeds`` (a list) runs every selected
    run once per seed, in ``<name>-seed<k>``, and the table gives each metric's mean and
    standard deviation over the seeds (:func:`collect`).
    """
    suite = cfg.suite
    root = Path(suite.results_dir)
    root.mkdir(parents=True, exist_ok=True)
    selected = _selected_runs(suite)
    launcher, n_parallel = str(suite.get("launcher", "local")), suite.get("jobs", 1)
    check("suite.jobs", n_parallel, POSITIVE_INT)
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown suite.launcher {launcher!r}; available: {list(LAUNCHERS)}")
    todo, busy = _pending(cfg, root, selected, base_overrides)
    print(f"suite {suite.name}: {len(todo)} run(s) to do with launcher={launcher}", file=sys.stderr)
    slurm = OmegaConf.to_container(suite.slurm) if suite.get("slurm") else None
    forecast = _forecast(todo, launcher, int(n_parallel))
    bar = _suite_bar(suite.name, len(todo), forecast)
    outcome = launch_all(
        todo, launcher, int(n_parallel), root / ".submitit", slurm, on_done=_reporter(bar, forecast)
    )
    bar.close()
    busy += [name for name, code in outcome.items() if code == LOCKED_EXIT]
    failures = [
        f"{job.name} ({outcome[job.name]}, see {job.out_dir / 'run.log'})"
        for job in todo
        if outcome[job.name] != LOCKED_EXIT and not is_complete(job.out_dir)
    ]
    rows = collect(suite, root)
    write_suite_outputs(suite, cfg.scale, root, rows)
    if busy:
        print(f"running in another process, not in the table yet: {busy}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} run(s) failed: " + "; ".join(failures), file=sys.stderr)
    return rows


def _selected_runs(suite: DictConfig) -> set[str]:
    """The names of the runs ``suite.select`` chooses (all by default); names must be unique."""
    names = [run.name for run in suite.runs]
    if len(set(names)) != len(names):
        raise ValueError(f"suite {suite.name} has duplicate run names: {names}")
    return _selection(suite.get("select"), names)


def _pending(
    cfg: DictConfig, root: Path, selected: set[str], base: Sequence[str]
) -> tuple[list[RunJob], list[str]]:
    """The jobs to launch (selected, neither complete nor locked; at most ``suite.max_runs``,
    none with ``suite.collect_only``) and the runs another process holds."""
    suite = cfg.suite
    todo, busy = [], []
    for run in (r for r in suite.runs if r.name in selected):
        for seed in suite_seeds(suite):
            name = run_dir_name(run.name, seed)
            if is_complete(root / name):
                continue
            if is_locked(root / name):
                busy.append(name)
                continue
            overrides = _overrides(run, suite, cfg.scale, base)
            overrides += [f"seed={seed}"] if seed is not None else []
            todo.append(RunJob(name, tuple(overrides), root / name))
    todo = todo[: suite.get("max_runs")] if suite.get("max_runs") is not None else todo
    return ([] if suite.get("collect_only") else todo), busy


def _forecast(todo: list[RunJob], launcher: str, slots: int) -> SuiteForecast | None:
    """The suite's expected end, for local runs that all have a training budget."""
    if launcher != "local":
        return None
    forecast = SuiteForecast(todo, slots, time.time())
    return forecast if forecast.has_budgets else None


def _suite_bar(name: str, total: int, forecast: SuiteForecast | None) -> tqdm:
    """The suite's bar: runs done, time elapsed and, with a forecast, the expected end in place
    of tqdm's runs-left-times-seconds-per-run estimate."""
    if not total or forecast is None:
        return tqdm(total=total, unit="run", desc=f"suite {name}", disable=not total)
    bar_format = "{l_bar}{bar}| {n_fmt}/{total_fmt} runs [{elapsed}{postfix}]"  # postfix: ", ..."
    bar = tqdm(total=total, desc=f"suite {name}", bar_format=bar_format)
    bar.set_postfix_str(forecast.describe())
    return bar


def _reporter(bar: tqdm, forecast: SuiteForecast | None) -> Callable[[RunJob, int | str], None]:
    """The line printed as each run ends (:func:`run_line`), above the suite's bar, which then
    gives the suite's new expected end."""

    def report(job: RunJob, outcome: int | str) -> None:
        if forecast is not None:
            forecast.finished(job.name, time.time(), completed=is_complete(job.out_dir))
            bar.set_postfix_str(forecast.describe(), refresh=False)
        path = job.out_dir / METRICS_FILE
        if outcome == 0 and path.exists():
            bar.write(run_line(job.name, json.loads(path.read_text())), file=sys.stderr)
        elif outcome == LOCKED_EXIT:
            bar.write(f"{job.name}: running in another process", file=sys.stderr)
        else:
            bar.write(f"{job.name}: FAILED ({outcome}; see {job.out_dir / 'run.log'})",
                      file=sys.stderr)  # fmt: skip
        bar.update()

    return report


def _selection(select, names: list[str]) -> set[str]:
    if select is None:
        return set(names)
    items = [select] if isinstance(select, str) else list(select)
    wanted = {s.strip() for item in items for s in str(item).split(",") if s.strip()}
    unknown = wanted - set(names)
    if unknown:
        raise ValueError(f"unknown run(s) {sorted(unknown)} in suite.select; available: {names}")
    return wanted


def suite_seeds(suite: DictConfig) -> list[int | None]:
    """``suite.seeds`` checked: distinct integers >= 0, or ``[None]`` (one run per row, with
    the suite's own ``seed``)."""
    seeds = suite.get("seeds")
    if seeds is None:
        return [None]
    values = [seeds] if isinstance(seeds, int) else list(seeds)
    for value in values:
        check("suite.seeds", value, NON_NEGATIVE_INT)
    if not values or len(set(values)) != len(values):
        raise ValueError(f"suite.seeds must be distinct integers >= 0, got {values}")
    return values


def run_dir_name(name: str, seed: int | None) -> str:
    """A run's directory: its name, or ``<name>-seed<k>`` when the suite has ``seeds``."""
    return name if seed is None else f"{name}-seed{seed}"


def collect(suite: DictConfig, root: Path) -> list[dict[str, Any]]:
    """One row per run with at least one complete seed: its metrics and, where known, the
    published ones. Over several seeds a metric is the mean of the seeds that report it,
    ``<metric>_sd`` their sample standard deviation, ``n_seeds`` the complete seeds and
    ``per_seed`` each seed's own metrics."""
    rows, seeds = [], suite_seeds(suite)
    for run in suite.runs:
        per_seed = {}
        for seed in seeds:
            path = root / run_dir_name(run.name, seed) / METRICS_FILE
            if path.exists():
                metrics = json.loads(path.read_text())
                per_seed[seed] = {k: metrics.get(k) for k in TABLE_METRICS}
        if not per_seed:
            continue
        row = {"run": run.name, "problem": run.problem, "method": run.method, "table": "runs"}
        row["dir"] = run_dir_name(run.name, next(iter(per_seed)))
        if None in per_seed:
            row.update(per_seed[None])
        else:
            row.update(_mean_over_seeds(list(per_seed.values())), seeds=list(per_seed))
            row["per_seed"] = [{"seed": s, **m} for s, m in per_seed.items()]
        if run.get("paper"):
            paper = published_row(run.paper.table, run.paper.problem, run.paper.method)
            row.update({f"paper_{k}": v for k, v in paper.items()}, table=run.paper.table)
        rows.append(row)
    return rows


def _mean_over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each metric's mean over the runs that report it and, from two on, ``<metric>_sd``."""
    row: dict[str, Any] = {"n_seeds": len(runs)}
    for metric in TABLE_METRICS:
        values = [r[metric] for r in runs if r.get(metric) is not None]
        if not values:
            row[metric] = None
            continue
        mean = statistics.fmean(values)
        row[metric] = round(mean) if metric in _COUNTS else mean
        if len(values) > 1:
            row[f"{metric}_sd"] = statistics.stdev(values)
    return row


def load_suite(cfg: DictConfig) -> DictConfig:
    """Validate the suite config's runs (each needs name, problem, method and overrides)."""
    for run in cfg.suite.runs:
        missing = [k for k in ("name", "problem", "method", "overrides") if k not in run]
        if missing:
            raise ValueError(
                f"suite {cfg.suite.name} run {OmegaConf.to_container(run)} lacks {missing}"
            )
    return cfg
