"""What runs and suites leave behind: files written atomically, a run's figures, the one line
per finished run, and a suite's table (``table.md``, ``results.csv``, ``results.json``) with its
summary figures."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pdesampler.evaluate import Evaluation
from pdesampler.plots import (
    plot_marginal_grid,
    plot_marginals,
    plot_metric_summary,
    plot_samples_2d,
    plot_trajectories,
)
from pdesampler.published import COLUMNS, HIGHER_IS_BETTER, TITLES
from pdesampler.train import TrainResult

__all__ = [
    "METRICS_FILE",
    "SUMMARY_METRICS",
    "density_2d",
    "run_figures",
    "run_line",
    "table_markdown",
    "write_json",
    "write_run_outputs",
    "write_suite_outputs",
    "write_text",
]

#: A run's metrics, written last: its presence means the run is complete.
METRICS_FILE = "metrics.json"
#: Model and exact samples a run keeps (``samples.pt``) for the suite's figures.
KEPT_SAMPLES = 5000

SUMMARY_METRICS = ("dlogZ", "w2", "ess", "dstd", "energy_distance", "nll")

_MARK = {True: "better", False: "worse", None: ""}


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_text(path: Path, text: str) -> None:
    """Write atomically: a temporary file of this process, then a rename, so that readers and
    concurrent writers (two suites collecting one results directory) never see half a file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (:func:`write_text`); NaN and Inf become ``null``."""
    write_text(path, json.dumps(_clean(data), indent=2, default=str))


def density_2d(target) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``log_prob`` of a 2-D target for contour plots (float64 CPU points in and out); ``None``
    when ``d != 2`` (the figures then draw the pairwise marginal of exact samples)."""
    if target.dim != 2:
        return None
    ref = next(iter(target.buffers()), None) if isinstance(target, torch.nn.Module) else None
    device, dtype = (ref.device, ref.dtype) if ref is not None else ("cpu", torch.float64)
    return lambda x: target.log_prob(x.to(device, dtype)).detach().double().cpu()


def run_figures(folder: Path, report: Evaluation, metrics: Mapping[str, Any], target) -> None:
    """A run's ``marginals.png``, ``samples_2d.png`` (d >= 2) and ``trajectories.png``."""
    method = metrics["loss_name"].rsplit(".", 1)[-1]
    title = f"{method}: ESS {metrics['ess']:.3f}"
    plot_marginals(report.output.samples, report.reference, folder / "marginals.png", title=title)
    if target.dim >= 2:
        plot_samples_2d(
            {method: report.output.samples},
            folder / "samples_2d.png",
            log_prob=density_2d(target),
            reference=report.reference,
            title=title,
        )
    if report.output.trajectory is not None:
        plot_trajectories(
            report.output.trajectory, report.output.times, folder / "trajectories.png", title=title
        )


def write_run_outputs(
    out: Path,
    report: Evaluation,
    result: TrainResult,
    metrics: Mapping[str, Any],
    target,
    figures: bool,
) -> None:
    """A finished run's ``samples.pt`` (the first :data:`KEPT_SAMPLES` model and exact samples),
    ``figures/`` (with ``figures``), ``history.json`` and, last, ``metrics.json``."""
    keep = {"samples": report.output.samples[:KEPT_SAMPLES].float().cpu()}
    if report.reference is not None:
        keep["reference"] = report.reference[:KEPT_SAMPLES].float()
    torch.save(keep, out / "samples.pt")
    if figures:
        run_figures(out / "figures", report, metrics, target)
    write_json(out / "history.json", {"adam": result.adam.history, "gn": result.gn_history})
    write_json(out / METRICS_FILE, metrics)


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


def write_suite_outputs(
    suite: DictConfig, scale: str, root: Path, rows: list[dict[str, Any]]
) -> None:
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
        f"Suite `{suite.name}` (scale `{scale}`), {len(rows)} runs, {_hardware(root, rows)}, "
        f"{time.strftime('%Y-%m-%d')}. Cells: ours / published (better|worse)."
    )
    text = intro + "\n\n" + "\n\n".join(sections) + "\n"
    write_text(root / "table.md", text)
    print("\n" + text)
    if rows:
        _suite_figures(suite, root, rows, metrics)


def _hardware(root: Path, rows: list[dict[str, Any]]) -> str:
    """The device, and on CPU the torch threads each run used (from the runs' saved configs:
    the suite's own process may have more)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    configs = [root / row["dir"] / "config.yaml" for row in rows]
    threads = {OmegaConf.load(c).get("threads") for c in configs if c.exists()}
    threads = sorted(threads - {None}) or [torch.get_num_threads()]
    low, high = threads[0], threads[-1]
    counts = str(low) if low == high else f"{low}-{high}"
    return f"CPU ({counts} torch thread{'s' if high > 1 else ''} per run)"


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
