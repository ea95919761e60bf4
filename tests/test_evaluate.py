"""``evaluate`` keeps going when some model samples are NaN/Inf (a diverged model), drops them
from the sample metrics, says how many, and the metric functions refuse such input by name."""

from __future__ import annotations

import importlib
import math
import time

import pytest
import torch

from pdesampler import evaluate, losses, metrics, plots, sampling
from pdesampler.targets import Gaussian, GaussianMixture

evaluate_module = importlib.import_module("pdesampler.evaluate")  # the name is also a function


def poisoned_sample(n_bad: int):
    """The real sampler, with the first ``n_bad`` samples replaced by NaN and Inf."""
    real = evaluate_module.sample

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        out.samples[:n_bad] = torch.tensor([math.nan, math.inf])
        out.flow_log_q[:n_bad] = math.nan
        return out

    return wrapped


@pytest.mark.parametrize("n_bad", [3, 200])
def test_non_finite_samples_are_dropped_from_sample_metrics(monkeypatch, n_bad, caplog):
    torch.manual_seed(0)
    residual = losses.logce(Gaussian(mean=1.0, std=0.5, dim=2), net={"width": 8, "depth": 1})
    monkeypatch.setattr(evaluate_module, "sample", poisoned_sample(n_bad))
    report = evaluate(residual, n_samples=200, steps=4, n_nll=20, sinkhorn_max_samples=100)
    m = report.metrics
    assert m["n_nonfinite_samples"] == n_bad
    assert m["log_Z_lb"] == -math.inf and m["dlogZ"] == math.inf  # weight 0 out of N
    assert m["skipped"]["dlogZ"].startswith(f"{n_bad} of 200 samples failed")
    log_w = report.output.log_weights(residual.target).double()[n_bad:]
    if n_bad < 200:  # sample metrics on the 197 finite samples, weights out of all 200
        assert "weight 0 out of N" in caplog.text
        for key in ("w2", "dstd", "energy_distance", "cross_entropy", "ess"):
            assert math.isfinite(m[key]), key
        kept = metrics.importance_summary(log_w)
        assert m["log_Z_is"] == pytest.approx(kept["log_Z_is"] + math.log(197 / 200), abs=1e-12)
        assert m["ess"] == pytest.approx(kept["ess"] * 197 / 200, rel=1e-12)
    else:  # nothing left: the sample metrics are null, with the reason
        for key in ("w2", "dstd", "energy_distance", "cross_entropy"):
            assert m[key] is None and m["skipped"][key] == "every model sample is NaN/Inf"
        assert m["ess"] == 0.0 and m["log_Z_is"] == -math.inf
        assert m["log_Z_ref"] == 0.0  # the target has one; the model gave no finite weight
    assert math.isfinite(m["nll"])  # the backward ODE from exact samples is unaffected


@pytest.mark.parametrize(
    "fn", [metrics.sinkhorn_w2, metrics.energy_distance], ids=["sinkhorn", "energy"]
)
def test_metrics_name_non_finite_rows(fn):
    x = torch.randn(10, 2, dtype=torch.float64)
    x[4, 1] = math.inf
    with pytest.raises(ValueError, match="x has 1 of 10 rows with NaN/Inf"):
        fn(x, torch.randn(10, 2, dtype=torch.float64))


@pytest.mark.parametrize("n_bad", [5, 50])
@pytest.mark.filterwarnings("error::RuntimeWarning")  # 50 of 50: no 0 / 0 density either
def test_figures_survive_non_finite_samples(tmp_path, n_bad):
    samples = torch.randn(50, 2)
    samples[:n_bad] = math.nan
    trajectory = torch.randn(3, 50, 2)
    trajectory[:, :n_bad] = math.inf
    exact = torch.randn(100, 2)
    assert plots.plot_marginals(samples, exact, tmp_path / "m.png").stat().st_size > 0
    path = plots.plot_trajectories(trajectory, torch.linspace(0, 1, 3), tmp_path / "t.png")
    assert path.stat().st_size > 0


