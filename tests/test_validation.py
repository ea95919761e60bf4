"""Inputs that make no sense fail in one line.

Targets whose log-density is not finite on the collocation box are named with a point and the
value, before training (a dense probe of the box) or, when validation is skipped, at the first
non-finite Adam loss. Numeric settings are checked where the config is read, naming the key."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from hydra import compose as compose_config
from hydra import initialize_config_dir
from torch import Tensor

from pdesampler import evaluate, train
from pdesampler.losses import ResidualValidationError, logce, score, validate_target
from pdesampler.optim.adam import NonFiniteLossError
from pdesampler.runner import run_experiment
from pdesampler.targets import Gaussian

ROOT = Path(__file__).resolve().parents[1]

NET = {"width": 8, "depth": 1}


class HalfNaN:
    """:math:`\\log\\rho = -|x|^2/2`, but NaN where :math:`x_0 > 3`, inside the box +-5."""

    dim = 2
    box = (torch.full((2,), -5.0), torch.full((2,), 5.0))

    def log_prob(self, x: Tensor) -> Tensor:
        value = -0.5 * (x**2).sum(-1)
        return torch.where(x[:, 0] > 3, torch.full_like(value, math.nan), value)


class Disk:
    """A truncated Gaussian: :math:`-\\infty` outside the disk of radius 4, inside the box +-5."""

    dim = 2

    def __init__(self, half_width: float = 5.0) -> None:
        self.box = (torch.full((2,), -half_width), torch.full((2,), half_width))

    def log_prob(self, x: Tensor) -> Tensor:
        value = -0.5 * (x**2).sum(-1)
        return torch.where((x**2).sum(-1) > 16, torch.full_like(value, -math.inf), value)


def test_nan_region_is_found_and_named() -> None:
    with pytest.raises(ResidualValidationError) as info:
        train(logce(HalfNaN(), net=NET), adam={"steps": 1}, progress=False)
    message = str(info.value)
    assert "HalfNaN.log_prob is not finite at" in message and "= nan" in message
    x0 = float(message.split("log_prob([")[1].split(",")[0])
    assert x0 > 3  # the named point is a bad one
    assert "\n" not in message


def test_truncated_density_gets_the_support_rule_and_a_box_inside_works() -> None:
    with pytest.raises(
        ResidualValidationError,
        match=r"points of its box, e\.g\. log_prob\(\[.*\]\) = -inf; PINN residuals need",
    ):
        validate_target(Disk())
    validate_target(Disk(half_width=2.8))  # the box [-2.8, 2.8]^2 lies inside the disk


def test_probe_is_dense_enough_for_a_small_bad_region() -> None:
    """NaN on 0.5 % of the box: four points (the old probe) miss it, 4096 find it."""

    class Corner(HalfNaN):
        def log_prob(self, x: Tensor) -> Tensor:
            value = -0.5 * (x**2).sum(-1)
            bad = (x[:, 0] > 4.3) & (x[:, 1] > 4.3)
            return torch.where(bad, torch.full_like(value, math.nan), value)

    validate_target(Corner(), n_probe=4)
    with pytest.raises(ResidualValidationError, match=r"Corner\.log_prob is not finite"):
        validate_target(Corner())


def test_non_finite_loss_names_the_target_as_cause() -> None:
    with pytest.raises(NonFiniteLossError) as info:
        train(
            logce(HalfNaN(), net=NET),
            adam={"steps": 5, "nan_patience": 3},
            batch_size=64,
            progress=False,
            validate=False,
        )
    message = str(info.value)
    assert "3 consecutive non-finite losses" in message
    assert "lower optim.lr," in message  # a config key that exists
    assert "the target is the cause: HalfNaN.log_prob is not finite at" in message
    assert "points of the last collocation batch, e.g. log_prob([" in message


# ---------------------------------------------------------------------------- numeric settings
def compose(*overrides: str):
    """The resolved run config of ``benchmarks/run.py`` with ``overrides``."""
    with initialize_config_dir(str(ROOT / "pdesampler" / "configs"), version_base="1.3"):
        return compose_config("config", overrides=[*overrides, "out_dir=unused"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("batch_size=0", "batch_size must be a positive integer, got 0"),
        ("batch_size=-5", "batch_size must be a positive integer, got -5"),
        ("sampler.steps=0", "sampler.steps must be a positive integer, got 0"),
        ("sampler.refine_budget=-1", "sampler.refine_budget must be an integer >= 0, got -1"),
        ("optim.max_seconds=-1", "optim.max_seconds must be a number > 0 or null, got -1"),
        ("optim.lr=-0.001", "optim.lr must be a number > 0, got -0.001"),
        ("optim.steps=-3", "optim.steps must be an integer >= 0 or null, got -3"),
        ("eval.sinkhorn_max_samples=0", "eval.sinkhorn_max_samples must be a positive integer"),
        ("prior_std=0", "prior_std must be a number > 0, got 0"),
        ("prior_std=-1.5", "prior_std must be a number > 0, got -1.5"),
        ("optim=adam_gn optim.gn.time_fraction=1.5", "optim.gn.time_fraction must be a number"),
        ("batch_size=true", "batch_size must be a positive integer, got True"),
    ],
)
def test_bad_numeric_settings_are_named_where_the_config_is_read(tmp_path, override, message):
    cfg = compose(*override.split())
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        run_experiment(cfg, tmp_path)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing was built or written


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": -5}, "batch_size must be a positive integer, got -5"),
        ({"max_seconds": -1}, "max_seconds must be a number > 0 or null, got -1"),
        ({"adam": {"lr": -1.0}}, "lr must be a number > 0, got -1.0"),
        ({"adam": {"steps": -2}}, "steps must be an integer >= 0 or null, got -2"),
    ],
)
def test_bad_train_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        train(logce(Gaussian(mean=0.0, std=1.0, dim=2), net=NET), progress=False, **kwargs)


@pytest.mark.parametrize("key", ["n_samples", "steps", "sinkhorn_max_samples", "batch_size"])
def test_bad_evaluate_arguments_are_named(key):
    with pytest.raises(ValueError, match=f"^{key} must be a positive integer, got 0$"):
        evaluate(logce(Gaussian(mean=0.0, std=1.0, dim=2), net=NET), **{key: 0})


def test_score_refuses_a_prior_other_than_the_vp_sdes_stationary_law():
    target = Gaussian(mean=0.0, std=1.0, dim=2)
    with pytest.raises(ValueError, match=r"score needs prior_std=1, got 2\.0"):
        score(target, net=NET, prior_std=2.0)
    assert score(target, net=NET, prior_std=1.0).prior.std == pytest.approx(1.0)
