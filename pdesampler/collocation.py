"""Collocation samplers: where the residual is evaluated.

A sampler is called with the batch size and returns ``(x, t)``: ``x`` of shape ``(n, d)`` and
``t`` of shape ``(n,)``, detached, on the sampler's device and dtype. Samplers that follow the
current model get it through :meth:`CollocationSampler.bind` and refresh themselves in
:meth:`CollocationSampler.update`, which the trainer calls before every step.

* :class:`BoxSampler`: uniform on the box of Sun et al. eq. (63) that interpolates the prior and target boxes.
* :class:`TrajectoryCache`: Sun et al. Appendix D.1 / Table 4: every ``every`` steps simulate
  and cache ``n_trajectories`` trajectories, then mix cached points with uniform ones.
* :class:`OUSampler`: gradient flow (Chemseddine et al. eq. (32)): :math:`x_t = a_t u + s_t n`, ``u`` uniform on the
  target box, ``n ~ N(0, I)``.
* :class:`TrajectorySampler`: Máté & Fleuret: prior samples moved along the current velocity
  with one RK4 step between consecutive time points; all points of the path are used.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor
from torchdiffeq import odeint

from pdesampler.checks import POSITIVE, check
from pdesampler.collocation_box import box_bounds, collocation_target_box, prior_box
from pdesampler.euler_maruyama import Step, euler_maruyama, on_batch
from pdesampler.losses.base import Dynamics, Residual
from pdesampler.losses.parts import LinearBeta

__all__ = [
    "BoxSampler",
    "CollocationSampler",
    "OUSampler",
    "ResidualAdaptive",
    "TrajectoryCache",
    "TrajectorySampler",
    "collocation_target_box",
    "make_collocation",
    "prior_box",
]


class CollocationSampler:
    """Base class: ``sampler(n) -> (x, t)``."""

    def __init__(self, generator: torch.Generator, dtype: torch.dtype, device: torch.device):
        self.generator, self.dtype, self.device = generator, dtype, torch.device(device)
        self.residual: Residual | None = None

    def bind(self, residual: Residual) -> None:
        """Attach the model whose dynamics trajectory-based samplers follow."""
        self.residual = residual

    def update(self, step: int) -> None:
        """Called by the trainer before step ``step`` (a no-op unless the sampler caches)."""

    def __call__(self, n: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.generator, dtype=self.dtype).to(self.device)

    def _randn(self, *shape: int) -> Tensor:
        return torch.randn(shape, generator=self.generator, dtype=self.dtype).to(self.device)


class BoxSampler(CollocationSampler):
    """Sun et al. eq. (63): :math:`t \\sim U[0, T]`, :math:`x \\sim U[\\underline\\Omega(t), \\overline\\Omega(t)]`
    with :math:`\\underline\\Omega(t) = (t/T)\\underline\\Omega_{target} + (1 - t/T)\\underline\\Omega_{prior}`
    (likewise the upper bound), componentwise. ``target_at_start`` swaps the ends (for a curve
    that runs from the target at ``t = 0``)."""

    def __init__(
        self,
        prior_box: tuple[Tensor, Tensor],
        target_box: tuple[Tensor, Tensor],
        T: float,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        target_at_start: bool = False,
    ) -> None:
        super().__init__(generator, dtype, device)
        (p_lo, p_hi), (q_lo, q_hi) = box_bounds(prior_box), box_bounds(target_box)
        if target_at_start:
            (p_lo, p_hi), (q_lo, q_hi) = (q_lo, q_hi), (p_lo, p_hi)
        self.start = (p_lo.to(device, dtype), p_hi.to(device, dtype))
        self.end = (q_lo.to(device, dtype), q_hi.to(device, dtype))
        self.T = float(T)

    def bounds(self, t: Tensor) -> tuple[Tensor, Tensor]:
        u = (t / self.T)[:, None]
        lo = (1 - u) * self.start[0] + u * self.end[0]
        hi = (1 - u) * self.start[1] + u * self.end[1]
        return lo, hi

    def __call__(self, n: int) -> tuple[Tensor, Tensor]:
        t = self.T * self._rand(n)
        lo, hi = self.bounds(t)
        return lo + (hi - lo) * self._rand(n, self.start[0].numel()), t


def _paths(
    dynamics: Dynamics, x0: Tensor, times: Tensor, noise: Callable[[], Tensor] | None = None
) -> Tensor:
    """The states ``(n_times, n, d)`` of the paths of ``dynamics.drift`` from ``x0`` on
    ``times``: RK4, or with ``noise`` (drawing each step's standard normals) Euler-Maruyama
    (:func:`~pdesampler.euler_maruyama.euler_maruyama`)."""
    drift = on_batch(dynamics.drift)
    if noise is None:
        return odeint(lambda t, x: drift(x, t), x0, times, method="rk4")
    states = [x0]

    def keep(step: Step) -> Tensor:
        states.append(step.x_next)
        return step.x_next

    xi = (noise() for _ in range(len(times) - 1))
    euler_maruyama(drift, dynamics.diffusion, times, xi, x0, keep)
    return torch.stack(states)


def _finite_points(states: Tensor, times: Tensor) -> tuple[Tensor, Tensor]:
    """The finite points ``(x, t)`` of the states ``(n_times, n, d)``, detached."""
    t = times[:, None].expand(states.shape[:2])
    keep = torch.isfinite(states).all(-1)
    return states[keep].detach(), t[keep].detach()


class _PoolMixture(CollocationSampler):
    """A batch takes ``fraction`` of its points from a pool the subclass keeps (``points``,
    drawn by :meth:`_pick`) and the rest from ``base``; all from ``base`` while there is none."""

    def __init__(self, base: CollocationSampler, fraction: float) -> None:
        super().__init__(base.generator, base.dtype, base.device)
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.base, self.fraction = base, float(fraction)
        self.points: tuple[Tensor, Tensor] | None = None

    def _pick(self, n: int) -> Tensor:
        """``n`` indices into the pool."""
        raise NotImplementedError

    def __call__(self, n: int) -> tuple[Tensor, Tensor]:
        n_pool = round(self.fraction * n) if self.points is not None else 0
        x, t = self.base(n - n_pool)
        if n_pool == 0:
            return x, t
        idx = self._pick(n_pool).to(self.device)
        return torch.cat([x, self.points[0][idx]]), torch.cat([t, self.points[1][idx]])


class TrajectoryCache(_PoolMixture):
    """Sun et al. App. D.1: every ``every`` steps, simulate ``n_trajectories`` trajectories of the
    current dynamics on ``n_times`` time points (RK4 for ODEs, Euler-Maruyama for SDEs) and cache
    all their points, detached. A batch takes ``fraction`` from the cache and the rest from
    ``base`` (uniform on the box). Table 4 of the paper: 10k trajectories, 200 time points,
    refreshed every 5k steps, half the batch from the cache."""

    def __init__(
        self,
        base: CollocationSampler,
        n_trajectories: int = 10_000,
        n_times: int = 200,
        every: int = 5_000,
        fraction: float = 0.5,
        start: int = 0,
    ) -> None:
        super().__init__(base, fraction)
        self.n_trajectories, self.n_times = n_trajectories, n_times
        self.every, self.start = every, start

    @property
    def cache(self) -> tuple[Tensor, Tensor] | None:
        """The cached trajectory points ``(x, t)``."""
        return self.points

    def update(self, step: int) -> None:
        if step >= self.start and (self.points is None or (step - self.start) % self.every == 0):
            self.points = self.simulate()

    @torch.no_grad()
    def simulate(self) -> tuple[Tensor, Tensor]:
        if self.residual is None:
            raise RuntimeError("TrajectoryCache needs bind(residual) before update()")
        dyn = self.residual.dynamics()
        x0 = dyn.prior.sample(self.n_trajectories, self.generator).to(self.device, self.dtype)
        times = torch.linspace(dyn.t0, dyn.t1, self.n_times, dtype=self.dtype, device=self.device)
        noise = (lambda: self._randn(*x0.shape)) if dyn.stochastic else None
        return _finite_points(_paths(dyn, x0, times, noise), times)

    def _pick(self, n: int) -> Tensor:
        return torch.randint(0, self.points[0].shape[0], (n,), generator=self.generator)


class ResidualAdaptive(_PoolMixture):
    r"""Residual-based adaptive distribution (RAD; Wu et al. 2023, "A comprehensive study of
    non-adaptive and residual-based adaptive sampling for PINNs", and Sun et al. App. C).

    Every ``every`` steps, ``pool`` points are drawn from ``base`` and given the probability

    .. math:: p(x_i, t_i) \propto \frac{\varepsilon_i^k}{\mathrm{mean}_j\, \varepsilon_j^k} + c,
        \qquad \varepsilon_i = \sum_m \alpha_m\, r_m(x_i, t_i)^2,

    the residual's own weighted squared terms. A batch takes ``fraction`` of its points from
    the pool, drawn with these probabilities, and the rest from ``base``: ``c`` keeps every
    pool point in play, ``k`` sharpens the focus on large residuals.
    """

    def __init__(
        self,
        base: CollocationSampler,
        pool: int = 8192,
        every: int = 100,
        k: float = 1.0,
        c: float = 1.0,
        fraction: float = 0.5,
    ) -> None:
        super().__init__(base, fraction)
        if pool < 1 or every < 1 or k < 0 or c < 0:
            raise ValueError(
                f"rad needs pool >= 1, every >= 1, k >= 0 and c >= 0; got pool={pool}, "
                f"every={every}, k={k}, c={c}"
            )
        self.pool, self.every, self.k, self.c = int(pool), int(every), float(k), float(c)
        self.probabilities: Tensor | None = None

    def bind(self, residual: Residual) -> None:
        super().bind(residual)
        self.base.bind(residual)

    def update(self, step: int) -> None:
        self.base.update(step)
        if self.points is None or step % self.every == 0:
            self.points, self.probabilities = self.refresh()

    def refresh(self) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """A new pool and its RAD probabilities."""
        if self.residual is None:
            raise RuntimeError("rad needs bind(residual) before update()")
        x, t = self.base(self.pool)
        with torch.no_grad():
            errors = torch.cat([
                self.point_errors(xs, ts) for xs, ts in zip(x.split(2048), t.split(2048), strict=True)
            ])  # fmt: skip
        errors = torch.nan_to_num(errors.double(), nan=0.0, posinf=0.0).clamp_min(0) ** self.k
        weights = errors / errors.mean().clamp_min(1e-300) + self.c
        if not bool(weights.sum() > 0):
            weights = torch.ones_like(weights)
        return (x.detach(), t.detach()), (weights / weights.sum()).cpu()

    def point_errors(self, x: Tensor, t: Tensor) -> Tensor:
        r""":math:`\varepsilon_i = \sum_m \alpha_m r_m(x_i, t_i)^2` per point."""
        terms = self.residual.residuals(x, t)
        return sum(w * terms[name].detach().square() for name, w in self.residual.weights.items())

    def _pick(self, n: int) -> Tensor:
        return torch.multinomial(self.probabilities, n, replacement=True, generator=self.generator)


class OUSampler(CollocationSampler):
    """Chemseddine et al. (eq. (32)): :math:`t \\sim U[t_{min}, 1]`, :math:`x_t = a_t u + s_t n`
    with :math:`u \\sim U(\\text{target box})`, :math:`n \\sim \\mathcal{N}(0, I)`,
    :math:`a_t = e^{-B(t)/2}`, :math:`s_t^2 = 1 - a_t^2`, :math:`B(t) = \\int_0^t \\beta`."""

    def __init__(
        self,
        target_box: tuple[Tensor, Tensor],
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        t_min: float = 1e-3,
    ) -> None:
        super().__init__(generator, dtype, device)
        lo, hi = box_bounds(target_box)
        self.lo, self.hi = lo.to(device, dtype), hi.to(device, dtype)
        self.beta = LinearBeta(beta_min, beta_max, 1.0)
        self.t_min = float(t_min)

    def __call__(self, n: int) -> tuple[Tensor, Tensor]:
        t = self.t_min + (1 - self.t_min) * self._rand(n)
        a = self.beta.signal_scale(t)[:, None]
        u = self.lo + (self.hi - self.lo) * self._rand(n, self.lo.numel())
        return a * u + (1 - a**2).sqrt() * self._randn(n, self.lo.numel()), t


class TrajectorySampler(CollocationSampler):
    """Máté & Fleuret (Chemseddine et al. eq. (24)): ``n / n_times`` prior samples moved along the current velocity
    with one RK4 step of :math:`dt = 1/(n_{times} - 1)` between consecutive time points; the
    points at all ``n_times`` times form the batch (detached). Their code: 256 samples, 51 times.

    ``spread`` > 1 starts the paths at :math:`m + \\text{spread}\\,(x_0 - m)`, :math:`x_0` from
    the prior of mean :math:`m`: the PDE is then also checked along paths from the prior's
    tails, which a flow that misses a mode sends there (the bulk's paths never reach it)."""

    def __init__(
        self,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        n_times: int = 51,
        spread: float = 1.0,
    ) -> None:
        super().__init__(generator, dtype, device)
        if n_times < 2:
            raise ValueError(f"n_times must be >= 2, got {n_times}")
        check("spread", spread, POSITIVE)
        self.n_times, self.spread = int(n_times), float(spread)

    @torch.no_grad()
    def __call__(self, n: int) -> tuple[Tensor, Tensor]:
        if self.residual is None:
            raise RuntimeError("TrajectorySampler needs bind(residual) before sampling")
        dyn = self.residual.dynamics()
        n_paths = max(1, n // self.n_times)
        x0 = dyn.prior.sample(n_paths, self.generator).to(self.device, self.dtype)
        if self.spread != 1.0:
            if not isinstance(getattr(dyn.prior, "mean", None), Tensor):
                raise ValueError(
                    f"collocation option spread={self.spread} widens the prior about its mean, "
                    f"but the prior {type(dyn.prior).__name__} has no `mean` tensor"
                )
            mean = dyn.prior.mean.to(x0)
            x0 = mean + self.spread * (x0 - mean)
        times = torch.linspace(dyn.t0, dyn.t1, self.n_times, dtype=self.dtype, device=self.device)
        return _finite_points(_paths(dyn, x0, times), times)


#: The samplers of :func:`make_collocation` by kind.
SAMPLERS: dict[str, type[CollocationSampler]] = {
    "box": BoxSampler,
    "trajectory_cache": TrajectoryCache,
    "ou": OUSampler,
    "trajectory": TrajectorySampler,
    "rad": ResidualAdaptive,
}


def make_collocation(
    kind: str,
    residual: Residual,
    generator: torch.Generator,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    prior_box_width: float | str = "auto",
    **options,
) -> CollocationSampler:
    """Build the sampler ``kind`` (``"default"``: the residual's own choice) for ``residual``.

    ``box``, ``trajectory_cache`` and ``rad`` use :func:`collocation_target_box` and :func:`prior_box`
    (``prior_box_width``: prior standard deviations, or ``"auto"``); ``ou`` uses
    :func:`collocation_target_box`; ``options`` go to the sampler. The cache draws its other
    points from the box, or from the OU points where those are the loss's own (gradflow).
    """
    if kind == "default":
        kind = residual.default_collocation
    if kind not in SAMPLERS:
        raise ValueError(f"unknown collocation {kind!r}; available: default, {', '.join(SAMPLERS)}")
    _check_options(kind, options)
    target_box = collocation_target_box(residual.target)
    schedule = _ou_schedule(residual)
    if kind == "ou":
        ou_options = {**schedule, **options}
        sampler: CollocationSampler = OUSampler(target_box, generator, dtype, device, **ou_options)
    elif kind == "trajectory":
        sampler = TrajectorySampler(generator, dtype, device, **options)
    elif kind == "trajectory_cache" and residual.default_collocation == "ou":
        # the gradient flow's cache mixes its paths with the loss's own OU points, not the box
        ou = OUSampler(target_box, generator, dtype, device, **schedule)
        sampler = TrajectoryCache(ou, **options)
    else:
        dyn = residual.dynamics()
        start = prior_box(dyn.prior.mean.detach(), dyn.prior.stddevs, target_box, prior_box_width)
        box = BoxSampler(start, target_box, residual.T, generator, dtype, device, dyn.t0 > dyn.t1)
        wrappers = {"box": lambda base: base, "rad": ResidualAdaptive}
        sampler = wrappers.get(kind, TrajectoryCache)(box, **options)
    sampler.bind(residual)
    return sampler


def _ou_schedule(residual: Residual) -> dict[str, float]:
    """The VP-SDE schedule of a gradient-flow residual (its drift's :class:`LinearBeta`), so that
    the OU points follow the loss's own path (``loss.beta_max=10`` moves both); ``{}`` (the
    sampler's defaults) for a residual without one."""
    beta = getattr(getattr(residual, "drift", None), "beta", None)
    if not isinstance(beta, LinearBeta):
        return {}
    return {"beta_min": beta.beta_min, "beta_max": beta.beta_max}


def _check_options(kind: str, options: dict) -> None:
    """Refuse, in one line, an option that the sampler of ``kind`` does not take (the box takes
    none: its arguments come from the residual and ``prior_box_width``)."""
    fixed = {"generator", "dtype", "device", "base", "target_box"}
    parameters = inspect.signature(SAMPLERS[kind]).parameters
    accepted = [] if kind == "box" else sorted(set(parameters) - fixed)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"collocation {kind!r} takes no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(accepted) or 'none'}"
        )