def test_failed_backward_solves_leave_nll_null_with_the_reason(monkeypatch):
    """A NaN log q on an exact sample (a backward ODE that blew up) must not turn the NLL into a
    silent null: it is counted, named in ``skipped``, and the finite ones still averaged."""
    torch.manual_seed(0)
    residual = losses.logce(Gaussian(mean=1.0, std=0.5, dim=2), net={"width": 8, "depth": 1})
    real = evaluate_module.log_density
    seen = {}

    def poisoned(*args, **kwargs):
        log_q = real(*args, **kwargs)
        seen["log_q"] = log_q.clone()
        log_q[:2] = torch.tensor([math.nan, -math.inf])
        return log_q

    monkeypatch.setattr(evaluate_module, "log_density", poisoned)
    m = evaluate(residual, n_samples=50, steps=4, n_nll=20, sinkhorn_max_samples=50).metrics
    assert m["nll"] is None and m["n_nonfinite_nll"] == 2 and m["n_nll"] == 20
    assert m["skipped"]["nll"].startswith("the backward ODE failed (NaN/Inf log q) on 2 of 20")
    assert m["nll_of_finite"] == pytest.approx(-float(seen["log_q"][2:].double().mean()), rel=1e-6)


def test_failed_sde_samples_do_not_zero_the_flow_weights(monkeypatch):
    """For an SDE loss the sample metrics use the SDE samples and log Z / ESS the independent
    probability-flow samples: an SDE sample that blew up is dropped from W2 and co. but must not
    give flow sample i weight 0 (it did: 8294 failed SDE samples zeroed as many flow weights)."""
    torch.manual_seed(0)
    residual = losses.logfp(Gaussian(mean=1.0, std=0.5, dim=2), net={"width": 8, "depth": 1})
    real = evaluate_module.sample

    def sde_poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        assert out.samples is not out.flow_samples
        out.samples[:5] = math.nan
        return out

    monkeypatch.setattr(evaluate_module, "sample", sde_poisoned)
    report = evaluate(residual, n_samples=100, steps=4, sde_steps=4, nll=False,
                      sinkhorn_max_samples=100)  # fmt: skip
    m = report.metrics
    assert m["n_nonfinite_sde_samples"] == 5 and m["n_nonfinite_samples"] == 0
    clean = metrics.importance_summary(report.output.log_weights(residual.target).double())
    assert m["ess"] == pytest.approx(clean["ess"], rel=1e-12) and math.isfinite(m["dlogZ"])
    assert math.isfinite(m["w2"]) and math.isfinite(m["dstd"])


def test_mode_metrics_from_the_targets_modes():
    """A mixture reports its mode coverage, recomputable from the samples; a target without
    modes gives null with the reason."""
    torch.manual_seed(0)
    target = GaussianMixture([[-3.0, 0.0], [3.0, 0.0]], 1.0, weights=[0.7, 0.3])
    residual = losses.logce(target, net={"width": 8, "depth": 1})
    report = evaluate(residual, n_samples=300, steps=4, nll=False, sinkhorn_max_samples=100)
    m = report.metrics
    expected = metrics.mode_coverage(
        target.mode_of(report.output.samples.double()),
        target.mode_weights,
        target.mode_of(report.reference),
    )
    assert {k: m[k] for k in expected} == expected
    assert m["n_modes"] == 2 and m["modes_covered_ref"] == 2 and 0 <= m["mode_tv"] <= 1
    residual = losses.logce(Gaussian(mean=0.0, std=1.0, dim=2), net={"width": 8, "depth": 1})
    m = evaluate(residual, n_samples=50, steps=2, nll=False, sinkhorn_max_samples=50).metrics
    assert (
        m["mode_tv"] is None and m["skipped"]["mode_tv"] == "the target does not define its modes"
    )


def test_energy_floor_is_the_distance_between_two_exact_sets():
    """``energy_floor`` is geomloss's energy distance between two exact sample sets: for
    N(1, 0.5^2 I_2) its mean is E|X-X'| / n = 0.5 sqrt(pi) / n (docs/metrics.md), far below an
    untrained model's distance (its samples are about N(0, I), a unit shift away)."""
    torch.manual_seed(0)
    residual = losses.logce(Gaussian(mean=1.0, std=0.5, dim=2), net={"width": 8, "depth": 1})
    n = 1000
    m = evaluate(residual, n_samples=n, steps=4, nll=False, sinkhorn_max_samples=100).metrics
    expected = 0.5 * math.sqrt(math.pi) / n
    assert expected / 4 < m["energy_floor"] < 3 * expected
    assert m["energy_distance"] > 20 * m["energy_floor"]


