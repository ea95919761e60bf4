r"""A mixture of product Student-t distributions, a heavy-tailed multimodal target."""

from __future__ import annotations

import math

import torch
from scipy import special, stats
from torch import Tensor

from pdesampler.targets.base import Target
from pdesampler.targets.mixtures import uniform_means

__all__ = ["StudentMixture"]


class StudentMixture(Target):
    r"""An equal-weight mixture of ``K`` product Student-t distributions with :math:`\nu`
    degrees of freedom and unit scale (the mixture of Student-t of Blessing et al. 2024,
    "Beyond ELBOs": ``K = 10``, :math:`\nu = 2`, ``d = 50``):

    .. math::
        \rho(x) = \frac1K \sum_{k=1}^K \prod_{j=1}^d t_\nu(x_j - m_{kj}), \qquad
        \log t_\nu(z) = \log\frac{\Gamma(\frac{\nu+1}{2})}{\Gamma(\frac\nu2)\sqrt{\nu\pi}}
        - \frac{\nu+1}{2}\log\Big(1 + \frac{z^2}{\nu}\Big).

    The locations are :func:`~pdesampler.targets.mixtures.uniform_means` (uniform in
    :math:`[-a, a]^d`, ``a = half_width``, from a private generator seeded ``seed``). Normalized, :math:`\log Z = 0`; exact samples by
    inverse-CDF sampling of each coordinate (``scipy.stats.t.ppf``). For :math:`\nu \le 2` the
    variance is infinite, so ``stddevs`` is ``None``. The box is every location
    :math:`\pm` the ``1 - BOX_TAIL / 2`` quantile of :math:`t_\nu` (:math:`\pm 9.92` for
    :math:`\nu = 2`). Modes: one per component, :meth:`mode_of` the most likely one.

    Args:
        n_modes: ``K``.
        dim: ``d``.
        df: :math:`\nu > 0`.
        half_width: the locations lie in :math:`[-a, a]^d`, ``a = half_width``.
        seed: the seed of the locations' generator.
    """

    BOX_TAIL = 1e-2

    def __init__(
        self,
        n_modes: int = 10,
        dim: int = 50,
        df: float = 2.0,
        half_width: float = 10.0,
        seed: int = 0,
    ) -> None:
        if df <= 0:
            raise ValueError(f"StudentMixture expects df > 0, got {df}")
        locs = uniform_means(n_modes, dim, half_width, seed)
        half = float(stats.t.isf(self.BOX_TAIL / 2, df))
        super().__init__(dim, (locs.amin(0) - half, locs.amax(0) + half))
        self.df = float(df)
        self.register_buffer("locs", locs, persistent=False)
        self.log_Z = 0.0
        self.log_norm = float(
            special.gammaln((df + 1) / 2) - special.gammaln(df / 2) - 0.5 * math.log(df * math.pi)
        )

    @property
    def mode_weights(self) -> Tensor:  # type: ignore[override]
        """Equal weights :math:`1/K`, one mode per component."""
        k = self.locs.shape[0]
        return torch.full((k,), 1.0 / k, dtype=torch.float64)

    def _log_components(self, x: Tensor) -> Tensor:
        r""":math:`\log\frac1K + \sum_j \log t_\nu(x_j - m_{kj})`, shape ``(N, K)``."""
        z = x.unsqueeze(-2) - self.locs.to(x)
        log_t = self.log_norm - 0.5 * (self.df + 1) * torch.log1p(z * z / self.df)
        return log_t.sum(-1) - math.log(self.locs.shape[0])

    def _log_prob(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self._log_components(x), dim=-1)

    def mode_of(self, x: Tensor) -> Tensor:
        """The component most likely to have drawn each point."""
        self.check_input(x)
        return self._log_components(x).argmax(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        locs = self.locs.to("cpu", torch.float64)
        idx = torch.randint(locs.shape[0], (n,), generator=generator)
        u = torch.rand(n, self.dim, generator=generator, dtype=torch.float64)
        u = u.clamp(1e-300, 1 - 1e-16)
        return locs[idx] + torch.from_numpy(stats.t.ppf(u.numpy(), self.df))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_modes={self.locs.shape[0]}, df={self.df}, log_Z={self.log_Z}"
