r"""The transport residual and the loss catalogue of Sun et al. (their Table 1; docs/losses.md).

:class:`TransportResidual` composes one log-density path, one drift and one PDE (logFP with
diffusion :math:`\sigma`, or logCE when :math:`\sigma = 0`), with an optional HJB term. Each
catalogue entry below is a few lines that pick the parts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from pdesampler.checks import POSITIVE, check
from pdesampler.losses.base import Dynamics, Residual
from pdesampler.losses.parts import (
    BridgeCoefficients,
    ConstantBeta,
    Diffusion,
    Drift,
    FreeDrift,
    GradientDrift,
    LinearBeta,
    LogDensityPath,
    ReverseCoefficients,
    ScalarLogZ,
    ScoreDrift,
    constant_diffusion,
    hjb,
    log_fokker_planck,
    resolve_log_z_init,
    vp_reverse_diffusion,
)
from pdesampler.nets import MLP, TimeMLP
from pdesampler.ops import Exact, TraceEstimator, VectorJet
from pdesampler.targets import Gaussian, Target

__all__ = [
    "TransportResidual",
    "logce",
    "logce_anneal",
    "logfp",
    "logfp_anneal",
    "make_prior",
    "ot",
    "sb",
    "score",
]

NetSpec = Mapping[str, Any]


#: The samplers call ``flow_jet`` with the standard basis as probes (exact traces).
EXACT = Exact()


class TransportResidual(Residual):
    r""":math:`r_{pde} = \mathcal{R}_{\log FP}(\mu, V)` (Sun et al. eq. (7); logCE, eq. (8),
    without diffusion),
    plus :math:`r_{hjb} = \mathcal{R}_{HJB}(\Phi)` (eqs. (20)/(21)) when the drift is
    :math:`\nabla\Phi` and ``hjb_weight`` is given (eqs. (22)/(23)).

    Args:
        target: the unnormalized target.
        density: the log-density path :math:`V`.
        drift: the drift :math:`\mu`.
        prior: the distribution at the start of ``t_span``.
        diffusion: :math:`\sigma(t)` (``None``: an ODE and the logCE residual).
        hjb_weight: the weight :math:`\alpha` of the HJB term (``None``: no HJB term).
        t_span: ``(t0, t1)`` of the sampling dynamics (default ``(0, T)``).
        default_collocation: the collocation sampler this entry trains best with.
        ode_method: the solver that sampling with ``method="auto"`` uses (``Dynamics.ode_method``).
    """

    def __init__(
        self,
        target: Target,
        density: LogDensityPath,
        drift: Drift,
        prior: Target,
        *,
        diffusion: Diffusion | None = None,
        hjb_weight: float | None = None,
        T: float = 1.0,
        t_span: tuple[float, float] | None = None,
        estimator: TraceEstimator | None = None,
        chunk_size: int | None = None,
        default_collocation: str = "box",
        ode_method: str = "rk4",
    ) -> None:
        weights = {"pde": 1.0}
        if hjb_weight is not None:
            if not isinstance(drift, GradientDrift):
                raise ValueError("an HJB term needs a GradientDrift (mu = grad Phi)")
            weights["hjb"] = float(hjb_weight)
        super().__init__(target, weights, T=T, estimator=estimator, chunk_size=chunk_size)
        self.density, self.drift, self.prior = density, drift, prior
        self.diffusion = diffusion
        self.t_span = t_span if t_span is not None else (0.0, self.T)
        self.default_collocation, self.ode_method = default_collocation, ode_method

    def sigma_sq(self, t: Tensor) -> Tensor | None:
        return None if self.diffusion is None else self.diffusion(t) ** 2

    def point_residuals(self, x: Tensor, t: Tensor, probes: Tensor) -> dict[str, Tensor]:
        sigma_sq = self.sigma_sq(t)
        laplacian = sigma_sq is not None or self.drift.needs_density_laplacian
        V = self.density.jet(x, t, probes, self.estimator, laplacian=laplacian)
        mu = self.drift.jet(x, t, probes, self.estimator, V)
        terms = {"pde": log_fokker_planck(V, mu, sigma_sq)}
        if "hjb" in self.weights:
            terms["hjb"] = hjb(mu.potential, sigma_sq)
        return terms

    def flow_drift(self, x: Tensor, t: Tensor) -> Tensor:
        r"""Probability-flow drift (Sun et al. eq. (66)): :math:`\mu - \tfrac12\sigma^2\nabla V`."""
        if isinstance(self.drift, ScoreDrift):  # mu is linear in grad V: take the gradient once
            return self.drift(x, t, score_shift=-0.5 * self.sigma_sq(t))
        return self.drift(x, t) - 0.5 * self.sigma_sq(t) * self.density.score(x, t)

    def dynamics(self) -> Dynamics:
        t0, t1 = self.t_span
        if self.diffusion is None:
            return Dynamics(
                self.drift, self.prior, t0, t1, flow_jet=self.flow_jet, ode_method=self.ode_method
            )
        return Dynamics(
            drift=self.drift,
            prior=self.prior,
            t0=t0,
            t1=t1,
            diffusion=self.diffusion,
            flow_drift=self.flow_drift,
            stochastic=True,
            flow_jet=self.flow_jet,
            ode_method=self.ode_method,
        )

    def flow_jet(self, x: Tensor, t: Tensor, probes: Tensor) -> VectorJet:
        r"""The probability-flow drift and its exact divergence from the parts' jets, ``probes``
        being the standard basis: :math:`\nabla\cdot(\mu - \tfrac12\sigma^2\nabla V)
        = \nabla\cdot\mu - \tfrac12\sigma^2\Delta V`. The sum over the basis is exact
        whatever estimator the residual trains with (a Hutchinson estimator's mean over probes
        would divide the trace by ``d``)."""
        sigma_sq = self.sigma_sq(t)
        needs_V = sigma_sq is not None or self.drift.needs_density_laplacian
        V = self.density.jet(x, t, probes, EXACT, laplacian=True) if needs_V else None
        mu = self.drift.jet(x, t, probes, EXACT, V)
        if sigma_sq is None:
            return VectorJet(mu.value, mu.div)
        return VectorJet(mu.value - 0.5 * sigma_sq * V.grad, mu.div - 0.5 * sigma_sq * V.lap)

    def log_z_estimate(self) -> float | None:
        return self.density.log_z_estimate()


# ---------------------------------------------------------------------------- builders
def make_prior(dim: int, prior_std: float = 1.0) -> Gaussian:
    r""":math:`p_{prior} = \mathcal{N}(0, s_0^2 I)`."""
    check("prior_std", prior_std, POSITIVE)
    return Gaussian(mean=0.0, std=prior_std, dim=dim)


def make_space_net(dim: int, out_dim: int, net: NetSpec | None, T: float) -> MLP:
    """An :class:`MLP` of ``(x, t)`` from a net spec (width, depth, activation, ...)."""
    return MLP(dim, out_dim, T=T, **dict(net or {}))


def make_time_net(spec: NetSpec | None, T: float, init: float = 0.0) -> TimeMLP:
    """A :class:`TimeMLP` of ``t`` from a spec (width, depth, time_features, ...), starting at
    the constant ``init``."""
    return TimeMLP(T=T, init=init, **dict(spec or {}))


def _bridge_residual(
    target: Target,
    *,
    learn_phi: bool,
    potential: bool = False,
    sigma: float | None,
    net: NetSpec | None,
    time_net: NetSpec | None = None,
    prior_std: float,
    T: float,
    log_z_init: float | str = 0.0,
    **kw,
) -> TransportResidual:
    r"""A :class:`TransportResidual` on the log-density path of Sun et al. eq. (10): with a
    learned :math:`\varphi`, a scalar :math:`\log z` that starts at ``log_z_init`` (a number,
    or ``"prior"``: :func:`resolve_log_z_init`); without (annealing, their App. A.1),
    :math:`\varphi = 0` and a network :math:`\log z(t)`. The drift is a free network, or
    with ``potential`` the gradient :math:`\nabla\Phi` of one; the diffusion is
    :math:`\sigma` (``None``: an ODE and the logCE residual)."""
    prior = make_prior(target.dim, prior_std)
    correction = make_space_net(target.dim, 1, net, T) if learn_phi else None
    start = resolve_log_z_init(log_z_init, target, prior)
    log_z = ScalarLogZ(start) if learn_phi else make_time_net(time_net, T)
    density = LogDensityPath(target, prior, BridgeCoefficients(T), correction, log_z=log_z, T=T)
    if potential:
        drift: Drift = GradientDrift(make_space_net(target.dim, 1, net, T))
    else:
        drift = FreeDrift(make_space_net(target.dim, target.dim, net, T))
    diffusion = constant_diffusion(sigma) if sigma else None
    return TransportResidual(target, density, drift, prior, diffusion=diffusion, T=T, **kw)


def logce(
    target: Target, net: NetSpec | None = None, prior_std: float = 1.0, T: float = 1.0, **kw
) -> TransportResidual:
    r"""logCE ("ODE"): learn :math:`\mu`, :math:`\varphi`, :math:`z` with the logCE residual
    (Sun et al. eq. (8)): :func:`logfp` without diffusion."""
    return logfp(target, net, sigma=None, prior_std=prior_std, T=T, **kw)


def logfp(
    target: Target,
    net: NetSpec | None = None,
    sigma: float | None = math.sqrt(2),
    prior_std: float = 1.0,
    T: float = 1.0,
    **kw,
) -> TransportResidual:
    r"""logFP ("SDE"): learn :math:`\mu`, :math:`\varphi`, :math:`z` with the logFP residual
    (Sun et al. eq. (7))."""
    return _bridge_residual(
        target, learn_phi=True, sigma=sigma, net=net, prior_std=prior_std, T=T, **kw
    )


def logce_anneal(
    target: Target,
    net: NetSpec | None = None,
    time_net: NetSpec | None = None,
    prior_std: float = 1.0,
    T: float = 1.0,
    **kw,
) -> TransportResidual:
    r"""logCE-anneal (Sun et al. eq. (14)): :math:`\varphi = 0` (geometric path), learn
    :math:`\mu` and :math:`z(t)`: :func:`logfp_anneal` without diffusion."""
    return logfp_anneal(target, net, time_net, sigma=None, prior_std=prior_std, T=T, **kw)


def logfp_anneal(
    target: Target,
    net: NetSpec | None = None,
    time_net: NetSpec | None = None,
    sigma: float | None = math.sqrt(2),
    prior_std: float = 1.0,
    T: float = 1.0,
    **kw,
) -> TransportResidual:
    r"""logFP-anneal (Sun et al. eq. (14)): the geometric path with diffusion; learn
    :math:`\mu` and :math:`z(t)`."""
    return _bridge_residual(
        target, learn_phi=False, sigma=sigma, net=net, time_net=time_net, prior_std=prior_std,
        T=T, **kw,
    )  # fmt: skip


def ot(
    target: Target,
    net: NetSpec | None = None,
    alpha: float = 1.0,
    prior_std: float = 1.0,
    T: float = 1.0,
    **kw,
) -> TransportResidual:
    r"""OT (Sun et al. eq. (23)):
    :math:`\mathcal{L}_{\log CE}(\nabla\Phi, V) + \alpha\,\mathbb{E}[\mathcal{R}^{OT}_{HJB}(\Phi)^2]`:
    :func:`sb` without diffusion."""
    return sb(target, net, alpha, sigma=None, prior_std=prior_std, T=T, **kw)


def sb(
    target: Target,
    net: NetSpec | None = None,
    alpha: float = 1.0,
    sigma: float | None = math.sqrt(2),
    prior_std: float = 1.0,
    T: float = 1.0,
    **kw,
) -> TransportResidual:
    r"""SB (Sun et al. eq. (22)):
    :math:`\mathcal{L}_{\log FP}(\nabla\Phi, V) + \alpha\,\mathbb{E}[\mathcal{R}^{SB}_{HJB}(\Phi)^2]`."""
    return _bridge_residual(
        target, learn_phi=True, potential=True, sigma=sigma, net=net, prior_std=prior_std, T=T,
        hjb_weight=alpha, **kw,
    )  # fmt: skip


def score(
    target: Target,
    net: NetSpec | None = None,
    schedule: str = "constant",
    sigma: float = math.sqrt(10),
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    prior_std: float = 1.0,
    T: float = 1.0,
    **kw,
) -> TransportResidual:
    r"""Score / time reversal (Sun et al. eqs. (15)-(18)): the reversal of the VP-SDE
    :math:`dY = -\tfrac{\beta(s)}2 Y\,ds + \sqrt{\beta(s)}\,dW`, :math:`Y_0 \sim p_{target}`.

    :math:`V(\cdot, t) = \log p_Y(\cdot, T - t)` up to a constant solves eq. (15) with
    :math:`\mu = \sigma^2\nabla V - f`; the constant is irrelevant there, so no :math:`z` is
    learned. ``schedule="constant"`` uses :math:`\beta = \bar\sigma^2` (Sun et al. App. B.1;
    the default :math:`\bar\sigma^2 T = 10` makes :math:`p_Y(\cdot, T)` within :math:`e^{-5}`
    of the prior in mean); ``"linear"`` the VP schedule :math:`\beta_{min} \to \beta_{max}`
    (eqs. (73)-(74) in Song et al.'s convention: this :math:`\beta` is twice theirs).
    ``prior_std`` must be 1: the reversed process starts from the VP-SDE's stationary law
    :math:`\mathcal{N}(0, I)`.
    """
    if prior_std != 1:
        raise ValueError(
            f"score needs prior_std=1, got {prior_std!r}: the reversed VP-SDE starts from its "
            "stationary law N(0, I)"
        )
    if schedule == "constant":
        beta = ConstantBeta(sigma)
    elif schedule == "linear":
        beta = LinearBeta(beta_min, beta_max, T)
    else:
        raise ValueError(f"unknown score schedule {schedule!r}; available: ['constant', 'linear']")
    prior = make_prior(target.dim, prior_std)
    correction = make_space_net(target.dim, 1, net, T)
    density = LogDensityPath(target, prior, ReverseCoefficients(T), correction, T=T)
    drift = ScoreDrift(density, beta, reverse=True, T=T)
    diffusion = vp_reverse_diffusion(beta, T)
    return TransportResidual(target, density, drift, prior, diffusion=diffusion, T=T, **kw)
