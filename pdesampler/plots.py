"""Figures: marginals of model samples over the exact target, sample trajectories (as in Sun et
al. Figures 3 and 4), model samples over the target's density contours in two coordinates (as
in Sun et al. Figure 2 and the Chemseddine et al. figures), plus the suite summaries."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

__all__ = [
    "plot_marginal_grid",
    "plot_marginals",
    "plot_metric_summary",
    "plot_samples_2d",
    "plot_trajectories",
]

#: Contour levels of the density, as in a Gaussian's 1, 2, 3 and 4 standard deviations:
#: ``p = p_max exp(-k^2 / 2)``.
CONTOUR_SIGMAS = (1.0, 2.0, 3.0, 4.0)


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
    if finite.size:  # a density of no samples is 0 / 0
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
    return _save(fig, path, title)


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
    return _save(fig, path, title)


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
    return _save(fig, path, title)


def _density_on_grid(
    dims: tuple[int, int],
    lims: tuple[tuple[float, float], tuple[float, float]],
    log_prob: Callable[[Tensor], Tensor] | None,
    reference: np.ndarray | None,
    n: int = 160,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The target density of coordinates ``dims`` on an ``n x n`` grid: ``exp(log_prob)`` for a
    2-D target (``log_prob`` given), else a 2-D histogram of exact samples (the pairwise
    marginal), else ``None``."""
    xs, ys = (np.linspace(lo, hi, n) for lo, hi in lims)
    if log_prob is not None:
        X, Y = np.meshgrid(xs, ys)
        grid = torch.from_numpy(np.stack([X.ravel(), Y.ravel()], axis=1))
        log_p = _np(log_prob(grid)).reshape(X.shape)
        return X, Y, np.exp(log_p - np.nanmax(log_p))
    if reference is None:
        return None
    edges = [np.linspace(lo, hi, n // 4 + 1) for lo, hi in lims]
    hist, ex, ey = np.histogram2d(reference[:, dims[0]], reference[:, dims[1]], bins=edges)
    X, Y = np.meshgrid((ex[:-1] + ex[1:]) / 2, (ey[:-1] + ey[1:]) / 2)
    return X, Y, hist.T / max(hist.max(), 1)


def _view_limits(
    finite: Mapping[str, np.ndarray], reference: np.ndarray | None
) -> tuple[tuple[float, float], tuple[float, float]]:
    """The panels' x and y ranges: the exact samples' range widened by half of it on each side
    where there are exact samples (so one method's outliers cannot shrink the target to a corner
    of every panel), else the model samples' range."""
    if reference is None:
        return tuple(_range(*(v[:, j] for v in finite.values())) for j in range(2))
    widened = []
    for j in range(2):
        lo, hi = _range(reference[:, j])
        widened.append((lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo)))
    return tuple(widened)


def plot_samples_2d(
    samples: Mapping[str, Tensor],
    path: str | Path,
    *,
    log_prob: Callable[[Tensor], Tensor] | None = None,
    reference: Tensor | None = None,
    dims: tuple[int, int] = (0, 1),
    max_points: int = 2000,
    title: str = "",
) -> Path:
    """One panel per method: model samples in coordinates ``dims`` over the target's density
    contours at ``p_max exp(-k^2/2)``, ``k`` in ``CONTOUR_SIGMAS``. ``log_prob`` (a batched
    function of ``(n, 2)`` float64 points) draws the exact density of a 2-D target; for ``d > 2``
    the contours are those of a histogram of the exact ``reference`` samples (the pairwise
    marginal). Non-finite samples are left out and counted in the panel title, as are samples
    outside the view (:func:`_view_limits`)."""
    names = list(samples)
    ref = None if reference is None else _np(reference)
    points = {k: _np(v[:max_points][:, list(dims)]) for k, v in samples.items()}
    finite = {k: v[np.isfinite(v).all(1)] for k, v in points.items()}
    lims = _view_limits(finite, None if ref is None else ref[:, list(dims)])
    density = _density_on_grid(dims, lims, log_prob, ref)
    cols = min(len(names), 4)
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    levels = sorted(np.exp(-0.5 * np.square(CONTOUR_SIGMAS)))
    for ax, name in zip(axes.flat, names, strict=False):
        if density is not None:
            ax.contour(*density, levels=levels, colors="black", linewidths=0.7)
        ax.scatter(*finite[name].T, s=2, alpha=0.35, color="tab:blue", rasterized=True)
        dropped = len(points[name]) - len(finite[name])
        inside = [(lo <= c) & (c <= hi) for c, (lo, hi) in zip(finite[name].T, lims, strict=True)]
        off_view = int((~(inside[0] & inside[1])).sum())
        notes = [f"{dropped} NaN/Inf"] * bool(dropped) + [f"{off_view} off view"] * bool(off_view)
        ax.set_title(name + (f" ({', '.join(notes)})" if notes else ""), fontsize=9)
        ax.set_xlim(*lims[0])
        ax.set_ylim(*lims[1])
        ax.set_xlabel(f"$x_{dims[0] + 1}$")
        ax.set_ylabel(f"$x_{dims[1] + 1}$")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    return _save(fig, path, title)


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
    return _save(fig, path, title)


def _save(fig, path: str | Path, title: str) -> Path:
    """Title and lay out ``fig``, write it to ``path`` (folders made) and close it."""
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
