"""Suites: lists of runs, each an independent process, collected into one table beside the
published numbers (Sun et al. Tables 2-3; Chemseddine et al. section 4).

A suite config (``configs/suite/<name>.yaml``) names its runs; each run is a list of Hydra
overrides and optionally the published row it reproduces. Rerunning a suite skips runs whose
``metrics.json`` is complete and runs that another process holds (:func:`launch.run_lock`); an
interrupted run resumes from its checkpoint. Runs go out as local processes, ``suite.jobs`` at a
time, or as SLURM jobs (:mod:`pdesampler.launch`).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from pdesampler.checks import NON_NEGATIVE_INT, POSITIVE_INT, check
from pdesampler.launch import LAUNCHERS, LOCKED_EXIT, RunJob, is_locked, launch_all
from pdesampler.plots import plot_marginal_grid, plot_metric_summary, plot_samples_2d
from pdesampler.published import COLUMNS, HIGHER_IS_BETTER, TITLES, published_row
from pdesampler.runner import METRICS_FILE, density_2d, is_complete, write_json, write_text

__all__ = ["collect", "run_dir_name", "run_line", "run_suite", "suite_seeds", "table_markdown"]

TABLE_METRICS = (
    "loss", "dlogZ", "w2", "w2_floor", "ess", "one_minus_ess", "dstd", "energy_distance",
    "energy_floor", "nll", "cross_entropy", "modes_covered", "n_modes", "modes_missed", "mode_tv",
    "mode_tv_floor", "log_Z_lb", "log_z_learned", "sec_per_it", "gn_sec_per_it", "steps",
    "gn_steps", "train_seconds", "score_seconds", "n_unscored",
)  # fmt: skip
SUMMARY_METRICS = ("dlogZ", "w2", "ess", "dstd", "energy_distance", "nll")
_COUNTS = ("steps", "gn_steps", "n_modes")  # averaged over seeds, then rounded
_MARK = {True: "better", False: "worse", None: ""}


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
    names = [run.name for run in suite.runs]
    if len(set(names)) != len(names):
        raise ValueError(f"suite {suite.name} has duplicate run names: {names}")
    selected = _selection(suite.get("select"), names)
    launcher, n_parallel = str(suite.get("launcher", "local")), suite.get("jobs", 1)
    check("suite.jobs", n_parallel, POSITIVE_INT)
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown suite.launcher {launcher!r}; available: {list(LAUNCHERS)}")
    seeds = suite_seeds(suite)
    todo, busy = [], []
    for run in (r for r in suite.runs if r.name in selected):
        for seed in seeds:
            name = run_dir_name(run.name, seed)
            if is_complete(root / name):
                continue
            if is_locked(root / name):
                busy.append(name)
                continue
            overrides = _overrides(run, suite, cfg.scale, base_overrides)
            overrides += [f"seed={seed}"] if seed is not None else []
            todo.append(RunJob(name, tuple(overrides), root / name))
    todo = todo[: suite.get("max_runs")] if suite.get("max_runs") is not None else todo
    if suite.get("collect_only"):
        todo = []
    print(f"suite {suite.name}: {len(todo)} run(s) to do with launcher={launcher}", file=sys.stderr)
    slurm = OmegaConf.to_container(suite.slurm) if suite.get("slurm") else None
    bar = tqdm(total=len(todo), unit="run", desc=f"suite {suite.name}", disable=not todo)
    outcome = launch_all(
        todo, launcher, int(n_parallel), root / ".submitit", slurm, on_done=_reporter(bar)
    )
    bar.close()
    busy += [name for name, code in outcome.items() if code == LOCKED_EXIT]
    failures = [
        f"{job.name} ({outcome[job.name]}, see {job.out_dir / 'run.log'})"
        for job in todo
        if outcome[job.name] != LOCKED_EXIT and not is_complete(job.out_dir)
    ]
    rows = collect(suite, root)
    write_outputs(suite, cfg.scale, root, rows)
    if busy:
        print(f"running in another process, not in the table yet: {busy}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} run(s) failed: " + "; ".join(failures), file=sys.stderr)
    return rows


def _reporter(bar: tqdm) -> Callable[[RunJob, int | str], None]:
    """The line printed as each run ends (:func:`run_line`), above the suite's bar."""

    def report(job: RunJob, outcome: int | str) -> None:
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


def run_line(name: str, metrics: Mapping[str, Any]) -> str:
    """One finished run: ``name  train 120 s  score 14 s  ESS 0.9931  dlogZ 0.0042  modes 9/9``
    (``unscored N`` when the scoring budget left samples unsolved)."""
    parts = [name, f"train {_fmt_seconds(metrics.get('train_seconds'))}"]
    parts.append(f"score {_fmt_seconds(metrics.get('score_seconds'))}")
    parts.append(f"ESS {_fmt(metrics.get('ess'))}")
    parts.append(f"dlogZ {_fmt(metrics.get('dlogZ'))}")
    if metrics.get("n_modes") is not None:
        parts.append(f"modes {metrics.get('modes_covered')}/{metrics['n_modes']}")
    if metrics.get("n_unscored"):
        parts.append(f"unscored {metrics['n_unscored']}")
    return "  ".join(parts)


