r"""Bayesian logistic regression posteriors, and the breast-cancer instance (docs/targets.md)."""

from __future__ import annotations

import json
import math
from importlib import resources

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional

from pdesampler.targets.base import Target

__all__ = ["BayesianLogisticRegression", "BreastCancerLogReg", "breast_cancer_design"]

DATA = resources.files("pdesampler") / "data"


class BayesianLogisticRegression(Target):
    r"""The posterior of Bayesian logistic regression with a Gaussian prior,

    .. math::
        \rho(w) = \mathcal{N}(w; 0, s^2 I) \prod_{i=1}^{n} \sigma(y_i\, w^\top x_i),
        \qquad y_i \in \{-1, +1\},

    so that :math:`Z = \int\rho` is the marginal likelihood of the data. ``log_prob`` is
    :math:`\log\mathcal{N}(w; 0, s^2 I) + \sum_i \log\sigma(y_i\, w^\top x_i)`, with
    :math:`\log\sigma` evaluated stably (``logsigmoid``).

    The box is the Laplace approximation's :math:`w^* \pm 5` standard deviations: :math:`w^*`
    the MAP (Newton's method; the log-posterior is strictly concave) and the covariance
    :math:`H^{-1}`, :math:`H = s^{-2} I + \sum_i \sigma_i (1 - \sigma_i)\, x_i x_i^\top`.
    No exact sampler; ``log_Z`` and ``stddevs`` are ``None`` unless a subclass gives
    references.

    Args:
        design: the rows :math:`x_i`, shape ``(n, d)`` (include a column of ones for an
            intercept).
        labels: :math:`y_i \in \{-1, +1\}`, shape ``(n,)``.
        prior_std: :math:`s`.
    """

    BOX_WIDTH = 5.0

    def __init__(self, design: Tensor, labels: Tensor, prior_std: float = 1.0) -> None:
        design = torch.as_tensor(design, dtype=torch.float64)
        labels = torch.as_tensor(labels, dtype=torch.float64)
        if design.dim() != 2 or labels.shape != design.shape[:1]:
            raise ValueError(
                f"design must be (n, d) and labels (n,), got {tuple(design.shape)}, "
                f"{tuple(labels.shape)}"
            )
        if not bool((labels.abs() == 1).all()):
            raise ValueError("labels must be -1 or +1")
        self.prior_std = float(prior_std)
        signed = labels[:, None] * design
        w_map, cov = laplace(signed, self.prior_std)
        half = self.BOX_WIDTH * cov.diagonal().sqrt()
        super().__init__(design.shape[1], (w_map - half, w_map + half))
        self.register_buffer("signed_design", signed, persistent=False)
        self.w_map = w_map

    def _log_prob(self, x: Tensor) -> Tensor:
        signed = self.signed_design.to(x)
        log_prior = -0.5 * (x * x).sum(-1) / self.prior_std**2
        log_prior = log_prior - self.dim * (0.5 * math.log(2 * math.pi) + math.log(self.prior_std))
        return log_prior + functional.logsigmoid(x @ signed.T).sum(-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_data={self.signed_design.shape[0]}, log_Z={self.log_Z}"


def laplace(signed: Tensor, prior_std: float, iters: int = 50) -> tuple[Tensor, Tensor]:
    r"""The MAP :math:`w^*` of :math:`\log\mathcal{N}(w; 0, s^2 I) + \sum_i \log\sigma(a_i^\top
    w)` (rows :math:`a_i = y_i x_i` of ``signed``) by Newton's method, and the Laplace covariance
    :math:`H^{-1}`, :math:`H = s^{-2} I + \sum_i \sigma(a_i^\top w^*)\,\sigma(-a_i^\top w^*)\,
    a_i a_i^\top`. Float64."""
    eye = torch.eye(signed.shape[1], dtype=torch.float64)
    w = torch.zeros(signed.shape[1], dtype=torch.float64)
    for _ in range(iters):
        logits = signed @ w
        grad = -w / prior_std**2 + signed.T @ torch.sigmoid(-logits)
        curv = torch.sigmoid(logits) * torch.sigmoid(-logits)
        hess = eye / prior_std**2 + signed.T @ (curv[:, None] * signed)
        step = torch.linalg.solve(hess, grad)
        w = w + step
        if float(step.abs().max()) < 1e-12:
            break
    logits = signed @ w
    curv = torch.sigmoid(logits) * torch.sigmoid(-logits)
    hess = eye / prior_std**2 + signed.T @ (curv[:, None] * signed)
    return w, torch.linalg.inv(hess)


def breast_cancer_design() -> tuple[Tensor, Tensor]:
    r"""The Wisconsin Diagnostic Breast Cancer data (UCI; Street, Wolberg & Mangasarian 1993),
    as shipped in scikit-learn's ``load_breast_cancer`` and stored in
    ``pdesampler/data/breast_cancer.npz`` (569 rows, 30 features, labels 0 = malignant,
    1 = benign).

    Returns:
        ``(design, labels)``: the design ``(569, 31)``, a column of ones then the 30 features
        standardized to mean 0 and standard deviation 1 (population std, divisor ``n``, as
        scikit-learn's ``StandardScaler``), and the labels :math:`y = 2t - 1 \in \{-1, +1\}`;
        float64.
    """
    with (DATA / "breast_cancer.npz").open("rb") as f, np.load(f) as data:
        features, target = data["features"], data["labels"]
    features = (features - features.mean(0)) / features.std(0)
    design = np.concatenate([np.ones((features.shape[0], 1)), features], axis=1)
    return torch.from_numpy(design), torch.from_numpy(2.0 * target - 1.0)


class BreastCancerLogReg(BayesianLogisticRegression):
    r"""Bayesian logistic regression on the Wisconsin breast-cancer data, ``d = 31``
    (:func:`breast_cancer_design`: intercept and 30 standardized features), prior
    :math:`\mathcal{N}(0, I)`.

    :math:`\log Z` has no closed form; the reference comes from annealed importance sampling
    (Neal 2001) from the Laplace approximation to the posterior, with Hamiltonian Monte Carlo
    moves (``REF_COMMAND``; see that script for the schedule): :math:`\log Z = -55.2225` with
    standard error 0.0026 over 10 independent repeats of 1000 particles and 100 temperatures
    (``LOG_Z_REF``, ``LOG_Z_STDERR``, ``REF_REPEATS``). Plain importance sampling from a
    Student-t on the Laplace approximation (ESS about 5 %) gives -55.23 to -55.25. The posterior
    standard deviations (``stddevs``) are the same run's importance-weighted estimates, stored
    with the posterior mean in ``pdesampler/data/breast_cancer_reference.json``. No exact
    sampler.
    """

    LOG_Z_REF = -55.2225
    LOG_Z_STDERR = 0.0026
    REF_REPEATS = 10
    REF_COMMAND = "OMP_NUM_THREADS=1 python benchmarks/reference_logreg.py"

    def __init__(self) -> None:
        super().__init__(*breast_cancer_design(), prior_std=1.0)
        self.log_Z = self.LOG_Z_REF
        self.log_Z_stderr = self.LOG_Z_STDERR
        reference = json.loads((DATA / "breast_cancer_reference.json").read_text())
        self.stddevs = torch.tensor(reference["posterior_std"], dtype=torch.float64)
        self.posterior_mean = torch.tensor(reference["posterior_mean"], dtype=torch.float64)
