"""Closed-form solutions of every catalogue residual for Gaussian prior and target.

This module is the project's proof that the signs are right. The prior is N(0, I) and the
target is rho = Z N(m, s^2 I) (an unnormalized Gaussian, log Z != 0 on purpose).

Gaussian paths. If X_t ~ N(m_t, s_t^2 I) with X_t = m_t + (s_t / s_0)(X_0 - m_0), then

    V(x, t) = log N(x; m_t, s_t^2 I),      grad V = -(x - m_t) / s_t^2,
    v(x, t) = m_t' + (s_t' / s_t)(x - m_t)                           (ODE velocity)

solve the continuity equation: logCE (Sun et al. eq. (8)) is d/dt V + div v + grad V . v = 0,
which one checks term by term (d/dt V = -d s_t'/s_t + |x-m_t|^2 s_t'/s_t^3 + (x-m_t).m_t'/s_t^2,
div v = d s_t'/s_t, grad V . v = -(x-m_t).m_t'/s_t^2 - |x-m_t|^2 s_t'/s_t^3). For an SDE with
diffusion sigma the same marginals come from mu = v + sigma^2/2 grad V (the inverse of the
probability-flow relation, eq. (66)), which solves logFP (eq. (7)).

The paths used:
* displacement (OT) path: m_t = u m, s_t = 1 - u + u s with u = t/T. Its velocity is the
  gradient of Phi = m.x + (s-1)/(2 s_t) |x - u m|^2 - u |m|^2/2 (T = 1), and
  d/dt Phi + |grad Phi|^2/2 = 0 (HJB_OT, eq. (21)): the cross terms cancel and c'(t) = -|m|^2/2.
* geometric path (annealing, linear Boltzmann interpolation): V = u log rho + (1-u) log p_prior
  - (normalizer), a Gaussian with precision (1-u) + u/s^2 and mean (u m / s^2)/precision.
* OU path (VP-SDE from the target): m_t = a_t m, s_t^2 = a_t^2 s^2 + 1 - a_t^2,
  a_t = exp(-B(t)/2), B(t) = int_0^t beta. Time reversal (eq. (15)) reads it at T - t; the
  gradient flow (Chemseddine et al.) reads it forwards.
* Hopf-Cole path (SB): Phi = sigma^2 log phi with phi = tau^{-d/2} exp(-|x-c|^2 / (2 tau)),
  tau(t) = tau_1 + sigma^2 (1 - t), solves the backward heat equation d/dt phi + sigma^2/2
  Lap phi = 0, hence HJB_SB (eq. (20)): d/dt Phi + |grad Phi|^2/2 + sigma^2/2 Lap Phi = 0. The SDE
  dX = grad Phi dt + sigma dW from N(0, I) is linear: (m_t - c) is proportional to tau, so
  m_t = c (1 - tau/tau_0), and the variance solves v' = 2 (tau'/tau) v - tau', so
  v_t = tau + K tau^2 with K = (1 - tau_0)/tau_0^2 (v_0 = 1). The target is N(m_1, v_1 I).

The closed forms replace the networks of a catalogue entry (the phi correction is solved from
the entry's own parametrization, eq. (10), so the parametrization is tested too). Time derivatives
of closed forms are taken by forward-mode AD, which is exact for these formulas.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import jvp

from pdesampler.losses import make_loss
from pdesampler.losses.transport import TransportResidual
from pdesampler.targets import Gaussian

LOG_Z = 0.37


class Fn(nn.Module):
    """A parameter-free module wrapping a closed-form function."""

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def d_dt(f: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    return jvp(f, (t,), (torch.ones_like(t),))[1]


def log_normal(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    d = x.shape[-1]
    return (
        -0.5 * ((x - mean) ** 2).sum(-1) / std**2
        - d * torch.log(std)
        - 0.5 * d * math.log(2 * math.pi)
    )


class GaussianPath:
    """X_t ~ N(mean(t), std(t)^2 I) for closed-form ``mean`` and ``std`` of a scalar t."""

    def __init__(self, mean: Callable[[Tensor], Tensor], std: Callable[[Tensor], Tensor]):
        self.mean, self.std = mean, std

    def log_density(self, x: Tensor, t: Tensor) -> Tensor:
        return log_normal(x, self.mean(t), self.std(t))

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        return -(x - self.mean(t)) / self.std(t) ** 2

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """v = m' + (s'/s)(x - m): the ODE drift whose marginals are the path."""
        m, s = self.mean(t), self.std(t)
        return d_dt(self.mean, t) + d_dt(self.std, t) / s * (x - m)

    def sde_drift(self, sigma_sq: Callable[[Tensor], Tensor]) -> Callable:
        """mu = v + sigma^2/2 grad V: the SDE drift with the same marginals."""
        return lambda x, t: self.velocity(x, t) + 0.5 * sigma_sq(t) * self.score(x, t)

    def map(self, x0: Tensor, t0: float, t1: float) -> Tensor:
        """The flow map of the velocity from t0 to t1 (affine)."""
        t0_, t1_ = torch.tensor(t0, dtype=x0.dtype), torch.tensor(t1, dtype=x0.dtype)
        return self.mean(t1_) + self.std(t1_) / self.std(t0_) * (x0 - self.mean(t0_))


def displacement_path(m: Tensor, s: float, T: float = 1.0) -> GaussianPath:
    return GaussianPath(lambda t: (t / T) * m, lambda t: 1 - t / T + (t / T) * s)


def geometric_path(m: Tensor, s: float, T: float = 1.0) -> GaussianPath:
    def precision(t):
        return 1 - t / T + (t / T) / s**2

    return GaussianPath(lambda t: (t / T) * m / s**2 / precision(t), lambda t: precision(t) ** -0.5)


def ou_path(m: Tensor, s: float, B: Callable[[Tensor], Tensor]) -> GaussianPath:
    def a(t):
        return torch.exp(-0.5 * B(t))

    return GaussianPath(lambda t: a(t) * m, lambda t: (a(t) ** 2 * s**2 + 1 - a(t) ** 2).sqrt())


class HopfCole:
    """The Gaussian Schrödinger bridge from N(0, I): Phi = sigma^2 log phi (module docstring)."""

    def __init__(self, c: Tensor, tau1: float, sigma: float) -> None:
        self.c, self.tau1, self.sigma_sq = c, tau1, sigma**2
        self.tau0 = tau1 + self.sigma_sq
        K = (1 - self.tau0) / self.tau0**2
        self.path = GaussianPath(
            lambda t: self.c * (1 - self.tau(t) / self.tau0),
            lambda t: (self.tau(t) + K * self.tau(t) ** 2).sqrt(),
        )

    def tau(self, t: Tensor) -> Tensor:
        return self.tau1 + self.sigma_sq * (1 - t)

    def potential(self, x: Tensor, t: Tensor) -> Tensor:
        tau = self.tau(t)
        return self.sigma_sq * (
            -0.5 * x.shape[-1] * torch.log(tau) - ((x - self.c) ** 2).sum() / (2 * tau)
        )


def ot_potential(m: Tensor, s: float) -> Callable[[Tensor, Tensor], Tensor]:
    """Phi with grad Phi = the displacement velocity (T = 1)."""

    def Phi(x: Tensor, t: Tensor) -> Tensor:
        s_t = 1 - t + t * s
        return (
            (m * x).sum() + (s - 1) / (2 * s_t) * ((x - t * m) ** 2).sum() - t * (m * m).sum() / 2
        )

    return Phi


# ---------------------------------------------------------------------------- installing
def _point_log(density, x):
    return density.log_prob(x[None])[0]


def solve_correction(residual: TransportResidual, V: Callable, normalizer: Callable) -> Fn:
    """phi from the parametrization V = a (log rho - log z) + b log p_prior + c phi - n(t):
    ``normalizer(t)`` is everything the path subtracts that depends on t alone."""
    density = residual.density

    def phi(x, t):
        a, b, c = density.coefficients(t)
        base = a * density.log_rho(x, t) + b * _point_log(density.prior, x)
        return (V(x, t) - base + normalizer(t)) / c

    return Fn(phi)


def x_independent(fn: Callable[[Tensor, Tensor], Tensor], dim: int) -> Callable[[Tensor], Tensor]:
    """A function of (x, t) that does not depend on x, as a function of t (read at x = 0)."""
    return lambda t: fn(torch.zeros(dim, dtype=t.dtype), t)


def install_exact(name: str, residual: TransportResidual, m: Tensor, s: float) -> dict:
    """Replace the networks of the catalogue entry ``name`` by its closed-form solution.

    Returns ``{"path": GaussianPath, "target": Gaussian(...)}`` for the dynamics checks (the SB
    target is the Hopf-Cole terminal law, so it is rebuilt here)."""
    density, drift, d = residual.density, residual.drift, residual.dim
    prior_lp = lambda x: _point_log(density.prior, x)
    target_lp = lambda x: _point_log(density.target, x)
    T = residual.T

    if name in ("logce", "logfp", "ot", "sb", "learned"):
        path = displacement_path(m, s, T) if name != "sb" else None
        if name == "sb":
            bridge = residual.hopf_cole
            path = bridge.path
        # Sun et al. eq. (10), scalar log z = log Z: phi from V; for "learned", n(t) = t log Z.
        if name == "learned":
            density.log_z_rate = Fn(lambda t: torch.full_like(t, LOG_Z))
            density.correction = solve_correction(residual, path.log_density, lambda t: t * LOG_Z)
        else:
            with torch.no_grad():
                density.log_z.value.fill_(LOG_Z)
            density.correction = solve_correction(
                residual, path.log_density, lambda t: (t / T) * LOG_Z
            )
        if name == "ot":
            drift.potential = Fn(ot_potential(m, s))
        elif name == "sb":
            drift.potential = Fn(bridge.potential)
        elif name == "logfp":
            drift.net = Fn(path.sde_drift(residual.sigma_sq))
        else:
            drift.net = Fn(path.velocity)
    elif name in ("logce_anneal", "logfp_anneal", "linear"):
        path = geometric_path(m, s, T)

        def excess(x, t):  # a log rho + b log p_prior - V: a function of t alone
            u = t / T
            return u * target_lp(x) + (1 - u) * prior_lp(x) - path.log_density(x, t)

        n = x_independent(excess, d)
        if name == "linear":  # V = ... - int_0^t C, so C = n'(t)
            density.log_z_rate = Fn(lambda t: d_dt(n, t))
        else:  # V = u (log rho - log z(t)) + (1-u) log p_prior, so log z(t) = n(t) / u
            density.log_z = Fn(lambda t: n(t) / (t / T))
        drift.net = Fn(
            path.sde_drift(residual.sigma_sq) if name == "logfp_anneal" else path.velocity
        )
    elif name == "score":
        beta = drift.beta

        def B(u):  # int_0^u beta, exact for constant and linear schedules
            return u * (beta(torch.zeros_like(u)) + beta(u)) / 2

        forward = ou_path(m, s, B)
        path = GaussianPath(lambda t: forward.mean(T - t), lambda t: forward.std(T - t))
        V = lambda x, t: path.log_density(x, t) + LOG_Z
        density.correction = solve_correction(residual, V, lambda t: torch.zeros_like(t))
    elif name == "gradflow":
        beta = drift.beta
        path = ou_path(m, s, lambda t: t * (beta(torch.zeros_like(t)) + beta(t)) / 2)
        density.coefficients.schedule = Fn(torch.zeros_like)
        g = lambda x, t: path.log_density(x, t) + LOG_Z
        density.correction = solve_correction(residual, g, lambda t: torch.zeros_like(t))
    else:
        raise KeyError(name)
    return {"path": path}


def build_exact(name: str, d: int, m_scale: float = 1.0, s: float = 0.6, **kw):
    """A catalogue entry on a Gaussian target with its closed-form solution installed (float64)."""
    gen = torch.Generator().manual_seed(d)
    m = m_scale * torch.randn(d, generator=gen, dtype=torch.float64)
    hopf_cole = None
    if name == "sb":
        sigma = kw.get("sigma", math.sqrt(2))
        hopf_cole = HopfCole(c=m, tau1=0.8, sigma=sigma)
        one = torch.tensor(1.0, dtype=torch.float64)
        m, s = hopf_cole.path.mean(one), float(hopf_cole.path.std(one))
    target = Gaussian(mean=m, std=s, dim=d, log_Z=LOG_Z)
    residual = make_loss(name, target, net={"width": 8, "depth": 1}, **kw).double()
    residual.hopf_cole = hopf_cole
    info = install_exact(name, residual, m, s)
    return residual, target, info
