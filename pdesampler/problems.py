"""Run configs and problem presets: the one way a run's config is composed.

The configs ship inside the package (``pdesampler/configs/``, :data:`CONFIG_DIR`).
:func:`compose_run` composes ``config.yaml`` with command-line overrides exactly as the Hydra app
(:mod:`pdesampler.app`) does, including the ``problem=`` alias of :func:`problem_overrides`.

One YAML per problem in ``configs/problem/<name>.yaml`` holds the target's config name, the
collocation (kind, prior box width, sampler options), the network size, the trace estimator of
the residual (``exact`` or ``hutchinson``), the learning rates and the batch size. Adam's peak
rate ``lr`` is a number or a table of budgets (:func:`peak_rate`).
``configs/problem/default.yaml`` is the rule for a target without a preset; a preset overrides
it key by key. The app loads the preset of the chosen target by itself (``target=mw5`` alone
gets it), and :func:`problem_overrides` lets ``problem=mw5`` alone choose the target as well.
:func:`problem_settings` reads a composed preset as plain Python values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "CONFIG_DIR",
    "PROBLEM_DIR",
    "compose_run",
    "peak_rate",
    "problem_names",
    "problem_overrides",
    "problem_settings",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PROBLEM_DIR = CONFIG_DIR / "problem"
DEFAULT_RULE = "default"


def peak_rate(rates: float | Mapping[int, float], budget: float | None) -> float:
    r"""Adam's peak learning rate for a wall-clock budget of ``budget`` seconds.

    ``rates`` is a rate, or a table ``{seconds: rate}``: the rate of the largest budget in the
    table that ``budget`` reaches (the smallest entry's rate below it). A run with no budget
    (``budget=None``, a step count instead) takes the largest entry's rate. The best peak rate
    falls as the budget grows (docs/results/bench_schedule.md), so a preset tuned at several
    budgets keeps each rate where it won. The configs call it as the resolver
    ``${peak_rate:${problem.lr},${optim.max_seconds}}``.
    """
    pairs = rates.items() if isinstance(rates, Mapping) else [(0.0, rates)]
    try:
        table = sorted((float(seconds), float(rate)) for seconds, rate in pairs)
    except (TypeError, ValueError):
        table = []
    if not table:
        raise ValueError(
            f"problem.lr: expected a rate or a table {{seconds: rate}} of numbers, got {rates!r}"
        )
    if budget is None:
        return table[-1][1]
    reached = [rate for seconds, rate in table if seconds <= float(budget)]
    return reached[-1] if reached else table[0][1]


OmegaConf.register_new_resolver("peak_rate", peak_rate, replace=True)


def problem_names() -> list[str]:
    """The problems with a preset (``configs/problem/*.yaml`` except the default rule)."""
    return sorted(p.stem for p in PROBLEM_DIR.glob("*.yaml") if p.stem != DEFAULT_RULE)


def _compose(overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def compose_run(overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``python benchmarks/run.py <overrides>`` runs (``problem=`` alias applied)."""
    return _compose(problem_overrides(overrides))


def problem_settings(name: str) -> dict[str, Any]:
    """The tuned settings of problem ``name`` (its composed ``problem`` section) as plain
    Python values.

    A name without a preset gets the default rule with ``target=name``. Returns ``{"target",
    "collocation" (a kind for :func:`pdesampler.collocation.make_collocation`),
    "collocation_options" (its keyword arguments: ``prior_box_width`` and the sampler's options),
    "net": {"width", "depth", "input_scale"}, "trace", "lr" (a rate, or a table
    ``{seconds: rate}`` for :func:`peak_rate`), "lr_final", "schedule", "warmup", "finetune",
    "batch_size"}``.
    """
    if not name or "/" in name:
        raise ValueError(f"problem name must be a config name like 'mw5', got {name!r}")
    has_preset = name in problem_names()
    if has_preset:
        rule, preset = (OmegaConf.load(PROBLEM_DIR / f"{n}.yaml") for n in (DEFAULT_RULE, name))
        unknown = set(preset) - set(rule)
        if unknown:
            raise ValueError(
                f"configs/problem/{name}.yaml has unknown keys {sorted(unknown)}; "
                f"known: {sorted(rule)}"
            )
    cfg = _compose([f"problem={name if has_preset else DEFAULT_RULE}"])
    settings = OmegaConf.to_container(cfg.problem, resolve=True)
    settings["target"] = settings["target"] or name
    colloc = settings.pop("collocation")
    settings["collocation"] = colloc["kind"]
    settings["collocation_options"] = {
        "prior_box_width": colloc["prior_box_width"],
        **colloc["options"],
    }
    return settings


def problem_overrides(overrides: Sequence[str]) -> list[str]:
    """Command-line overrides with ``target=<the preset's target>`` added when ``problem=X`` is
    given without a target, so that ``run.py problem=mw5 loss=logce`` trains on MW 5/5/4. (The
    other way round needs nothing: the Hydra app loads ``configs/problem/<target>.yaml``.) A
    ``target._target_=`` of one's own without a problem gets ``problem=default``, the rule,
    rather than the preset of the default target."""
    keys = [o.split("=", 1)[0].lstrip("+~") if "=" in o else None for o in overrides]
    values = {k: o.split("=", 1)[1] for k, o in zip(keys, overrides, strict=True) if k}

    def after(key: str, extra: str) -> list[str]:  # keeps argparse flags such as --cfg last
        at = keys.index(key) + 1
        return [*overrides[:at], extra, *overrides[at:]]

    name = values.get("problem")
    if name is None and "target._target_" in values:  # a target class of one's own: the rule
        return after("target._target_", f"problem={DEFAULT_RULE}")
    if name is None or "target" in values:
        return list(overrides)
    if any(c in name for c in ",()[]{}$"):
        raise ValueError(
            f"problem={name}: a sweep over problems must name the targets; sweep target=... "
            "instead (each target loads its own preset)"
        )
    if name == DEFAULT_RULE:
        return list(overrides)
    if name not in problem_names():
        raise ValueError(f"unknown problem {name!r}; available: {', '.join(problem_names())}")
    target = OmegaConf.load(PROBLEM_DIR / f"{name}.yaml").get("target")
    return after("problem", f"target={target or name}")
