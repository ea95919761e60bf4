r"""Neal's funnel (Neal 2003, "Slice sampling", section 8), a standard hierarchical target."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import integrate, optimize, stats
from torch import Tensor

from pdesampler.targets.base import Target

__all__ = ["Funnel"]


class Funnel(Target):
    r"""Neal's funnel in ``d`` dimensions (Neal 2003, section 8; ``d = 10`` as in the sampling
    benchmarks):

    .. math::
        x_0 \sim \mathcal{N}(0, \sigma^2), \qquad
        x_i \mid x_0 \sim \mathcal{N}(0, e^{x_0}), \quad i = 1, \dots, d - 1,

    .. math::
        \log\rho(x) = -\frac{x_0^2}{2\sigma^2} - \frac12\log(2\pi\sigma^2)
        - \frac{d-1}{2}\big(\log 2\pi + x_0\big) - \frac{e^{-x_0}}{2}\sum_{i\ge1} x_i^2.

    It is normalized, :math:`\log Z = 0`, and sampled exactly by its definition. Exact
    references: :math:`\mathrm{std}(x_0) = \sigma`, :math:`\mathrm{std}(x_i) =
    \sqrt{\mathbb{E}\,e^{x_0}} = e^{\sigma^2/4}`, the entropy
    :math:`\frac12\log(2\pi e\sigma^2) + \frac{d-1}{2}\log(2\pi e)` (the conditional entropies
    average :math:`\mathbb{E}[x_0] = 0`).

    The box holds each coordinate's central ``1 - BOX_TAIL`` mass: :math:`x_0 \in \pm\sigma
    z_{1 - \mathrm{BOX\_TAIL}/2}` and :math:`x_i \in \pm q` with
    :math:`P(|x_i| > q) = \mathbb{E}_{x_0}[2\Phi(-q e^{-x_0/2})] =` ``BOX_TAIL`` (1-D quadrature):
    about :math:`\pm 9.87` and :math:`\pm 104` for :math:`\sigma = 3`.

    Args:
        dim: ``d >= 2``.
        scale: :math:`\sigma`, the standard deviation of :math:`x_0` (3 in Neal's funnel).
    """

    BOX_TAIL = 1e-3

    def __init__(self, dim: int = 10, scale: float = 3.0) -> None:
        if dim < 2 or scale <= 0:
            raise ValueError(f"Funnel expects dim >= 2 and scale > 0, got {dim}, {scale}")
        self.scale = float(scale)
        half_0 = self.scale * float(stats.norm.isf(self.BOX_TAIL / 2))
        half_i = _marginal_quantile(self.scale, self.BOX_TAIL)
        upper = torch.tensor([half_0] + [half_i] * (dim - 1), dtype=torch.float64)
        super().__init__(dim, (-upper, upper))
        self.log_Z = 0.0
        std_i = math.exp(self.scale**2 / 4)
        self.stddevs = torch.tensor([self.scale] + [std_i] * (dim - 1), dtype=torch.float64)
        log_2pi_e = math.log(2 * math.pi) + 1
        self.entropy = 0.5 * (log_2pi_e + 2 * math.log(self.scale)) + 0.5 * (dim - 1) * log_2pi_e

    def _log_prob(self, x: Tensor) -> Tensor:
        x0, rest = x[:, 0], x[:, 1:]
        n_rest = self.dim - 1
        log_2pi = math.log(2 * math.pi)
        log_p0 = -0.5 * (x0 / self.scale) ** 2 - 0.5 * log_2pi - math.log(self.scale)
        log_rest = -0.5 * n_rest * (log_2pi + x0) - 0.5 * torch.exp(-x0) * (rest * rest).sum(-1)
        return log_p0 + log_rest

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x0 = self.scale * noise[:, :1]
        return torch.cat([x0, torch.exp(x0 / 2) * noise[:, 1:]], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}, log_Z={self.log_Z}"


def _marginal_quantile(scale: float, tail: float) -> float:
    r"""The ``q`` with :math:`P(|x_i| > q) =` ``tail`` for :math:`x_i \mid x_0 \sim
    \mathcal{N}(0, e^{x_0})`, :math:`x_0 \sim \mathcal{N}(0, \mathrm{scale}^2)`."""

    def excess(q: float) -> float:
        def integrand(x0: float) -> float:
            return stats.norm.pdf(x0, 0.0, scale) * 2 * stats.norm.sf(q * np.exp(-x0 / 2))

        mass, _ = integrate.quad(integrand, -12 * scale, 12 * scale, limit=200)
        return mass - tail

    return float(optimize.brentq(excess, 1e-6, 1e8, xtol=1e-10))
