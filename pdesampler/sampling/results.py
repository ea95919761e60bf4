"""What the samplers return: :class:`SampleResult` (one process) and :class:`SamplingOutput`
(what evaluation needs)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from pdesampler.targets import Target

__all__ = ["SampleResult", "SamplingOutput"]


@dataclass
class SampleResult:
    r"""Samples of one process.

    Attributes:
        x: the samples :math:`X_{t_1}`, shape ``(n, d)``.
        log_q: :math:`\log q(X_{t_1})` from the change of variables (Sun et al. eq. (64)), shape
            ``(n,)``; ``None`` for SDE samples.
        x0: the prior draws :math:`X_{t_0}`, shape ``(n, d)``.
        trajectory: ``n_saved`` evenly spaced states, shape ``(n_saved, n, d)``, or ``None``.
        times: the times of ``trajectory``, shape ``(n_saved,)``, or ``None``.
    """

    x: Tensor
    log_q: Tensor | None
    x0: Tensor
    trajectory: Tensor | None = None
    times: Tensor | None = None


@dataclass
class SamplingOutput:
    r"""What evaluation needs from a model's dynamics (see :func:`pdesampler.sampling.sample`).

    Which metric uses which field:

    * ``samples``: sample-quality metrics, i.e. Sinkhorn W2, energy distance, Delta std and the
      cross-entropy :math:`-\mathrm{mean}\log p_{target}(x)` (SDE samples for an SDE).
    * ``flow_samples`` and ``flow_log_q``: everything that needs :math:`\log q`, i.e. the
      log-weights :math:`\log w = \log\rho(x) - \log q(x)` (:meth:`log_weights`), hence
      Delta log Z, the log Z lower bound and its importance-sampling version, and ESS.
    * The forward NLL uses neither: it is :func:`pdesampler.sampling.log_density` on exact
      target samples.

    For an ODE the two sets coincide (``flow_samples is samples``).

    Attributes:
        samples: the model's samples at ``t1``, ``(n, d)``.
        flow_samples: samples of the probability-flow ODE, ``(n, d)``.
        flow_log_q: their log-density under the model, ``(n,)``.
        stochastic: whether ``samples`` came from the SDE.
        trajectory: ``(n_saved, n, d)`` states of the process that made ``samples``, or ``None``.
        times: the times of ``trajectory``, or ``None``.
    """

    samples: Tensor
    flow_samples: Tensor
    flow_log_q: Tensor
    stochastic: bool
    trajectory: Tensor | None = None
    times: Tensor | None = None

    def log_weights(self, target: Target) -> Tensor:
        r""":math:`\log w = \log\rho(x) - \log q(x)` on the flow samples (Sun et al. eq. (65))."""
        return target.log_prob(self.flow_samples) - self.flow_log_q
