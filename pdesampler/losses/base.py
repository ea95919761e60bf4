r"""The Residual interface: one PDE residual over ``(x, t)`` plus the dynamics to sample from it.

A :class:`Residual` is an ``nn.Module`` that owns its networks and defines named pointwise
terms :math:`r_k(x, t)` with weights :math:`\alpha_k`. Its loss is

.. math:: L = \sum_k \alpha_k \frac1N \sum_{i=1}^N r_k(x_i, t_i)^2,

the squared norm of the stacked vector :math:`\big(\sqrt{\alpha_k / N}\, r_k(x_i, t_i)\big)_{k,i}`
that :meth:`Residual.forward` returns. Adam minimizes that norm, Gauss-Newton linearizes that
vector through ``torch.func.functional_call`` (Sun et al. section 4), and the samplers integrate
:meth:`Residual.dynamics`. None of them knows which residual it holds.

To write a residual, subclass :class:`Residual` and implement :meth:`point_residuals` for a
single point (it is vmapped over the batch) and :meth:`dynamics`.

:class:`Trainable` is what :func:`pdesampler.train.train` asks of a loss, residual or not (the
trajectory baselines of :mod:`pdesampler.losses.trajectory` train on simulated paths).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn
from torch.func import vmap

from pdesampler.checks import LOSS_FORM, check
from pdesampler.losses.least_squares import finetune_batches
from pdesampler.losses.parts.density import LogDensityPath
from pdesampler.ops import Exact, TraceEstimator, VectorJet, batch_probes
from pdesampler.targets import Target

if TYPE_CHECKING:
    from pdesampler.collocation import CollocationSampler
    from pdesampler.optim import FinetuneConfig
    from pdesampler.optim.adam import AdamConfig

PointFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "Dynamics",
    "PathReference",
    "Residual",
    "ResidualShapeError",
    "Trainable",
    "TrainingBatches",
]


class ResidualShapeError(ValueError):
    """A residual term does not have the shape the interface requires."""


def _zero_diffusion(t: Tensor) -> Tensor:
    return torch.zeros_like(t)


class PathReference(Protocol):
    r"""The reference process of a trajectory baseline: its diffusion and the log-density of its
    backward transition :math:`x_{k+1} \to x_k` on a batch, ``(N, d), (N, d), (), () -> (N,)``."""

    def diffusion(self, t: Tensor) -> Tensor: ...

    def log_backward(self, x: Tensor, x_next: Tensor, t: Tensor, t_next: Tensor) -> Tensor: ...


@dataclass
class Dynamics:
    r"""What sampling needs from a residual: :math:`dX = \mu\,dt + \sigma(t)\,dW` on
    ``[t0, t1]`` (``t1 < t0`` runs backwards in time), started from ``prior`` at ``t0``.

    Attributes:
        drift: :math:`\mu(x, t)` for one point, ``(d,), () -> (d,)``.
        prior: the distribution of :math:`X_{t_0}` (``sample`` and normalized ``log_prob``).
        t0: the start time.
        t1: the end time, where the samples should follow the target.
        diffusion: the scalar :math:`\sigma(t)`; identically 0 for an ODE.
        flow_drift: the probability-flow drift :math:`\mu - \tfrac12\sigma\sigma^\top\nabla V`
            (Sun et al. eq. (66)) whose continuity equation has the same marginals. Its
            divergence gives the log-density rate
            :math:`\tfrac{d}{dt}\log p(X_t) = -\nabla\cdot\mu_{ODE}` (Sun et al. eq. (64)).
            Equal to ``drift`` for an ODE.
        stochastic: whether samples come from the SDE (``True``) or the ODE.
        flow_jet: optional ``(x, t, probes) -> VectorJet`` of ``flow_drift`` with its exact
            divergence, computed faster than generic autodiff (the samplers use it with exact
            traces).
        reference: for a trajectory baseline (:mod:`pdesampler.losses.trajectory`), the
            reference process whose backward kernels ``log_backward(x_k, x_{k+1}, t_k,
            t_{k+1})`` give the path-space importance weights of the Euler-Maruyama samples;
            such dynamics need no ``flow_drift``.
        ode_method: the ODE solver that ``method="auto"`` uses: ``"rk4"``, or an adaptive one
            (``"dopri5"``) for a stiff drift such as the gradient flow's on the many-wells.
    """

    drift: PointFn
    prior: Target
    t0: float
    t1: float
    diffusion: Callable[[Tensor], Tensor] = _zero_diffusion
    flow_drift: PointFn | None = None
    stochastic: bool = False
    flow_jet: Callable[[Tensor, Tensor, Tensor], VectorJet] | None = None
    reference: PathReference | None = None
    ode_method: str = "rk4"

    def __post_init__(self) -> None:
        if self.flow_drift is None and self.reference is None:
            if self.stochastic:
                raise ValueError("a stochastic Dynamics needs flow_drift for its likelihoods")
            self.flow_drift = self.drift


class TrainingBatches(Protocol):
    """The stream of training batches of a :class:`Trainable`: ``update(step)`` before each
    step's draw, ``batches(n)`` a batch of size ``n``, and the random ``generator`` behind
    them (checkpoints save and restore its state)."""

    generator: torch.Generator

    def update(self, step: int) -> None: ...

    def __call__(self, n: int) -> Any: ...


class Trainable(nn.Module):
    """What :func:`pdesampler.train.train` trains: Adam on :meth:`training_loss` over
    :meth:`training_batches`, then, where the loss is a least-squares residual, a second-order
    fine-tuner on :meth:`finetune_batches`. Sampling and evaluation read :meth:`dynamics`.

    Subclasses implement :meth:`dynamics`, :meth:`training_batches` and :meth:`training_loss`;
    the defaults of the others fit a loss that is not a residual: every setting accepted,
    nothing to validate, no tempering, no fine-tuner.

    Attributes:
        target: the unnormalized target density.
        T: the time horizon.
        compilable: whether ``compile`` may put :meth:`training_loss` through
            ``torch.compile`` (:mod:`pdesampler.compiling`).
        least_squares: whether the loss is a least-squares residual, so that a second-order
            fine-tuner applies to it.
    """

    target: Target
    T: float
    compilable: bool = False
    least_squares: bool = False

    @property
    def dim(self) -> int:
        return self.target.dim

    def dynamics(self) -> Dynamics:
        """The SDE/ODE that transports the prior to the target with the learned functions."""
        raise NotImplementedError(f"{type(self).__name__} must implement dynamics")

    def log_z_estimate(self) -> float | None:
        r"""The learned estimate of :math:`\log Z` (for example :math:`\log z(T)` of Sun et al.
        eq. (10)), or ``None`` when the parametrization carries none."""
        return None

    def check_training(
        self, adam: AdamConfig, finetune: FinetuneConfig | None
    ) -> FinetuneConfig | None:
        """Refuse, with a ``ValueError`` that says why, the settings that do not apply to this
        loss; returns the fine-tuner to run after Adam (``None``: none)."""
        return finetune

    def validate_training(self, finetune: FinetuneConfig | None) -> None:
        """Run the loss once on a few points, so that a broken loss fails before training."""

    def training_batches(
        self,
        collocation: str | CollocationSampler,
        generator: torch.Generator,
        options: Mapping | None = None,
    ) -> TrainingBatches:
        """The batches Adam trains on, drawn with ``generator``; ``collocation`` and
        ``options`` choose a residual's collocation sampler."""
        raise NotImplementedError(f"{type(self).__name__} must implement training_batches")

    def training_loss(self, batch: Any, form: str = "squares") -> tuple[Tensor, dict[str, Tensor]]:
        """What one Adam step minimizes on ``batch``, and named parts (detached) for logging;
        ``form`` is ``optim.loss_form``."""
        raise NotImplementedError(f"{type(self).__name__} must implement training_loss")

    def non_finite_cause(self, batch: Any) -> str:
        """Why ``batch`` may have given a non-finite loss, as ``"; ..."`` ("" when unknown)."""
        return ""

    def set_target_power(self, power: float) -> None:
        r"""Train on the tempered target :math:`\rho^{\beta}` with :math:`\beta` = ``power``
        (``optim.temper_from``); 1 restores the target. A no-op where no tempering applies."""

    def finetune_batches(
        self, batches: TrainingBatches, n: int, cfg: FinetuneConfig
    ) -> Callable[[int], tuple]:
        """``step -> (residual_fn, point_jacobian_fn, search_fn, curvature_fn)`` for a
        second-order fine-tuner (:func:`pdesampler.optim.run_finetuner`) on ``n`` points."""
        raise ValueError(f"{type(self).__name__} is not a least-squares residual to fine-tune")


