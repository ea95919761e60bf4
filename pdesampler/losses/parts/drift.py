r"""Drifts :math:`\mu(x, t)`: the second axis of a catalogue entry."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from pdesampler import ops
from pdesampler.losses.parts.density import LogDensityPath, has_fast_jet, network_jet
from pdesampler.ops import ScalarJet, TraceEstimator

__all__ = ["Drift", "DriftJet", "FreeDrift", "GradientDrift", "ScoreDrift"]


class DriftJet(NamedTuple):
    r"""The drift at one point, its divergence, and the potential's jet when
    :math:`\mu = \nabla\Phi` (for the HJB term)."""

    value: Tensor
    div: Tensor
    potential: ScalarJet | None = None


class Drift(nn.Module):
    r"""A drift :math:`\mu(x, t)`. ``forward`` gives the value at one point (for sampling) and
    ``jet`` the value with its divergence (for residuals), given the log-density's jet."""

    needs_density_laplacian: bool = False

    def jet(
        self, x: Tensor, t: Tensor, probes: Tensor, estimator: TraceEstimator, density: ScalarJet
    ) -> DriftJet:
        raise NotImplementedError


class FreeDrift(Drift):
    r""":math:`\mu` is a network of ``(x, t)`` (logCE, logFP, annealing, Boltzmann curves)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x, t)

    def jet(self, x, t, probes, estimator, density) -> DriftJet:
        if has_fast_jet(self.net, estimator):
            value, _, jac, _ = self.net.jet(x, t, laplacian=False, time=False)
            return DriftJet(value, torch.diagonal(jac).sum())
        value, div = ops.vector_jet(self.net, estimator)(x, t, probes)
        return DriftJet(value, div)


class GradientDrift(Drift):
    r""":math:`\mu = \nabla\Phi` for a potential network :math:`\Phi(x, t)` (OT, SB: Sun et al.
    eqs. (19)-(23)); :math:`\nabla\cdot\mu = \Delta\Phi`."""

    def __init__(self, potential: nn.Module) -> None:
        super().__init__()
        self.potential = potential

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return ops.gradient(self.potential)(x, t)

    def jet(self, x, t, probes, estimator, density) -> DriftJet:
        phi = network_jet(self.potential, x, t, probes, estimator, laplacian=True)
        return DriftJet(phi.grad, phi.lap, phi)


class ScoreDrift(Drift):
    r"""A drift fixed by the log-density, :math:`\mu = A(t)\nabla V + B(t)\,x`, with
    :math:`\nabla\cdot\mu = A(t)\Delta V + d\,B(t)`.

    * Time reversal of the VP-SDE (Sun et al. eq. (15)): :math:`\mu = \sigma^2\nabla V - f` with
      :math:`f = -\tfrac{\beta}2 x`, :math:`\sigma^2 = \beta`: :math:`A = \beta(T - t)`,
      :math:`B = \beta(T - t)/2` (``reverse=True``).
    * Gradient flow (Chemseddine et al.): :math:`v = -\tfrac{\beta(t)}2(\nabla g + x)`:
      :math:`A = B = -\beta(t)/2` (``reverse=False``).
    """

    needs_density_laplacian = True

    def __init__(self, density: LogDensityPath, beta: nn.Module, reverse: bool, T: float = 1.0):
        super().__init__()
        self.density, self.beta, self.reverse, self.T = density, beta, reverse, float(T)

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        if self.reverse:
            beta = self.beta(self.T - t)
            return beta, beta / 2
        beta = self.beta(t)
        return -beta / 2, -beta / 2

    def forward(self, x: Tensor, t: Tensor, score_shift: Tensor | float = 0.0) -> Tensor:
        r""":math:`(A(t) + \text{score\_shift})\nabla V + B(t)\,x`; the shift
        :math:`-\sigma^2/2` gives the probability-flow drift with one gradient of V."""
        A, B = self.coefficients(t)
        return (A + score_shift) * self.density.score(x, t) + B * x

    def jet(self, x, t, probes, estimator, density) -> DriftJet:
        A, B = self.coefficients(t)
        return DriftJet(A * density.grad + B * x, A * density.lap + x.shape[-1] * B)
