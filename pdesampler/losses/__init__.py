"""The Residual and Trainable interfaces and the loss catalogue (docs/losses.md; the equations:
docs/math.md)."""

from __future__ import annotations

from collections.abc import Callable

from pdesampler.losses.base import Dynamics, Residual, ResidualShapeError, Trainable
from pdesampler.losses.boltzmann import gradflow, learned, linear
from pdesampler.losses.trajectory import TrajectoryLoss, dis_kl, dis_lv, pis_kl, pis_lv
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

BASELINES: dict[str, Callable[..., TrajectoryLoss]] = {
    "pis_kl": pis_kl,
    "pis_lv": pis_lv,
    "dis_kl": dis_kl,
    "dis_lv": dis_lv,
}
"""The trajectory baselines of Sun et al. Table 2 (PIS, DIS; KL and log-variance losses)."""


def make_loss(name: str, target: Target, **kwargs) -> Residual:
    """Build the catalogue entry ``name`` for ``target`` (keyword arguments go to its builder)."""
    if name not in CATALOGUE:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(CATALOGUE)}")
    return CATALOGUE[name](target, **kwargs)


__all__ = [
    "BASELINES",
    "CATALOGUE",
    "Dynamics",
    "Residual",
    "ResidualShapeError",
    "ResidualValidationError",
    "Trainable",
    "TrajectoryLoss",
    "TransportResidual",
    "make_loss",
    "validate_residual",
    "validate_target",
    *CATALOGUE,
    *BASELINES,
]
