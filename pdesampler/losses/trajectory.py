r"""Trajectory baselines: PIS and DIS with the KL and log-variance losses (Sun et al. Table 2).

A :class:`TrajectoryLoss` owns a learned control :math:`u(x, t)` and a reference process
(:class:`BrownianReference` for the Path Integral Sampler, :class:`VPReference` for the
time-reversed Diffusion Sampler). Its generative SDE on :math:`[0, T]` is

.. math:: dX_t = \big(b(X_t, t) + \sigma(t)\,u(X_t, t)\big)\,dt + \sigma(t)\,dW_t,
    \qquad X_0 \sim p_{prior},

with :math:`b = 0` for PIS and :math:`b(x, t) = \tfrac{\beta(T-t)}2 x` (minus the VP drift
:math:`f`, as in Sun et al. eq. (61)) for DIS. It is simulated by Euler-Maruyama on ``steps``
equal steps with forward kernels :math:`f_k(x_{k+1} | x_k) = \mathcal N(x_k + \mu_k \Delta t,
\sigma_k^2 \Delta t)`. The target path measure runs the *reference* backwards from
:math:`p_{target}` with kernels :math:`b_k(x_k | x_{k+1})`, so the discrete path-space
Radon-Nikodym derivative (the importance weight of a path) is

.. math:: \log w = \log\rho(X_K) - \log p_{prior}(X_0)
    + \sum_{k=0}^{K-1} \big[\log b_k(X_k | X_{k+1}) - \log f_k(X_{k+1} | X_k)\big],

and :math:`\mathbb E[w] = Z` exactly, for any control and any step count. Its Euler-Maruyama
limit is the on-policy BSDE residual of Sun et al. eq. (62) (their Prop. 3.1 and App. A.3),
:math:`\log w = \log\rho(X_T) - \log p_{prior}(X_0) + \int_0^T (\mathrm{div}(-f) -
\tfrac12|u|^2)\,dt - \int_0^T u\cdot dW`; for PIS :math:`f = 0` and
:math:`\log p^{ref}_T(X_T)` replaces :math:`\log p_{prior}(X_0)`. The losses are

* ``kl``: :math:`\mathbb E[-\log w]` on reparametrized paths (gradients through the path),
  which is :math:`\mathrm{KL}(Q^u\,\|\,P^*) - \log Z \ge -\log Z`;
* ``lv``: :math:`\mathrm{Var}(\log w)` on *detached* paths (Richter & Berner's log-variance
  loss): gradients flow only through the control inside :math:`\log f_k`; zero at the optimum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from pdesampler.euler_maruyama import Step, euler_maruyama
from pdesampler.losses.base import Dynamics, Trainable
from pdesampler.losses.parts import LinearBeta, vp_reverse_diffusion
from pdesampler.losses.transport import NetSpec, make_prior, make_space_net
from pdesampler.ops import TraceEstimator
from pdesampler.targets import Target

if TYPE_CHECKING:
    from pdesampler.collocation import CollocationSampler
    from pdesampler.optim import FinetuneConfig
    from pdesampler.optim.adam import AdamConfig

__all__ = [
    "DIVERGENCES",
    "BrownianReference",
    "Dirac",
    "PathBatches",
    "TrajectoryLoss",
    "VPReference",
    "dis",
    "dis_kl",
    "dis_lv",
    "gaussian_log_kernel",
    "path_log_ratio",
    "pis",
    "pis_kl",
    "pis_lv",
]

DIVERGENCES = ("kl", "lv")


def gaussian_log_kernel(residual: Tensor, var: Tensor | float) -> Tensor:
    r""":math:`\log \mathcal N(r; 0, v I)` of the rows of ``residual`` ``(N, d)`` -> ``(N,)``."""
    var = torch.as_tensor(var, dtype=residual.dtype, device=residual.device)
    d = residual.shape[-1]
    return -0.5 * residual.square().sum(-1) / var - 0.5 * d * torch.log(2 * math.pi * var)


class Dirac(Target):
    """The point mass at 0 (PIS starts there). ``log_prob`` is the density with respect to the
    point mass itself, i.e. 0, so that the path weights need no special case."""

    log_Z = 0.0  # noqa: N815 (the papers' name)

    def __init__(self, dim: int) -> None:
        super().__init__(dim, (-torch.ones(dim), torch.ones(dim)))
        self.stddevs = torch.zeros(dim, dtype=torch.float64)

    def _log_prob(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.zeros(n, self.dim, dtype=torch.float64)


class BrownianReference(nn.Module):
    r"""PIS reference: :math:`dX = \bar\sigma\,dW`, :math:`X_0 = 0`, whose marginal at time
    :math:`t` is :math:`\mathcal N(0, \bar\sigma^2 t I)`. Its backward kernels are the
    Brownian bridge to 0: :math:`b_k(x_k | x_{k+1}) = \mathcal N\big(\tfrac{t_k}{t_{k+1}}
    x_{k+1}, \bar\sigma^2 \Delta t \tfrac{t_k}{t_{k+1}}\big)`, and at :math:`t_k = 0` the
    point mass (log-density 0). Their product is :math:`p^{ref}(path) / p^{ref}_T(x_K)`."""

    def __init__(self, dim: int, sigma: float = math.sqrt(0.2), T: float = 5.0) -> None:
        super().__init__()
        if not (sigma > 0 and T > 0):
            raise ValueError(f"BrownianReference needs sigma > 0 and T > 0, got {sigma}, {T}")
        self.sigma, self.T = float(sigma), float(T)
        self.prior = Dirac(dim)

    def base_drift(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.full_like(t, self.sigma)

    def log_backward(self, x: Tensor, x_next: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        if float(t) <= 0:
            return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        ratio = t / t_next
        return gaussian_log_kernel(x - ratio * x_next, self.sigma**2 * (t_next - t) * ratio)


class VPReference(nn.Module):
    r"""DIS reference: the VP-SDE :math:`dY = -\tfrac{\beta(s)}2 Y\,ds + \sqrt{\beta(s)}\,dW`
    started at the target, with :math:`\beta(s) = \beta_{min} + (s/T)(\beta_{max} -
    \beta_{min})`, run in generative time :math:`t = T - s`. The generative base drift is
    :math:`-f = \tfrac{\beta(T - t)}2 x`, :math:`\sigma(t) = \sqrt{\beta(T - t)}`, and the
    backward kernel is one Euler-Maruyama step of :math:`Y`:
    :math:`b_k(x_k | x_{k+1}) = \mathcal N\big(x_{k+1} - \tfrac{\beta_k}2 x_{k+1}\Delta t,
    \beta_k\Delta t\big)`, with :math:`\beta_k = \beta(T - t_k)`, the same rate as the
    forward kernel's :math:`\sigma(t_k)^2`: where :math:`\beta` is small, rates taken at the
    two ends of the step would differ by a large relative amount and dominate the weight
    variance (measured on a Gaussian at the optimum, 200 steps: log-variance 0.75 against 0.017).

    Args:
        prior: the start :math:`X_0` (default :math:`\mathcal N(0, s_0^2 I)`, which
            :math:`p_Y(\cdot, T)` approaches).
    """

    def __init__(
        self,
        dim: int,
        beta_min: float = 0.1,
        beta_max: float = 10.0,
        T: float = 1.0,
        prior_std: float = 1.0,
        prior: Target | None = None,
    ) -> None:
        super().__init__()
        if not (beta_min > 0 and beta_max > 0 and T > 0):
            raise ValueError(
                f"VPReference needs beta_min, beta_max, T > 0, got {beta_min}, {beta_max}, {T}"
            )
        self.T = float(T)
        self.beta = LinearBeta(beta_min, beta_max, T)
        self.diffusion = vp_reverse_diffusion(self.beta, self.T)
        self.prior = prior if prior is not None else make_prior(dim, prior_std)

    def base_drift(self, x: Tensor, t: Tensor) -> Tensor:
        return 0.5 * self.beta(self.T - t) * x

    def log_backward(self, x: Tensor, x_next: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        beta, dt = self.beta(self.T - t), t_next - t
        return gaussian_log_kernel(x - x_next + 0.5 * beta * x_next * dt, beta * dt)


Reference = BrownianReference | VPReference


def path_log_ratio(
    reference: Reference, x: Tensor, x_next: Tensor, em_residual: Tensor, t: Tensor, t_next: Tensor
) -> Tensor:
    r""":math:`\log b_k(x_k | x_{k+1}) - \log f_k(x_{k+1} | x_k)` for one Euler-Maruyama step,
    given its residual :math:`x_{k+1} - x_k - \mu_k \Delta t` (the scaled noise)."""
    var = reference.diffusion(t) ** 2 * (t_next - t)
    return reference.log_backward(x, x_next, t, t_next) - gaussian_log_kernel(em_residual, var)


class PathBatches:
    """The training batches of a :class:`TrajectoryLoss`: a batch is ``(n, generator)``, the
    number of paths and the stream of their Brownian increments, which
    :meth:`TrajectoryLoss.path_loss` simulates so that the KL loss's gradients flow through the
    paths."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def update(self, step: int) -> None:
        """Nothing to update: every batch is fresh paths."""

    def __call__(self, n: int) -> tuple[int, torch.Generator]:
        return n, self.generator


