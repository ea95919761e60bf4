"""Tests of the matrix-free Gauss-Newton optimizer (Sun et al. section 4), all in float64."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from pdesampler.linearization import flatten, linearize, per_point_jacobian, unflatten
from pdesampler.losses.base import Residual
from pdesampler.ops import scalar_jet
from pdesampler.optim.finetuner import step_indices
from pdesampler.optim.gauss_newton import (
    GaussNewton,
    GaussNewtonConfig,
    line_search,
    run_gauss_newton,
)
from pdesampler.optim.linalg import (
    conjugate_gradient,
    damped_direction_explicit,
    full_jacobian,
    gramian_vector_product,
)
from pdesampler.targets import Gaussian

DTYPE = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These problems are tiny: one thread avoids the cost of syncing two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------- problems
class LinearResidual(nn.Module):
    """:math:`r(\\theta) = A\\theta - b`, a residual linear in its one parameter."""

    def __init__(self, m: int, p: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("A", torch.randn(m, p, generator=gen, dtype=DTYPE))
        self.register_buffer("b", torch.randn(m, generator=gen, dtype=DTYPE))
        self.theta = nn.Parameter(torch.zeros(p, dtype=DTYPE))

    def forward(self) -> Tensor:
        return self.A @ self.theta - self.b


class TinyResidual(Residual):
    """Two terms of a small MLP ``f(x, t)``, one with a forward-over-reverse Laplacian."""

    def __init__(self, width: int = 32) -> None:
        super().__init__(Gaussian(mean=0.0, std=1.0, dim=2), {"a": 1.0, "b": 0.5})
        self.net = nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 1))

    def f(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([x, t.unsqueeze(0)]))[0]

    def point_residuals(self, x: Tensor, t: Tensor, probes: Tensor) -> dict[str, Tensor]:
        jet = scalar_jet(self.f, self.estimator)(x, t, probes)
        log_p = self.target.log_prob(x.unsqueeze(0))[0]
        return {"a": jet.value - log_p, "b": jet.dt + jet.lap + jet.grad.square().sum()}

    def dynamics(self):
        raise NotImplementedError


def tiny_problem(n: int, seed: int = 0):
    """A float64 :class:`TinyResidual` with its parameters, residual closure and batch."""
    torch.manual_seed(seed)
    module = TinyResidual().to(DTYPE)
    gen = torch.Generator().manual_seed(seed + 1)
    x = 2 * torch.randn(n, 2, generator=gen, dtype=DTYPE)
    t = torch.rand(n, generator=gen, dtype=DTYPE)
    params = {k: v.detach().clone() for k, v in module.named_parameters()}

    def residual_fn(p):
        return functional_call(module, p, (x, t))

    return module, params, residual_fn, x, t


def params_of(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def assert_cg_matches_dense(
    residual_fn, params, eps: float, tol: float = 1e-6, jacobian_product: str = "double_vjp"
) -> None:
    """The CG direction equals :math:`(J^\\top J + \\varepsilon I)^{-1} J^\\top r` from the
    explicit ``torch.func.jacrev`` Jacobian, to relative error ``tol``."""
    lin = linearize(residual_fn, params, jacobian_product)
    result = conjugate_gradient(
        lambda v: lin.gramian_vector_product(v) + eps * v, lin.gradient(), max_iter=2000, rtol=1e-12
    )
    jac = full_jacobian(residual_fn, params)
    eye = torch.eye(jac.shape[1], dtype=jac.dtype)
    dense = torch.linalg.solve(jac.T @ jac + eps * eye, jac.T @ lin.residual)
    assert rel_err(result.solution, dense) < tol, (result.iterations, result.rel_residual)


# ---------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    "key", ["solver", "line_search", "line_search_batch", "jacobian_product", "dtype"]
)
def test_config_rejects_an_unknown_choice_by_name(key):
    with pytest.raises(ValueError, match=f"^{key} must be one of .*, got 'bogus'$"):
        GaussNewtonConfig(**{key: "bogus"})


# ---------------------------------------------------------------------- building blocks
def test_flatten_roundtrip():
    params = {"w": torch.randn(3, 4, dtype=DTYPE), "b": torch.randn(4, dtype=DTYPE)}
    back = unflatten(flatten(params), params)
    assert all(torch.equal(back[k], params[k]) for k in params)


def test_conjugate_gradient_solves_spd_system_and_warm_start_helps():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(60, 60, generator=gen, dtype=DTYPE)
    a = q @ q.T + 1e-2 * torch.eye(60, dtype=DTYPE)
    b = torch.randn(60, generator=gen, dtype=DTYPE)
    exact = torch.linalg.solve(a, b)
    cold = conjugate_gradient(lambda v: a @ v, b, max_iter=1000, rtol=1e-10)
    assert rel_err(cold.solution, exact) < 1e-6
    assert cold.rel_residual <= 1e-10
    warm = conjugate_gradient(lambda v: a @ v, b, x0=0.95 * exact, max_iter=1000, rtol=1e-10)
    assert warm.iterations < cold.iterations
    assert conjugate_gradient(lambda v: a @ v, torch.zeros(60, dtype=DTYPE)).iterations == 0


def test_per_point_jacobian_matches_jacrev_of_the_full_residual():
    module, params, residual_fn, x, t = tiny_problem(n=7)
    jac = per_point_jacobian(module, params, x, t)
    assert jac.shape == (2 * 7, sum(p.numel() for p in params.values()))
    assert torch.allclose(jac, full_jacobian(residual_fn, params), rtol=1e-10, atol=1e-12)
    chunked = per_point_jacobian(module, params, x, t, chunk_size=3)
    assert torch.allclose(chunked, jac, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------- (a) exact GN step
@pytest.mark.parametrize("line_search_kind", ["grid", "armijo"])
def test_cg_step_reaches_least_squares_optimum(line_search_kind):
    module = LinearResidual(m=40, p=12)
    config = GaussNewtonConfig(
        damping=1e-10, solver="cg", cg_rtol=1e-12, line_search=line_search_kind
    )
    gn = GaussNewton(module, config)
    info = gn.step(lambda p: functional_call(module, p, ()))
    optimum = torch.linalg.lstsq(module.A, module.b).solution
    assert info.accepted and info.step_size == 1.0 and info.solver == "cg"
    assert rel_err(gn.params["theta"], optimum) < 1e-8


@pytest.mark.parametrize("explicit", [True, False])
def test_woodbury_step_reaches_minimum_norm_solution(explicit):
    module = LinearResidual(m=10, p=30)
    gn = GaussNewton(
        module, GaussNewtonConfig(damping=1e-10, solver="auto" if explicit else "woodbury")
    )
    jacobian_fn = (lambda p: module.A) if explicit else None
    info = gn.step(lambda p: functional_call(module, p, ()), jacobian_fn)
    minimum_norm = torch.linalg.pinv(module.A) @ module.b
    assert info.solver == "woodbury" and info.accepted and info.step_size == 1.0
    assert rel_err(gn.params["theta"], minimum_norm) < 1e-8
    assert info.loss_after < 1e-16


def test_dense_step_reaches_least_squares_optimum():
    module = LinearResidual(m=40, p=12)
    gn = GaussNewton(module, GaussNewtonConfig(damping=1e-10, solver="dense"))
    gn.step(lambda p: functional_call(module, p, ()), lambda p: module.A)
    assert rel_err(gn.params["theta"], torch.linalg.lstsq(module.A, module.b).solution) < 1e-8


def test_failed_cholesky_warns_and_falls_back_to_the_pseudo_inverse():
    module = LinearResidual(m=40, p=12)  # J J^T is singular: Woodbury with M > P and eps = 0
    gn = GaussNewton(module, GaussNewtonConfig(damping=0.0, solver="woodbury"))
    with pytest.warns(RuntimeWarning, match="Cholesky"):
        info = gn.step(lambda p: functional_call(module, p, ()), lambda p: module.A)
    assert info.accepted
    assert rel_err(gn.params["theta"], torch.linalg.lstsq(module.A, module.b).solution) < 1e-8


# ---------------------------------------------------------------------- (b) CG vs explicit
@pytest.mark.parametrize("jacobian_product", ["double_vjp", "jvp"])
def test_jacobian_products_match_the_explicit_jacobian(jacobian_product):
    _, params, residual_fn, _, _ = tiny_problem(n=10)
    lin = linearize(residual_fn, params, jacobian_product)
    jac = full_jacobian(residual_fn, params)
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(jac.shape[1], generator=gen, dtype=DTYPE)
    u = torch.randn(jac.shape[0], generator=gen, dtype=DTYPE)
    assert torch.allclose(lin.residual, residual_fn(params))
    assert rel_err(lin.jvp(v), jac @ v) < 1e-12
    assert rel_err(lin.vjp(u), jac.T @ u) < 1e-12
    gv = gramian_vector_product(residual_fn, params, v, jacobian_product)
    assert rel_err(gv, jac.T @ (jac @ v)) < 1e-12


@pytest.mark.parametrize("jacobian_product", ["double_vjp", "jvp"])
@pytest.mark.parametrize("n", [20, 100])  # M = 40 < P = 161 and M = 200 > P
def test_cg_direction_matches_explicit_jacobian_on_a_nonlinear_residual(n, jacobian_product):
    _, params, residual_fn, _, _ = tiny_problem(n)
    assert_cg_matches_dense(residual_fn, params, eps=1e-3, jacobian_product=jacobian_product)


# ---------------------------------------------------------------------- (c) Woodbury vs CG
def test_woodbury_and_cg_directions_agree_when_m_below_p():
    module, params, residual_fn, x, t = tiny_problem(n=20)
    eps = 1e-3
    lin = linearize(residual_fn, params)
    cg = conjugate_gradient(
        lambda v: lin.gramian_vector_product(v) + eps * v, lin.gradient(), max_iter=2000, rtol=1e-12
    )
    jac = per_point_jacobian(module, params, x, t)
    assert jac.shape[0] < jac.shape[1]
    woodbury = damped_direction_explicit(jac, lin.residual, eps, "woodbury")
    assert rel_err(cg.solution, woodbury) < 1e-6


def test_auto_solver_choice():
    module, params, residual_fn, x, t = tiny_problem(n=20)
    jacobian_fn = lambda p: per_point_jacobian(module, p, x, t)
    assert (
        GaussNewton(params, GaussNewtonConfig()).step(residual_fn, jacobian_fn).solver == "woodbury"
    )
    assert GaussNewton(params, GaussNewtonConfig(cg_max_iter=5)).step(residual_fn).solver == "cg"
    tight = GaussNewtonConfig(jacobian_max_bytes=1e3, cg_max_iter=5)
    assert GaussNewton(params, tight).step(residual_fn, jacobian_fn).solver == "cg"


# ---------------------------------------------------------------------- (d) line search
@pytest.mark.parametrize("kind", ["grid", "armijo"])
def test_line_search_rejects_an_ascent_direction(kind):
    module = LinearResidual(m=40, p=12)
    params = params_of(module)
    residual_fn = lambda p: functional_call(module, p, ())
    lin = linearize(residual_fn, params)
    ascent = -lin.gradient()  # the negative of a descent direction
    slope = -2.0 * float(lin.gradient().dot(ascent))
    eta, loss = line_search(
        residual_fn,
        params,
        unflatten(ascent, params),
        float(lin.loss),
        slope,
        GaussNewtonConfig(line_search=kind),
    )
    assert eta == 0.0 and loss == float(lin.loss)


@pytest.mark.parametrize("kind", ["grid", "armijo"])
def test_step_that_never_decreases_leaves_parameters_bitwise_unchanged(kind):
    module = LinearResidual(m=40, p=12)
    calls = []

    def residual_fn(p):  # every evaluation after the linearization is worse by a constant
        calls.append(1)
        return functional_call(module, p, ()) + (10.0 if len(calls) > 1 else 0.0)

    gn = GaussNewton(module, GaussNewtonConfig(solver="cg", line_search=kind))
    before = {k: v.clone() for k, v in gn.params.items()}
    info = gn.step(residual_fn)
    assert not info.accepted and info.step_size == 0.0 and info.loss_after == info.loss_before
    assert all(torch.equal(gn.params[k], before[k]) for k in before)


class Arctan(nn.Module):
    """:math:`r(\\theta) = \\arctan\\theta`: the full Gauss-Newton step from 2 overshoots."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([2.0], dtype=DTYPE))

    def forward(self) -> Tensor:
        return torch.atan(self.theta)


