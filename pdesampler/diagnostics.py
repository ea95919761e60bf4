r"""Where along the sampling path a model's log-weight error arises.

For an ODE residual of the log-continuity form (logCE, Sun et al. eq. (8), the Boltzmann
interpolations and the gradient flow), with density path :math:`V` and drift :math:`\mu`, the
residual along a path :math:`X_t` of the sampling ODE is

.. math:: r(X_t, t) = \frac{d}{dt}\big[V_t(X_t) - \log q_t(X_t)\big] - c(t),

because :math:`\tfrac{d}{dt} V_t(X_t) = \partial_t V + \langle\nabla V, \mu\rangle` and
:math:`\tfrac{d}{dt}\log q_t(X_t) = -\nabla\cdot\mu` (Sun et al. eq. (64)); :math:`c(t)` depends
on ``t`` alone (the learned :math:`C_t` of a Boltzmann curve). The log-weight of a sample
:math:`x = X_{t_1}` is therefore

.. math:: \log w = \underbrace{\log\rho(x) - V_{t_1}(x)
    + V_{t_0}(X_{t_0}) - \log p_{prior}(X_{t_0})}_{\text{boundary}}
    + \int_{t_0}^{t_1} r(X_t, t)\,dt + \text{const},

the integral taken in the direction of sampling. :func:`log_weight_budget` evaluates both parts
on sampling paths, and :meth:`LogWeightBudget.ess_without` says how far the ESS would rise if the
residual vanished on a window of time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import vmap

from pdesampler.losses.transport import TransportResidual
from pdesampler.metrics import effective_sample_size
from pdesampler.sampling import sample

__all__ = ["LogWeightBudget", "log_weight_budget"]


@dataclass
class LogWeightBudget:
    """The parts of the log-weights of ``n`` samples (see the module's docstring).

    Attributes:
        times: the grid ``(steps + 1,)`` from ``t0`` to ``t1``.
        residual: ``r`` on the paths' grid states, ``(steps + 1, n)``.
        boundary: the boundary part ``(n,)``.
        sampled: the sampler's own log-weights :math:`\\log\\rho(x) - \\log q(x)`, ``(n,)``.
    """

    times: Tensor
    residual: Tensor
    boundary: Tensor
    sampled: Tensor

    @property
    def pieces(self) -> Tensor:
        """The trapezoid pieces of :math:`\\int r\\,dt` per grid interval, ``(steps, n)``."""
        dt = self.times[1:] - self.times[:-1]  # signed: the direction of sampling
        return 0.5 * (self.residual[:-1] + self.residual[1:]) * dt[:, None]

    @property
    def log_weights(self) -> Tensor:
        """boundary + :math:`\\int r\\,dt`: the sampler's log-weights up to a constant."""
        return self.boundary + self.pieces.sum(0)

    def window(self, lo: float, hi: float) -> Tensor:
        """The part of :math:`\\int r\\,dt` over the grid intervals whose midpoint lies in
        ``[lo, hi]``, ``(n,)``."""
        mid = 0.5 * (self.times[1:] + self.times[:-1])
        return self.pieces[(mid >= lo) & (mid <= hi)].sum(0)

    def ess_without(self, lo: float, hi: float) -> float:
        """The ESS if the residual vanished on ``[lo, hi]`` (that window's part removed)."""
        return effective_sample_size(self.log_weights - self.window(lo, hi))


def log_weight_budget(
    residual: TransportResidual, n: int, generator: torch.Generator, steps: int = 400
) -> LogWeightBudget:
    """Sample ``n`` paths of ``residual``'s ODE with rk4 on ``steps`` steps and split their
    log-weights into the boundary part and the residual along the paths."""
    if not isinstance(residual, TransportResidual) or residual.diffusion is not None:
        sde = " with an SDE" if isinstance(residual, TransportResidual) else ""
        raise ValueError(
            "the log-weight budget needs an ODE TransportResidual (logCE, the Boltzmann "
            f"interpolations, the gradient flow), not {type(residual).__name__}{sde}"
        )
    dynamics = residual.dynamics()
    out = sample(
        dynamics,
        n,
        generator=generator,
        method="rk4",
        steps=steps,
        n_saved=steps + 1,
        module=residual,
    )
    times, paths = out.times, out.trajectory
    rows = []
    for t, x in zip(times.tolist(), paths, strict=True):
        rows.append(residual.residuals(x, torch.full((n,), t, dtype=x.dtype)).pop("pde").detach())
    value = vmap(residual.density)
    t_start = torch.full((n,), float(times[0]), dtype=paths.dtype)
    t_end = torch.full((n,), float(times[-1]), dtype=paths.dtype)
    x_start, x_end = paths[0], paths[-1]
    boundary = (
        residual.target.log_prob(x_end)
        - value(x_end, t_end)
        + value(x_start, t_start)
        - dynamics.prior.log_prob(x_start)
    )
    return LogWeightBudget(
        times,
        torch.stack(rows),
        boundary.detach(),
        out.log_weights(residual.target).detach(),
    )
