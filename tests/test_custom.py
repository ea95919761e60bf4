"""The extension point: a residual and a target written outside the package, here in
this module, get training (Adam, then Gauss-Newton), sampling, metrics and the CLI; a residual
that torch.func cannot transform fails before training with the cause, the line and the fix."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import FAST
from torch import Tensor

from pdesampler import evaluate, train
from pdesampler.losses import (
    Dynamics,
    Residual,
    ResidualShapeError,
    ResidualValidationError,
    logce,
    score,
    validate_residual,
)
from pdesampler.losses.parts import log_fokker_planck

ROOT = Path(__file__).resolve().parents[1]
NET = {"width": 8, "depth": 1}
#: Metrics that need a reference the duck-typed target does not have.
REFERENCE_METRICS = ("log_Z_ref", "dlogZ", "cross_entropy", "dstd", "w2", "energy_distance", "nll")


class Quartic:
    """A duck-typed target: ``dim``, ``box`` and ``log_prob`` only, no ``log_Z``, ``stddevs``
    or ``sample``: :math:`\\log\\rho(x) = -\\sum_i x_i^4 / 4`."""

    def __init__(self, dim: int = 2, half_width: float = 3.0) -> None:
        self.dim = dim
        self.box = (torch.full((dim,), -half_width), torch.full((dim,), half_width))

    def log_prob(self, x: Tensor) -> Tensor:
        return -0.25 * (x**4).sum(-1)


class DivergencePenalty(Residual):
    """The catalogue's logCE plus :math:`\\alpha\\,\\mathbb{E}[(\\nabla\\cdot\\mu)^2]`: a term added
    to an existing entry by reusing its parts. Accepts the ``loss=logce`` config keys."""

    def __init__(self, target, alpha: float = 0.1, net=None, prior_std=1.0, T=1.0, **kw) -> None:
        super().__init__(target, {"pde": 1.0, "div": alpha}, T=T, **kw)
        self.base = logce(target, net=net, prior_std=prior_std, T=T)

    def point_residuals(self, x: Tensor, t: Tensor, probes: Tensor) -> dict[str, Tensor]:
        V = self.base.density.jet(x, t, probes, self.estimator, laplacian=False)
        mu = self.base.drift.jet(x, t, probes, self.estimator, V)
        return {"pde": log_fokker_planck(V, mu, None), "div": mu.div}

    def dynamics(self) -> Dynamics:
        return self.base.dynamics()

    def log_z_estimate(self) -> float | None:
        return self.base.log_z_estimate()


# ---------------------------------------------------------------------------- broken residuals
class InPlaceOnX(DivergencePenalty):
    def point_residuals(self, x, t, probes):
        x.mul_(2.0)
        return super().point_residuals(x, t, probes)


class InPlaceOnT(DivergencePenalty):
    def point_residuals(self, x, t, probes):
        t.mul_(1.0)  # leaves the values unchanged: only torch.func notices
        return super().point_residuals(x, t, probes)


class Item(DivergencePenalty):
    def point_residuals(self, x, t, probes):
        return super().point_residuals(x, t * t.item(), probes)


class DataDependentIf(DivergencePenalty):
    def point_residuals(self, x, t, probes):
        if x[0] > 0:
            x = -x
        return super().point_residuals(x, t, probes)


class NumPy(DivergencePenalty):
    def point_residuals(self, x, t, probes):
        return super().point_residuals(torch.as_tensor(np.tanh(x)), t, probes)


class VectorTerm(DivergencePenalty):
    def point_residuals(self, x, t, probes):
        return {**super().point_residuals(x, t, probes), "div": x}


class MissingTerm(DivergencePenalty):
    def point_residuals(self, x, t, probes):
        return {"pde": super().point_residuals(x, t, probes)["pde"]}


class Float64Constant(DivergencePenalty):
    def point_residuals(self, x, t, probes):
        terms = super().point_residuals(x, t, probes)
        return {**terms, "div": terms["div"] * torch.tensor(1.0, dtype=torch.float64)}


class ScalarDrift(DivergencePenalty):
    def dynamics(self):
        return Dynamics(drift=lambda x, t: x.sum(), prior=self.base.prior, t0=0.0, t1=1.0)


class NotDynamics(DivergencePenalty):
    def dynamics(self):
        return {"drift": self.base.drift}


FIX = "Fix: write point_residuals with differentiable torch ops on one point"


@pytest.mark.parametrize(
    ("cls", "error", "messages"),
    [
        (InPlaceOnX, ResidualValidationError, ["InPlaceOnX.point_residuals modified its input x"]),
        (InPlaceOnT, ResidualValidationError, ["an in-place operation", "`t.mul_(1.0)"]),
        (Item, ResidualValidationError, [".item()", "test_custom.py", "in point_residuals", FIX]),
        (DataDependentIf, ResidualValidationError, ["control flow (if/while)", "`if x[0] > 0:`"]),
        (NumPy, ResidualValidationError, ["a NumPy call", "np.tanh(x)", FIX]),
        (VectorTerm, ResidualShapeError, ["term 'div' has shape (4, 2)", "one scalar per point"]),
        (MissingTerm, ResidualShapeError, ["missing ['div']"]),
        (Float64Constant, ResidualValidationError, ["'div': 'torch.float64'", "c.to(x)"]),
        (ScalarDrift, ResidualValidationError, ["dynamics().drift must map", "(2,), got ()"]),
        (NotDynamics, ResidualValidationError, ["must return a pdesampler Dynamics"]),
    ],
)
def test_broken_residuals_fail_before_training_with_the_cause_and_fix(cls, error, messages):
    residual = cls(Quartic(), net=NET)
    with pytest.raises(error) as info:
        train(residual, adam={"steps": 1}, gn={"steps": 1}, batch_size=8, progress=False)
    for message in messages:
        assert message in str(info.value), str(info.value)


def _points(n: int = 8) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 2, generator=gen), torch.rand(n, generator=gen)


def test_validation_leaves_shared_modules_with_their_parameters() -> None:
    residual = score(Quartic(), net=NET)  # the drift shares the density's networks
    params = list(residual.parameters())
    validate_residual(residual, gauss_newton="double_vjp")
    assert all(a is b for a, b in zip(params, residual.parameters(), strict=True))
    assert residual.loss(*_points())[0].requires_grad


def test_target_without_box_is_named() -> None:
    target = Quartic()
    del target.box
    with pytest.raises(ResidualValidationError, match=r"target Quartic lacks \['box'\]"):
        train(DivergencePenalty(target, net=NET), adam={"steps": 1}, progress=False)


def assert_reference_metrics_skipped(metrics: dict) -> None:
    assert math.isfinite(metrics["ess"]) and 0 < metrics["ess"] <= 1
    assert math.isfinite(metrics["log_Z_lb"])
    for key in REFERENCE_METRICS:
        assert metrics[key] is None, key
        assert metrics["skipped"][key].startswith("the target has no"), key


def test_custom_residual_and_target_train_sample_and_evaluate_in_python() -> None:
    torch.manual_seed(0)
    residual = DivergencePenalty(Quartic(), alpha=0.1, net=NET)
    gn = {"method": "gauss_newton", "steps": 2, "cg_max_iter": 10}
    result = train(residual, adam={"steps": 30}, gn=gn, batch_size=64, progress=False)
    assert result.adam.steps == 30 and len(result.gn_history) == 2
    assert all(s["loss_after"] <= s["loss_before"] for s in result.gn_history)
    report = evaluate(residual, n_samples=300, steps=10, n_nll=50)
    assert report.output.samples.shape == (300, 2) and report.reference is None
    assert_reference_metrics_skipped(report.metrics)


def run_cli(*overrides: str, pythonpath: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``benchmarks/run.py`` with ``pythonpath`` importable (where the user's module lives)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pythonpath), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), *overrides],
        capture_output=True, text=True, cwd=ROOT, env=env, check=False,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"run.py {' '.join(overrides)} failed:\n{proc.stderr[-3000:]}")
    return proc


GN = ["optim=adam_gn", "optim.gn.steps=2", "optim.gn.cg_max_iter=10"]


def test_cli_runs_a_residual_and_target_named_by_target_overrides(tmp_path: Path) -> None:
    here = Path(__file__).parent
    run_cli(
        "loss._target_=test_custom.DivergencePenalty", "target._target_=test_custom.Quartic",
        "+loss.alpha=0.2", *GN, *FAST, f"out_dir={tmp_path}", pythonpath=here,
    )  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["loss_name"] == "test_custom.DivergencePenalty"
    assert metrics["gn_steps"] == 2 and math.isfinite(metrics["loss"])
    assert_reference_metrics_skipped(metrics)
    saved = (tmp_path / ".hydra" / "config.yaml").read_text()
    assert "alpha: 0.2" in saved


def test_cli_runs_the_example_through_its_own_config_directory(tmp_path: Path) -> None:
    configs = ROOT / "examples" / "configs"
    run_cli(
        f"hydra.searchpath=[file://{configs}]", "loss=kinetic_logce", "target=ring",
        *GN, *FAST, f"out_dir={tmp_path}", pythonpath=ROOT / "examples",
    )  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["loss_name"] == "custom_residual.KineticLogCE"
    assert_reference_metrics_skipped(metrics)


def test_cli_reports_a_broken_custom_residual(tmp_path: Path) -> None:
    here = Path(__file__).parent
    proc = run_cli(
        "loss._target_=test_custom.Item", "target._target_=test_custom.Quartic", *FAST,
        f"out_dir={tmp_path}", pythonpath=here, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Item.point_residuals cannot be run by torch.func" in proc.stderr, proc.stderr[-2000:]
    assert FIX in proc.stderr
