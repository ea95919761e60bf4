r"""2-D targets that no preset was tuned on, for checking the default rule with
``benchmarks/bench_schedule.py``. Each is normalized (``log_Z = 0``) with exact samples. The
rule's check:

* :class:`RotatedMixture`: four anisotropic Gaussians (standard deviations 1.2 and 0.3, so a
  4:1 aspect) at the corners of a 6 x 3 rectangle, with weights 0.4, 0.3, 0.2, 0.1, the whole
  picture rotated by 30 degrees: :math:`\rho(x) = \sum_k w_k \mathcal N(R^\top x; m_k,
  \mathrm{diag}(s^2))`.
* :class:`Banana`: the twisted Gaussian of Haario et al. (1999), :math:`x_1 = y_1`,
  :math:`x_2 = y_2 + b (y_1^2 - \sigma^2)` with :math:`y_1 \sim \mathcal N(0, \sigma^2)`,
  :math:`y_2 \sim \mathcal N(0, 1)`, :math:`\sigma = 2`, :math:`b = 0.3` (unit Jacobian).
* :class:`Funnel2D`: Neal's funnel in two dimensions, :math:`x_0 \sim \mathcal N(0, \sigma^2)`,
  :math:`x_1 \mid x_0 \sim \mathcal N(0, e^{x_0})`, with :math:`\sigma = 2`.

Two more are kept apart from every choice made on the three above, to confirm such a choice
(the collocation of the default rule, docs/results/bench_schedule.md):

* :class:`CircleMixture`: six isotropic Gaussians (standard deviation 0.4) on a circle of
  radius 4, with weights 0.30, 0.25, 0.15, 0.12, 0.10, 0.08.
* :class:`SineWave`: :math:`x_0 \sim \mathcal N(0, 1.5^2)`, :math:`x_1 \mid x_0 \sim
  \mathcal N(2\sin(1.5\,x_0), 0.4^2)`.

Use one from the command line (run from the repository root; ``benchmarks/`` is on the path of
``benchmarks/run.py``): ``python benchmarks/run.py target._target_=unseen_targets.Banana``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pdesampler.targets import GaussianMixture, Target

__all__ = ["Banana", "CircleMixture", "Funnel2D", "RotatedMixture", "SineWave"]

LOG_2PI = math.log(2 * math.pi)


def _normal_log_prob(z: Tensor, std: Tensor | float) -> Tensor:
    std = torch.as_tensor(std, dtype=z.dtype, device=z.device)
    return -0.5 * (z / std) ** 2 - std.log() - 0.5 * LOG_2PI


class RotatedMixture(Target):
    """Four anisotropic Gaussians, rotated by ``angle`` degrees (module docstring)."""

    def __init__(self, angle: float = 30.0) -> None:
        means = torch.tensor([[-3.0, -1.5], [3.0, -1.5], [-3.0, 1.5], [3.0, 1.5]])
        stds = torch.tensor([1.2, 0.3])
        reach = float((means.abs() + 5 * stds).norm(dim=1).max())
        super().__init__(2, (-reach * torch.ones(2), reach * torch.ones(2)))
        self.base = GaussianMixture(means, stds, weights=torch.tensor([0.4, 0.3, 0.2, 0.1]))
        a = math.radians(angle)
        rotation = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        self.register_buffer("rotation", rotation.double(), persistent=False)
        self.log_Z = 0.0
        self.mode_weights = self.base.mode_weights
        cov = torch.diag(self.base.stddevs.double() ** 2)
        self.stddevs = (rotation.double() @ cov @ rotation.double().T).diagonal().sqrt()

    def _unrotate(self, x: Tensor) -> Tensor:
        return x @ self.rotation.to(x)  # R^T x for each row

    def _log_prob(self, x: Tensor) -> Tensor:
        return self.base.log_prob(self._unrotate(x))

    def mode_of(self, x: Tensor) -> Tensor:
        return self.base.mode_of(self._unrotate(x))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.base.sample(n, generator) @ self.rotation.to("cpu", torch.float64).T


class Banana(Target):
    """The twisted Gaussian (module docstring)."""

    def __init__(self, sigma: float = 2.0, b: float = 0.3) -> None:
        self.sigma, self.b = float(sigma), float(b)
        low = torch.tensor([-5 * sigma, -6.0 - b * sigma**2])
        high = torch.tensor([5 * sigma, 6.0 + b * 24 * sigma**2])
        super().__init__(2, (low, high))
        self.log_Z = 0.0
        var2 = 1 + b**2 * 2 * sigma**4  # Var(y2) + b^2 Var(y1^2)
        self.stddevs = torch.tensor([sigma, math.sqrt(var2)], dtype=torch.float64)

    def _log_prob(self, x: Tensor) -> Tensor:
        y1, y2 = x[:, 0], x[:, 1] - self.b * (x[:, 0] ** 2 - self.sigma**2)
        return _normal_log_prob(y1, self.sigma) + _normal_log_prob(y2, 1.0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        y = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        x1 = self.sigma * y[:, 0]
        return torch.stack([x1, y[:, 1] + self.b * (x1**2 - self.sigma**2)], dim=1)


class Funnel2D(Target):
    """Neal's funnel in two dimensions (module docstring)."""

    def __init__(self, sigma: float = 2.0) -> None:
        self.sigma = float(sigma)
        spread = math.exp(5 * sigma / 2)  # the std of x1 at x0 = 5 sigma
        super().__init__(
            2, (torch.tensor([-5 * sigma, -spread]), torch.tensor([5 * sigma, spread]))
        )
        self.log_Z = 0.0
        # Var(x1) = E[e^{x0}] = e^{sigma^2 / 2}
        self.stddevs = torch.tensor([sigma, math.exp(sigma**2 / 4)], dtype=torch.float64)

    def _log_prob(self, x: Tensor) -> Tensor:
        x0 = x[:, 0]
        return _normal_log_prob(x0, self.sigma) + _normal_log_prob(x[:, 1], (x0 / 2).exp())

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        y = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        x0 = self.sigma * y[:, 0]
        return torch.stack([x0, (x0 / 2).exp() * y[:, 1]], dim=1)


