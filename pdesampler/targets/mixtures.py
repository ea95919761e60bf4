r"""Gaussian mixtures: the general diagonal mixture, GMM-9 and GMM-40 (docs/targets.md)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from pdesampler.targets.base import Target

__all__ = ["GMM9", "GMM40", "GaussianMixture", "UniformGMM", "uniform_means"]


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
        r""":math:`\log w_k + \log\mathcal{N}(x; m_k, \mathrm{diag}(s_k^2))`, shape ``(N, K)``."""
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
        r"""The component most likely to have drawn each point: :math:`\arg\max_k` of
        :math:`w_k\,\mathcal{N}(x; m_k, \mathrm{diag}(s_k^2))`."""
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
        r"""Monte Carlo entropy :math:`-\mathbb{E}[\log p(X)]` from ``n`` exact samples.

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
        r"""``(entropy, standard error)``: the trapezoid rule on a grid of step ``min(s) / 4``
        over every :math:`m_k \pm 8 s_k` when ``d <= 2`` and the grid has at most ``GRID_POINTS``
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
        means = uniform_means(40, 2, 40.0, seed)
        std = torch.nn.functional.softplus(torch.tensor(1.0, dtype=torch.float64))
        super().__init__(means, std, box_width=5.0)


class UniformGMM(GaussianMixture):
    r"""A mixture of ``n_modes`` equal-weight Gaussians :math:`\mathcal{N}(m_k, s^2 I)` with
    means uniform in :math:`[-a, a]^d`: GMM-40 in ``d = 50`` with ``a = 40``, ``s = 1`` is the
    high-dimensional mixture of Blessing et al. (2024, "Beyond ELBOs").

    The means are ``(torch.rand(n_modes, dim) - 0.5) * 2 * half_width``, drawn in float32 from a
    private CPU ``torch.Generator`` seeded ``seed`` (CPU Mersenne Twister: the same draw on every
    torch version and platform, and the global RNG is untouched); for ``seed = 0``, ``dim = 50``
    the first mean starts ``(-0.2995, 21.4577, ...)`` like GMM-40's. Normalized,
    :math:`\log Z = 0`; exact samples; the box covers every mean :math:`\pm 5 s`. The entropy is
    a Monte Carlo estimate (see :class:`GaussianMixture`).

    Args:
        n_modes: ``K``.
        dim: ``d``.
        half_width: ``a``.
        std: ``s``.
        seed: the seed of the means' generator.
    """

    def __init__(
        self,
        n_modes: int = 40,
        dim: int = 50,
        half_width: float = 40.0,
        std: float = 1.0,
        seed: int = 0,
    ) -> None:
        means = uniform_means(n_modes, dim, half_width, seed)
        super().__init__(means, float(std), box_width=5.0)


def uniform_means(n: int, dim: int, half_width: float, seed: int) -> Tensor:
    """FAB's mixture locations ``(torch.rand(n, dim) - 0.5) * 2 * half_width``, uniform in
    ``[-half_width, half_width]^dim``: drawn in float32 from a private CPU ``torch.Generator``
    seeded ``seed`` (the global RNG is untouched), returned as float64 ``(n, dim)``."""
    generator = torch.Generator().manual_seed(seed)
    unit = torch.rand(n, dim, generator=generator, dtype=torch.float32)
    return ((unit - 0.5) * 2 * half_width).double()