class Residual(Trainable):
    r"""Base class of every PDE residual loss: named pointwise residual terms and their dynamics.

    Args:
        target: the unnormalized target density.
        weights: the weight :math:`\alpha_k` of each term, by name.
        T: the time horizon.
        estimator: the trace estimator for divergences and Laplacians (exact by default).
        chunk_size: points per vmap chunk (``None``: all at once). Chunks that keep the
            ``(chunk, d, width)`` forward-mode tangents in cache are faster on CPU for large d.

    Class attributes:
        pointwise: each term at point ``i`` depends on point ``i`` only, so Gauss-Newton may form
            per-point Jacobians. Set it to ``False`` when overriding :meth:`residuals` with terms
            that couple points.
        default_collocation: the collocation sampler this residual trains best with.
    """

    pointwise: bool = True
    default_collocation: str = "box"
    compilable = True
    least_squares = True

    def __init__(
        self,
        target: Target,
        weights: Mapping[str, float],
        T: float = 1.0,
        estimator: TraceEstimator | None = None,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if not weights:
            raise ValueError(f"{type(self).__name__} needs at least one weighted term")
        bad = {k: w for k, w in weights.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"term weights must be finite and >= 0, got {bad}")
        self.target = target
        self.weights = dict(weights)
        self.T = float(T)
        self.estimator = estimator or Exact()
        self.chunk_size = chunk_size

    # ------------------------------------------------------------------ the extension point
    def point_residuals(self, x: Tensor, t: Tensor, probes: Tensor) -> dict[str, Tensor]:
        """The residual terms at one point: ``x`` of shape ``(d,)``, scalar ``t``, and the trace
        probes ``(k, d)`` to pass to the operators in :mod:`pdesampler.ops`. Returns one scalar
        per term named in ``weights``."""
        raise NotImplementedError(f"{type(self).__name__} must implement point_residuals")

    # ------------------------------------------------------------------ derived, shared
    def residuals(self, x: Tensor, t: Tensor) -> dict[str, Tensor]:
        """The named residual terms on a batch: ``x`` ``(N, d)``, ``t`` ``(N,)`` -> ``(N,)`` each."""
        self._check_batch(x, t)
        probes, probe_dim = batch_probes(self.estimator, x)
        terms = vmap(self.point_residuals, in_dims=(0, 0, probe_dim), chunk_size=self.chunk_size)(
            x, t, probes
        )
        self._check_terms(terms, x.shape[0])
        return terms

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        r"""The stacked vector :math:`(\sqrt{\alpha_k/N}\, r_k(x_i, t_i))`, term-major, of
        length ``K * N``; its squared norm is the loss."""
        terms = self.residuals(x, t)
        n = x.shape[0]
        return torch.cat([math.sqrt(self.weights[k] / n) * terms[k] for k in self.weights])

    def loss(self, x: Tensor, t: Tensor, form: str = "squares") -> tuple[Tensor, dict[str, Tensor]]:
        r"""The loss :math:`\sum_k \alpha_k\, \mathrm{mean}(r_k^2)` (``form="squares"``, the
        squared norm of :meth:`forward`), or Máté & Fleuret's
        :math:`\sum_k \alpha_k\, \mathrm{mean}(|r_k| + r_k^2)` (``"abs_and_squares"``, for
        first-order training only), and the unweighted mean square of each term (detached), for
        logging."""
        check("loss form", form, LOSS_FORM)
        terms = self.residuals(x, t)
        parts = {k: terms[k].square().mean() for k in self.weights}
        if form == "abs_and_squares":
            total = sum(self.weights[k] * (terms[k].abs().mean() + parts[k]) for k in self.weights)
        else:
            total = sum(self.weights[k] * parts[k] for k in self.weights)
        return total, {k: v.detach() for k, v in parts.items()}

    # ------------------------------------------------------------------ training (Trainable)
    def check_training(
        self, adam: AdamConfig, finetune: FinetuneConfig | None
    ) -> FinetuneConfig | None:
        """Tempering (``optim.temper_from``) needs a log-density path that reads the target."""
        if adam.temper_from is not None:
            self._tempered_density()
        return finetune

    def validate_training(self, finetune: FinetuneConfig | None) -> None:
        """:func:`pdesampler.losses.validate_residual`, with the fine-tuner's Jacobian
        products when one follows: a residual torch.func cannot transform, a wrong term shape
        or broken dynamics fail at once with a clear message."""
        from pdesampler.losses.validate import validate_residual  # it imports this module

        finetuning = finetune is not None and finetune.steps != 0
        product = finetune.jacobian_product if finetuning else None
        validate_residual(self, gauss_newton=product)

    def training_batches(
        self,
        collocation: str | CollocationSampler,
        generator: torch.Generator,
        options: Mapping | None = None,
    ) -> CollocationSampler:
        """Collocation batches ``(x, t)``: ``collocation`` itself when it is a sampler, or the
        kind for :func:`pdesampler.collocation.make_collocation` (``"default"``:
        :attr:`default_collocation`) with keyword arguments ``options``."""
        from pdesampler.collocation import CollocationSampler, make_collocation  # imports this

        sampler = collocation
        if not isinstance(collocation, CollocationSampler):
            p = next(self.parameters())
            kind, kw = collocation, dict(options or {})
            sampler = make_collocation(kind, self, generator, dtype=p.dtype, device=p.device, **kw)
        sampler.bind(self)
        return sampler

    def training_loss(self, batch: Any, form: str = "squares") -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`loss` on the collocation batch ``(x, t)`` (a residual of one's own may
        override ``loss(x, t)`` without ``form``)."""
        x, t = batch
        return self.loss(x, t) if form == "squares" else self.loss(x, t, form=form)

    def non_finite_cause(self, batch: Any) -> str:
        """NaN/Inf collocation points, or a target log-density that is not finite there."""
        from pdesampler.losses.validate import non_finite_log_prob  # it imports this module

        x = batch[0]
        bad_rows = int((~torch.isfinite(x).all(1)).sum())
        if bad_rows:
            return f"; the collocation batch has {bad_rows} of {len(x)} NaN/Inf points"
        problem = non_finite_log_prob(self.target, x.detach(), "of the last collocation batch")
        return f"; the target is the cause: {problem}" if problem else ""

    def set_target_power(self, power: float) -> None:
        self._tempered_density().target_power.fill_(power)

    def finetune_batches(
        self, batches: TrainingBatches, n: int, cfg: FinetuneConfig
    ) -> Callable[[int], tuple]:
        return finetune_batches(self, batches, n, cfg)

    def _tempered_density(self) -> LogDensityPath:
        density = getattr(self, "density", None)
        if not isinstance(density, LogDensityPath):
            raise ValueError(
                f"optim.temper_from needs a residual whose log-density path reads the target "
                f"(a LogDensityPath at .density); {type(self).__name__} has none"
            )
        return density

    # ------------------------------------------------------------------ validation
    def _check_batch(self, x: Tensor, t: Tensor) -> None:
        if x.dim() != 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects x of shape (N, {self.dim}), got {tuple(x.shape)}"
            )
        if t.shape != x.shape[:1]:
            raise ValueError(
                f"{type(self).__name__} expects t of shape ({x.shape[0]},) to match x, "
                f"got {tuple(t.shape)}"
            )

    def _check_terms(self, terms: Mapping[str, Tensor], n: int) -> None:
        if not isinstance(terms, Mapping):
            raise ResidualShapeError(
                f"{type(self).__name__}.point_residuals must return a dict of terms, "
                f"got {type(terms).__name__}"
            )
        missing = set(self.weights) - set(terms)
        if missing:
            raise ResidualShapeError(
                f"{type(self).__name__} returned terms {sorted(terms)} but its weights name "
                f"{sorted(self.weights)}; missing {sorted(missing)}"
            )
        for name in self.weights:
            shape = tuple(terms[name].shape)
            if shape != (n,):
                raise ResidualShapeError(
                    f"{type(self).__name__} term {name!r} has shape {shape} on a batch of {n} "
                    f"points; expected ({n},): one scalar per point"
                )
