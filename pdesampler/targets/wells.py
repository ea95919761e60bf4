r"""Double-well products: Sun et al.'s many-well and FAB's ManyWell-d (docs/targets.md)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import torch
from scipy import integrate, optimize
from torch import Tensor

from pdesampler.targets.base import Target

__all__ = ["BOX_REL", "GAUSS_BOX", "MAX_MODES", "FabManyWell", "ManyWell"]


#: The most modes a well product lists weights for (FabManyWell(32) has 2^16).
MAX_MODES = 2**20


class _Density1D:
    r"""A 1-D density :math:`p(x) \propto e^{f(x)}` handled by quadrature and a grid inverse CDF.

    The support is cut to ``[a, b]``, where :math:`f \ge \max f - 40`: outside it the density
    is below :math:`e^{-40}` of its maximum, so the mass left out is negligible in float64.
    ``scipy.integrate.quad`` on ``[a, b]`` (modes as break points; tolerances 1e-12 relative,
    1e-14 absolute) gives :math:`\log Z`, the mean, the standard deviation and the entropy
    :math:`\log Z - \mathbb{E}[f]`. Sampling inverts the CDF: the cumulative trapezoid rule of
    :math:`e^{f}` on ``grid_size`` equispaced points of ``[a, b]``, linearly interpolated, so the
    sampled density is constant on each grid cell. With the default ``2**16`` points (step about
    1e-4), that CDF is within 1e-8 of the exact one for the wells here (checked against a
    cumulative Simpson rule on 2**20 points), far below what any sample size can resolve.

    The modes of the density are its wells: ``splits`` are the local minima of :math:`f` between
    them (grid points refined by a bounded scalar minimization), and ``segment_masses`` the exact
    probability of each segment between consecutive splits (by the same quadrature).

    Args:
        log_density: :math:`f`, a vectorized NumPy function.
        search: an interval that must contain the mass (an error is raised otherwise).
        grid_size: the number of points of the inverse-CDF grid.
    """

    CUTOFF = 40.0

    def __init__(
        self,
        log_density: Callable[[np.ndarray], np.ndarray],
        search: tuple[float, float] = (-20.0, 20.0),
        grid_size: int = 2**16,
    ) -> None:
        self.log_density = log_density
        coarse = np.linspace(*search, 4001)
        f = log_density(coarse)
        self.f_max = float(f.max())
        inside = np.flatnonzero(f >= self.f_max - self.CUTOFF)
        if inside[0] == 0 or inside[-1] == len(coarse) - 1:
            raise ValueError(f"the 1-D density has mass outside the search interval {search}")
        self.a, self.b = float(coarse[inside[0] - 1]), float(coarse[inside[-1] + 1])
        is_mode = (f[1:-1] >= f[:-2]) & (f[1:-1] >= f[2:])
        modes = [float(x) for x in coarse[1:-1][is_mode]]
        step = float(coarse[1] - coarse[0])
        splits = [
            optimize.minimize_scalar(
                lambda x: float(log_density(np.float64(x))),
                bounds=(c - step, c + step),
                method="bounded",
                options={"xatol": 1e-10},
            ).x
            for c, is_min in zip(coarse[1:-1], (f[1:-1] < f[:-2]) & (f[1:-1] < f[2:]), strict=True)
            if is_min and self.a < c < self.b
        ]

        def integral(g: Callable[[float], float], lo: float = self.a, hi: float = self.b) -> float:
            def integrand(x: float) -> float:
                return g(x) * math.exp(float(log_density(np.float64(x))) - self.f_max)

            inner = [m for m in modes if lo < m < hi] or None
            value, _ = integrate.quad(
                integrand, lo, hi, points=inner, epsabs=1e-14, epsrel=1e-12, limit=200
            )
            return value

        z = integral(lambda x: 1.0)
        self.log_Z = math.log(z) + self.f_max
        self.mean = integral(lambda x: x) / z
        self.std = math.sqrt(integral(lambda x: (x - self.mean) ** 2) / z)
        self.entropy = self.log_Z - integral(lambda x: float(log_density(np.float64(x)))) / z
        edges = [self.a, *splits, self.b]
        self.splits = torch.tensor(splits, dtype=torch.float64)
        self.segment_masses = torch.tensor(
            [integral(lambda x: 1.0, lo, hi) / z for lo, hi in itertools.pairwise(edges)],
            dtype=torch.float64,
        )

        grid = np.linspace(self.a, self.b, grid_size)
        p = np.exp(log_density(grid) - self.f_max)
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]))])
        self.grid = torch.from_numpy(grid)
        self.cdf = torch.from_numpy(cdf / cdf[-1])

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        """Inverse-CDF samples, float64 on the CPU, from the uniforms of ``generator``."""
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
        return self.icdf(u)

    def icdf(self, u: Tensor) -> Tensor:
        """The grid inverse CDF (linear interpolation of the grid CDF)."""
        idx = torch.searchsorted(self.cdf, u).clamp(1, len(self.cdf) - 1)
        c0, c1 = self.cdf[idx - 1], self.cdf[idx]
        x0, x1 = self.grid[idx - 1], self.grid[idx]
        frac = ((u - c0) / (c1 - c0).clamp_min(1e-300)).clamp(0.0, 1.0)
        return x0 + frac * (x1 - x0)

    def product_mode_of(self, x: Tensor) -> Tensor:
        r"""The mode of ``(N, m)`` independent coordinates of this density: with :math:`s_j` the
        segment coordinate ``j`` is in, the index :math:`\sum_j s_j K^j` (``K`` segments)."""
        segment = torch.searchsorted(self.splits.to(x), x.contiguous())
        radix = len(self.segment_masses) ** torch.arange(x.shape[-1], device=x.device)
        return (segment * radix).sum(-1)

    def product_mode_weights(self, m: int) -> Tensor | None:
        """The probability of each mode of ``m`` independent coordinates, indexed as in
        :meth:`product_mode_of`: the product of their segments' masses, shape ``(K^m,)``;
        ``None`` beyond ``MAX_MODES`` modes."""
        if len(self.segment_masses) ** m > MAX_MODES:
            return None
        weights = torch.ones(1, dtype=torch.float64)
        for _ in range(m):
            weights = (self.segment_masses[:, None] * weights[None, :]).reshape(-1)
        return weights

    def interval(self, rel: float) -> tuple[float, float]:
        r"""The smallest grid interval outside of which :math:`p < ` ``rel`` :math:`\max p`."""
        f = self.log_density(self.grid.numpy())
        inside = np.flatnonzero(f >= self.f_max + math.log(rel))
        return float(self.grid[inside[0]]), float(self.grid[inside[-1]])


#: The box of a double-well coordinate: where its density is at least BOX_REL times its maximum.
BOX_REL = 1e-10
#: The box of a standard Gaussian coordinate: [-GAUSS_BOX, GAUSS_BOX].
GAUSS_BOX = 5.0


class ManyWell(Target):
    r"""Many-well (Sun et al. eq. (71)):

    .. math:: \log\rho(x) = -\sum_{i=1}^{m} (x_i^2 - \delta)^2 - \frac12 \sum_{i=m+1}^{d} x_i^2.

    It factorizes into ``m`` double wells and ``d - m`` standard Gaussians, so
    :math:`\log Z = m \log Z_1(\delta) + \frac{d-m}{2}\log(2\pi)` with
    :math:`Z_1 = \int e^{-(x^2-\delta)^2} dx` by 1-D quadrature; the standard deviations and
    entropy likewise, and exact samples by inverse-CDF sampling of each double-well coordinate
    (see :class:`_Density1D`). The box covers each double-well coordinate where its density is at
    least ``BOX_REL`` of its maximum and each Gaussian coordinate on :math:`\pm` ``GAUSS_BOX``.

    Instances: ``ManyWell(5, 5, 4)`` and ``ManyWell(50, 5, 2)``.

    Args:
        dim: ``d``.
        m: the number of double-well coordinates, ``0 <= m <= d``.
        delta: :math:`\delta`.
    """

    def __init__(self, dim: int, m: int, delta: float) -> None:
        if dim < 1 or not 0 <= m <= dim:
            raise ValueError(f"ManyWell expects dim >= 1 and 0 <= m <= dim, got dim={dim}, m={m}")
        m, delta = int(m), float(delta)
        well = _Density1D(lambda x: -((x * x - delta) ** 2))
        lo, hi = well.interval(BOX_REL)
        n_gauss = dim - m
        lower = torch.tensor([lo] * m + [-GAUSS_BOX] * n_gauss, dtype=torch.float64)
        upper = torch.tensor([hi] * m + [GAUSS_BOX] * n_gauss, dtype=torch.float64)
        super().__init__(dim, (lower, upper))
        self.m, self.delta, self.well = m, delta, well
        self.log_Z = self.m * self.well.log_Z + 0.5 * n_gauss * math.log(2 * math.pi)
        self.stddevs = torch.tensor([self.well.std] * self.m + [1.0] * n_gauss, dtype=torch.float64)
        self.entropy = self.m * self.well.entropy + 0.5 * n_gauss * (1 + math.log(2 * math.pi))
        self.mode_weights = self.well.product_mode_weights(self.m)

    def mode_of(self, x: Tensor) -> Tensor:
        """The mode: which well each double-well coordinate is in (``2^m`` modes of equal
        weight; the wells split at 0)."""
        self.check_input(x)
        return self.well.product_mode_of(x[:, : self.m])

    def _log_prob(self, x: Tensor) -> Tensor:
        wells, gauss = x[:, : self.m], x[:, self.m :]
        return -((wells * wells - self.delta) ** 2).sum(-1) - 0.5 * (gauss * gauss).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        wells = self.well.sample((n, self.m), generator)
        gauss = torch.randn(n, self.dim - self.m, generator=generator, dtype=torch.float64)
        return torch.cat([wells, gauss], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, m={self.m}, delta={self.delta}, log_Z={self.log_Z}"


class FabManyWell(Target):
    r"""FAB's ManyWell-d (Midgley et al.; used by Chemseddine et al.): ``d/2``
    copies of a 2-D double well on the pairs :math:`(x_{2i}, x_{2i+1})`,

    .. math:: \log\rho(x) = -\sum_{i=0}^{d/2-1} E(x_{2i}, x_{2i+1}), \qquad
        E(x_1, x_2) = x_1^4 - 6 x_1^2 - \tfrac12 x_1 + \tfrac12 x_2^2.

    Each pair separates: :math:`x_1 \propto e^{-(x_1^4 - 6x_1^2 - x_1/2)}` (1-D quadrature and
    inverse-CDF sampling, see :class:`_Density1D`), :math:`x_2 \sim \mathcal{N}(0, 1)`. Hence
    :math:`\log Z = \frac d2 \big(\log Z_{x_1} + \frac12\log 2\pi\big)` with
    :math:`\log Z_{2D} = 10.293480`; the pair entropy is 1.71858 and
    :math:`P(x_1 > 0) = 0.8443`. The box is as for :class:`ManyWell`.

    Args:
        dim: ``d``, even and positive (FAB uses 32, Chemseddine et al. 8).
    """

    def __init__(self, dim: int = 32) -> None:
        if dim < 2 or dim % 2:
            raise ValueError(f"FabManyWell expects an even dim >= 2, got {dim}")
        well = _Density1D(lambda x: -(x**4 - 6 * x**2 - 0.5 * x))
        lo, hi = well.interval(BOX_REL)
        pairs = dim // 2
        lower = torch.tensor([lo, -GAUSS_BOX] * pairs, dtype=torch.float64)
        upper = torch.tensor([hi, GAUSS_BOX] * pairs, dtype=torch.float64)
        super().__init__(dim, (lower, upper))
        self.well = well
        self.log_Z_pair = self.well.log_Z + 0.5 * math.log(2 * math.pi)
        self.log_Z = pairs * self.log_Z_pair
        self.stddevs = torch.tensor([self.well.std, 1.0] * pairs, dtype=torch.float64)
        self.entropy_pair = self.well.entropy + 0.5 * (1 + math.log(2 * math.pi))
        self.entropy = pairs * self.entropy_pair
        self.mode_weights = self.well.product_mode_weights(pairs)

    def mode_of(self, x: Tensor) -> Tensor:
        r"""The mode: which well each :math:`x_{2i}` is in (``2^{d/2}`` modes; the wells split
        at the barrier :math:`x_1 \approx -0.042`, the deep one holding 0.8443 of the mass)."""
        self.check_input(x)
        return self.well.product_mode_of(x[:, 0::2])

    def _log_prob(self, x: Tensor) -> Tensor:
        x1, x2 = x[:, 0::2], x[:, 1::2]
        x1_sq = x1 * x1
        energy = x1_sq * x1_sq - 6 * x1_sq - 0.5 * x1 + 0.5 * x2 * x2
        return -energy.sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        pairs = self.dim // 2
        x1 = self.well.sample((n, pairs), generator)
        x2 = torch.randn(n, pairs, generator=generator, dtype=torch.float64)
        return torch.stack([x1, x2], dim=-1).reshape(n, self.dim)
