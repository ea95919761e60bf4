r"""Target densities with exact references (docs/targets.md).

A :class:`Target` is an unnormalized density :math:`\rho` on :math:`\mathbb{R}^d`. Its
``log_prob`` works on a batch ``(N, d)`` and is written with plain tensor operations, so that
``torch.func`` transforms (``vmap``, ``grad``, ``jvp``) pass through it; constants are cast to the
input's dtype and device on the fly, so one target serves float32 and float64, CPU and CUDA.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import integrate, optimize
from torch import Tensor, nn

__all__ = [
    "GMM9",
    "GMM40",
    "FabManyWell",
    "Gaussian",
    "GaussianMixture",
    "ManyWell",
    "Target",
    "tail_exponent",
]


def _as_vector(value: float | Sequence[float] | Tensor, dim: int, name: str) -> Tensor:
    vec = torch.as_tensor(value, dtype=torch.float64)
    if vec.dim() == 0:
        vec = vec.expand(dim).clone()
    if vec.shape != (dim,):
        raise ValueError(f"{name} must be a scalar or have shape ({dim},), got {tuple(vec.shape)}")
    return vec


class Target(nn.Module):
    """An unnormalized target density :math:`\\rho = Z\\, p_{target}` with exact references.

    Attributes:
        dim: the dimension ``d``.
        log_Z: the exact :math:`\\log Z` (``None`` when unknown).
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
        """Unnormalized :math:`\\log\\rho(x)` for ``x`` of shape ``(N, d)``, returns ``(N,)``."""
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
    """The growth exponent ``p`` of :math:`-\\log\\rho(c + r\\,u) \\sim r^p` far outside the box.

    With ``c`` the box's centre, ``R`` its half-diagonal and :math:`f(r)` the mean of
    :math:`-\\log\\rho(c + r\\,u)` over ``n_directions`` random unit vectors ``u``:
    :math:`p = \\log_2 \\frac{f(8R) - f(4R)}{f(4R) - f(2R)}` (exact for :math:`f = A r^p + B`).
    About 2 for Gaussian mixtures, 4 for the many-wells; NaN where :math:`\\log\\rho` is not
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
    """:math:`\\rho(x) = Z\\,\\mathcal{N}(x; m, \\mathrm{diag}(s^2))`; ``log_Z`` shifts the
    normalization so that tests can check that an unnormalized target is handled.

    Args:
        mean: ``m``, a scalar or a vector of length ``dim``.
        std: ``s``, a scalar or a vector of length ``dim``.
        dim: the dimension (needed when both ``mean`` and ``std`` are scalars).
        log_Z: :math:`\\log Z` of the unnormalized density.
        box_width: the box is :math:`m \\pm` ``box_width`` :math:`\\cdot s`.
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


# ----------------------------------------------------------------------------- mixtures


