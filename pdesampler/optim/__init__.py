"""Optimizers: matrix-free Gauss-Newton (SPEC section 5)."""

from pdesampler.optim.gauss_newton import (
    GaussNewton,
    GaussNewtonConfig,
    StepInfo,
    conjugate_gradient,
    per_point_jacobian,
    run_gauss_newton,
)

__all__ = [
    "GaussNewton",
    "GaussNewtonConfig",
    "StepInfo",
    "conjugate_gradient",
    "per_point_jacobian",
    "run_gauss_newton",
]