def test_a_spent_scoring_budget_leaves_samples_unscored_with_weight_zero() -> None:
    """``max_seconds`` bounds the solves: a budget spent before the first batch leaves every
    sample unscored (counted, NaN, weight 0 in log Z and ESS) and the evaluation still ends."""
    torch.manual_seed(0)
    residual = losses.logce(Gaussian(mean=1.0, std=0.5, dim=2), net={"width": 8, "depth": 1})
    report = evaluate(
        residual, n_samples=300, steps=4, nll=True, n_nll=50, max_seconds=1e-9, batch_size=100
    )
    m = report.metrics
    assert m["n_unscored"] == 300 and m["n_nonfinite_samples"] == 300
    assert m["ess"] == 0 and m["dlogZ"] == math.inf
    assert m["n_unscored_nll"] == 50 and m["nll"] is None
    assert m["skipped"]["nll"].startswith(
        "the backward ODE failed (NaN/Inf log q) on 0 of 50 exact samples and the scoring "
        "budget (eval.max_seconds) left 50 unscored"
    )
    assert m["eubo"] is None and m["ess_fwd"] is None
    assert m["skipped"]["eubo"] == m["skipped"]["ess_fwd"] == m["skipped"]["nll"]
    scored = evaluate(residual, n_samples=300, steps=4, nll=False, max_seconds=600)
    assert scored.metrics["n_unscored"] == 0 and scored.metrics["ess"] > 0


def test_scoring_budget_ends_between_batches(monkeypatch) -> None:
    """Batches solved before the deadline are kept; the ones after it come back unscored."""
    torch.manual_seed(0)
    residual = losses.logce(Gaussian(mean=1.0, std=0.5, dim=2), net={"width": 8, "depth": 1})
    calls = []
    drift = residual.dynamics()

    def slow_batch(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        time.sleep(0.3)
        return out

    real = sampling.ode._solve_augmented
    monkeypatch.setattr(sampling.ode, "_solve_augmented", slow_batch)
    clock = sampling.ScoringClock.after(0.1)
    out = sampling.sample_ode(
        drift, 40, generator=torch.Generator().manual_seed(0), steps=2, batch_size=10, clock=clock
    )
    assert len(calls) == 1 and clock.unscored == 30
    assert torch.isfinite(out.x[:10]).all() and torch.isnan(out.x[10:]).all()


def _slowed(field_maker, seconds: float, evaluations: list):
    """``field_maker`` whose fields sleep ``seconds`` per evaluation, counted in ``evaluations``."""

    def make(*args, **kwargs):
        field = field_maker(*args, **kwargs)

        def slow(*a):
            evaluations.append(1)
            time.sleep(seconds)
            return field(*a)

        return slow

    return make


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_scoring_budget_stops_a_solve_under_way(monkeypatch, method: str) -> None:
    """A batch whose solve outlasts the deadline stops at its next drift evaluation and comes
    back unscored (NaN, counted): one slow batch cannot overrun the budget."""
    torch.manual_seed(0)
    residual = losses.logce(Gaussian(mean=1.0, std=0.5, dim=2), net={"width": 8, "depth": 1})
    evaluations: list = []
    slow = _slowed(sampling.ode._augmented_field, 0.02, evaluations)
    monkeypatch.setattr(sampling.ode, "_augmented_field", slow)
    clock = sampling.ScoringClock.after(0.3)
    start = time.perf_counter()
    out = sampling.sample_ode(  # 400 evaluations of 0.02 s with rk4 if nothing stopped it
        residual.dynamics(), 30, generator=torch.Generator().manual_seed(0), steps=100,
        method=method, clock=clock,
    )  # fmt: skip
    assert time.perf_counter() - start < 2.0 and len(evaluations) < 100
    assert clock.unscored == 30 and torch.isnan(out.x).all() and torch.isnan(out.log_q).all()


def test_scoring_budget_stops_an_sde_path_under_way(monkeypatch) -> None:
    """An Euler-Maruyama run that outlasts the deadline stops at its next drift evaluation; all
    its samples come back unscored."""
    evaluations: list = []
    monkeypatch.setattr(sampling.sde, "on_batch", _slowed(sampling.sde.on_batch, 0.02, evaluations))
    residual = losses.logfp(Gaussian(mean=1.0, std=0.5, dim=2), net={"width": 8, "depth": 1})
    clock = sampling.ScoringClock.after(0.3)
    start = time.perf_counter()
    out = sampling.sample_sde(
        residual.dynamics(), 20, generator=torch.Generator().manual_seed(0), steps=500,
        clock=clock,
    )  # fmt: skip
    assert time.perf_counter() - start < 2.0 and len(evaluations) < 100
    assert clock.unscored == 20 and torch.isnan(out.x).all()
