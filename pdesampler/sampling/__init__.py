r"""Sampling from a :class:`~pdesampler.losses.base.Dynamics`, with exact log-likelihoods.

Everything here follows Sun et al., Appendix B.2 (docs/math.md, section 6):

* **ODE** (:func:`sample_ode`). Draw :math:`X_{t_0} \sim p_{prior}` and integrate, from
  :math:`t_0` to :math:`t_1`, the probability-flow ODE together with the instantaneous
  change of variables (Sun et al. eq. (64))

  .. math::
      \frac{dX_t}{dt} = \mu_{ODE}(X_t, t), \qquad
      \frac{d}{dt} \log p(X_t, t) = -\nabla\cdot\mu_{ODE}(X_t, t),

  started from :math:`\log p(X_{t_0}, t_0) = \log p_{prior}(X_{t_0})`. Then
  :math:`\log q(X_{t_1}) = \log p_{prior}(X_{t_0}) - \int_{t_0}^{t_1}
  \nabla\cdot\mu_{ODE}(X_t, t)\,dt`. ``t1 < t0`` integrates backwards in time (the
  gradient-flow interpolation, Chemseddine et al. eq. (27)); the formula is the same.
* **SDE** (:func:`sample_sde`). Euler-Maruyama for :math:`dX = \mu\,dt + \sigma(t)\,dW`
  (Sun et al. eq. (2)). Its samples have no tractable density; likelihoods come from the probability-flow ODE
  :math:`\mu_{ODE} = \mu - \tfrac12 \sigma\sigma^\top\nabla V` (Sun et al. eq. (66)), which has the same
  marginals (``Dynamics.flow_drift``).
* **Likelihood of given points** (:func:`log_density`). Integrate the same augmented ODE from
  :math:`t_1` back to :math:`t_0`; this gives the forward NLL on exact target samples.
* :func:`sample` dispatches on ``Dynamics.stochastic`` and returns both the samples and the
  flow likelihoods (:class:`SamplingOutput`).

Solvers are torchdiffeq's: ``"rk4"`` is its fixed-grid ``RK4`` class, whose step is
``rk4_alt_step_func`` in ``torchdiffeq/_impl/rk_common.py``, i.e. Kutta's 3/8 rule
(:math:`k_2` at :math:`t + h/3`, :math:`k_3` at :math:`t + 2h/3`, weights
:math:`(1, 3, 3, 1)/8`), the rule Sun et al. use; ``"euler"`` and ``"midpoint"`` are the other
fixed-grid choices, and ``"dopri5"`` (and ``"dopri8"``, ``"bosh3"``) are adaptive with
``rtol``/``atol``. ``"auto"`` takes the dynamics' own ``ode_method``: rk4, except for the
gradient flow, whose backward ODE is stiff (dopri5).

Divergences are :func:`pdesampler.ops.vector_jet` of the pointwise drift, vmapped over the
points, with the exact trace by default or a Hutchinson estimator for large ``d``. By default
Hutchinson probes are drawn **once per ODE solve** (one probe set per trajectory, per batch) and
held fixed for all drift evaluations, as in FFJORD: the augmented ODE is then a deterministic
ODE for each trajectory. The trajectories never depend on the probes, and the log-density a
fixed-step solver returns is linear in its per-stage trace estimates, so ``log_q`` is an
*unbiased* estimate of the exact-trace solver's ``log_q`` (hence of the true one up to solver
error); its variance is that of a single Hutchinson estimate of the time-integrated trace and
does not shrink with more steps. With ``fresh_probes=True`` the probes are redrawn at every drift
evaluation: still unbiased (each stage estimate is), with a variance that falls roughly like
``1 / steps`` because the errors of the independent stages average out; this costs one probe
draw per evaluation and is the better choice for evaluation in high ``d`` (log-weight noise
lowers the ESS and biases the importance-sampling log Z). With an adaptive solver and a
Hutchinson estimator the step-size control looks at ``x`` only, so that the step sequence is
independent of the probes and the estimate stays unbiased in both modes.

Settings: the public functions take the fields of :class:`SamplingOptions` as keyword
arguments (or a whole ``options`` object, which they override), among them ``refine_budget``
(:mod:`pdesampler.sampling.refine`) and ``clock``, a :class:`ScoringClock` that bounds the wall
time of every solve it is passed to and counts the samples it cut off.

Conventions: all randomness comes from the CPU ``generator`` passed in (prior draws, Brownian
increments, Hutchinson probes unless the estimator carries its own CPU generator); it is drawn on
the CPU and then moved to ``device``. Work runs under :func:`torch.no_grad` in batches of
``batch_size`` points, so no graph on module parameters is kept and memory stays bounded
(``torch.func`` transforms inside still differentiate with respect to ``x``). The dtype and
device are the explicit arguments, else those of ``module``'s first floating parameter or
buffer, else float32 on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pdesampler.losses.base import Dynamics
from pdesampler.sampling.ode import flow_log_density, sample_flow
from pdesampler.sampling.options import (
    ADAPTIVE_METHODS,
    DEFAULT_BATCH_SIZE,
    FIXED_STEP_METHODS,
    REFINEMENT_BUDGET,
    SamplingOptions,
    ScoringClock,
    ScoringDeadlineError,
    resolve_dtype_device,
)
from pdesampler.sampling.results import SampleResult, SamplingOutput
from pdesampler.sampling.sde import sample_paths

__all__ = [
    "ADAPTIVE_METHODS",
    "DEFAULT_BATCH_SIZE",
    "FIXED_STEP_METHODS",
    "REFINEMENT_BUDGET",
    "SampleResult",
    "SamplingOptions",
    "SamplingOutput",
    "ScoringClock",
    "ScoringDeadlineError",
    "log_density",
    "resolve_dtype_device",
    "sample",
    "sample_ode",
    "sample_sde",
]


@torch.no_grad()
def sample_ode(
    dynamics: Dynamics,
    n: int,
    *,
    generator: torch.Generator,
    options: SamplingOptions | None = None,
    **settings: Any,
) -> SampleResult:
    r"""Samples and log-densities of the probability-flow ODE (Sun et al. App. B.2, eq. (64)).

    Draws :math:`X_{t_0} \sim p_{prior}` and integrates from ``t0`` to ``t1``

    .. math::
        \frac{d}{dt}\begin{pmatrix} X_t \\ \ell_t \end{pmatrix} =
        \begin{pmatrix} \mu_{ODE}(X_t, t) \\ -\nabla\cdot\mu_{ODE}(X_t, t) \end{pmatrix},
        \qquad \ell_{t_0} = \log p_{prior}(X_{t_0}),

    so that :math:`\ell_{t_1} = \log q(X_{t_1})`. ``dynamics.flow_drift`` is used (it equals
    ``drift`` for an ODE; for an SDE it is the probability-flow drift, Sun et al. eq. (66)).

    Args:
        dynamics: the drift, prior and time span.
        n: the number of samples.
        generator: CPU generator for the prior draws (and Hutchinson probes, unless the
            estimator has its own generator).
        options: the settings (:class:`SamplingOptions`; default: its defaults).
        **settings: fields of :class:`SamplingOptions` that override ``options``: ``method``,
            ``steps``, ``rtol``, ``atol``, ``estimator``, ``fresh_probes``, ``batch_size``,
            ``dtype``, ``device``, ``module``, ``n_saved``, ``refine_budget``, ``clock``.

    Returns:
        A :class:`SampleResult` with ``x``, ``log_q``, ``x0`` and, when ``n_saved > 0``,
        ``trajectory`` of shape ``(n_saved, n, d)`` and ``times``.
    """
    return sample_flow(dynamics, n, generator, SamplingOptions.of(options, settings))


@torch.no_grad()
def log_density(
    dynamics: Dynamics,
    x: Tensor,
    *,
    generator: torch.Generator | None = None,
    options: SamplingOptions | None = None,
    **settings: Any,
) -> Tensor:
    r"""The model's :math:`\log q(x)` at time ``t1`` for given points (the forward NLL).

    Integrates the augmented ODE of :func:`sample_ode` backwards, from :math:`t_1` (with
    :math:`X_{t_1} = x`, :math:`\ell_{t_1} = 0`) to :math:`t_0`, so that
    :math:`\ell_{t_0} = -\int_{t_1}^{t_0}\nabla\cdot\mu_{ODE}\,dt =
    \int_{t_0}^{t_1}\nabla\cdot\mu_{ODE}(X_t, t)\,dt`, and returns

    .. math:: \log q(x) = \log p_{prior}(X_{t_0}) - \int_{t_0}^{t_1}
        \nabla\cdot\mu_{ODE}(X_t, t)\,dt.

    Args:
        dynamics: the drift, prior and time span (``flow_drift`` is integrated).
        x: the points, shape ``(n, d)``.
        generator: CPU generator for Hutchinson probes (unused by the exact estimator).
        options: the settings (:class:`SamplingOptions`), as in :func:`sample_ode`; ``dtype``
            and ``device`` default to ``module``'s, else ``x``'s.
        **settings: fields of :class:`SamplingOptions` that override ``options``.

    Returns:
        :math:`\log q(x)`, shape ``(n,)``.
    """
    return flow_log_density(dynamics, x, generator, SamplingOptions.of(options, settings))


@torch.no_grad()
def sample_sde(
    dynamics: Dynamics,
    n: int,
    *,
    generator: torch.Generator,
    options: SamplingOptions | None = None,
    **settings: Any,
) -> SampleResult:
    r"""Euler-Maruyama samples of :math:`dX = \mu(X, t)\,dt + \sigma(t)\,dW` (Sun et al. eq. (2)).

    On the grid :math:`t_k = t_0 + k\,\Delta t`, :math:`\Delta t = (t_1 - t_0)/K`,

    .. math:: X_{k+1} = X_k + \mu(X_k, t_k)\,\Delta t
        + \sigma(t_k)\sqrt{|\Delta t|}\,\xi_k, \qquad \xi_k \sim \mathcal{N}(0, I),

    which also covers decreasing time (:math:`\Delta t < 0`). Noise is drawn for all ``n``
    points at each step from ``generator`` on the CPU, so the result does not depend on
    ``batch_size``; only the drift evaluations are batched.

    Samples whose end state is NaN/Inf (a drift too stiff for the step) are solved again on
    finer grids along the same Brownian paths (:mod:`pdesampler.sampling.sde`), within
    ``refine_budget``; a trajectory baseline keeps its grid (its path weights live on it).

    Args:
        dynamics: the drift, diffusion, prior and time span.
        n: the number of samples.
        generator: CPU generator for the prior draws and the Brownian increments.
        options: the settings (:class:`SamplingOptions`); its ``sde_steps`` is the number
            ``K`` of steps (the scheme is weak order 1, bias O(dt)).
        **settings: fields of :class:`SamplingOptions` that override ``options``:
            ``batch_size``, ``dtype``, ``device``, ``module``, ``n_saved``, ``refine_budget``,
            ``clock``, and ``steps``, which here is ``K`` (``sde_steps``).

    Returns:
        A :class:`SampleResult` with ``log_q=None``, or for a trajectory baseline
        (``dynamics.reference`` set) the path log-density ratio
        :math:`\log p_{prior}(X_0) + \sum_k [\log f_k - \log b_k]`, so that
        :math:`\log\rho(X_K) - \log q` is the path-space log-weight
        (:mod:`pdesampler.losses.trajectory`).
    """
    if "steps" in settings:
        settings["sde_steps"] = settings.pop("steps")
    return sample_paths(dynamics, n, generator, SamplingOptions.of(options, settings))


def sample(
    dynamics: Dynamics,
    n: int,
    *,
    generator: torch.Generator,
    options: SamplingOptions | None = None,
    **settings: Any,
) -> SamplingOutput:
    r"""Samples and likelihoods for evaluation, by the kind of dynamics (Sun et al. App. B.2).

    * ODE (``dynamics.stochastic`` false): one :func:`sample_ode` run gives both the samples
      and their :math:`\log q`.
    * SDE: :func:`sample_sde` (``sde_steps`` Euler-Maruyama steps) gives ``samples``; a separate
      :func:`sample_ode` run of the probability-flow drift (Sun et al. eq. (66)) gives
      ``flow_samples`` and ``flow_log_q``. Both draw from ``generator`` in turn (SDE first), so
      they are independent.
    * Trajectory baseline (``dynamics.reference`` set): the SDE samples are also the flow
      samples, and ``flow_log_q`` is their path log-density ratio, so that the log-weights are
      the exact path-space Radon-Nikodym derivative (:mod:`pdesampler.losses.trajectory`).

    See :class:`SamplingOutput` for which metric uses which field. The settings are all the
    fields of :class:`SamplingOptions`; ``n_saved`` states are kept of the process that makes
    ``samples``.
    """
    opts = SamplingOptions.of(options, settings)
    if not dynamics.stochastic:
        res = sample_ode(dynamics, n, generator=generator, options=opts)
        return SamplingOutput(res.x, res.x, res.log_q, False, res.trajectory, res.times)
    sde = sample_sde(dynamics, n, generator=generator, options=opts)
    if dynamics.reference is not None:  # path-space weights of the SDE samples themselves
        return SamplingOutput(sde.x, sde.x, sde.log_q, True, sde.trajectory, sde.times)
    flow = sample_ode(dynamics, n, generator=generator, options=opts, n_saved=0)
    return SamplingOutput(sde.x, flow.x, flow.log_q, True, sde.trajectory, sde.times)