class TrajectoryLoss(Trainable):
    """A control :math:`u` trained on simulated paths (see the module docstring).

    Args:
        target: the unnormalized target density.
        reference: :class:`BrownianReference` (PIS) or :class:`VPReference` (DIS).
        control: :math:`u(x, t)` for one point, ``(d,), () -> (d,)`` (an :class:`MLP`).
        divergence: ``"kl"`` or ``"lv"``.
        steps: Euler-Maruyama steps per path.
        max_control: clamp each coordinate of :math:`u` to this magnitude (``None``: no clamp).
    """

    def __init__(
        self,
        target: Target,
        reference: Reference,
        control: nn.Module,
        *,
        divergence: str = "kl",
        steps: int = 200,
        max_control: float | None = None,
    ) -> None:
        super().__init__()
        if divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {divergence!r}; available: {list(DIVERGENCES)}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.target, self.reference, self.control = target, reference, control
        self.divergence, self.steps = divergence, int(steps)
        self.max_control = max_control
        self.T = reference.T

    def check_training(self, adam: AdamConfig, finetune: FinetuneConfig | None) -> None:
        """The path loss is the objective itself: ``optim.loss_form`` and ``optim.temper_from``
        do not apply, nor does a fine-tuner (no least-squares residual); none runs."""
        if adam.loss_form != "squares" or adam.temper_from is not None:
            raise ValueError(
                f"optim.loss_form and optim.temper_from apply to PDE residuals; the trajectory "
                f"baseline {type(self).__name__} trains on its own path loss"
            )
        if finetune is not None and finetune.steps != 0:
            raise ValueError(
                f"Gauss-Newton does not apply to the trajectory baseline {type(self).__name__} "
                f"({self.divergence}): its loss is an expectation over simulated paths, not a "
                "least-squares residual; use optim=adam"
            )

    def training_batches(
        self,
        collocation: str | CollocationSampler,
        generator: torch.Generator,
        options: Mapping | None = None,
    ) -> PathBatches:
        """Fresh paths every step, drawn with ``generator`` (no collocation points)."""
        return PathBatches(generator)

    def training_loss(
        self, batch: tuple[int, torch.Generator], form: str = "squares"
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`path_loss` on ``batch = (n, generator)``."""
        return self.path_loss(*batch)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        r""":math:`\mu(x, t) = b(x, t) + \sigma(t) u(x, t)` at one point, or on a batch
        ``(N, d)`` at one scalar time."""
        u = self.control(x, t)
        if self.max_control is not None:
            u = u.clamp(-self.max_control, self.max_control)
        return self.reference.base_drift(x, t) + self.reference.diffusion(t) * u

    def dynamics(self) -> Dynamics:
        """The generative SDE; its samples' log-weights are the path-space RND."""
        return Dynamics(
            drift=self.drift,
            prior=self.reference.prior,
            t0=0.0,
            t1=self.T,
            diffusion=self.reference.diffusion,
            stochastic=True,
            reference=self.reference,
        )

    def simulate(
        self, n: int, generator: torch.Generator, *, detach: bool
    ) -> tuple[Tensor, Tensor]:
        r"""``n`` Euler-Maruyama paths: the end points :math:`X_K` and :math:`\log w`.

        With ``detach`` the states are cut from the graph (the log-variance loss): the drift
        enters :math:`\log w` only through :math:`\log f_k`, as
        :math:`x_{k+1} - x_k - \mu_k\Delta t = \sigma_k\sqrt{\Delta t}\,\xi_k +
        (\mathrm{sg}(\mu_k) - \mu_k)\Delta t`.
        """
        p = next(self.control.parameters())
        grid = torch.linspace(0.0, self.T, self.steps + 1, dtype=p.dtype, device=p.device)
        x = self.reference.prior.sample(n, generator).to(p)
        log_w = -self.reference.prior.log_prob(x) + (self.reference.prior.log_Z or 0.0)
        noise = (
            torch.randn(n, self.dim, generator=generator, dtype=p.dtype).to(p.device)
            for _ in range(self.steps)
        )

        def weigh(step: Step) -> Tensor:
            nonlocal log_w
            x_next, em_residual, dt = step.x_next, step.noise, step.t_next - step.t
            if detach:
                x_next = x_next.detach()
                em_residual = step.noise + (step.drift.detach() - step.drift) * dt
            ratio = path_log_ratio(self.reference, step.x, x_next, em_residual, step.t, step.t_next)
            log_w = log_w + ratio
            return x_next

        # the drift takes one time for the batch: the network is called batched
        x = euler_maruyama(self.drift, self.reference.diffusion, grid, noise, x, weigh)
        return x, log_w + self.target.log_prob(x)

    def path_loss(self, n: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        r"""The training loss on ``n`` fresh paths and, for logging, the mean of
        :math:`\log w` (a lower bound on :math:`\log Z`)."""
        _, log_w = self.simulate(n, generator, detach=self.divergence == "lv")
        # the variance in float64: log-weights of -5e22 (paths into a funnel's neck at the
        # start) square past float32's range; their gradient, 2 (log w - mean) / (n - 1), fits
        loss = -log_w.mean() if self.divergence == "kl" else log_w.double().var()
        return loss, {self.divergence: loss.detach(), "log_w": log_w.mean().detach()}

    def log_z_estimate(self) -> float | None:
        r"""None: the methods carry no learned :math:`\log Z` (evaluation estimates it)."""
        return None


# ---------------------------------------------------------------------------- builders
def _baseline(
    target: Target,
    reference: Reference,
    net: NetSpec | None,
    divergence: str,
    steps: int,
    max_control: float | None,
) -> TrajectoryLoss:
    """A :class:`TrajectoryLoss` whose control is an :class:`MLP` of ``(x, t)`` (spec ``net``)
    on the reference's horizon."""
    control = make_space_net(target.dim, target.dim, net, reference.T)
    kw = {"divergence": divergence, "steps": steps, "max_control": max_control}
    return TrajectoryLoss(target, reference, control, **kw)


def pis(
    target: Target,
    net: NetSpec | None = None,
    divergence: str = "kl",
    steps: int = 200,
    sigma: float = math.sqrt(0.2),
    T: float = 5.0,
    max_control: float | None = 10.0,
    chunk_size: int | None = None,
    estimator: TraceEstimator | None = None,
) -> TrajectoryLoss:
    r"""The Path Integral Sampler (Zhang & Chen 2022): Brownian reference from 0. Defaults are
    sde_sampler's (``sde=bm_pis``: :math:`\bar\sigma^2 = 0.2`, :math:`T = 5`; 200 steps; the
    control clipped at 10). ``chunk_size`` and ``estimator`` are accepted for the builders'
    common signature (the runner passes them); paths call the network batched and take no
    traces."""
    reference = BrownianReference(target.dim, sigma, T)
    return _baseline(target, reference, net, divergence, steps, max_control)


def dis(
    target: Target,
    net: NetSpec | None = None,
    divergence: str = "kl",
    steps: int = 200,
    beta_min: float = 0.1,
    beta_max: float = 10.0,
    T: float = 1.0,
    prior_std: float = 1.0,
    max_control: float | None = 10.0,
    chunk_size: int | None = None,
    estimator: TraceEstimator | None = None,
) -> TrajectoryLoss:
    r"""The time-reversed Diffusion Sampler (Berner, Richter, Ullrich 2022): VP reference,
    prior :math:`\mathcal N(0, s_0^2 I)`. Defaults are sde_sampler's (``sde=vp_10``:
    :math:`\beta` from 0.1 to 10, :math:`T = 1`; 200 steps; the control clipped at 10).
    ``chunk_size`` and ``estimator`` are accepted as in :func:`pis`."""
    reference = VPReference(target.dim, beta_min, beta_max, T, prior_std)
    return _baseline(target, reference, net, divergence, steps, max_control)


def pis_kl(target: Target, **kw) -> TrajectoryLoss:
    """PIS with the KL loss."""
    return pis(target, divergence="kl", **kw)


def pis_lv(target: Target, **kw) -> TrajectoryLoss:
    """PIS with the log-variance loss."""
    return pis(target, divergence="lv", **kw)


def dis_kl(target: Target, **kw) -> TrajectoryLoss:
    """DIS with the KL loss."""
    return dis(target, divergence="kl", **kw)


def dis_lv(target: Target, **kw) -> TrajectoryLoss:
    """DIS with the log-variance loss."""
    return dis(target, divergence="lv", **kw)
