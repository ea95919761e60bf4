r"""Mode coverage of samples on targets with known modes (docs/metrics.md)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["entropic_mode_coverage", "mode_coverage"]


def mode_coverage(
    model_modes: Tensor, weights: Tensor, reference_modes: Tensor | None = None
) -> dict[str, float | int | None]:
    r"""How the model's samples spread over a target's ``K`` modes, from the mode each sample is
    in (``Target.mode_of``) and the exact mode weights :math:`w_k` (``Target.mode_weights``).

    With :math:`\hat p_k` the fraction of the ``N`` (unweighted) model samples in mode ``k``:

    - ``mode_tv``: :math:`\tfrac12 \sum_k |\hat p_k - w_k|`, the total-variation distance of
      the mass per mode (0: every mode holds its exact share; 1: no mass where the target has it);
    - ``modes_covered``: the number of modes holding at least one sample, out of ``n_modes``;
    - ``modes_missed``: modes expected to hold at least ten samples (:math:`N w_k \ge 10`; an
      exact sampler leaves one empty with probability :math:`e^{-10}`) that hold none;
    - ``mode_tv_floor`` and ``modes_covered_ref``: the same for ``reference_modes``, exact
      samples (``None`` without them); ``mode_tv_floor`` is the sampling noise of ``mode_tv``,
      about :math:`\sum_k \sqrt{w_k(1-w_k) / (2\pi N)}` for ``N`` samples.

    Args:
        model_modes: the mode index of each model sample, shape ``(N,)``, values in ``[0, K)``.
        weights: :math:`w_k`, shape ``(K,)``, summing to 1.
        reference_modes: the mode index of each exact sample, shape ``(M,)``, or ``None``.
    """
    weights = torch.as_tensor(weights).detach().to("cpu", torch.float64)
    if weights.dim() != 1 or not math.isclose(float(weights.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f"mode weights must have shape (K,) and sum to 1, got {weights}")

    def covered_and_tv(modes: Tensor) -> tuple[Tensor, int, float]:
        modes = torch.as_tensor(modes).detach().to("cpu").long()
        if modes.dim() != 1 or modes.numel() == 0:
            raise ValueError(f"mode indices must have shape (N,), N >= 1, got {tuple(modes.shape)}")
        if modes.min() < 0 or modes.max() >= len(weights):
            raise ValueError(f"mode indices must lie in [0, {len(weights)})")
        n_k = torch.bincount(modes, minlength=len(weights)).to(torch.float64)
        tv = float(0.5 * (n_k / n_k.sum() - weights).abs().sum())
        return n_k, int((n_k > 0).sum()), tv

    n_k, covered, tv = covered_and_tv(model_modes)
    covered_ref, tv_ref = (None, None)
    if reference_modes is not None:
        _, covered_ref, tv_ref = covered_and_tv(reference_modes)
    return {
        "n_modes": len(weights),
        "modes_covered": covered,
        "modes_missed": int(((n_k == 0) & (n_k.sum() * weights >= 10)).sum()),
        "mode_tv": tv,
        "modes_covered_ref": covered_ref,
        "mode_tv_floor": tv_ref,
    }


def entropic_mode_coverage(model_modes: Tensor, n_modes: int) -> float:
    r"""Entropic mode coverage (Blessing et al. 2024, "Beyond ELBOs", section 4): with
    :math:`\hat p_k` the fraction of the ``N`` model samples whose most likely mode is ``k``
    (``Target.mode_of``),

    .. math:: \mathrm{EMC} = -\frac{1}{\log K}\sum_{k=1}^K \hat p_k \log \hat p_k \in [0, 1],

    1 when the samples spread evenly over all ``K`` modes, 0 when they all sit in one. It is
    meant for equal-weight mixtures; on unequal modes an exact sampler scores below 1.

    Args:
        model_modes: the mode index of each model sample, shape ``(N,)``, values in ``[0, K)``.
        n_modes: ``K >= 2``.
    """
    modes = torch.as_tensor(model_modes).detach().to("cpu").long()
    if n_modes < 2:
        raise ValueError(f"entropic mode coverage needs K >= 2 modes, got {n_modes}")
    if modes.dim() != 1 or modes.numel() == 0:
        raise ValueError(f"mode indices must have shape (N,), N >= 1, got {tuple(modes.shape)}")
    if modes.min() < 0 or modes.max() >= n_modes:
        raise ValueError(f"mode indices must lie in [0, {n_modes})")
    p = torch.bincount(modes, minlength=n_modes).to(torch.float64) / modes.numel()
    entropy = -float(torch.special.xlogy(p, p).sum())
    return entropy / math.log(n_modes)
