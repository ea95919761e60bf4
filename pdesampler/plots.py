"""Figures: marginals of model samples over the exact target, and sample trajectories
(as in Sun et al. Figures 3 and 4), plus the suite summaries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

__all__ = ["plot_marginal_grid", "plot_marginals", "plot_metric_summary", "plot_trajectories"]


def _np(x: Tensor) -> np.ndarray:
    return x.detach().double().cpu().numpy()


def _range(*arrays: np.ndarray) -> tuple[float, float]:
    arrays = tuple(a for a in arrays if a.size) or (np.array([-1.0, 1.0]),)
    lo = min(np.quantile(a, 0.0005) for a in arrays)
    hi = max(np.quantile(a, 0.9995) for a in arrays)
    pad = 0.05 * (hi - lo + 1e-9)
    return lo - pad, hi + pad


def _marginal(ax, samples: np.ndarray, exact: np.ndarray | None, bins: int = 80) -> None:
    finite = samples[np.isfinite(samples)]
    lo, hi = _range(finite, *([exact] if exact is not None else []))
    edges = np.linspace(lo, hi, bins + 1)
    ax.hist(finite, bins=edges, density=True, alpha=0.6, color="tab:blue", label="model")
    if finite.size < samples.size:
        ax.set_title(f"{samples.size - finite.size} model samples NaN/Inf", fontsize=8)
    if exact is not None:
        dens, _ = np.histogram(exact, bins=edges, density=True)
        ax.step(edges[:-1], dens, where="post", color="black", lw=1.2, label="exact")


def plot_marginals(
    samples: Tensor,
    exact: Tensor | None,
    path: str | Path,
    max_dims: int = 4,
    title: str = "",
) -> Path:
    """Histograms of the first ``max_dims`` coordinates of ``samples`` over a fine histogram of
    exact target samples (``exact``; ``None`` when the target has none)."""
    d = min(samples.shape[1], max_dims)
    fig, axes = plt.subplots(1, d, figsize=(3.2 * d, 2.8), squeeze=False)
    for k in range(d):
        ax = axes[0, k]
        _marginal(ax, _np(samples[:, k]), None if exact is None else _np(exact[:, k]))
        ax.set_xlabel(f"$x_{k + 1}$")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_trajectories(
    trajectory: Tensor,
    times: Tensor,
    path: str | Path,
    dim: int = 0,
    n_lines: int = 64,
    title: str = "",
) -> Path:
    """Coordinate ``dim`` of sample paths against time, with the marginal at the end."""
    traj, t = _np(trajectory[:, :n_lines, dim]), _np(times)
    fig, (ax, ax_hist) = plt.subplots(
        1, 2, figsize=(7.5, 3), gridspec_kw={"width_ratios": [4, 1]}, sharey=True
    )
    ax.plot(t, traj, lw=0.6, alpha=0.6)
    ax.set_xlabel("t")
    ax.set_ylabel(f"$x_{dim + 1}$")
    end = _np(trajectory[-1, :, dim])
    if np.isfinite(end).any():
        ax_hist.hist(end[np.isfinite(end)], bins=60, orientation="horizontal", density=True)
    ax_hist.set_xlabel("density at end")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_marginal_grid(
    samples: Mapping[str, Tensor],
    exact: Tensor | None,
    path: str | Path,
    dim: int = 0,
    title: str = "",
) -> Path:
    """One panel per loss: the marginal of coordinate ``dim`` over the exact one."""
    names = list(samples)
    cols = min(len(names), 5)
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.5 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        _marginal(ax, _np(samples[name][:, dim]), None if exact is None else _np(exact[:, dim]))
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_metric_summary(
    rows: Sequence[Mapping], metrics: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Bar charts of each metric across the runs (one group per problem)."""
    problems = sorted({r["problem"] for r in rows})
    fig, axes = plt.subplots(
        len(metrics),
        len(problems),
        figsize=(3.6 * len(problems), 2.4 * len(metrics)),
        squeeze=False,
    )
    for j, problem in enumerate(problems):
        sub = [r for r in rows if r["problem"] == problem]
        labels = [r["method"] for r in sub]
        for i, metric in enumerate(metrics):
            ax = axes[i, j]
            values = [r.get(metric) for r in sub]
            ys = [np.nan if v is None else float(v) for v in values]
            ax.bar(range(len(sub)), ys, color="tab:blue")
            ax.set_xticks(range(len(sub)), labels, rotation=60, fontsize=7, ha="right")
            ax.set_title(f"{problem}: {metric}", fontsize=9)
            if metric in ("dlogZ", "w2", "dstd", "energy_distance", "one_minus_ess"):
                positive = [y for y in ys if np.isfinite(y) and y > 0]
                if positive and max(positive) / min(positive) > 100:
                    ax.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
