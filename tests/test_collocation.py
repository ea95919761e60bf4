"""The gradient flow's OU collocation (SPEC 4.3)."""

from __future__ import annotations

import torch

from pdesampler.collocation import OUSampler
from pdesampler.losses.parts import LinearBeta

BOX = (-torch.ones(2) * 4, torch.ones(2) * 4)


def sampler(**kw) -> OUSampler:
    return OUSampler(BOX, torch.Generator().manual_seed(0), torch.float64, **kw)


def test_points_are_the_ou_interpolation_of_the_box() -> None:
    """x_t = a_t u + s_t n: per coordinate, variance a_t^2 * 8^2 / 12 + 1 - a_t^2 at each t."""
    x, t = sampler(t_min=0.3)(200_000)
    assert t.min() >= 0.3 and t.max() <= 1.0
    a = LinearBeta().signal_scale(t)
    n = x / (a[:, None] ** 2 * 64 / 12 + 1 - a[:, None] ** 2).sqrt()
    assert n.mean().abs() < 0.01 and (n.var() - 1).abs() < 0.01
