r"""The target interface and the Gaussian target (docs/targets.md).

A :class:`Target` is an unnormalized density :math:`\rho` on :math:`\mathbb{R}^d`. Its
``log_prob`` works on a batch ``(N, d)`` and is written with plain tensor operations, so that
``torch.func`` transforms (``vmap``, ``grad``, ``jvp``) pass through it; constants are cast to the
input's dtype and device on the fly, so one target serves float32 and float64, CPU and CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Gaussian", "Target", "tail_exponent"]


def _as_vector(value: float | Sequence[float] | Tensor, dim: int, name: str) -> Tensor:
    vec = torch.as_tensor(value, dtype=torch.float64)
    if vec.dim() == 0:
        vec = vec.expand(dim).clone()
    if vec.shape != (dim,):
        raise ValueError(f"{name} must be a scalar or have shape ({dim},), got {tuple(vec.shape)}")
    return vec


class Target(nn.Module):
    r"""An unnormalized target density :math:`\rho = Z\, p_{target}` with exact references.

    Attributes:
        dim: the dimension ``d``.
        log_Z: the exact :math:`\log Z` (``None`` when unknown).
        box: ``(lower, upper)``, float64 tensors of shape ``(d,)`` that bound the collocation box.
        stddevs: exact coordinate standard deviations, shape ``(d,)`` (``None`` when unknown).
        entropy: differential entropy of the normalized target (``None`` when unknown).
        mode_weights: the exact probability of each mode, shape ``(K,)`` (``None`` when the
            target does not split into known modes); :meth:`mode_of` tells which mode a point
            is in. They feed the mode-coverage metrics (:func:`pdesampler.metrics.mode_coverage`).
    """

    dim: int
    log_Z: float | None = None  # noqa: N815 (the papers' name)
    entropy: float | None = None
    mode_weights: Tensor | None = None

    def __init__(self, dim: int, box: tuple[Tensor, Tensor]) -> None:
        super().__init__()
        self.dim = int(dim)
        self.box = (
            _as_vector(box[0], self.dim, "box lower"),
            _as_vector(box[1], self.dim, "box upper"),
        )
        self.stddevs: Tensor | None = None

    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError unless ``x`` has shape ``(N, dim)``."""
        if x.dim() != 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__}.log_prob expects x of shape (N, {self.dim}), "
                f"got {tuple(x.shape)}"
            )

    def log_prob(self, x: Tensor) -> Tensor:
        r"""Unnormalized :math:`\log\rho(x)` for ``x`` of shape ``(N, d)``, returns ``(N,)``."""
        self.check_input(x)
        return self._log_prob(x)

    def _log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact samples of the normalized target, float64 on the CPU, shape ``(n, d)``."""
        raise NotImplementedError(f"{type(self).__name__} has no exact sampler")

    def mode_of(self, x: Tensor) -> Tensor:
        """The index in ``mode_weights`` of the mode each row of ``x`` ``(N, d)`` is in, ``(N,)``."""
        raise NotImplementedError(f"{type(self).__name__} does not define its modes")

    def extra_repr(self) -> str:
        return f"dim={self.dim}, log_Z={self.log_Z}"


def tail_exponent(target: Target, n_directions: int = 64, seed: int = 0) -> float:
    r"""The growth exponent ``p`` of :math:`-\log\rho(c + r\,u) \sim r^p` far outside the box.

    With ``c`` the box's centre, ``R`` its half-diagonal and :math:`f(r)` the mean of
    :math:`-\log\rho(c + r\,u)` over ``n_directions`` random unit vectors ``u``:
    :math:`p = \log_2 \frac{f(8R) - f(4R)}{f(4R) - f(2R)}` (exact for :math:`f = A r^p + B`).
    About 2 for Gaussian mixtures, 4 for the many-wells; NaN where :math:`\log\rho` is not
    finite out there. Evaluated in float64 unless the target holds another floating dtype.
    """
    lower, upper = target.box
    centre, half_diagonal = (lower + upper) / 2, float((upper - lower).norm()) / 2
    u = torch.randn(n_directions, target.dim, generator=torch.Generator().manual_seed(seed))
    u = (u / u.norm(dim=1, keepdim=True)).to(torch.float64)
    dtype = next((b.dtype for b in target.buffers() if b.is_floating_point()), torch.float64)
    with torch.no_grad():
        f = [
            -target.log_prob((centre + k * half_diagonal * u).to(dtype)).double().mean()
            for k in (2, 4, 8)
        ]
        return float(torch.log2((f[2] - f[1]) / (f[1] - f[0])))


class Gaussian(Target):
    r""":math:`\rho(x) = Z\,\mathcal{N}(x; m, \mathrm{diag}(s^2))`; ``log_Z`` shifts the
    normalization so that tests can check that an unnormalized target is handled.

    Args:
        mean: ``m``, a scalar or a vector of length ``dim``.
        std: ``s``, a scalar or a vector of length ``dim``.
        dim: the dimension (needed when both ``mean`` and ``std`` are scalars).
        log_Z: :math:`\log Z` of the unnormalized density.
        box_width: the box is :math:`m \pm` ``box_width`` :math:`\cdot s`.
    """

    def __init__(
        self,
        mean: float | Sequence[float] | Tensor = 0.0,
        std: float | Sequence[float] | Tensor = 1.0,
        dim: int | None = None,
        log_Z: float = 0.0,
        box_width: float = 5.0,
    ) -> None:
        if dim is None:
            sizes = [
                torch.as_tensor(v).numel() for v in (mean, std) if torch.as_tensor(v).dim() > 0
            ]
            if not sizes:
                raise ValueError("Gaussian needs dim when mean and std are both scalars")
            dim = sizes[0]
        mean_vec, std_vec = _as_vector(mean, dim, "mean"), _as_vector(std, dim, "std")
        if (std_vec <= 0).any():
            raise ValueError(f"Gaussian std must be positive, got {std_vec.tolist()}")
        super().__init__(dim, (mean_vec - box_width * std_vec, mean_vec + box_width * std_vec))
        self.register_buffer("mean", mean_vec, persistent=False)
        self.register_buffer("std", std_vec, persistent=False)
        self.log_Z = float(log_Z)
        self.stddevs = std_vec.clone()
        self.entropy = float(0.5 * dim * (1 + math.log(2 * math.pi)) + std_vec.log().sum())

    def _log_prob(self, x: Tensor) -> Tensor:
        mean, std = self.mean.to(x), self.std.to(x)
        z = (x - mean) / std
        log_norm = 0.5 * self.dim * math.log(2 * math.pi) + std.log().sum()
        return -0.5 * (z * z).sum(-1) - log_norm + self.log_Z

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        mean, std = (b.to("cpu", torch.float64) for b in (self.mean, self.std))
        return mean + std * noise
