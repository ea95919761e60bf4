"""Checks of numeric settings, one line per bad value, naming its key.

A rule is a pair ``(what the value must be, predicate)``. :func:`check` applies one rule to one
value; :func:`check_config` applies :data:`RUN_RULES` to a run's resolved config, so that
``batch_size=0``, ``sampler.steps=0`` or ``optim.max_seconds=-1`` fail where the config is read
instead of deep inside torch; :func:`check_fields` applies a table of rules to the attributes
of a settings dataclass (the optimizers' configs, in their ``__post_init__``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "FRACTION",
    "LOSS_FORM",
    "LOSS_FORMS",
    "NON_NEGATIVE_INT",
    "NON_NEGATIVE_INT_OR_NONE",
    "POSITIVE",
    "POSITIVE_INT",
    "POSITIVE_INT_OR_NONE",
    "POSITIVE_OR_NONE",
    "RUN_RULES",
    "UNIT_POWER_OR_NONE",
    "Rule",
    "at_least",
    "check",
    "check_config",
    "check_fields",
    "one_of",
    "within",
]

Rule = tuple[str, Callable[[Any], bool]]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _integer(value: Any) -> bool:
    return _number(value) and math.isfinite(value) and float(value).is_integer()


POSITIVE_INT: Rule = ("a positive integer", lambda v: _integer(v) and v > 0)
NON_NEGATIVE_INT: Rule = ("an integer >= 0", lambda v: _integer(v) and v >= 0)
NON_NEGATIVE_INT_OR_NONE: Rule = (
    "an integer >= 0 or null",
    lambda v: v is None or NON_NEGATIVE_INT[1](v),
)
POSITIVE: Rule = ("a number > 0", lambda v: _number(v) and v > 0)
POSITIVE_OR_NONE: Rule = ("a number > 0 or null", lambda v: v is None or (_number(v) and v > 0))
POSITIVE_INT_OR_NONE: Rule = (
    "a positive integer or null",
    lambda v: v is None or POSITIVE_INT[1](v),
)
FRACTION: Rule = ("a number in [0, 1]", lambda v: _number(v) and 0 <= v <= 1)
UNIT_POWER_OR_NONE: Rule = (
    "a number in (0, 1] or null",
    lambda v: v is None or (_number(v) and 0 < v <= 1),
)


def at_least(low: float, *, strict: bool = False) -> Rule:
    """The rule "a number ``>= low``" (``> low`` when ``strict``)."""
    if strict:
        return (f"> {low:g}", lambda v: _number(v) and v > low)
    return (f">= {low:g}", lambda v: _number(v) and v >= low)


def within(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Rule:
    """The rule "a number in ``[low, high]``", either end open (``(`` or ``)``) on request."""
    text = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"

    def ok(v: Any) -> bool:
        above = v > low if open_low else v >= low
        below = v < high if open_high else v <= high
        return above and below

    return (text, lambda v: _number(v) and ok(v))


def one_of(choices: tuple) -> Rule:
    """The rule "one of ``choices``" (compared with ``in``, so ``None`` may be one)."""
    return (f"one of {choices}", lambda v: v in choices)


#: The forms of the first-order loss (:meth:`pdesampler.losses.base.Residual.loss`).
LOSS_FORMS = ("squares", "abs_and_squares")
LOSS_FORM: Rule = (" or ".join(map(repr, LOSS_FORMS)), lambda v: v in LOSS_FORMS)

#: The numeric keys of a run config (``configs/config.yaml`` and its groups). Keys a config
#: does not have are not checked (a custom config may leave some out).
RUN_RULES: dict[str, Rule] = {
    "batch_size": POSITIVE_INT,
    "prior_std": POSITIVE,
    "threads": POSITIVE_INT_OR_NONE,
    "trace.n_probes": POSITIVE_INT,
    "optim.steps": NON_NEGATIVE_INT_OR_NONE,
    "optim.lr": POSITIVE,
    "optim.lr_final": POSITIVE,
    "optim.clip": POSITIVE_OR_NONE,
    "optim.max_seconds": POSITIVE_OR_NONE,
    "optim.checkpoint_every": NON_NEGATIVE_INT,
    "optim.nan_patience": POSITIVE_INT,
    "optim.loss_form": LOSS_FORM,
    "optim.temper_from": UNIT_POWER_OR_NONE,
    "optim.temper_until": FRACTION,
    "optim.warmup": FRACTION,
    "optim.decay": FRACTION,
    "eval.max_seconds": POSITIVE_OR_NONE,
    "optim.gn.steps": NON_NEGATIVE_INT_OR_NONE,
    "optim.gn.batch_size": POSITIVE_INT,
    "optim.gn.time_fraction": FRACTION,
    "sampler.steps": POSITIVE_INT,
    "sampler.sde_steps": POSITIVE_INT,
    "sampler.batch_size": POSITIVE_INT,
    "sampler.refine_budget": NON_NEGATIVE_INT,
    "eval.n_samples": POSITIVE_INT,
    "eval.sinkhorn_blur": POSITIVE,
    "eval.sinkhorn_max_samples": POSITIVE_INT,
    "eval.energy_batch": POSITIVE_INT,
    "eval.n_nll": POSITIVE_INT,
}

_ABSENT = object()


def check(key: str, value: Any, rule: Rule) -> None:
    """Raise ``ValueError("<key> must be <rule>, got <value>")`` unless ``value`` obeys ``rule``."""
    what, ok = rule
    if not ok(value):
        raise ValueError(f"{key} must be {what}, got {value!r}")


def check_config(cfg: DictConfig | Mapping, rules: Mapping[str, Rule] = RUN_RULES) -> None:
    """Apply ``rules`` (dotted key -> rule) to the keys ``cfg`` has."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    for key, rule in rules.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            check(key, value, rule)


def check_fields(config: object, rules: Mapping[str, Rule]) -> None:
    """Apply ``rules`` (attribute name -> rule) to the attributes of ``config``, in order."""
    for key, rule in rules.items():
        check(key, getattr(config, key), rule)
