r"""Importance weights, log Z estimates and effective sample sizes (Sun et al., Appendix B.3,
eqs. (65) and (68); Blessing et al. 2024, "Beyond ELBOs", section 4)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "delta_log_z",
    "effective_sample_size",
    "forward_ess",
    "importance_summary",
    "log_weights",
    "log_z_importance",
    "log_z_lower_bound",
]


def _as_log_w(log_w: Tensor) -> Tensor:
    """``log_w`` as a detached 1-D float64 tensor; raise on NaN or ``+inf`` entries."""
    log_w = torch.as_tensor(log_w).detach()
    if log_w.dim() != 1 or log_w.numel() == 0:
        raise ValueError(f"log weights must have shape (N,) with N >= 1, got {tuple(log_w.shape)}")
    log_w = log_w.to(torch.float64)
    n_nan = int(torch.isnan(log_w).sum())
    n_posinf = int(torch.isposinf(log_w).sum())
    if n_nan or n_posinf:
        raise ValueError(
            f"log weights contain {n_nan} NaN and {n_posinf} +inf of {log_w.numel()} entries; "
            "-inf (zero weight) is allowed, NaN and +inf are not"
        )
    return log_w


def log_weights(log_rho_x: Tensor, log_q_x: Tensor) -> Tensor:
    r"""Log importance weights :math:`\log w = \log\rho(x) - \log q(x)` (Sun et al. eq. (65)).

    Args:
        log_rho_x: unnormalized target log-density at the model samples, shape ``(N,)``.
        log_q_x: the model's log-density at the same samples, shape ``(N,)``.

    Returns:
        ``(N,)`` float64 tensor (detached), on the inputs' device.
    """
    if log_rho_x.shape != log_q_x.shape:
        raise ValueError(f"shape mismatch: {tuple(log_rho_x.shape)} vs {tuple(log_q_x.shape)}")
    return log_rho_x.detach().to(torch.float64) - log_q_x.detach().to(torch.float64)


def effective_sample_size(log_w: Tensor) -> float:
    r"""Normalized effective sample size (Sun et al. eq. (68)):

    .. math::
        \mathrm{ESS} = \frac{(\sum_i w_i)^2}{N \sum_i w_i^2}
        = \exp\big(2\,\mathrm{LSE}(\log w) - \mathrm{LSE}(2 \log w) - \log N\big),

    computed in log space (float64), so it is invariant to a constant shift of ``log_w`` and
    robust to :math:`|\log w|` of order :math:`10^4` or more. By Cauchy-Schwarz it lies in
    :math:`[1/N, 1]`: 1 for equal weights, :math:`1/N` when one weight dominates.

    Non-finite entries: :math:`-\infty` counts as a zero weight (it still counts in ``N``);
    NaN or :math:`+\infty` raise a ValueError that says how many there are. If every weight is
    zero the ratio is 0/0 and 0.0 is returned (no sample carries any weight).

    Args:
        log_w: log weights, shape ``(N,)``.
    """
    log_w = _as_log_w(log_w)
    if torch.isneginf(log_w).all():
        return 0.0
    n = log_w.numel()
    log_ess = 2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0) - math.log(n)
    return min(max(math.exp(float(log_ess)), 1.0 / n), 1.0)


def log_z_lower_bound(log_w: Tensor) -> float:
    r"""The lower bound :math:`\mathrm{mean}_i \log w_i \le \log Z` (Sun et al. App. B.3).

    By Jensen, :math:`\mathbb{E}_q[\log w] = \log Z - \mathrm{KL}(q\,\|\,p_{target})
    \le \log Z`. A :math:`-\infty` weight makes the bound :math:`-\infty`; NaN or
    :math:`+\infty` raise a ValueError.
    """
    return float(_as_log_w(log_w).mean())


def log_z_importance(log_w: Tensor) -> float:
    r"""The importance-sampling estimate :math:`\log \frac1N \sum_i w_i =
    \mathrm{LSE}(\log w) - \log N` (Sun et al. eq. (65)).

    :math:`\frac1N\sum_i w_i` is unbiased for :math:`Z`, so its log is biased low (Jensen) but
    consistent; it is always :math:`\ge` :func:`log_z_lower_bound` on the same weights.
    """
    log_w = _as_log_w(log_w)
    return float(torch.logsumexp(log_w, 0)) - math.log(log_w.numel())


def importance_summary(log_w: Tensor, failed: Tensor | None = None) -> dict[str, float | int]:
    r"""The weight-based estimates of ``N`` samples some of which may have failed.

    A failed sample (a NaN or :math:`\pm\infty` log-weight, or ``failed[i]`` true, e.g. a
    sample whose coordinates diverged) gets weight 0 and still counts in ``N``:
    :math:`\log w_i \leftarrow -\infty`. Then

    * ``log_Z_is`` :math:`= \mathrm{LSE}_i(\log w_i) - \log N` (:func:`log_z_importance`):
      :math:`\frac1N\sum_i w_i` stays unbiased for :math:`Z`, failures only lower it; it is
      :math:`-\infty` when every sample failed;
    * ``log_Z_lb`` :math:`= \mathrm{mean}_i \log w_i` (:func:`log_z_lower_bound`): one failed
      sample makes it :math:`-\infty`, the only value that is still a bound;
    * ``ess`` :math:`= (\sum w)^2 / (N \sum w^2)` (:func:`effective_sample_size`): 0 when every
      sample failed.

    Dropping failures instead would divide by :math:`N_{finite}` and bias ``log_Z_is`` high by
    :math:`\log(N / N_{finite})`.

    Args:
        log_w: log weights, shape ``(N,)``.
        failed: optional ``(N,)`` boolean mask of samples that failed for another reason.

    Returns:
        ``log_Z_is``, ``log_Z_lb``, ``ess``, ``one_minus_ess`` and ``n_nonfinite_samples`` (the
        number of failed samples).
    """
    log_w = torch.as_tensor(log_w).detach().to(torch.float64)
    bad = ~torch.isfinite(log_w)
    if failed is not None:
        bad = bad | failed.to(bad.device)
    log_w = log_w.masked_fill(bad, -math.inf)
    ess = effective_sample_size(log_w)
    return {
        "log_Z_is": log_z_importance(log_w),
        "log_Z_lb": log_z_lower_bound(log_w),
        "ess": ess,
        "one_minus_ess": 1 - ess,
        "n_nonfinite_samples": int(bad.sum()),
    }


def delta_log_z(log_Z_ref: float | Tensor, estimate: float | Tensor) -> float:
    r""":math:`\Delta\log Z = |\log Z_{ref} - \widehat{\log Z}|` (Sun et al. App. B.3; Sun et al.
    use the lower bound :func:`log_z_lower_bound` as the estimate)."""
    return abs(float(log_Z_ref) - float(estimate))


def forward_ess(log_w_target: Tensor) -> float:
    r"""Forward effective sample size from exact target samples (Midgley et al. 2023, "FAB",
    App. on forward ESS; Blessing et al. 2024, "Beyond ELBOs", section 4):

    .. math::
        \mathrm{ESS}_{fwd} = \frac{N^2}{\sum_i w_i \sum_i w_i^{-1}}
        = \exp\big(2\log N - \mathrm{LSE}(\log w) - \mathrm{LSE}(-\log w)\big),
        \qquad w_i = \frac{\rho(x_i)}{q(x_i)},\ x_i \sim p_{target}.

    It estimates the normalized reverse ESS :math:`Z^2 / (\mathbb{E}_q[w^2])`, with
    :math:`\mathbb{E}_q[w^2] = Z\,\mathbb{E}_p[w]` and :math:`Z = 1 / \mathbb{E}_p[w^{-1}]`, so it
    needs no :math:`Z`, is invariant to a constant shift of :math:`\log w`, lies in
    :math:`(0, 1]` (Cauchy-Schwarz) and is 1 for :math:`q = p_{target}`. Unlike the reverse ESS
    it sees the modes ``q`` misses: a target sample where :math:`q \approx 0` makes
    :math:`w_i` huge and the ESS small. Any :math:`\pm\infty` entry (``q`` or :math:`\rho` zero
    at a target sample) gives 0; NaN raises a ValueError.

    Args:
        log_w_target: :math:`\log\rho(x_i) - \log q(x_i)` at exact target samples, ``(N,)``.
    """
    log_w = torch.as_tensor(log_w_target).detach().to(torch.float64)
    if log_w.dim() != 1 or log_w.numel() == 0:
        raise ValueError(f"log weights must have shape (N,) with N >= 1, got {tuple(log_w.shape)}")
    if torch.isnan(log_w).any():
        raise ValueError(f"log weights contain {int(torch.isnan(log_w).sum())} NaN entries")
    if not torch.isfinite(log_w).all():
        return 0.0
    n = log_w.numel()
    log_ess = 2 * math.log(n) - torch.logsumexp(log_w, 0) - torch.logsumexp(-log_w, 0)
    return min(math.exp(float(log_ess)), 1.0)
