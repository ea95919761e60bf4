r"""Boltzmann interpolations (Máté & Fleuret 2023; Chemseddine et al. 2024; docs/math.md, 5).

A Boltzmann curve :math:`\rho_t = e^{-f_t}/Z_t` with velocity :math:`v_t` satisfies

.. math:: \partial_t f_t + C_t + \langle\nabla f_t, v_t\rangle - \nabla\cdot v_t = 0,
          \qquad C_t = \tfrac{d}{dt}\log Z_t,

which is logCE (Sun et al. eq. (8)) with :math:`V = -f_t - \log Z_t` and :math:`\mu = v_t`
(the residual changes sign only). So each interpolation is a :class:`TransportResidual` without
diffusion, whose log-density path carries the learned rate :math:`C_t` in :math:`\partial_t V`.

The energies use the normalized prior: :math:`-f_t = (1 - t)\log p_{prior} + t\log\rho
+ t(1 - t)\psi` differs from :math:`(1 - t)(-f_Z) + \dots` by a function of ``t`` alone,
which :math:`C_t` absorbs; then :math:`V(\cdot, 0)` is normalized and
:math:`\int_0^1 C_t\,dt` estimates :math:`\log Z`.
"""

from __future__ import annotations

from pdesampler.losses.parts import (
    BridgeCoefficients,
    FreeDrift,
    GradientFlowCoefficients,
    LinearBeta,
    LogDensityPath,
    ScoreDrift,
    resolve_log_z_init,
)
from pdesampler.losses.transport import (
    NetSpec,
    TransportResidual,
    make_prior,
    make_space_net,
    make_time_net,
)
from pdesampler.targets import Target, tail_exponent

__all__ = ["gradflow", "learned", "linear"]

#: The gradient flow's positive weight of log rho, exp(t u(t)), starts at u = -4 (a free schedule
#: starts at s = 0, i.e. 1 - t).
WEIGHT_RATE_INIT = -4.0

#: ``follow_modes="auto"`` follows the modes when :math:`-\log\rho` grows at most about
#: quadratically (:func:`pdesampler.targets.tail_exponent` up to this; many-wells: 4).
FOLLOW_MODES_MAX_TAIL = 3.0


def _interpolation(
    target: Target,
    *,
    learn_psi: bool,
    net: NetSpec | None = None,
    time_net: NetSpec | None = None,
    prior_std: float = 1.0,
    log_z_init: float | str = "prior",
    **kw,
) -> TransportResidual:
    r"""The Boltzmann curve between the prior :math:`\mathcal N(0, s_0^2 I)` (``prior_std``)
    and the target, with the networks ``net`` (:math:`v_t`, and :math:`\psi` when
    ``learn_psi``) and ``time_net`` (:math:`C_t`). :math:`C_t` starts at the constant
    ``log_z_init`` (a number or ``"prior"``: :func:`resolve_log_z_init`), whose integral over
    ``[0, 1]`` is then the starting estimate of :math:`\log Z`. Collocation follows the
    current ODE trajectories."""
    prior = make_prior(target.dim, prior_std)
    correction = make_space_net(target.dim, 1, net, 1.0) if learn_psi else None
    rate = make_time_net(time_net, 1.0, init=resolve_log_z_init(log_z_init, target, prior))
    density = LogDensityPath(target, prior, BridgeCoefficients(1.0), correction, log_z_rate=rate)
    drift = FreeDrift(make_space_net(target.dim, target.dim, net, 1.0))
    return TransportResidual(
        target, density, drift, prior, T=1.0, default_collocation="trajectory", **kw
    )


def linear(target: Target, **kw) -> TransportResidual:
    """Linear interpolation (Chemseddine et al. eq. (20)): :math:`f_t = (1 - t) f_Z + t f_D`;
    learn :math:`v_t` and :math:`C_t`. Keyword arguments: ``net``, ``time_net``, ``prior_std``,
    ``log_z_init`` (default ``"prior"``) and those of :class:`TransportResidual`."""
    return _interpolation(target, learn_psi=False, **kw)


def learned(target: Target, **kw) -> TransportResidual:
    r"""Learned interpolation (Máté & Fleuret; Chemseddine et al. eq. (23)):
    :math:`f_t = (1 - t) f_Z + t f_D + t(1 - t)\psi_t`; learn :math:`\psi`, :math:`v_t` and
    :math:`C_t`. Keyword arguments as :func:`linear`."""
    return _interpolation(target, learn_psi=True, **kw)


