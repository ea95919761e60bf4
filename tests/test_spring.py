"""Tests of SPRING (pdesampler/optim/spring.py) against a dense computation of its formula, and
of the fine-tuner selection; float64 throughout."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from test_gauss_newton import DTYPE, LinearResidual, TinyResidual, params_of, rel_err
from torch.func import functional_call

from pdesampler import losses, train
from pdesampler.linearization import flatten, linearize, per_point_jacobian
from pdesampler.optim import GaussNewtonConfig, SpringConfig, finetune_config
from pdesampler.optim.gauss_newton import GaussNewton
from pdesampler.optim.linalg import (
    conjugate_gradient,
    damped_direction_explicit,
    full_jacobian,
    gram_solve,
)
from pdesampler.optim.spring import Spring, run_spring
from pdesampler.targets import Gaussian


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batches(n: int, count: int, seed: int = 1):
    """``count`` independent float64 collocation batches of ``n`` points."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            2 * torch.randn(n, 2, generator=gen, dtype=DTYPE),
            torch.rand(n, generator=gen, dtype=DTYPE),
        )
        for _ in range(count)
    ]


def closures(module, x, t):
    def residual_fn(p):
        return functional_call(module, p, (x, t))

    return residual_fn, (lambda p: per_point_jacobian(module, p, x, t))


def dense_spring(module, batch_list, cfg: SpringConfig) -> torch.Tensor:
    """The SPRING recursion written out with explicit ``jacrev`` Jacobians and dense solves."""
    theta = flatten(params_of(module))
    names = params_of(module)
    phi = None
    for k, (x, t) in enumerate(batch_list, start=1):
        params = dict(
            zip(names, torch.split(theta, [v.numel() for v in names.values()]), strict=True)
        )
        params = {n: v.view_as(names[n]) for n, v in params.items()}
        residual_fn = closures(module, x, t)[0]
        r = residual_fn(params).detach()
        J = full_jacobian(residual_fn, params)
        zeta = r if phi is None else r - cfg.momentum * J @ phi
        gram = J @ J.T + cfg.damping * torch.eye(J.shape[0], dtype=DTYPE)
        phi = J.T @ torch.linalg.solve(gram, zeta) + (0 if phi is None else cfg.momentum * phi)
        applied = phi / math.sqrt(1 - cfg.momentum ** (2 * k)) if cfg.bias_correction else phi
        eta = min(cfg.lr, math.sqrt(cfg.norm_cap) / float(applied.norm()))
        theta = theta - eta * applied
    return theta


@pytest.mark.parametrize("solver", ["woodbury", "cg"])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_spring_matches_a_dense_computation_of_its_formula(solver, bias_correction):
    torch.manual_seed(0)
    module = TinyResidual(width=8).to(DTYPE)  # P = 33, N = 12 points x 2 terms = 24 rows
    cfg = SpringConfig(
        lr=0.3, momentum=0.9, damping=1e-3, norm_cap=50.0, solver=solver, cg_max_iter=500,
        cg_rtol=1e-13, bias_correction=bias_correction,
    )  # fmt: skip
    batch_list = batches(12, 4)
    expected = dense_spring(module, batch_list, cfg)
    spring = Spring(module, cfg)
    infos = [spring.step(*closures(module, x, t)) for x, t in batch_list]
    assert [i.solver for i in infos] == [solver] * 4
    capped = [i.step_size < cfg.lr for i in infos]  # the cap binds early, not late
    assert any(capped) and not all(capped), [i.step_size for i in infos]
    assert rel_err(flatten(spring.params), expected) < 1e-9


def test_momentum_zero_is_the_damped_woodbury_gauss_newton_step():
    torch.manual_seed(0)
    module = TinyResidual(width=8).to(DTYPE)
    cfg = SpringConfig(lr=1.0, momentum=0.0, damping=1e-3, norm_cap=1e6, solver="woodbury")
    spring = Spring(module, cfg)
    for x, t in batches(12, 2):
        residual_fn, jacobian_fn = closures(module, x, t)
        before = flatten(spring.params)
        jac = jacobian_fn(spring.params)
        gn_direction = damped_direction_explicit(
            jac, residual_fn(spring.params).detach(), 1e-3, "woodbury"
        )
        spring.step(residual_fn, jacobian_fn)
        assert rel_err(before - flatten(spring.params), gn_direction) < 1e-10


