r"""Noise schedules :math:`\beta(t)` and diffusions :math:`\sigma(t)` of the catalogue's SDEs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["ConstantBeta", "Diffusion", "LinearBeta", "constant_diffusion", "vp_reverse_diffusion"]


class ConstantBeta(nn.Module):
    r""":math:`\beta(t) = \bar\sigma^2`, constant."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = float(sigma)

    def forward(self, t: Tensor) -> Tensor:
        return torch.full_like(t, self.sigma**2)


class LinearBeta(nn.Module):
    r""":math:`\beta(t) = \beta_{min} + (t/T)(\beta_{max} - \beta_{min})` (Song et al. VP-SDE)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0) -> None:
        super().__init__()
        self.beta_min, self.beta_max, self.T = float(beta_min), float(beta_max), float(T)

    def forward(self, t: Tensor) -> Tensor:
        return self.beta_min + t / self.T * (self.beta_max - self.beta_min)

    def signal_scale(self, t: Tensor) -> Tensor:
        r""":math:`a_t = e^{-B(t)/2}` with :math:`B(t) = \int_0^t\beta = t(\beta(0) + \beta(t))/2`:
        the VP-SDE started at ``X_0`` has :math:`X_t = a_t X_0 + \sqrt{1 - a_t^2}\,N`
        (Chemseddine et al. eq. (32))."""
        return torch.exp(-0.25 * t * (self.forward(torch.zeros_like(t)) + self.forward(t)))


Diffusion = Callable[[Tensor], Tensor]


def constant_diffusion(sigma: float) -> Diffusion:
    r""":math:`\sigma(t) = \bar\sigma`."""
    return lambda t: torch.full_like(t, float(sigma))


def vp_reverse_diffusion(beta: nn.Module, T: float) -> Diffusion:
    r"""The diffusion of the reversed VP-SDE: :math:`\sigma(t) = \sqrt{\beta(T - t)}`."""
    return lambda t: beta(T - t).sqrt()
