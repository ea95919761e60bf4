"""The Residual interface and the loss catalogue (SPEC sections 2 and 4)."""

from __future__ import annotations

from collections.abc import Callable

from pdesampler.losses.base import Dynamics, Residual, ResidualShapeError
from pdesampler.losses.boltzmann import gradflow, learned, linear
from pdesampler.losses.transport import (
    TransportResidual,
    logce,
    logce_anneal,
    logfp,
    logfp_anneal,
    ot,
    sb,
    score,
)
from pdesampler.losses.validate import (
    ResidualValidationError,
    validate_residual,
    validate_target,
)
from pdesampler.targets import Target

CATALOGUE: dict[str, Callable[..., Residual]] = {
    "logce": logce,
    "logfp": logfp,
    "logce_anneal": logce_anneal,
    "logfp_anneal": logfp_anneal,
    "score": score,
    "ot": ot,
    "sb": sb,
    "linear": linear,
    "learned": learned,
    "gradflow": gradflow,
}


def make_loss(name: str, target: Target, **kwargs) -> Residual:
    """Build the catalogue entry ``name`` for ``target`` (keyword arguments go to its builder)."""
    if name not in CATALOGUE:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(CATALOGUE)}")
    return CATALOGUE[name](target, **kwargs)


__all__ = [
    "CATALOGUE",
    "Dynamics",
    "Residual",
    "ResidualShapeError",
    "ResidualValidationError",
    "TransportResidual",
    "make_loss",
    "validate_residual",
    "validate_target",
    *CATALOGUE,
]
