"""The forward Taylor-mode jets of the networks give the same residuals and flow divergences as
generic nested autodiff, for every catalogue entry (float64, real networks)."""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap

from pdesampler import ops
from pdesampler.losses import CATALOGUE, make_loss
from pdesampler.nets import MLP
from pdesampler.targets import GMM9, Gaussian


def _randomize(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _random_residual_and_points(name: str, target, n: int, **kw):
    """Catalogue entry ``name`` on ``target`` in float64 with random weights, and ``n`` random
    points ``(x, t)``."""
    torch.manual_seed(0)
    net = {"width": 12, "depth": 2, "time_features": 2}
    residual = make_loss(name, target, net=net, **kw).double()
    _randomize(residual, 1)
    gen = torch.Generator().manual_seed(2)
    x = 2 * torch.randn(n, target.dim, generator=gen, dtype=torch.float64)
    t = torch.rand(n, generator=gen, dtype=torch.float64)
    return residual, x, t


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_fast_jets_match_generic_autodiff(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    target = GMM9() if name in ("linear", "learned", "gradflow") else Gaussian(0.5, 0.7, dim=3)
    residual, x, t = _random_residual_and_points(name, target, 32)
    probes = torch.eye(target.dim, dtype=torch.float64)
    dyn = residual.dynamics()

    fast_terms = residual.residuals(x, t)
    fast_flow = vmap(dyn.flow_jet, in_dims=(0, 0, None))(x, t, probes)
    monkeypatch.setattr(MLP, "has_jet", property(lambda self: False))
    slow_terms = residual.residuals(x, t)
    slow_flow = ops.batched(ops.vector_jet(dyn.flow_drift))(x, t)

    for key in fast_terms:
        torch.testing.assert_close(fast_terms[key], slow_terms[key], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast_flow.value, slow_flow.value, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast_flow.div, slow_flow.div, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["logce", "logfp", "learned", "score"])
def test_flow_jet_is_exact_when_the_residual_trains_with_hutchinson(name: str) -> None:
    """The samplers call ``flow_jet`` with the standard basis whatever the training estimator;
    a Hutchinson estimator's mean over those probes used to give the divergence divided by d
    (log q off by nats at d = 50)."""
    target = GMM9() if name == "learned" else Gaussian(0.5, 0.7, dim=5)
    hutchinson = ops.Hutchinson(1, generator=torch.Generator().manual_seed(3))
    residual, x, t = _random_residual_and_points(name, target, 16, estimator=hutchinson)
    dyn = residual.dynamics()
    basis = torch.eye(target.dim, dtype=torch.float64)
    fast = vmap(dyn.flow_jet, in_dims=(0, 0, None))(x, t, basis)
    exact = ops.batched(ops.vector_jet(dyn.flow_drift))(x, t)
    torch.testing.assert_close(fast.div, exact.div, rtol=1e-10, atol=1e-10)
