r"""Sample-quality and likelihood metrics (docs/metrics.md; Sun et al., Appendix B.3,
eqs. (67)-(68); Chemseddine et al., section 4; Blessing et al. 2024, "Beyond ELBOs").

Pure functions on tensors: no training and no ODE code. Inputs may have any float dtype and live
on any device; where precision matters (log-weights, distances) the work is done in float64.
Scalar results are returned as Python floats.

Notation: :math:`x_i \sim q` are ``N`` model samples with model log-density :math:`\log q`,
:math:`\rho = Z\, p_{target}` is the unnormalized target and
:math:`\log w_i = \log\rho(x_i) - \log q(x_i)` are the log importance weights.

Modules: :mod:`~pdesampler.metrics.weights` (weights, log Z, ESS),
:mod:`~pdesampler.metrics.sinkhorn` (Sinkhorn W2),
:mod:`~pdesampler.metrics.distances` (energy distance, Delta std),
:mod:`~pdesampler.metrics.likelihoods` (cross-entropy, forward NLL, ELBO, EUBO),
:mod:`~pdesampler.metrics.modes` (mode coverage) and :mod:`~pdesampler.metrics.field`
(:func:`field_metrics`).
"""

from pdesampler.metrics.distances import delta_std, energy_distance
from pdesampler.metrics.field import field_metrics
from pdesampler.metrics.likelihoods import cross_entropy, elbo, eubo, forward_nll
from pdesampler.metrics.modes import entropic_mode_coverage, mode_coverage
from pdesampler.metrics.sinkhorn import sinkhorn_w2
from pdesampler.metrics.weights import (
    delta_log_z,
    effective_sample_size,
    forward_ess,
    importance_summary,
    log_weights,
    log_z_importance,
    log_z_lower_bound,
)

__all__ = [
    "cross_entropy",
    "delta_log_z",
    "delta_std",
    "effective_sample_size",
    "elbo",
    "energy_distance",
    "entropic_mode_coverage",
    "eubo",
    "field_metrics",
    "forward_ess",
    "forward_nll",
    "importance_summary",
    "log_weights",
    "log_z_importance",
    "log_z_lower_bound",
    "mode_coverage",
    "sinkhorn_w2",
]