def _fmt_seconds(value) -> str:
    return "-" if value is None else f"{value:.0f} s"


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


def _verdict(ours, paper, metric: str) -> bool | None:
    if ours is None or paper is None:
        return None
    if metric in HIGHER_IS_BETTER:
        return ours >= paper
    if metric in ("sec_per_it",):
        return ours <= paper
    return abs(ours) <= abs(paper)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return f"{value:.2e}"


def _budget(row: Mapping[str, Any]) -> str:
    """What the run trained for: ``150 s, 2345 steps`` (``+ 40 GN`` after Adam's)."""
    seconds, steps, gn_steps = row.get("train_seconds"), row.get("steps"), row.get("gn_steps")
    if seconds is None or steps is None:
        return "-"
    text = f"{seconds:.0f} s, {steps} steps" + (f" + {gn_steps} GN" if gn_steps else "")
    n_seeds = row.get("n_seeds")
    return text + (f" (mean of {n_seeds} seeds)" if n_seeds and n_seeds > 1 else "")


def table_markdown(rows: list[dict[str, Any]], metrics: Sequence[str]) -> str:
    """Rows grouped by problem: the training budget each run had, then each metric as
    ``ours / paper (better|worse)``, where ours reads ``mean ± sd`` over several seeds and
    ``modes_covered`` reads ``k of K`` (``K`` modes)."""
    header = ["problem", "method", "budget", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["problem"], row["method"], _budget(row)]
        for m in metrics:
            paper = row.get(f"paper_{m}")
            cell = _fmt(row.get(m))
            if row.get(f"{m}_sd") is not None:
                cell += f" ± {_fmt(row[f'{m}_sd'])}"
            if m == "modes_covered" and row.get("n_modes") is not None:
                cell += f" of {_fmt(row['n_modes'])}"
            if paper is not None:
                mark = _MARK[_verdict(row.get(m), paper, m)]
                cell += f" / {_fmt(paper)}" + (f" ({mark})" if mark else "")
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(suite: DictConfig, scale: str, root: Path, rows: list[dict[str, Any]]) -> None:
    """``results.csv``, ``results.json``, ``table.md`` and ``figures/``; prints the table."""
    write_json(root / "results.json", rows)
    flat = [{k: v for k, v in row.items() if k != "per_seed"} for row in rows]
    keys = sorted({k for row in flat for k in row}, key=lambda k: (k.startswith("paper_"), k))
    csv_text = io.StringIO()
    writer = csv.DictWriter(csv_text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(flat)
    write_text(root / "results.csv", csv_text.getvalue())
    metrics = list(suite.get("table_metrics", SUMMARY_METRICS))
    sections = []
    for table in dict.fromkeys(row["table"] for row in rows):
        columns = list(COLUMNS.get(table, metrics))
        title = TITLES.get(table, "Runs without a published counterpart")
        group = [row for row in rows if row["table"] == table]
        sections.append(f"### {title}\n\n{table_markdown(group, columns)}")
    intro = (
        f"Suite `{suite.name}` (scale `{scale}`), {len(rows)} runs, {_hardware()}, "
        f"{time.strftime('%Y-%m-%d')}. Cells: ours / published (better|worse)."
    )
    text = intro + "\n\n" + "\n\n".join(sections) + "\n"
    write_text(root / "table.md", text)
    print("\n" + text)
    if rows:
        _suite_figures(suite, root, rows, metrics)


def _hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({torch.get_num_threads()} threads)"


def _suite_figures(suite: DictConfig, root: Path, rows: list[dict[str, Any]], metrics) -> None:
    figures = root / "figures"
    summary = list(suite.get("summary_metrics") or metrics)
    plot_metric_summary(rows, summary, figures / "summary.png", title=f"suite {suite.name}")
    for problem in sorted({r["problem"] for r in rows}):
        samples = {}
        reference = None
        for row in (r for r in rows if r["problem"] == problem):
            path = root / row["dir"] / "samples.pt"
            if path.exists():
                saved = torch.load(path, weights_only=True)
                samples[row["method"]] = saved["samples"]
                reference = saved.get("reference", reference)
        if samples:
            slug = "".join(c if c.isalnum() else "_" for c in problem)
            plot_marginal_grid(samples, reference, figures / f"marginals_{slug}.png", title=problem)
            first = next(r for r in rows if r["problem"] == problem)
            if next(iter(samples.values())).shape[1] >= 2:
                log_prob = density_2d(_run_target(root / first["dir"]))
                plot_samples_2d(
                    samples,
                    figures / f"samples_2d_{slug}.png",
                    log_prob=log_prob,
                    reference=reference,
                    title=problem,
                )


def _run_target(run_dir: Path):
    """The target of a finished run, rebuilt from its saved ``config.yaml``."""
    return instantiate(OmegaConf.load(run_dir / "config.yaml").target)


def load_suite(cfg: DictConfig) -> DictConfig:
    """Validate the suite config's runs (each needs name, problem, method and overrides)."""
    for run in cfg.suite.runs:
        missing = [k for k in ("name", "problem", "method", "overrides") if k not in run]
        if missing:
            raise ValueError(
                f"suite {cfg.suite.name} run {OmegaConf.to_container(run)} lacks {missing}"
            )
    return cfg
