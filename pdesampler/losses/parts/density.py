r"""Log-density paths :math:`V(x, t)`: the first axis of a catalogue entry (docs/math.md, 3 and 5)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import jvp

from pdesampler import ops
from pdesampler.losses.parts.schedules import LinearBeta
from pdesampler.metrics import log_weights, log_z_importance
from pdesampler.ops import Exact, ScalarJet, TraceEstimator
from pdesampler.targets import Target

__all__ = [
    "BridgeCoefficients",
    "Coefficients",
    "GradientFlowCoefficients",
    "LogDensityPath",
    "ReverseCoefficients",
    "ScalarLogZ",
    "has_fast_jet",
    "network_jet",
    "prior_log_z",
    "resolve_log_z_init",
]


def _point_log_prob(density: Target, x: Tensor) -> Tensor:
    return density.log_prob(x[None])[0]


def has_fast_jet(net: nn.Module, estimator: TraceEstimator) -> bool:
    """Whether ``net`` has an exact forward Taylor-mode jet to use instead of nested autodiff."""
    return isinstance(estimator, Exact) and getattr(net, "has_jet", False)


def network_jet(
    net: nn.Module, x: Tensor, t: Tensor, probes: Tensor, estimator: TraceEstimator, laplacian: bool
) -> ScalarJet:
    """The :class:`ScalarJet` of a scalar network of ``(x, t)``: its forward Taylor-mode jet
    (:meth:`pdesampler.nets.MLP.jet`) when it has one and traces are exact, otherwise
    :func:`ops.scalar_jet` (forward-over-reverse). Both are exact; the first is faster."""
    if has_fast_jet(net, estimator):
        value, dt, jac, lap = net.jet(x, t, laplacian=laplacian)
        return ScalarJet(value[0], dt[0], jac[0], None if lap is None else lap[0])
    return ops.scalar_jet(net, estimator, laplacian=laplacian)(x, t, probes)


class Coefficients(nn.Module):
    r"""The weights ``(a, b, c)`` of :math:`V = a\log\rho + b\log p_{prior} + c\,\varphi - a\log z`."""

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError


class BridgeCoefficients(Coefficients):
    """Sun et al. eq. (10): :math:`a = t/T`, :math:`b = 1 - t/T`, :math:`c = (t/T)(1 - t/T)`:
    both boundary conditions hold exactly. Also the Boltzmann energies of Máté & Fleuret
    (docs/math.md, 5.2)."""

    def __init__(self, T: float = 1.0) -> None:
        super().__init__()
        self.T = float(T)

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s = t / self.T
        return s, 1 - s, s * (1 - s)


class ReverseCoefficients(Coefficients):
    r"""Time reversal (score, Sun et al. eq. (15)): :math:`a = t/T`, :math:`b = c = 1 - t/T`.
    Only the terminal condition :math:`V(\cdot, T) = \log\rho` is imposed;
    :math:`V(\cdot, 0) = \log p_Y(\cdot, T)` is only approximately the prior, so the correction
    stays free at ``t = 0``."""

    def __init__(self, T: float = 1.0) -> None:
        super().__init__()
        self.T = float(T)

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s = t / self.T
        return s, 1 - s, 1 - s


class GradientFlowCoefficients(Coefficients):
    r"""Gradient flow (Chemseddine et al.; docs/math.md, 5.3):
    :math:`g_t = t\,\psi(x, t) + w(t)\log\rho` with :math:`w(t) = t\,s(t) + 1 - t` for a
    learned schedule :math:`s(t)` (``None``: 0), so :math:`g_0 = \log\rho` exactly. Unit time.

    ``positive_weight`` reads the schedule network :math:`u` as :math:`w(t) = e^{t\,u(t)}`
    instead: the same family with :math:`s > -(1 - t)/t`, so the weight of :math:`\log\rho`
    stays positive (see :func:`pdesampler.losses.gradflow`) and :math:`w(0) = 1` still. Without
    a schedule :math:`w = 1 - t` either way.

    ``signal`` (a :class:`LinearBeta`) multiplies the weight by :math:`a_t^2`, the weight for
    :math:`\log\rho(x / a_t)` that follows the modes (:class:`LogDensityPath` ``rho_scale``):
    for a target :math:`\mathcal N(\mu, I)` the path is :math:`\mathcal N(a_t\mu, I)`, i.e.
    exactly :math:`a_t^2\log\rho(x / a_t)` up to a function of ``t``."""

    def __init__(
        self,
        schedule: nn.Module | None = None,
        positive_weight: bool = False,
        signal: LinearBeta | None = None,
    ) -> None:
        super().__init__()
        self.schedule, self.positive_weight, self.signal = schedule, positive_weight, signal

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.schedule is None:  # s = 0
            weight = 1 - t
        elif self.positive_weight:
            weight = torch.exp(t * self.schedule(t))
        else:
            weight = t * self.schedule(t) + 1 - t
        if self.signal is not None:
            weight = weight * self.signal.signal_scale(t) ** 2
        return weight, torch.zeros_like(t), t


def prior_log_z(target: Target, prior: Target, n: int = 10_000, seed: int = 0) -> float:
    r"""The importance-sampling estimate of :math:`\log Z` from the prior (``log_Z_is`` of
    docs/metrics.md with the prior as proposal):
    :math:`\log \tfrac1n \sum_i \rho(x_i) / p_{prior}(x_i)`, :math:`x_i \sim p_{prior}`. A lower
    bound in expectation (Jensen); where the prior misses the target's mass it is low, yet still a
    better start for :math:`\log z` than 0."""
    with torch.no_grad():
        x = prior.sample(n, generator=torch.Generator().manual_seed(seed))
        return log_z_importance(log_weights(target.log_prob(x), prior.log_prob(x)))


def resolve_log_z_init(value: float | str, target: Target, prior: Target) -> float:
    r"""The starting value of a learned :math:`\log Z`: a finite number as given, or
    ``"prior"``: :func:`prior_log_z` (Adam moves a scalar by about its learning rate per step,
    too slowly for a :math:`\log Z` of 40 from 0)."""
    if value == "prior":
        return prior_log_z(target, prior)
    if isinstance(value, str) or not math.isfinite(float(value)):
        raise ValueError(f"log_z_init must be a finite number or 'prior', got {value!r}")
    return float(value)


class ScalarLogZ(nn.Module):
    r"""A learnable constant :math:`\log z` (Sun et al. eq. (10), used when phi is learned)."""

    def __init__(self, init: float = 0.0) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)))

    def forward(self, t: Tensor) -> Tensor:
        return self.value.to(t).expand(t.shape)


class LogDensityPath(nn.Module):
    r"""The log-density of :math:`X_t` (Sun et al. eq. (10); docs/math.md, sections 3 and 5):

    .. math::
        V(x, t) = a(t)\big(\log\rho(x) - \log z(t)\big) + b(t)\log p_{prior}(x)
                  + c(t)\,\varphi(x, t) - \int_0^t C_s\,ds .

    Args:
        target: :math:`\rho`.
        prior: :math:`p_{prior}` (normalized).
        coefficients: ``t -> (a, b, c)``, e.g. :class:`BridgeCoefficients` for Sun et al. eq. (10).
        correction: the network :math:`\varphi(x, t)` (``None``: :math:`\varphi = 0`, annealing).
        log_z: :math:`\log z(t)`: a :class:`ScalarLogZ`, a network of ``t`` (annealing), or
            ``None``.
        log_z_rate: :math:`C_t = \tfrac{d}{dt}\log Z_t` of a Boltzmann curve (a network of ``t``),
            which enters :math:`\partial_t V` only, or ``None``.
        T: the time horizon (where :math:`\log z(T)` estimates :math:`\log Z`).
        rho_scale: ``t -> k(t)``: :math:`\log\rho` is read at :math:`x / k(t)` (the gradient
            flow's modes moving with the OU path, :math:`k = a_t`), or ``None``: at ``x``.

    The buffer ``target_power`` :math:`\beta` (1, not saved) multiplies :math:`\log\rho`:
    training on a tempered target :math:`\rho^{\beta}` sets it (``optim.temper_from``).
    """

    def __init__(
        self,
        target: Target,
        prior: Target,
        coefficients: Coefficients,
        correction: nn.Module | None = None,
        log_z: nn.Module | None = None,
        log_z_rate: nn.Module | None = None,
        T: float = 1.0,
        rho_scale: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.target, self.prior = target, prior
        self.rho_scale = rho_scale
        self.coefficients = coefficients
        self.correction = correction
        self.log_z = log_z
        self.log_z_rate = log_z_rate
        self.T = float(T)
        self.register_buffer("target_power", torch.tensor(1.0), persistent=False)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        r""":math:`V(x, t)` at one point, without the :math:`\int C` term."""
        a, b, c = self.coefficients(t)
        log_rho = self.log_rho(x, t)
        if self.log_z is not None:
            log_rho = log_rho - self.log_z(t)
        value = a * log_rho + b * _point_log_prob(self.prior, x)
        if self.correction is not None:
            value = value + c * self.correction(x, t)
        return value

    def time_terms(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(a, b, c, a log z)`` at ``t``: everything in :math:`V` that depends on ``t`` alone."""
        a, b, c = self.coefficients(t)
        a_log_z = a * self.log_z(t) if self.log_z is not None else torch.zeros_like(t)
        return a, b, c, a_log_z

    def jet(self, x: Tensor, t: Tensor, probes: Tensor, estimator: TraceEstimator, laplacian: bool):
        r""":math:`(V, \partial_t V, \nabla V, \Delta V)` at one point.

        Assembled from the jets of :math:`\log\rho`, :math:`\log p_{prior}` and
        :math:`\varphi` (:func:`network_jet`) and the time derivatives of the coefficients:
        :math:`\partial_t V = a'(\log\rho - \log z) + a\,\partial_t\log\rho - a\,(\log z)'
        + b'\log p_{prior} + c'\varphi + c\,\partial_t\varphi - C_t` (:math:`\partial_t\log\rho`
        is not 0 only with ``rho_scale``), while :math:`\nabla` and :math:`\Delta`
        are linear: :math:`\Delta V = a\Delta\log\rho + b\Delta\log p_{prior} + c\Delta\varphi`.
        """
        (a, b, c, alz), rates = jvp(self.time_terms, (t,), (torch.ones_like(t),))
        da, db, dc, dalz = (r.to(t.dtype) for r in rates)  # jvp of a 0-dim t may promote
        rho = ops.scalar_jet(self.log_rho, estimator, laplacian=laplacian)(x, t, probes)
        prior = ops.scalar_jet(self._log_prior, estimator, laplacian=laplacian)(x, t, probes)
        value = a * rho.value + b * prior.value - alz
        dt = da * rho.value + a * rho.dt + db * prior.value - dalz
        grad = a * rho.grad + b * prior.grad
        lap = a * rho.lap + b * prior.lap if laplacian else None
        if self.correction is not None:
            phi = network_jet(self.correction, x, t, probes, estimator, laplacian)
            value = value + c * phi.value
            dt = dt + dc * phi.value + c * phi.dt
            grad = grad + c * phi.grad
            lap = lap + c * phi.lap if laplacian else None
        if self.log_z_rate is not None:
            dt = dt - self.log_z_rate(t)
        return ScalarJet(value, dt, grad, lap)

    def log_rho(self, x: Tensor, t: Tensor) -> Tensor:
        r""":math:`\beta \log\rho` at one point (``target_power`` :math:`\beta`), read at
        :math:`x / k(t)` with ``rho_scale``."""
        if self.rho_scale is not None:
            x = x / self.rho_scale(t)
        return self.target_power * _point_log_prob(self.target, x)

    def _log_prior(self, x: Tensor, t: Tensor) -> Tensor:
        return _point_log_prob(self.prior, x)

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        r""":math:`\nabla_x V(x, t)` at one point."""
        return ops.gradient(self.forward)(x, t)

    def log_z_estimate(self) -> float | None:
        r""":math:`\log z(T)`, or :math:`\int_0^T C_t\,dt` (Gauss-Legendre) for a Boltzmann curve
        whose :math:`V(\cdot, 0)` is the normalized prior; ``None`` otherwise."""
        param = next(self.parameters(), None)
        kw = {
            "dtype": param.dtype if param is not None else torch.float32,
            "device": param.device if param is not None else torch.device("cpu"),
        }
        if self.log_z is not None:
            return float(self.log_z(torch.tensor(self.T, **kw)).detach())
        if self.log_z_rate is not None and isinstance(self.coefficients, BridgeCoefficients):
            nodes, weights = _gauss_legendre(32, 0.0, self.T, **kw)
            return float((weights * self.log_z_rate(nodes)).sum().detach())
        return None


def _gauss_legendre(n: int, lo: float, hi: float, dtype: torch.dtype, device: torch.device):
    nodes, weights = np.polynomial.legendre.leggauss(n)
    kw = {"dtype": dtype, "device": device}
    nodes = torch.as_tensor(0.5 * (hi - lo) * nodes + 0.5 * (hi + lo), **kw)
    return nodes, torch.as_tensor(0.5 * (hi - lo) * weights, **kw)
