r"""The parts every catalogue entry is composed of (docs/losses.md; the equations: docs/math.md).

Three independent axes, a module each:

1. **Log-density** :math:`V(x, t)` (:class:`LogDensityPath`, :mod:`.density`): a
   time-dependent combination of :math:`\log\rho`, :math:`\log p_{prior}` and a learned
   correction, minus a normalizer.
2. **Drift** :math:`\mu(x, t)` (:mod:`.drift`): a free network (:class:`FreeDrift`), the
   gradient of a potential (:class:`GradientDrift`, OT and SB), or fixed by :math:`V`
   (:class:`ScoreDrift`, time reversal and gradient flow).
3. **PDE** (:mod:`.pde`): the log-Fokker-Planck residual (:func:`log_fokker_planck`, logCE
   when :math:`\sigma = 0`) and the optional HJB regularizer (:func:`hjb`).

The noise schedules :math:`\beta(t)` and diffusions :math:`\sigma(t)` are in :mod:`.schedules`.
All parts act on one point ``x`` of shape ``(d,)`` and a scalar ``t``; the Residual vmaps them.
"""

from pdesampler.losses.parts.density import (
    BridgeCoefficients,
    Coefficients,
    GradientFlowCoefficients,
    LogDensityPath,
    ReverseCoefficients,
    ScalarLogZ,
    network_jet,
    prior_log_z,
    resolve_log_z_init,
)
from pdesampler.losses.parts.drift import Drift, DriftJet, FreeDrift, GradientDrift, ScoreDrift
from pdesampler.losses.parts.pde import hjb, log_fokker_planck
from pdesampler.losses.parts.schedules import (
    ConstantBeta,
    Diffusion,
    LinearBeta,
    constant_diffusion,
    vp_reverse_diffusion,
)

__all__ = [
    "BridgeCoefficients",
    "Coefficients",
    "ConstantBeta",
    "Diffusion",
    "Drift",
    "DriftJet",
    "FreeDrift",
    "GradientDrift",
    "GradientFlowCoefficients",
    "LinearBeta",
    "LogDensityPath",
    "ReverseCoefficients",
    "ScalarLogZ",
    "ScoreDrift",
    "constant_diffusion",
    "hjb",
    "log_fokker_planck",
    "network_jet",
    "prior_log_z",
    "resolve_log_z_init",
    "vp_reverse_diffusion",
]
