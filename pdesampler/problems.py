"""Problem presets: a target plus the settings it trains best with.

One YAML per problem in ``configs/problem/<name>.yaml`` holds the target's config name, the
collocation (kind, prior box width, sampler options), the network size, the trace estimator of
the residual (``exact`` or ``hutchinson``), the learning rates and the batch size.
``configs/problem/default.yaml`` is the rule for a target without a preset; a preset overrides
it key by key. The Hydra app loads the preset of the chosen target by itself
(``target=mw5`` alone gets it), and :func:`problem_overrides` lets ``problem=mw5`` alone choose
the target as well. Benchmarks read the same files through :func:`problem_settings`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

__all__ = ["PROBLEM_DIR", "problem_names", "problem_overrides", "problem_settings"]

PROBLEM_DIR = Path(__file__).resolve().parents[1] / "configs" / "problem"
DEFAULT_RULE = "default"


def problem_names() -> list[str]:
    """The problems with a preset (``configs/problem/*.yaml`` except the default rule)."""
    return sorted(p.stem for p in PROBLEM_DIR.glob("*.yaml") if p.stem != DEFAULT_RULE)


def _load(name: str) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(PROBLEM_DIR / f"{name}.yaml"), resolve=True)


def problem_settings(name: str) -> dict[str, Any]:
    """The tuned settings of problem ``name`` as plain Python values.

    A name without a preset gets the default rule with ``target=name``. Returns ``{"target",
    "collocation" (a kind for :func:`pdesampler.collocation.make_collocation`),
    "collocation_options" (its keyword arguments: ``prior_box_width`` and the sampler's options),
    "net": {"width", "depth", "input_scale"}, "trace", "lr", "lr_final", "batch_size"}``;
    all but ``net`` and ``trace`` (which build the residual) are ready for
    :func:`pdesampler.train`.
    """
    if not name or "/" in name:
        raise ValueError(f"problem name must be a config name like 'mw5', got {name!r}")
    settings = _load(DEFAULT_RULE)
    if name in problem_names():
        preset = _load(name)
        unknown = set(preset) - set(settings)
        if unknown:
            raise ValueError(
                f"configs/problem/{name}.yaml has unknown keys {sorted(unknown)}; "
                f"known: {sorted(settings)}"
            )
        settings = OmegaConf.to_container(OmegaConf.merge(settings, preset))
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
    return after("problem", f"target={problem_settings(name)['target']}")