def test_momentum_zero_lands_where_gauss_newton_does_on_a_linear_residual():
    """With mu = 0, eta = 1 and no cap, SPRING and GaussNewton (Woodbury, unit step accepted
    by the line search) both reach the minimum-norm least-squares solution in one step."""
    module = LinearResidual(m=10, p=30)
    fn = lambda p: functional_call(module, p, ())
    gn = GaussNewton(module, GaussNewtonConfig(damping=1e-10, solver="woodbury"))
    gn.step(fn, lambda p: module.A)
    spring = Spring(module, SpringConfig(lr=1.0, momentum=0.0, damping=1e-10, norm_cap=1e12))
    spring.step(fn, lambda p: module.A)
    assert rel_err(spring.params["theta"], gn.params["theta"]) < 1e-8
    assert rel_err(spring.params["theta"], torch.linalg.pinv(module.A) @ module.b) < 1e-8


def test_cg_in_residual_space_matches_woodbury_on_a_large_batch_without_a_jacobian():
    torch.manual_seed(0)
    module = TinyResidual(width=8).to(DTYPE)
    x, t = batches(40, 1)[0]  # 80 rows > 33 parameters: J J^T is singular, lambda keeps it SPD
    residual_fn, jacobian_fn = closures(module, x, t)
    cfg = dict(lr=0.5, momentum=0.0, damping=1e-2, norm_cap=1e6, cg_max_iter=1000, cg_rtol=1e-13)
    cg = Spring(module, SpringConfig(solver="auto", **cfg))  # no Jacobian given: auto picks CG
    woodbury = Spring(module, SpringConfig(solver="woodbury", **cfg))
    assert cg.step(residual_fn).solver == "cg"
    woodbury.step(residual_fn, jacobian_fn)
    assert rel_err(flatten(cg.params), flatten(woodbury.params)) < 1e-8


def test_woodbury_without_a_jacobian_is_a_named_error():
    module = LinearResidual(m=4, p=6)
    spring = Spring(module, SpringConfig(solver="woodbury"))
    with pytest.raises(ValueError, match="needs a point_jacobian_fn"):
        spring.step(lambda p: functional_call(module, p, ()))


def test_nan_steps_are_skipped_then_raise_and_the_last_finite_parameters_are_written_back():
    module = LinearResidual(m=10, p=5)
    loss0 = float(module().detach().square().sum())

    def make_batch_fns(step):
        scale = 1.0 if step == 0 else float("nan")
        return (lambda p: functional_call(module, p, ()) * scale), (lambda p: module.A * scale)

    cfg = SpringConfig(steps=10, lr=0.5, norm_cap=1e6, nan_patience=3)
    with pytest.raises(RuntimeError, match="SPRING: 3 consecutive non-finite steps"):
        run_spring(module, make_batch_fns, cfg, progress=False)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert float(module().detach().square().sum()) < loss0


def test_run_spring_reuses_a_batch_for_resample_every_steps():
    module = LinearResidual(m=10, p=5)
    calls = []

    def make_batch_fns(step):
        calls.append(step)
        return (lambda p: functional_call(module, p, ())), (lambda p: module.A)

    history = run_spring(
        module, make_batch_fns, SpringConfig(steps=7, resample_every=3), progress=False
    )
    assert len(history) == 7 and calls == [0, 3, 6]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"solver": "bogus"}, "^solver must be one of"),
        ({"gram_dtype": "float16"}, "^gram_dtype must be one of"),
        ({"momentum": 1.0}, "^momentum must be in"),
        ({"lr": 0.0}, "^lr must be > 0"),
        ({"norm_cap": -1.0}, "^norm_cap must be > 0"),
        ({"resample_every": 0}, "^resample_every must be >= 1"),
    ],
)
def test_spring_config_names_the_bad_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpringConfig(**kwargs)


def test_finetune_config_picks_the_method_and_names_unknown_ones():
    assert isinstance(finetune_config({"method": "spring", "momentum": 0.9}), SpringConfig)
    assert isinstance(finetune_config({"damping": 1e-3}), SpringConfig)  # as optim=adam_gn
    assert isinstance(finetune_config({"method": "gauss_newton"}), GaussNewtonConfig)
    with pytest.raises(ValueError, match="unknown fine-tuning method 'lbfgs'"):
        finetune_config({"method": "lbfgs"})
    with pytest.raises(ValueError, match=r"unknown SpringConfig keys \['line_search'\]"):
        finetune_config({"method": "spring", "line_search": "grid"})