@pytest.mark.parametrize("kind", ["grid", "armijo"])
def test_line_search_shortens_an_overshooting_step(kind):
    module = Arctan()
    residual_fn = lambda p: functional_call(module, p, ())
    full = {"theta": torch.tensor([2.0 - math.atan(2.0) * 5.0], dtype=DTYPE)}
    assert float(residual_fn(full).square().sum()) > math.atan(2.0) ** 2  # eta = 1 overshoots
    gn = GaussNewton(module, GaussNewtonConfig(damping=0.0, solver="cg", line_search=kind))
    info = gn.step(residual_fn)
    assert info.accepted and 0.0 < info.step_size < 1.0
    assert info.loss_after < info.loss_before
    assert info.loss_after == float(residual_fn(gn.params).square().sum())


def test_fresh_batch_line_search_rejects_a_step_that_only_helps_its_own_batch():
    """With ``search_fn`` the step is judged on another batch: a direction that fits the step's
    batch but raises the other batch's loss is rejected, and nothing changes."""
    module = LinearResidual(m=40, p=12)
    own_batch = lambda p: functional_call(module, p, ())
    gn = GaussNewton(module, GaussNewtonConfig(solver="cg", damping=1e-10))
    start = gn.params["theta"].clone()
    other_batch = lambda p: 1.0 + 1e3 * (p["theta"] - start).square()  # any move: worse
    info = gn.step(own_batch, search_fn=other_batch)
    assert not info.accepted and info.reason == "no decrease"
    assert torch.equal(gn.params["theta"], start)
    assert info.loss_before == info.loss_after == 12.0  # the other batch's loss
    info = gn.step(own_batch, search_fn=lambda p: own_batch(p) - 0.1)  # a batch that agrees
    assert info.accepted and info.step_size == 1.0


