"""Samples over density contours (plot_samples_2d): the density grid it draws and the panels."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from pdesampler.plots import _density_on_grid, plot_samples_2d
from pdesampler.report import density_2d
from pdesampler.targets import Gaussian, ManyWell


def test_density_grid_of_a_2d_target_is_its_normalized_exact_density() -> None:
    target = Gaussian(mean=1.0, std=0.5, dim=2).double()
    X, Y, Z = _density_on_grid((0, 1), ((-1.0, 3.0), (-1.0, 3.0)), density_2d(target), None, n=81)
    assert Z.max() == pytest.approx(1.0)
    i, j = np.unravel_index(Z.argmax(), Z.shape)
    assert (X[i, j], Y[i, j]) == pytest.approx((1.0, 1.0))
    one_sd = np.argmin(np.abs(X[0] - 1.5))  # x = 1.5, y = 1: one standard deviation out
    assert Z[i, one_sd] == pytest.approx(math.exp(-0.5), rel=1e-6)


def test_density_grid_in_higher_d_is_the_pairwise_marginal_of_exact_samples() -> None:
    target = ManyWell(5, 5, 4.0)
    assert density_2d(target) is None  # d = 5: no grid of log_prob
    ref = target.sample(20_000, torch.Generator().manual_seed(0)).numpy()
    X, _, Z = _density_on_grid((0, 1), ((-3.0, 3.0), (-3.0, 3.0)), None, ref, n=120)
    assert Z.max() == 1.0
    # Four wells at (+-2, +-2): the histogram peaks there and is near empty at the origin.
    peak = np.unravel_index(Z.argmax(), Z.shape)
    assert abs(abs(X[peak]) - 2.0) < 0.3
    assert Z[len(Z) // 2, len(Z) // 2] < 0.05
    assert _density_on_grid((0, 1), ((-1.0, 1.0), (-1.0, 1.0)), None, None) is None


def test_one_panel_per_method_and_non_finite_samples_left_out(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    good = torch.randn(500, 3, generator=gen)
    bad = good.clone()
    bad[:7, 1] = float("nan")
    samples = {"a": good, "b": bad, "c": good + 1}
    path = plot_samples_2d(
        samples, tmp_path / "s.png", reference=torch.randn(2000, 3, generator=gen)
    )
    image = matplotlib.image.imread(path)
    assert image.shape[1] == pytest.approx(3 * 3.4 * 110, abs=2)  # 3 panels of 3.4 inches
    single = plot_samples_2d({"a": good}, tmp_path / "one.png", dims=(1, 2))
    assert matplotlib.image.imread(single).shape[1] == pytest.approx(3.4 * 110, abs=2)


def test_one_methods_outliers_do_not_set_every_panels_view() -> None:
    """A method that sprays samples to 1e3 (the 150 s GMM-40 gradient flow reached -500) must
    not shrink the target to a corner of every panel: with exact samples the view is their
    range widened by half of it on each side."""
    from pdesampler.plots import _view_limits

    gen = np.random.default_rng(0)
    ref = gen.normal(size=(5000, 2))
    wild = np.concatenate([gen.normal(size=(900, 2)), 1e3 * gen.normal(size=(100, 2))])
    (x_lo, x_hi), (y_lo, y_hi) = _view_limits({"calm": ref[:1000], "wild": wild}, ref)
    span = np.quantile(ref[:, 0], 0.9995) - np.quantile(ref[:, 0], 0.0005)
    assert -1.2 * span < x_lo < -span and span < x_hi < 1.2 * span
    assert -1.2 * span < y_lo < -span and span < y_hi < 1.2 * span
    (lo, hi), _ = _view_limits({"wild": wild}, None)  # no exact samples: the model's range
    assert hi - lo > 100 * span
