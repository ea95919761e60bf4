r"""Likelihood-based metrics: cross-entropy, forward NLL, ELBO and EUBO (docs/metrics.md)."""

from __future__ import annotations

import torch
from torch import Tensor

from pdesampler.metrics.weights import log_weights, log_z_lower_bound

__all__ = ["cross_entropy", "elbo", "eubo", "forward_nll"]


def cross_entropy(log_rho_model_samples: Tensor, log_Z: float | Tensor) -> float:
    r"""Cross-entropy of the model samples under the normalized target,
    :math:`-\mathrm{mean}_i \log p_{target}(x_i) = -\mathrm{mean}_i(\log\rho(x_i) - \log Z)`
    with :math:`x_i \sim q` (docs/metrics.md).

    This is what the public re-implementation of Chemseddine et al. calls "NLL". Its expectation
    is :math:`H(q, p_{target}) = H(q) + \mathrm{KL}(q\,\|\,p_{target})`; it equals the target
    entropy for a perfect model, but can also fall below it (e.g. a model that drops low-density
    regions).

    Args:
        log_rho_model_samples: :math:`\log\rho(x_i)` at the model samples, shape ``(N,)``.
        log_Z: the exact :math:`\log Z` of :math:`\rho`.
    """
    log_rho = torch.as_tensor(log_rho_model_samples).detach().to(torch.float64)
    return float(-(log_rho - float(log_Z)).mean())


def forward_nll(log_q_on_target_samples: Tensor) -> float:
    r"""Forward negative log-likelihood :math:`-\mathrm{mean}_i \log q(x_i)` on exact target
    samples :math:`x_i \sim p_{target}` (docs/metrics.md).

    :math:`\log q(x)` comes from integrating the ODE backwards from ``x`` (computed elsewhere).
    Its expectation is :math:`H(p_{target}, q) = H(p_{target}) + \mathrm{KL}(p_{target}\,\|\,q)
    \ge H(p_{target})`, so it is bounded below by the target entropy in expectation (a finite
    sample can fall below it by Monte Carlo error), with equality only for :math:`q = p_{target}`.
    """
    log_q = torch.as_tensor(log_q_on_target_samples).detach().to(torch.float64)
    return float(-log_q.mean())


def elbo(log_rho_model_samples: Tensor, log_q_model_samples: Tensor) -> float:
    r"""The evidence lower bound :math:`\mathrm{ELBO} = \mathbb{E}_q[\log\rho(x) - \log q(x)]
    = \log Z - \mathrm{KL}(q\,\|\,p_{target}) \le \log Z`, the mean over model samples
    :math:`x_i \sim q` (Blessing et al. 2024, "Beyond ELBOs"; the same number as
    :func:`~pdesampler.metrics.log_z_lower_bound`, Sun et al. App. B.3).

    Args:
        log_rho_model_samples: :math:`\log\rho(x_i)`, shape ``(N,)``.
        log_q_model_samples: :math:`\log q(x_i)`, shape ``(N,)``.
    """
    return log_z_lower_bound(log_weights(log_rho_model_samples, log_q_model_samples))


def eubo(log_rho_target_samples: Tensor, log_q_target_samples: Tensor) -> float:
    r"""The evidence upper bound :math:`\mathrm{EUBO} = \mathbb{E}_{p_{target}}[\log\rho(x) -
    \log q(x)] = \log Z + \mathrm{KL}(p_{target}\,\|\,q) \ge \log Z`, the mean over exact target
    samples :math:`x_i \sim p_{target}` (Blessing et al. 2024, "Beyond ELBOs", section 4).
    :math:`\log q(x_i)` comes from integrating the ODE backwards from :math:`x_i`. A target sample
    where :math:`q = 0` makes it :math:`+\infty`.

    Args:
        log_rho_target_samples: :math:`\log\rho(x_i)`, shape ``(N,)``.
        log_q_target_samples: :math:`\log q(x_i)`, shape ``(N,)``.
    """
    return float(log_weights(log_rho_target_samples, log_q_target_samples).mean())