class GaussianMixture(Target):
    r"""A diagonal-covariance Gaussian mixture,

    .. math:: \rho(x) = Z \sum_{k=1}^K w_k\, \mathcal{N}\big(x; m_k, \mathrm{diag}(s_k^2)\big),
        \qquad \sum_k w_k = 1,

    evaluated with a log-sum-exp over the components.

    Args:
        means: ``m``, shape ``(K, d)``.
        stds: ``s``, anything that broadcasts to ``(K, d)``: a scalar, ``(d,)``, ``(K, 1)`` or
            ``(K, d)``.
        weights: ``w``, shape ``(K,)``, positive; normalized to sum 1. Equal weights if ``None``.
        log_Z: :math:`\log Z` of the unnormalized density (0: normalized).
        box_width: the box spans every :math:`m_k \pm` ``box_width`` :math:`\cdot s_k`.

    Attributes:
        stddevs: exact, from the mixture moments
            :math:`\mathrm{Var}[X_j] = \sum_k w_k (s_{kj}^2 + m_{kj}^2) - (\sum_k w_k m_{kj})^2`.
        entropy: computed on first access: by grid quadrature for ``d <= 2``, else a
            deterministic Monte Carlo estimate (see :meth:`entropy_mc`) with
            ``ENTROPY_SAMPLES`` samples from a private generator seeded 0; its standard error
            (0 for quadrature) is in ``entropy_stderr``.
    """

    ENTROPY_SAMPLES = 200_000
    GRID_POINTS = 2_000_000

    def __init__(
        self,
        means: Sequence[Sequence[float]] | Tensor,
        stds: float | Sequence[float] | Sequence[Sequence[float]] | Tensor,
        weights: Sequence[float] | Tensor | None = None,
        log_Z: float = 0.0,
        box_width: float = 5.0,
    ) -> None:
        means_t = torch.as_tensor(means, dtype=torch.float64)
        if means_t.dim() != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(means_t.shape)}")
        K, dim = means_t.shape
        stds_t = torch.as_tensor(stds, dtype=torch.float64)
        try:
            stds_t = torch.broadcast_to(stds_t, (K, dim)).clone()
        except RuntimeError:
            raise ValueError(
                f"stds must broadcast to the means' shape ({K}, {dim}), got {tuple(stds_t.shape)}"
            ) from None
        if not (stds_t > 0).all():
            raise ValueError("GaussianMixture stds must be positive")
        w = torch.full((K,), 1.0 / K, dtype=torch.float64)
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.float64)
            if w.shape != (K,):
                raise ValueError(f"weights must have shape ({K},), got {tuple(w.shape)}")
            if not (w > 0).all():
                raise ValueError("GaussianMixture weights must be positive")
            w = w / w.sum()
        lower = (means_t - box_width * stds_t).amin(0)
        upper = (means_t + box_width * stds_t).amax(0)
        super().__init__(dim, (lower, upper))
        self.register_buffer("means", means_t, persistent=False)
        self.register_buffer("stds", stds_t, persistent=False)
        self.register_buffer("log_weights", w.log(), persistent=False)
        self.log_Z = float(log_Z)
        mix_mean = w @ means_t
        self.stddevs = (w @ (stds_t**2 + means_t**2) - mix_mean**2).sqrt()

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def _log_components(self, x: Tensor) -> Tensor:
        """:math:`\\log w_k + \\log\\mathcal{N}(x; m_k, \\mathrm{diag}(s_k^2))`, shape ``(N, K)``."""
        means, stds, log_w = self.means.to(x), self.stds.to(x), self.log_weights.to(x)
        z = (x.unsqueeze(-2) - means) / stds  # (N, K, d)
        log_norm = 0.5 * self.dim * math.log(2 * math.pi) + stds.log().sum(-1)  # (K,)
        return -0.5 * (z * z).sum(-1) - log_norm + log_w

    def _log_prob(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self._log_components(x), dim=-1) + self.log_Z

    @property
    def mode_weights(self) -> Tensor:  # type: ignore[override]
        """The component weights :math:`w_k`: one mode per component."""
        return self.log_weights.to("cpu", torch.float64).exp()

    def mode_of(self, x: Tensor) -> Tensor:
        """The component most likely to have drawn each point: :math:`\\arg\\max_k` of
        :math:`w_k\\,\\mathcal{N}(x; m_k, \\mathrm{diag}(s_k^2))`."""
        self.check_input(x)
        return self._log_components(x).argmax(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        means, stds = (b.to("cpu", torch.float64) for b in (self.means, self.stds))
        weights = self.log_weights.to("cpu", torch.float64).exp()
        idx = torch.multinomial(weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return means[idx] + stds[idx] * noise

    def entropy_mc(
        self, n: int, generator: torch.Generator | None = None, chunk: int = 100_000
    ) -> tuple[float, float]:
        """Monte Carlo entropy :math:`-\\mathbb{E}[\\log p(X)]` from ``n`` exact samples.

        Returns:
            ``(estimate, standard error)``.
        """
        total, total_sq, done = 0.0, 0.0, 0
        while done < n:
            m = min(chunk, n - done)
            with torch.no_grad():
                log_p = self.log_prob(self.sample(m, generator)) - self.log_Z
            total += float(log_p.sum())
            total_sq += float((log_p * log_p).sum())
            done += m
        mean = total / n
        var = max(total_sq / n - mean * mean, 0.0)
        return -mean, math.sqrt(var / n)

    @functools.cached_property
    def _entropy_reference(self) -> tuple[float, float]:
        """``(entropy, standard error)``: the trapezoid rule on a grid of step ``min(s) / 4``
        over every :math:`m_k \\pm 8 s_k` when ``d <= 2`` and the grid has at most ``GRID_POINTS``
        points (spectrally accurate for Gaussians: error far below 1e-10), else Monte Carlo with
        ``ENTROPY_SAMPLES`` samples from a private generator seeded 0."""
        means, stds = self.means.to("cpu", torch.float64), self.stds.to("cpu", torch.float64)
        step = 0.25 * float(stds.min())
        lower, upper = (means - 8 * stds).amin(0), (means + 8 * stds).amax(0)
        sizes = [math.ceil(float(u - lo) / step) + 1 for lo, u in zip(lower, upper, strict=True)]
        if self.dim > 2 or math.prod(sizes) > self.GRID_POINTS:
            return self.entropy_mc(self.ENTROPY_SAMPLES, torch.Generator().manual_seed(0))
        axes = [
            lo + step * torch.arange(n, dtype=torch.float64)
            for lo, n in zip(lower, sizes, strict=True)
        ]
        points = torch.cartesian_prod(*axes).reshape(-1, self.dim)
        with torch.no_grad():
            log_p = torch.cat([self.log_prob(c) for c in points.split(100_000)]) - self.log_Z
        return float(-(log_p.exp() * log_p).sum()) * step**self.dim, 0.0

    @property
    def entropy(self) -> float:  # type: ignore[override]
        """The differential entropy of the normalized mixture (see ``_entropy_reference``)."""
        return self._entropy_reference[0]

    @property
    def entropy_stderr(self) -> float:
        """The standard error of :attr:`entropy`."""
        return self._entropy_reference[1]


class GMM9(GaussianMixture):
    r"""GMM-9, ``d = 2`` (Sun et al. eqs. (69)-(70)): nine equal-weight components with means
    :math:`\{-5, 0, 5\}^2` and covariance :math:`0.3 I`; normalized, :math:`\log Z = 0`.
    The box is sde_sampler's domain, the means :math:`\pm 5\sqrt{0.3}`:
    :math:`[-7.7386, 7.7386]^2`."""

    def __init__(self) -> None:
        grid = torch.tensor([-5.0, 0.0, 5.0], dtype=torch.float64)
        means = torch.cartesian_prod(grid, grid)
        super().__init__(means, math.sqrt(0.3), box_width=5.0)


class GMM40(GaussianMixture):
    r"""GMM-40, ``d = 2`` (Midgley et al., FAB; used by Chemseddine et al.).

    Forty equal-weight components with per-dimension std
    :math:`\mathrm{softplus}(1) \approx 1.31326` and means
    ``(torch.rand(40, 2) - 0.5) * 2 * 40`` drawn from a private ``torch.Generator`` seeded
    ``seed``, which reproduces FAB's ``torch.manual_seed(0)`` draw without touching the global
    RNG (first mean about ``(-0.2995, 21.4577)``). Normalized, :math:`\log Z = 0`; the box covers
    every mean :math:`\pm 5` std. Reference entropy: 6.859.
    """

    def __init__(self, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        means = (torch.rand(40, 2, generator=generator, dtype=torch.float32) - 0.5) * 2 * 40
        std = torch.nn.functional.softplus(torch.tensor(1.0, dtype=torch.float64))
        super().__init__(means.double(), std, box_width=5.0)


# ----------------------------------------------------------------------------- double wells


#: The most modes a well product lists weights for (FabManyWell(32) has 2^16).
MAX_MODES = 2**20


class _Density1D:
    """A 1-D density :math:`p(x) \\propto e^{f(x)}` handled by quadrature and a grid inverse CDF.

    The support is cut to ``[a, b]``, where :math:`f \\ge \\max f - 40`: outside it the density
    is below :math:`e^{-40}` of its maximum, so the mass left out is negligible in float64.
    ``scipy.integrate.quad`` on ``[a, b]`` (modes as break points; tolerances 1e-12 relative,
    1e-14 absolute) gives :math:`\\log Z`, the mean, the standard deviation and the entropy
    :math:`\\log Z - \\mathbb{E}[f]`. Sampling inverts the CDF: the cumulative trapezoid rule of
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
        """The mode of ``(N, m)`` independent coordinates of this density: with :math:`s_j` the
        segment coordinate ``j`` is in, the index :math:`\\sum_j s_j K^j` (``K`` segments)."""
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
        """The smallest grid interval outside of which :math:`p < ` ``rel`` :math:`\\max p`."""
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
        """The mode: which well each :math:`x_{2i}` is in (``2^{d/2}`` modes; the wells split
        at the barrier :math:`x_1 \\approx -0.042`, the deep one holding 0.8443 of the mass)."""
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
