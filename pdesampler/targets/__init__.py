r"""Target densities with exact references (docs/targets.md).

A :class:`Target` is an unnormalized density :math:`\rho` on :math:`\mathbb{R}^d` with
``log_prob``, ``dim``, a collocation ``box``, ``log_Z`` and, where known, exact samples,
coordinate standard deviations, entropy and modes. Families:

- :mod:`~pdesampler.targets.base`: the interface, :class:`Gaussian`, :func:`tail_exponent`;
- :mod:`~pdesampler.targets.mixtures`: Gaussian mixtures (GMM-9, GMM-40, GMM-40 in 50-d);
- :mod:`~pdesampler.targets.wells`: many-well products (Sun et al.; FAB's ManyWell-d);
- :mod:`~pdesampler.targets.funnel`: Neal's funnel;
- :mod:`~pdesampler.targets.logreg`: Bayesian logistic regression (breast cancer);
- :mod:`~pdesampler.targets.student`: a mixture of Student-t distributions.
"""

from pdesampler.targets.base import Gaussian, Target, tail_exponent
from pdesampler.targets.funnel import Funnel
from pdesampler.targets.logreg import BayesianLogisticRegression, BreastCancerLogReg
from pdesampler.targets.mixtures import GMM9, GMM40, GaussianMixture, UniformGMM
from pdesampler.targets.student import StudentMixture
from pdesampler.targets.wells import FabManyWell, ManyWell

__all__ = [
    "GMM9",
    "GMM40",
    "BayesianLogisticRegression",
    "BreastCancerLogReg",
    "FabManyWell",
    "Funnel",
    "Gaussian",
    "GaussianMixture",
    "ManyWell",
    "StudentMixture",
    "Target",
    "UniformGMM",
    "tail_exponent",
]
