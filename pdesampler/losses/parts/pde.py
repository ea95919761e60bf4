r"""The PDE residuals: the third axis of a catalogue entry (Sun et al. eqs. (7), (8), (20), (21))."""

from __future__ import annotations

from torch import Tensor

from pdesampler.losses.parts.drift import DriftJet
from pdesampler.ops import ScalarJet

__all__ = ["hjb", "log_fokker_planck"]


def log_fokker_planck(V: ScalarJet, mu: DriftJet, sigma_sq: Tensor | float | None) -> Tensor:
    r"""logFP (Sun et al. eq. (7)): :math:`\partial_t V + \nabla\cdot\mu + \nabla V\cdot\mu
    - \tfrac12\sigma^2|\nabla V|^2 - \tfrac12\sigma^2\Delta V`; logCE (eq. (8)) when
    ``sigma_sq`` is ``None`` (then :math:`\Delta V` is not needed)."""
    r = V.dt + mu.div + (V.grad * mu.value).sum()
    if sigma_sq is None:
        return r
    return r - 0.5 * sigma_sq * ((V.grad * V.grad).sum() + V.lap)


def hjb(Phi: ScalarJet, sigma_sq: Tensor | float | None) -> Tensor:
    r"""HJB for SB (Sun et al. eq. (20)): :math:`\partial_t\Phi + \tfrac12|\nabla\Phi|^2 +
    \tfrac12\sigma^2\Delta\Phi`; for OT (eq. (21)) when ``sigma_sq`` is ``None``."""
    r = Phi.dt + 0.5 * (Phi.grad * Phi.grad).sum()
    return r if sigma_sq is None else r + 0.5 * sigma_sq * Phi.lap