def test_levenberg_marquardt_damping_falls_after_full_steps_and_rises_after_rejections():
    module = LinearResidual(m=40, p=12)
    residual_fn = lambda p: functional_call(module, p, ())
    config = GaussNewtonConfig(
        solver="cg", damping=1e-2, adaptive_damping=True, damping_factor=3.0, damping_min=5e-3
    )
    gn = GaussNewton(module, config)
    info = gn.step(residual_fn)  # linear residual: eta = 1 is accepted
    assert (
        info.step_size == 1.0 and gn.damping == 5e-3 and info.damping == 5e-3  # 1e-2/3, clamped
    )
    here = gn.params["theta"].clone()
    worse = lambda p: 1.0 + (p["theta"] - here).square()  # a batch on which every move hurts
    rejected = gn.step(residual_fn, search_fn=worse)
    assert not rejected.accepted and math.isclose(gn.damping, 1.5e-2)
    fixed = GaussNewton(module, GaussNewtonConfig(solver="cg", damping=1e-2))
    fixed.step(residual_fn)
    assert fixed.damping == 1e-2  # without adaptive_damping it never changes


def test_grid_early_stop_saves_evaluations_and_finds_the_same_step():
    module = Arctan()
    params = params_of(module)
    calls = []

    def residual_fn(p):
        calls.append(1)
        return functional_call(module, p, ())

    lin = linearize(residual_fn, params)
    direction = unflatten(lin.residual.square() / lin.gradient(), params)  # r / r', eps = 0
    found = {}
    for early in (True, False):
        calls.clear()
        config = GaussNewtonConfig(grid_early_stop=early)
        found[early] = line_search(residual_fn, params, direction, float(lin.loss), -1.0, config)
        found[early, "calls"] = len(calls)
    assert found[True] == found[False] and 0.0 < found[True][0] < 1.0
    assert found[True, "calls"] < found[False, "calls"] == 31


