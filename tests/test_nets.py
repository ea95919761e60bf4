"""Networks: shapes for one point and for a batch, zero start, and time features."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import vmap

from pdesampler.nets import MLP, FourierTimeFeatures, TimeMLP


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("time_features", [0, 3])
def test_mlp_point_and_batch_agree(residual: bool, time_features: int) -> None:
    torch.manual_seed(0)
    net = MLP(
        3, 3, width=16, depth=3, residual=residual, time_features=time_features, zero_init=False
    )
    x, t = torch.randn(5, 3), torch.rand(5)
    batch = net(x, t)
    assert batch.shape == (5, 3)
    torch.testing.assert_close(vmap(net)(x, t), batch)
    torch.testing.assert_close(net(x[2], t[2]), batch[2])


def test_scalar_mlp_is_squeezed_and_starts_at_zero() -> None:
    net = MLP(4, 1, width=8, depth=2)
    out = net(torch.randn(6, 4), torch.rand(6))
    assert out.shape == (6,)
    assert torch.equal(out, torch.zeros(6))
    grads = torch.autograd.grad(
        net(torch.randn(6, 4), torch.rand(6)).sum(), net.parameters(), allow_unused=True
    )
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "zero start must still train"


def test_fourier_features_are_periodic_in_T() -> None:
    feats = FourierTimeFeatures(4, T=2.0)
    t = torch.tensor([0.3, 0.3 + 2.0], dtype=torch.float64)
    out = feats(t)
    assert out.shape == (2, 9)
    torch.testing.assert_close(out[0, 1:], out[1, 1:])
    torch.testing.assert_close(out[:, 0], t / 2.0)
    torch.testing.assert_close(
        out[0, 1], torch.tensor(math.sin(2 * math.pi * 0.3 / 2.0), dtype=torch.float64)
    )


def test_time_mlp_starts_at_init() -> None:
    net = TimeMLP(init=1.5)
    torch.testing.assert_close(net(torch.rand(4)), torch.full((4,), 1.5))
    assert net(torch.tensor(0.5)).shape == ()


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="activation"):
        MLP(2, 1, activation="relu6")
    with pytest.raises(ValueError, match="depth"):
        MLP(2, 1, depth=0)
    with pytest.raises(ValueError, match="last dimension 2"):
        MLP(2, 1)(torch.randn(3, 5), torch.rand(3))


@pytest.mark.parametrize("activation", ["silu", "tanh", "softplus"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("time_features", [0, 3])
@pytest.mark.parametrize("input_scale", [1.0, 7.5])
def test_forward_jet_matches_nested_autodiff(
    activation: str, residual: bool, time_features: int, input_scale: float
) -> None:
    """The forward Taylor-mode jet equals forward-over-reverse autodiff (float64, 1e-12), also
    on a network that reads x / input_scale."""
    from pdesampler import ops

    torch.manual_seed(0)
    d = 4
    kw = dict(
        width=16,
        activation=activation,
        residual=residual,
        time_features=time_features,
        zero_init=False,
        input_scale=input_scale,
    )
    scalar = MLP(d, 1, depth=3, **kw).double()
    vector = MLP(d, d, depth=2, **kw).double()
    x, t = torch.randn(10, d, dtype=torch.float64), torch.rand(10, dtype=torch.float64)
    value, dt, jac, lap = vmap(scalar.jet)(x, t)
    ref = ops.batched(ops.scalar_jet(scalar))(x, t)
    for ours, theirs in [
        (value[:, 0], ref.value),
        (dt[:, 0], ref.dt),
        (jac[:, 0], ref.grad),
        (lap[:, 0], ref.lap),
    ]:
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    value, jac = vmap(lambda x, t: vector.jet(x, t, laplacian=False, time=False)[0::2])(x, t)
    ref = ops.batched(ops.vector_jet(vector))(x, t)
    torch.testing.assert_close(value, ref.value, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        torch.diagonal(jac, dim1=1, dim2=2).sum(-1), ref.div, rtol=0, atol=1e-12
    )


def test_input_scale_feeds_x_over_the_scale_to_the_same_weights() -> None:
    torch.manual_seed(0)
    scaled = MLP(2, 1, width=8, zero_init=False, input_scale=40.0).double()
    plain = MLP(2, 1, width=8, zero_init=False).double()
    plain.load_state_dict(scaled.state_dict())
    x, t = 40 * torch.randn(5, 2, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    torch.testing.assert_close(scaled(x, t), plain(x / 40.0, t), rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="input_scale must be positive"):
        MLP(2, 1, input_scale=0.0)


def test_gelu_has_no_forward_jet() -> None:
    assert MLP(2, 1, activation="gelu").has_jet is False
    assert MLP(2, 1, activation="silu").has_jet is True