def test_subsampled_curvature_cg_direction_matches_a_dense_solve():
    """``curvature_fn`` on a subset: (J_s^T J_s + eps I)^{-1} J^T r with the explicit Jacobians."""
    torch.manual_seed(0)
    module = TinyResidual(width=8).to(DTYPE)
    x, t = batches(16, 1)[0]
    residual_fn = closures(module, x, t)[0]
    curvature_fn = closures(module, x[:6], t[:6])[0]
    params = params_of(module)
    eps = 1e-3
    jac, jac_sub = full_jacobian(residual_fn, params), full_jacobian(curvature_fn, params)
    eye = torch.eye(jac.shape[1], dtype=DTYPE)
    dense = torch.linalg.solve(
        jac_sub.T @ jac_sub + eps * eye, jac.T @ residual_fn(params).detach()
    )
    lin, lin_sub = linearize(residual_fn, params), linearize(curvature_fn, params)
    result = conjugate_gradient(
        lambda v: lin_sub.gramian_vector_product(v) + eps * v,
        lin.gradient(),
        max_iter=1000,
        rtol=1e-13,
    )
    assert rel_err(result.solution, dense) < 1e-8
    gn = GaussNewton(
        module, GaussNewtonConfig(damping=eps, solver="cg", cg_rtol=1e-13, cg_max_iter=1000)
    )
    before = flatten(gn.params)
    info = gn.step(residual_fn, curvature_fn=curvature_fn)
    assert info.accepted
    assert rel_err((before - flatten(gn.params)) / info.step_size, dense) < 1e-8


@pytest.mark.parametrize(
    "gn",
    [
        # Gauss-Newton's defaults: a Woodbury step on a float32 model, Gram solve in float64
        {"method": "gauss_newton", "steps": 3},
        {"steps": 3},  # SPRING, the default method
        {"method": "spring", "steps": 2, "solver": "cg", "cg_max_iter": 5},
        {
            "method": "gauss_newton",
            "steps": 2,
            "solver": "cg",
            "curvature_fraction": 0.25,
            "cg_max_iter": 5,
        },
    ],
)
def test_train_runs_each_fine_tuner_on_a_float32_residual_without_warnings(gn):
    torch.manual_seed(0)
    residual = losses.logce(Gaussian(mean=1.0, std=0.5, dim=2), net={"width": 16, "depth": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = train(residual, adam={"steps": 20}, gn=gn, batch_size=64, progress=False)
    assert len(result.gn_history) == gn["steps"]
    assert all(h["accepted"] for h in result.gn_history if gn.get("method") == "spring")
    assert all(torch.isfinite(p).all() for p in residual.parameters())


def test_on_step_sees_every_step_of_both_phases_with_the_current_parameters():
    torch.manual_seed(0)
    residual = losses.logce(Gaussian(mean=1.0, std=0.5, dim=2), net={"width": 8, "depth": 2})
    seen = []

    def hook(step, elapsed, params):
        seen.append((step, elapsed, {k: v.detach().clone() for k, v in params.items()}))

    gn = {"method": "spring", "steps": 3}
    train(residual, adam={"steps": 4}, gn=gn, batch_size=32, progress=False, on_step=hook)
    assert [s for s, _, _ in seen] == [1, 2, 3, 4, 1, 2, 3]
    assert all(e >= 0 for _, e, _ in seen)
    final = dict(residual.named_parameters())
    assert all(torch.equal(seen[-1][2][k], final[k].detach()) for k in final)
    assert not torch.equal(
        seen[3][2]["drift.net.trunk.input.weight"], seen[-1][2]["drift.net.trunk.input.weight"]
    )


@pytest.mark.parametrize("precision", [None, "float32", "float64", "mixed"])
def test_gram_solve_precisions_agree_with_a_float64_solve(precision):
    gen = torch.Generator().manual_seed(3)
    jac = torch.randn(40, 200, generator=gen, dtype=DTYPE)
    rhs = torch.randn(40, generator=gen, dtype=DTYPE)
    exact = torch.linalg.solve(jac @ jac.T + 1e-3 * torch.eye(40, dtype=DTYPE), rhs)
    got = gram_solve(jac.float(), rhs.float(), 1e-3, precision)
    assert got.dtype == torch.float32
    assert rel_err(got.double(), exact) < 1e-4