# ---------------------------------------------------------------------- (e) NaN guard
def test_nan_residual_is_skipped_then_raises():
    module = LinearResidual(m=10, p=5)
    gn = GaussNewton(module, GaussNewtonConfig(nan_patience=3))
    before = {k: v.clone() for k, v in gn.params.items()}

    def nan_fn(p):
        return functional_call(module, p, ()) * float("nan")

    for _ in range(2):
        info = gn.step(nan_fn)
        assert not info.accepted and "non-finite" in info.reason
        assert all(torch.equal(gn.params[k], before[k]) for k in before)
    with pytest.raises(RuntimeError, match="3 consecutive non-finite steps"):
        gn.step(nan_fn)
    assert all(torch.equal(gn.params[k], before[k]) for k in before)


def test_a_finite_step_resets_the_nan_count():
    module = LinearResidual(m=10, p=5)
    gn = GaussNewton(module, GaussNewtonConfig(nan_patience=2))
    good = lambda p: functional_call(module, p, ())
    bad = lambda p: good(p) * float("nan")
    for fn in (bad, good, bad):
        gn.step(fn)
    assert [h.accepted for h in gn.history] == [False, True, False]
    with pytest.raises(RuntimeError):
        gn.step(bad)


# ---------------------------------------------------------------------- driver
def test_run_gauss_newton_float64_phase_on_float32_module():
    module, _, _, x, t = tiny_problem(n=32)
    module = module.float()
    original = params_of(module)
    config = GaussNewtonConfig(steps=4, dtype="float64", damping=1e-4, warm_start=True)

    def make_batch_fns(step):
        def residual_fn(p):
            return functional_call(module, p, (x, t))

        return residual_fn, (lambda p: per_point_jacobian(module, p, x, t)) if step % 2 else None

    history = run_gauss_newton(module, make_batch_fns, config, progress=False)
    assert len(history) == 4 and all(h.accepted for h in history)
    assert [h.solver for h in history] == ["cg", "woodbury", "cg", "woodbury"]
    assert all(h.loss_after < h.loss_before for h in history)
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert not torch.equal(module.net[0].weight, original["net.0.weight"])


