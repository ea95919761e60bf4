r"""The Euler-Maruyama scheme for :math:`dX = \mu(X, t)\,dt + \sigma(t)\,dW` (Sun et al. eq. (2)).

One stepper serves the evaluation's SDE samples (:mod:`pdesampler.sampling.sde`), the trajectory
cache of the collocation (:class:`pdesampler.collocation.TrajectoryCache`) and the trajectory
baselines' paths (:meth:`pdesampler.losses.trajectory.TrajectoryLoss.simulate`). A hook sees
each step, so that a caller can accumulate the path log-density ratio, keep states, or cut the
next state from the graph. The module imports nothing but torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import Tensor
from torch.func import vmap

__all__ = ["Step", "euler_maruyama", "on_batch"]


@dataclass
class Step:
    r"""One step :math:`x_{k+1} = x_k + \mu_k\,(t_{k+1} - t_k) + \eta_k`.

    Attributes:
        index: :math:`k`, the step's index on the grid.
        t: :math:`t_k`.
        t_next: :math:`t_{k+1}`.
        x: :math:`x_k`, shape ``(n, d)``.
        x_next: :math:`x_{k+1}`.
        drift: :math:`\mu_k = \mu(x_k, t_k)`.
        noise: :math:`\eta_k = \sigma(t_k)\sqrt{|t_{k+1} - t_k|}\,\xi_k`, the step's residual
            :math:`x_{k+1} - x_k - \mu_k\,(t_{k+1} - t_k)`.
    """

    index: int
    t: Tensor
    t_next: Tensor
    x: Tensor
    x_next: Tensor
    drift: Tensor
    noise: Tensor


def on_batch(drift: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """A pointwise drift ``(d,), () -> (d,)`` vmapped over the rows of ``x`` ``(n, d)`` at one
    time ``t`` ``()``."""
    per_point = vmap(drift)
    return lambda x, t: per_point(x, t.expand(x.shape[0]).contiguous())


def euler_maruyama(
    drift: Callable[[Tensor, Tensor], Tensor],
    diffusion: Callable[[Tensor], Tensor],
    grid: Tensor,
    noise: Iterable[Tensor],
    x: Tensor,
    on_step: Callable[[Step], Tensor] | None = None,
) -> Tensor:
    r"""Euler-Maruyama from ``x`` along ``grid`` :math:`t_0, \dots, t_K`:

    .. math:: X_{k+1} = X_k + \mu(X_k, t_k)\,\Delta t_k + \sigma(t_k)\sqrt{|\Delta t_k|}\,\xi_k,
        \qquad \Delta t_k = t_{k+1} - t_k,

    which also covers decreasing time (Sun et al. eq. (2)).

    Args:
        drift: :math:`\mu` on a batch, ``(n, d), () -> (n, d)`` (see :func:`on_batch`).
        diffusion: :math:`\sigma(t)`, a scalar tensor (or one that broadcasts against ``x``).
        grid: the times, shape ``(K + 1,)``.
        noise: :math:`\xi_k`, one ``(n, d)`` tensor per step, drawn lazily if an iterator.
        x: the start :math:`X_0`, shape ``(n, d)``.
        on_step: called with each :class:`Step`; returns the state to go on from (e.g.
            ``step.x_next``, or it cut from the graph). It is where a caller accumulates the
            path log-density ratio or keeps states.

    Returns:
        The end state :math:`X_K`.
    """
    for k, xi in enumerate(noise):
        t, t_next = grid[k], grid[k + 1]
        dt = t_next - t
        mu = drift(x, t)
        eta = diffusion(t) * dt.abs().sqrt() * xi
        x_next = x + mu * dt + eta
        x = x_next if on_step is None else on_step(Step(k, t, t_next, x, x_next, mu, eta))
    return x
