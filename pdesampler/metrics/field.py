r"""The metrics of the sampling benchmarks (Blessing et al. 2024, "Beyond ELBOs"), in one
flat dictionary for ``metrics.json``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from pdesampler.metrics.likelihoods import eubo
from pdesampler.metrics.modes import entropic_mode_coverage
from pdesampler.metrics.weights import forward_ess, importance_summary, log_weights

__all__ = ["field_metrics"]


def field_metrics(
    log_rho_model: Tensor,
    log_q_model: Tensor,
    *,
    log_Z: float | None = None,
    model_samples: Tensor | None = None,
    target: Any = None,
    log_rho_target: Tensor | None = None,
    log_q_target: Tensor | None = None,
) -> dict[str, float | None]:
    r"""ELBO, EUBO, reverse and forward ESS, log Z errors and entropic mode coverage.

    From ``N`` model samples :math:`x_i \sim q` with :math:`\log\rho(x_i)` and
    :math:`\log q(x_i)` (failed samples, with a non-finite log-weight, get weight 0 as in
    :func:`~pdesampler.metrics.importance_summary`), and optionally ``M`` exact target samples
    :math:`y_j` with :math:`\log\rho(y_j)` and :math:`\log q(y_j)`:

    - ``elbo``: :math:`\mathrm{mean}_i \log w(x_i)` (:func:`~pdesampler.metrics.elbo`);
      ``ess_rev``: :math:`(\sum w)^2 / (N\sum w^2)`; ``log_Z_is``: :math:`\mathrm{LSE}(\log w) -
      \log N`;
    - with ``log_Z``: ``log_Z_error_elbo`` :math:`= \mathrm{ELBO} - \log Z \le 0` and
      ``log_Z_error_is`` :math:`= \log Z_{is} - \log Z`, signed;
    - with the target-sample terms: ``eubo`` (:func:`~pdesampler.metrics.eubo`) and ``ess_fwd``
      (:func:`~pdesampler.metrics.forward_ess`), both ``None`` when a log-weight is NaN (a
      failed backward solve: :math:`q` there is unknown);
    - with ``model_samples`` and a ``target`` that defines its modes (``mode_weights`` with
      ``K >= 2`` entries and ``mode_of``): ``emc``
      (:func:`~pdesampler.metrics.entropic_mode_coverage`) over the finite model samples.

    A metric without its inputs is ``None``.
    """
    summary = importance_summary(log_weights(log_rho_model, log_q_model))
    out: dict[str, float | None] = {
        "elbo": summary["log_Z_lb"],
        "ess_rev": summary["ess"],
        "log_Z_is": summary["log_Z_is"],
        "log_Z_error_elbo": None,
        "log_Z_error_is": None,
        "eubo": None,
        "ess_fwd": None,
        "emc": None,
    }
    if log_Z is not None and math.isfinite(log_Z):
        out["log_Z_error_elbo"] = summary["log_Z_lb"] - log_Z
        out["log_Z_error_is"] = summary["log_Z_is"] - log_Z
    if log_rho_target is not None and log_q_target is not None:
        log_w_target = log_weights(log_rho_target, log_q_target)
        if not torch.isnan(log_w_target).any():
            out["eubo"] = eubo(log_rho_target, log_q_target)
            out["ess_fwd"] = forward_ess(log_w_target)
    weights = getattr(target, "mode_weights", None)
    if model_samples is not None and weights is not None and len(weights) >= 2:
        finite = model_samples[torch.isfinite(model_samples).all(1)]
        if len(finite):
            out["emc"] = entropic_mode_coverage(target.mode_of(finite), len(weights))
    return out
