"""Targets whose log-density is not finite on the collocation box fail in one line that names a
point and the value, before training (a dense probe of the box) or, when validation is skipped,
at the first non-finite Adam loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from pdesampler import train
from pdesampler.losses import ResidualValidationError, logce, validate_target
from pdesampler.optim.adam import NonFiniteLossError

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
    with pytest.raises(ResidualValidationError, match=r"= -inf of its box; PINN residuals need"):
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
    assert "the target is the cause: HalfNaN.log_prob is not finite at" in message
    assert "= nan of the last batch" in message
