"""Real quality, not just running: logCE on a small Gaussian mixture reaches a high ESS."""

from __future__ import annotations

import pytest
import torch

from pdesampler import evaluate, losses, train
from pdesampler.targets import GaussianMixture


@pytest.mark.slow
def test_logce_learns_a_two_mode_mixture() -> None:
    target = GaussianMixture(means=[[-1.5, 0.0], [1.5, 0.5]], stds=0.6, weights=[0.3, 0.7])
    torch.manual_seed(0)
    residual = losses.logce(target, net={"width": 64, "depth": 3})
    train(
        residual,
        adam={"steps": 1500, "lr": 5e-3, "lr_final": 1e-4},
        gn={"method": "gauss_newton", "steps": 10, "cg_max_iter": 100},
        batch_size=512,
        collocation="trajectory_cache",
        collocation_options={"n_trajectories": 1000, "n_times": 50, "every": 250},
        seed=0,
        progress=False,
    )
    report = evaluate(residual, n_samples=4000, seed=1, nll=False, sinkhorn_max_samples=1000)
    m = report.metrics
    assert m["ess"] > 0.9, m
    assert m["dlogZ"] < 0.05, m
    assert m["dstd"] < 0.05, m
    mode_share = (report.output.samples[:, 0] > 0).float().mean()
    assert abs(mode_share - 0.7) < 0.05