class CircleMixture(GaussianMixture):
    """Six Gaussians of unequal weight on a circle (module docstring)."""

    def __init__(self) -> None:
        angles = torch.arange(6, dtype=torch.float64) * (2 * math.pi / 6)
        means = 4.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
        super().__init__(means, 0.4, weights=[0.30, 0.25, 0.15, 0.12, 0.10, 0.08])


class SineWave(Target):
    """A Gaussian ridge along a sine (module docstring)."""

    def __init__(self, sigma: float = 1.5, amplitude: float = 2.0, frequency: float = 1.5,
                 width: float = 0.4) -> None:  # fmt: skip
        self.sigma, self.amplitude = float(sigma), float(amplitude)
        self.frequency, self.width = float(frequency), float(width)
        reach = amplitude + 5 * width
        super().__init__(2, (torch.tensor([-5 * sigma, -reach]), torch.tensor([5 * sigma, reach])))
        self.log_Z = 0.0
        # Var(x1) = A^2 E[sin^2(f x0)] + w^2 = A^2 (1 - e^{-2 f^2 sigma^2}) / 2 + w^2
        var1 = amplitude**2 * (1 - math.exp(-2 * (frequency * sigma) ** 2)) / 2 + width**2
        self.stddevs = torch.tensor([sigma, math.sqrt(var1)], dtype=torch.float64)

    def _ridge(self, x0: Tensor) -> Tensor:
        return self.amplitude * torch.sin(self.frequency * x0)

    def _log_prob(self, x: Tensor) -> Tensor:
        x0 = x[:, 0]
        return _normal_log_prob(x0, self.sigma) + _normal_log_prob(
            x[:, 1] - self._ridge(x0), self.width
        )

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        y = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        x0 = self.sigma * y[:, 0]
        return torch.stack([x0, self._ridge(x0) + self.width * y[:, 1]], dim=1)
