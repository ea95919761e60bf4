"""Networks of ``(x, t)`` and of ``t`` alone.

Every network takes ``x`` of shape ``(..., d)`` and ``t`` of shape ``(...)``, so the same module
serves a single point inside ``torch.func.vmap`` and a whole batch. The last layer starts at
zero (``zero_init=True``), so that phi, psi and the drift mu start exactly at 0 and training
starts from the parametrization's interpolation between prior and target.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["MLP", "FourierTimeFeatures", "TimeMLP"]

_ACTIVATIONS = {"silu": nn.SiLU, "tanh": nn.Tanh, "gelu": nn.GELU, "softplus": nn.Softplus}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; available: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def _silu_derivatives(y: Tensor, second: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    s = torch.sigmoid(y)
    d2 = s * (1 - s) * (2 + y * (1 - 2 * s)) if second else None
    return y * s, s * (1 + y * (1 - s)), d2


def _tanh_derivatives(y: Tensor, second: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    h = torch.tanh(y)
    d1 = 1 - h * h
    return h, d1, (-2 * h * d1 if second else None)


def _softplus_derivatives(y: Tensor, second: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    s = torch.sigmoid(y)
    return nn.functional.softplus(y), s, (s * (1 - s) if second else None)


_DERIVATIVES = {
    "silu": _silu_derivatives,
    "tanh": _tanh_derivatives,
    "softplus": _softplus_derivatives,
}
"""``(y, second) -> (act(y), act'(y), act''(y) or None)`` for the activations the forward jet
supports; the second derivative only where ``second`` (a jet that carries a Laplacian)."""


class FourierTimeFeatures(nn.Module):
    r""":math:`t \mapsto (t/T, \sin(2\pi k t/T), \cos(2\pi k t/T))_{k=1..K}`, fixed frequencies."""

    def __init__(self, n_frequencies: int, T: float = 1.0) -> None:
        super().__init__()
        self.T = float(T)
        freqs = torch.arange(1, n_frequencies + 1, dtype=torch.float64)
        self.register_buffer("freqs", 2 * math.pi * freqs / self.T)

    @property
    def out_dim(self) -> int:
        return 1 + 2 * self.freqs.numel()

    def forward(self, t: Tensor) -> Tensor:
        angles = t[..., None] * self.freqs.to(t)
        return torch.cat([t[..., None] / self.T, angles.sin(), angles.cos()], dim=-1)

    def time_derivative(self, t: Tensor) -> Tensor:
        r""":math:`\tfrac{d}{dt}` of the features."""
        freqs = self.freqs.to(t)
        angles = t[..., None] * freqs
        one = torch.ones_like(t)[..., None] / self.T
        return torch.cat([one, freqs * angles.cos(), -freqs * angles.sin()], dim=-1)


class _Trunk(nn.Module):
    """Shared body: input layer, hidden layers (optionally residual), zero-initialized output."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: int,
        depth: int,
        activation: str,
        residual: bool,
        zero_init: bool,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1 hidden layer, got {depth}")
        self.input = nn.Linear(in_dim, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.output = nn.Linear(width, out_dim)
        self.act = _activation(activation)
        self.activation = activation
        self.residual = residual
        if zero_init:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    def forward(self, h: Tensor) -> Tensor:
        h = self.act(self.input(h))
        for layer in self.hidden:
            h = h + self.act(layer(h)) if self.residual else self.act(layer(h))
        return self.output(h)

    @property
    def has_jet(self) -> bool:
        return self.activation in _DERIVATIVES

    def jet(self, z: Tensor, J: Tensor, n_lap: int) -> tuple[Tensor, Tensor, Tensor | None]:
        r"""Forward Taylor-mode propagation at one input ``z`` of shape ``(n_in,)``.

        Carries the value, the Jacobian ``J`` (``(n_in, m)``: derivatives along ``m`` input
        directions) and the Laplacian ``L`` along the first ``n_lap`` directions. A linear layer
        maps :math:`(z, J, L) \mapsto (Wz + b, WJ, WL)`; an activation :math:`\sigma` maps
        them to :math:`(\sigma(y), \sigma'(y) J, \sigma'(y) L + \sigma''(y)
        \sum_{i \le n_{lap}} J_{:, i}^2)`. One pass, no nested autodiff: about half the
        matrix work of forward-over-reverse for a Laplacian (``benchmarks/bench_ops.py``).
        With ``n_lap = 0`` no Laplacian is carried (one row less per layer) and ``L`` is
        ``None``.
        """
        derivatives = _DERIVATIVES[self.activation]
        L = torch.zeros_like(z) if n_lap else None
        # The directions are carried as rows, J^T (m, n_in), and multiplied from the right by
        # W^T: under vmap a batch of points then folds into one matrix product (B m, n_in) @
        # (n_in, n_out), where W @ J would become B small products (3-5x slower on CPU).
        Jt = J.T

        def activate(layer: nn.Linear, z: Tensor, Jt: Tensor, L: Tensor | None):
            Wt = layer.weight.T
            y, Jy = layer(z), Jt @ Wt
            a, d1, d2 = derivatives(y, L is not None)
            if L is None:
                return a, d1 * Jy, None
            curvature = (Jy[:n_lap] ** 2).sum(0)
            return a, d1 * Jy, d1 * (L @ Wt) + d2 * curvature

        z, Jt, L = activate(self.input, z, Jt, L)
        for layer in self.hidden:
            a, Ja, La = activate(layer, z, Jt, L)
            if self.residual:
                a, Ja, La = z + a, Jt + Ja, (L + La if L is not None else None)
            z, Jt, L = a, Ja, La
        Wt = self.output.weight.T
        return self.output(z), (Jt @ Wt).T, (L @ Wt if L is not None else None)


class MLP(nn.Module):
    r""":math:`(x, t) \mapsto` an ``out_dim`` vector; ``out_dim=1`` gives a scalar field
    (the output is squeezed).

    Args:
        dim: the space dimension ``d``.
        out_dim: output size (``d`` for a drift, 1 for phi or a potential).
        width: hidden width.
        depth: number of hidden layers.
        activation: ``silu`` (swish, as in both papers), ``tanh``, ``gelu`` or ``softplus``.
        residual: use residual connections between hidden layers.
        time_features: number of Fourier frequencies of ``t`` (0: ``t`` enters as is).
        T: the time horizon, which scales the Fourier features.
        zero_init: start the last layer at zero.
        input_scale: the network reads ``x / input_scale`` (a target spread over ``+-40`` is
            fed at the scale of the default initialization with ``input_scale=40``).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int = 1,
        width: int = 128,
        depth: int = 3,
        activation: str = "silu",
        residual: bool = False,
        time_features: int = 0,
        T: float = 1.0,
        zero_init: bool = True,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not input_scale > 0:
            raise ValueError(f"input_scale must be positive, got {input_scale}")
        self.dim, self.out_dim, self.input_scale = int(dim), int(out_dim), float(input_scale)
        self.time_features = FourierTimeFeatures(time_features, T) if time_features > 0 else None
        t_dim = self.time_features.out_dim if self.time_features is not None else 1
        self.trunk = _Trunk(dim + t_dim, out_dim, width, depth, activation, residual, zero_init)

    @property
    def has_jet(self) -> bool:
        """Whether :meth:`jet` supports this activation (silu, tanh, softplus)."""
        return self.trunk.has_jet

    def jet(self, x: Tensor, t: Tensor, laplacian: bool = True, time: bool = True):
        r"""Value, :math:`\partial_t`, Jacobian in ``x`` and Laplacian in ``x`` at one point, in
        one forward Taylor-mode pass (:meth:`_Trunk.jet`).

        Returns ``(value (o,), dt (o,) or None, jac (o, d), lap (o,) or None)`` for
        ``o = out_dim``; ``time=False`` skips the time direction.
        """
        d, kw = self.dim, {"dtype": x.dtype, "device": x.device}
        if self.time_features is not None:
            feats, dfeats = self.time_features(t).to(x), self.time_features.time_derivative(t).to(x)
        else:
            feats, dfeats = t.to(x)[None], torch.ones(1, **kw)
        z = torch.cat([x / self.input_scale, feats])
        J = torch.cat(  # d z / d(x, t): I / input_scale on x, the features' derivative on t
            [
                torch.cat([torch.eye(d, **kw) / self.input_scale, torch.zeros(d, 1, **kw)], 1),
                torch.cat([torch.zeros(dfeats.shape[0], d, **kw), dfeats[:, None]], 1),
            ]
        )
        if not time:
            J = J[:, :d]
        value, jac, lap = self.trunk.jet(z, J, d if laplacian else 0)
        return value, (jac[:, d] if time else None), jac[:, :d], lap

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"MLP expects x with last dimension {self.dim}, got {tuple(x.shape)}")
        t = t.to(x).expand(x.shape[:-1])
        feats = self.time_features(t) if self.time_features is not None else t[..., None]
        out = self.trunk(torch.cat([x / self.input_scale, feats], dim=-1))
        return out[..., 0] if self.out_dim == 1 else out


class TimeMLP(nn.Module):
    r"""A small network of ``t`` alone, :math:`t \mapsto \mathbb{R}`: for :math:`\log z(t)`,
    :math:`C_t` and schedules. ``init`` is the constant it starts at."""

    def __init__(
        self,
        width: int = 32,
        depth: int = 2,
        activation: str = "silu",
        time_features: int = 4,
        T: float = 1.0,
        init: float = 0.0,
    ) -> None:
        super().__init__()
        self.time_features = FourierTimeFeatures(time_features, T) if time_features > 0 else None
        t_dim = self.time_features.out_dim if self.time_features is not None else 1
        self.trunk = _Trunk(t_dim, 1, width, depth, activation, residual=False, zero_init=True)
        nn.init.constant_(self.trunk.output.bias, float(init))

    def forward(self, t: Tensor) -> Tensor:
        feats = self.time_features(t) if self.time_features is not None else t[..., None]
        return self.trunk(feats.to(self.trunk.input.weight))[..., 0]
