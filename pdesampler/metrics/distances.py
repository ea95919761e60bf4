r"""Distances between sample sets: energy distance and Delta std (Sun et al., Appendix B.3,
eq. (67); Chemseddine et al., section 4; docs/metrics.md), and the input checks they share with
:mod:`~pdesampler.metrics.sinkhorn`."""

from __future__ import annotations

import math

import torch
from geomloss import SamplesLoss
from torch import Tensor

__all__ = ["delta_std", "energy_distance"]


def as_points(x: Tensor, name: str) -> Tensor:
    """``x`` as a detached float64 tensor of shape ``(N, d)``."""
    x = torch.as_tensor(x).detach()
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, d) with N >= 1, got {tuple(x.shape)}")
    bad = int((~torch.isfinite(x).all(1)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} of {x.shape[0]} rows with NaN/Inf; drop them first")
    return x.to(torch.float64)


def centered(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    r"""Shift both clouds by their common mean: distances are unchanged, and geomloss's
    :math:`|x|^2 - 2 x\cdot y + |y|^2` expansion loses less to cancellation."""
    y = y.to(x.device)
    center = torch.cat([x, y]).mean(0, keepdim=True)
    return x - center, y - center


def energy_distance(x: Tensor, y: Tensor, *, batch_size: int | None = 5_000) -> float:
    r"""geomloss's energy distance (Székely & Rizzo), as Chemseddine et al. report it (their section 4).

    ``SamplesLoss("energy")`` is the kernel norm :math:`\tfrac12\|\alpha - \beta\|_k^2` with
    :math:`k(x, y) = -\|x - y\|`; for uniform weights this is the V-statistic (diagonal terms
    included)

    .. math::
        \frac{1}{NM}\sum_{i,j}\|x_i - y_j\| - \frac{1}{2N^2}\sum_{i,i'}\|x_i - x_{i'}\|
        - \frac{1}{2M^2}\sum_{j,j'}\|y_j - y_{j'}\|,

    an estimate of
    :math:`\mathbb{E}|X-Y| - \tfrac12\mathbb{E}|X-X'| - \tfrac12\mathbb{E}|Y-Y'|`, half the
    textbook energy distance. Two details of geomloss: distances are
    :math:`\sqrt{\max(\|x-y\|^2, 10^{-8})}`, so the zero diagonal terms count as
    :math:`10^{-4}` (the value is lower by :math:`10^{-4}(1/2N + 1/2M)`), and because of the
    diagonal the value between two sets from the same law is positive, about
    :math:`\mathbb{E}|X-X'| / n` for ``n`` points per set. It is computed in float64.

    Batching: with ``batch_size`` set, ``x`` and ``y`` are cut, in order, into
    ``k = max(ceil(N / batch_size), ceil(M / batch_size))`` consecutive chunks of near-equal size
    (``torch.tensor_split``), and the result is the plain mean of the ``k`` per-chunk values.
    With ``N = M = k * batch_size`` this is the mean over batches of exactly ``batch_size``
    points, Chemseddine et al.'s protocol with 5000. ``None`` uses one batch (memory
    :math:`O((N + M)^2)`).

    Returns:
        The energy distance as a float.
    """
    x, y = as_points(x, "x"), as_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"dimension mismatch: x has d={x.shape[1]}, y has d={y.shape[1]}")
    if batch_size is None:
        k = 1
    elif batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    else:
        k = max(math.ceil(x.shape[0] / batch_size), math.ceil(y.shape[0] / batch_size))
        if k > min(x.shape[0], y.shape[0]):
            raise ValueError(
                f"{k} batches of size {batch_size} leave some empty for sets of "
                f"{x.shape[0]} and {y.shape[0]} points"
            )
    loss = SamplesLoss("energy", backend="tensorized")
    values = []
    with torch.no_grad():
        for xb, yb in zip(torch.tensor_split(x, k), torch.tensor_split(y, k), strict=True):
            values.append(float(loss(*centered(xb, yb))))
    return sum(values) / len(values)


def delta_std(x_model: Tensor, ref_stddevs: Tensor) -> float:
    r""":math:`\Delta\mathrm{std} = \big|\frac1d\sum_k \sqrt{\mathrm{Var}_{model}[X_k]}
    - \frac1d\sum_k \sigma^{ref}_k\big|` (Sun et al. eq. (67)).

    The model variance is the unbiased sample variance (divisor ``N - 1``) of each coordinate.

    Args:
        x_model: ``(N, d)`` model samples, ``N >= 2``.
        ref_stddevs: ``(d,)`` exact coordinate standard deviations of the target.
    """
    x = as_points(x_model, "x_model")
    ref = torch.as_tensor(ref_stddevs).detach().to(device=x.device, dtype=torch.float64)
    if ref.shape != (x.shape[1],):
        raise ValueError(f"ref_stddevs must have shape ({x.shape[1]},), got {tuple(ref.shape)}")
    if x.shape[0] < 2:
        raise ValueError("delta_std needs at least 2 samples")
    return abs(float(x.std(0, correction=1).mean() - ref.mean()))