def test_run_gauss_newton_stops_on_the_time_budget():
    module = LinearResidual(m=10, p=5)
    config = GaussNewtonConfig(steps=1000, max_seconds=0.0)
    fns = lambda step: (lambda p: functional_call(module, p, ()), None)
    assert run_gauss_newton(module, fns, config, progress=False) == []


def test_run_gauss_newton_writes_the_last_accepted_step_back_on_error():
    module = LinearResidual(m=10, p=5)
    loss0 = float(module().detach().square().sum())

    def make_batch_fns(step):  # one good step, then only NaN
        scale = 1.0 if step == 0 else float("nan")
        return (lambda p: functional_call(module, p, ()) * scale), None

    with pytest.raises(RuntimeError, match="2 consecutive non-finite steps"):
        run_gauss_newton(module, make_batch_fns, GaussNewtonConfig(nan_patience=2), progress=False)
    assert float(module().detach().square().sum()) < loss0


def test_a_fine_tuner_without_a_step_count_runs_to_its_time_budget() -> None:
    """``steps=None``: the fine-tuner's time share ends it, not a default count; without a
    budget the default count applies."""
    assert list(step_indices(None, None, 7)) == list(range(7))
    assert list(step_indices(3, 60.0, 7)) == [0, 1, 2]
    start = time.perf_counter()
    count = sum(1 for _ in step_indices(None, 0.2, 7))
    assert count > 7 and 0.2 <= time.perf_counter() - start < 2.0
