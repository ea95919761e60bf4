"""The log-weight budget (pdesampler.diagnostics): boundary plus the residual integrated along
the sampling paths equals the sampler's log-weights up to a constant, for any model.

The file runs before tests/test_compiling.py on purpose: in one pytest process, after that file's
uncompilable-function fallback test, sampling the perturbed gradient flow here hit a functorch
internal error (a vmap level mismatch) that then broke every later test; it does not reproduce
outside pytest (seen 2026-12-03)."""

from __future__ import annotations

import math

import pytest
import torch

from pdesampler.diagnostics import log_weight_budget
from pdesampler.losses import gradflow, learned, logce, logfp
from pdesampler.metrics import effective_sample_size
from pdesampler.targets import Gaussian


@pytest.mark.parametrize(
    ("make", "perturbation", "steps", "tolerance"),
    # the gradient flow's ODE is stiff near t = 0 (beta = 20 at t = 1 pulls on grad g), so its
    # trapezoid of r needs the finer grid: the gap falls 16x from 100 to 400 steps (O(dt^2))
    [(logce, 0.3, 200, 1e-3), (learned, 0.3, 200, 1e-3), (gradflow, 0.05, 400, 0.03)],
)
def test_boundary_plus_path_residual_is_the_log_weight(
    make, perturbation, steps, tolerance
) -> None:
    """An untrained, perturbed model (so V and mu are far from a solution and the weights vary):
    the identity is calculus along the ODE paths, not a property of a trained model."""
    torch.manual_seed(0)
    residual = make(Gaussian(mean=1.0, std=0.5, dim=2)).double()
    with torch.no_grad():
        for p in residual.parameters():
            p.add_(perturbation * torch.randn_like(p))
    budget = log_weight_budget(residual, 100, torch.Generator().manual_seed(1), steps=steps)
    gap = budget.sampled - budget.log_weights
    assert budget.sampled.std() > 0.1  # the weights vary, so the check can fail
    assert gap.std() < tolerance * budget.sampled.std()
    # removing the whole path's residual leaves the boundary part alone
    assert math.isclose(
        budget.ess_without(0.0, 1.0), effective_sample_size(budget.boundary), rel_tol=1e-12
    )


def test_an_sde_residual_is_refused_in_one_line() -> None:
    residual = logfp(Gaussian(mean=1.0, std=0.5, dim=2)).double()
    with pytest.raises(ValueError, match="needs an ODE TransportResidual") as err:
        log_weight_budget(residual, 10, torch.Generator())
    assert "\n" not in str(err.value)
