"""Optimizers: Adam (:mod:`~pdesampler.optim.adam`), and the second-order fine-tuners over the
same Jacobian products (:mod:`pdesampler.linearization`, :mod:`~pdesampler.optim.linalg`).

``FINETUNERS`` maps a fine-tuner's ``method`` name to its config class and run function, so the
trainer picks one by config and knows nothing else about it: matrix-free Gauss-Newton
(Sun et al. section 4, :mod:`~pdesampler.optim.gauss_newton`) and SPRING
(:mod:`~pdesampler.optim.spring`), both :class:`~pdesampler.optim.finetuner.FineTuner` with a
:class:`~pdesampler.optim.finetuner.FinetuneConfig`.
"""

from collections.abc import Mapping

from pdesampler.linearization import per_point_jacobian
from pdesampler.optim.adam import AdamConfig, AdamResult, NonFiniteLossError, run_adam
from pdesampler.optim.finetuner import (
    FinetuneConfig,
    FineTuner,
    StepHook,
    StepInfo,
    step_limit,
)
from pdesampler.optim.gauss_newton import GaussNewton, GaussNewtonConfig, run_gauss_newton
from pdesampler.optim.linalg import conjugate_gradient
from pdesampler.optim.spring import Spring, SpringConfig, run_spring

FINETUNERS = {
    "gauss_newton": (GaussNewtonConfig, run_gauss_newton),
    "spring": (SpringConfig, run_spring),
}


def build_config(cls: type, value: object) -> object:
    """A config dataclass ``cls`` from a mapping (or ``None``, or an instance, returned as is),
    naming unknown keys in a one-line error."""
    if value is None or isinstance(value, cls):
        return value
    value = dict(value)
    unknown = set(value) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} keys {sorted(unknown)}; "
            f"known: {sorted(cls.__dataclass_fields__)}"
        )
    return cls(**value)


def finetune_config(value: FinetuneConfig | Mapping | None) -> FinetuneConfig | None:
    """A fine-tuner's config from a mapping whose ``method`` key (default ``"spring"``, as
    ``optim=adam_gn``) names it in ``FINETUNERS``; unknown methods and keys are named in the
    error."""
    if value is None or isinstance(value, FinetuneConfig):
        return value
    value = dict(value)
    method = value.pop("method", "spring")
    if method not in FINETUNERS:
        raise ValueError(f"unknown fine-tuning method {method!r}; available: {list(FINETUNERS)}")
    return build_config(FINETUNERS[method][0], value)


def run_finetuner(config: FinetuneConfig, *args, **kwargs) -> list[StepInfo]:
    """Run the fine-tuner that ``config`` belongs to (the run function of ``FINETUNERS``)."""
    for cls, run in FINETUNERS.values():
        if isinstance(config, cls):
            return run(*args, config, **kwargs)
    raise TypeError(f"no fine-tuner takes a {type(config).__name__}")


__all__ = [
    "FINETUNERS",
    "AdamConfig",
    "AdamResult",
    "FineTuner",
    "FinetuneConfig",
    "GaussNewton",
    "GaussNewtonConfig",
    "NonFiniteLossError",
    "Spring",
    "SpringConfig",
    "StepHook",
    "StepInfo",
    "build_config",
    "conjugate_gradient",
    "finetune_config",
    "per_point_jacobian",
    "run_adam",
    "run_finetuner",
    "run_gauss_newton",
    "run_spring",
    "step_limit",
]
