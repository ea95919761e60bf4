"""The default rule's check targets and the two kept apart (``benchmarks/unseen_targets.py``):
normalized densities whose exact samples have the stated standard deviations."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from unseen_targets import Banana, CircleMixture, Funnel2D, RotatedMixture, SineWave

from pdesampler.losses.validate import validate_target


@pytest.mark.parametrize("cls", [RotatedMixture, Banana, Funnel2D, CircleMixture, SineWave])
def test_unseen_targets_are_normalized_and_sample_their_density(cls) -> None:
    target = cls().double()
    validate_target(target)
    # quadrature of exp(log rho) on a fine grid over the box (log_Z = 0: the integral is 1)
    lo, hi = (b.double() for b in target.box)
    n = 1500
    axes = [torch.linspace(float(lo[i]), float(hi[i]), n, dtype=torch.float64) for i in range(2)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    cell = float((axes[0][1] - axes[0][0]) * (axes[1][1] - axes[1][0]))
    mass = float(target.log_prob(grid).exp().sum()) * cell
    assert mass == pytest.approx(1.0, abs=5e-3)  # the funnel's neck is narrower than a cell
    assert cls().float().sample(10, torch.Generator()).dtype == torch.float64  # as a model holds it
    x = target.sample(200_000, torch.Generator().manual_seed(0))
    assert x.std(0) == pytest.approx(target.stddevs, rel=0.05)
    # the samples follow the density: the mean log-density on samples is minus the entropy,
    # and a sample-based estimate matches the quadrature one
    grid_entropy = (
        -float((target.log_prob(grid).exp() * target.log_prob(grid)).nan_to_num().sum()) * cell
    )
    assert float(-target.log_prob(x).mean()) == pytest.approx(grid_entropy, abs=0.02)