def gradflow(
    target: Target,
    net: NetSpec | None = None,
    time_net: NetSpec | None = None,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    learn_schedule: bool = True,
    positive_weight: bool = True,
    learn_rate: bool = False,
    follow_modes: bool | str = "auto",
    **kw,
) -> TransportResidual:
    r"""Gradient-flow interpolation (Chemseddine et al. eqs. (25)-(32); docs/math.md, 5.3).

    The curve is the law of the VP-SDE :math:`dX = -\tfrac{\beta(t)}2 X\,dt +
    \sqrt{\beta(t)}\,dW` started at the target, :math:`\beta(t) = \beta_{min} +
    t(\beta_{max} - \beta_{min})`. Its Fokker-Planck equation is the continuity equation with
    :math:`v = -\tfrac{\beta}2(\nabla g + x)`, so with :math:`V = g_t - \int_0^t C`:

    .. math:: r = \partial_t g - C_t + \langle\nabla g, v\rangle - \tfrac{\beta}2(\Delta g + d),

    with :math:`g_t = t\,\psi + (t\,s(t) + 1 - t)\log\rho` (:math:`g_0 = \log\rho` exactly).
    Sampling integrates the ODE backwards, from :math:`\mathcal{N}(0, I)` at ``t = 1`` to
    ``t = 0``, by default with the adaptive dopri5 (``ode_method``): on the many-wells
    :math:`\nabla\log\rho \sim -4x^3` with :math:`\beta` up to 20 makes the ODE stiff
    where samples stray, and a fixed rk4 grid of 100 steps diverged there (docs/sampling.md).
    ``learn_rate`` adds the optional :math:`C_t`.

    ``positive_weight`` (default) learns the weight of :math:`\log\rho` as
    :math:`w(t) = t\,s(t) + 1 - t = e^{t\,u(t)}` (:class:`GradientFlowCoefficients`), starting
    at :math:`u = -4` (:data:`WEIGHT_RATE_INIT`). A free :math:`s` drifts below
    :math:`-(1 - t)/t` near ``t = 1``, where the true :math:`g_t` has Gaussian tails and
    :math:`w` should be about 0 (trained on the many-wells for 150 s: :math:`w(1)` = -0.015 on
    MW 5/5/4, -0.037 on ManyWell-8). A negative weight turns the :math:`-4x^3` of
    :math:`\nabla\log\rho` into a :math:`+x^3` growth of the backward ODE, whose samples
    then blow up in finite time (94.7% of 10 000 on MW 5/5/4); with :math:`w > 0` the term only
    pulls strays back: stiff, but stable.

    ``follow_modes`` reads the target term where the OU path carries it (:func:`_follows_modes`).
    """
    beta = LinearBeta(beta_min, beta_max, 1.0)
    follow = _follows_modes(target, follow_modes)
    schedule = None
    if learn_schedule:
        start = WEIGHT_RATE_INIT if positive_weight and not follow else 0.0
        schedule = make_time_net(time_net, 1.0, init=start)
    density = LogDensityPath(
        target,
        make_prior(target.dim, 1.0),
        GradientFlowCoefficients(schedule, positive_weight, beta if follow else None),
        make_space_net(target.dim, 1, net, 1.0),
        log_z_rate=make_time_net(time_net, 1.0) if learn_rate else None,
        rho_scale=beta.signal_scale if follow else None,
    )
    drift = ScoreDrift(density, beta, reverse=False)
    return TransportResidual(
        target, density, drift, density.prior, T=1.0, t_span=(1.0, 0.0),
        default_collocation="ou", ode_method="dopri5", **kw,
    )  # fmt: skip


def _follows_modes(target: Target, follow_modes: bool | str) -> bool:
    r"""Whether the gradient flow follows the target's modes (``follow_modes``, or ``"auto"``).

    Following the modes reads the target term where the OU path has carried it,
    :math:`g_t = t\,\psi + a_t^2\,w(t)\log\rho(x / a_t)` with :math:`a_t = e^{-B(t)/2}`
    (:math:`w` starts at 1, :math:`u = 0`): exact with :math:`\psi = 0` and :math:`w = 1` for a
    target :math:`\mathcal N(\mu, I)`, and close to exact near well-separated Gaussian modes,
    which the fixed :math:`\log\rho(x)` leaves in place while the path moves them by
    :math:`(1 - a_t)|\mu|` (GMM-40: 2 at ``t = 0.1``, more than a mode's width), leaving
    :math:`\psi` to build forty moving bumps. :math:`a_t^2\log\rho(x / a_t)` stays bounded as
    :math:`a_t \to 0` only where :math:`-\log\rho` grows at most like :math:`|x|^2`, so
    ``"auto"`` (default) follows the modes when :func:`pdesampler.targets.tail_exponent` is at
    most :data:`FOLLOW_MODES_MAX_TAIL` (Gaussian mixtures), not on the many-wells (:math:`x^4`).
    """
    if follow_modes == "auto":
        return tail_exponent(target) <= FOLLOW_MODES_MAX_TAIL
    if not isinstance(follow_modes, bool):
        raise ValueError(f"follow_modes must be true, false or 'auto', got {follow_modes!r}")
    return follow_modes
