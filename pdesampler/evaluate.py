"""Evaluation of a trained residual against the target's exact references (docs/metrics.md).

Samples come from :func:`pdesampler.sampling.sample` on the residual's dynamics. Metrics that
need a reference the target lacks (no ``log_Z``, no exact sampler) are reported as ``None`` and
listed with the reason under ``skipped``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from pdesampler import metrics
from pdesampler.checks import POSITIVE, POSITIVE_INT, check
from pdesampler.losses.base import Trainable
from pdesampler.ops import Exact, Hutchinson
from pdesampler.sampling import (
    REFINEMENT_BUDGET,
    SamplingOptions,
    SamplingOutput,
    ScoringClock,
    log_density,
    sample,
)

logger = logging.getLogger(__name__)

__all__ = ["Evaluation", "evaluate", "exact_samples"]


@dataclass
class Evaluation:
    r"""Metrics of one model, the samples they came from and the exact reference samples.

    Metric keys: ``log_Z_ref``, ``log_Z_lb`` (mean log w, a lower bound), ``log_Z_is``
    (importance sampling), ``n_nonfinite_samples`` (failed samples: NaN/Inf coordinates or
    log-weight of a flow sample; :func:`metrics.importance_summary` gives them weight 0 out of
    N), ``n_nonfinite_sde_samples`` (SDE losses: SDE samples with NaN/Inf coordinates, dropped
    from the sample metrics; independent of the flow samples and their weights),
    ``log_z_learned`` (the parametrization's own estimate), ``dlogZ``
    (:math:`|\log Z_{ref} - \mathrm{mean}\log w|`), ``ess``, ``one_minus_ess``, ``w2``
    (:func:`metrics.sinkhorn_w2`), ``w2_floor`` (the same between two exact sample sets: the
    estimator's noise floor), ``dstd``, ``energy_distance`` (geomloss's value) and
    ``energy_floor`` (the same between two exact sample sets), ``nll``
    (forward NLL on exact samples, by the backward ODE; ``n_nonfinite_nll`` counts failed backward
    solves, see :func:`_nll_summary`), ``cross_entropy``, and for a target that defines its modes
    ``n_modes``, ``modes_covered``, ``modes_missed``, ``mode_tv``, ``modes_covered_ref`` and
    ``mode_tv_floor`` (:func:`metrics.mode_coverage`, on the unweighted model samples);
    ``n_unscored`` and ``n_unscored_nll`` (see :func:`evaluate`); the metrics of the sampling
    benchmarks (:func:`metrics.field_metrics`): ``elbo``, ``log_Z_error_elbo`` and
    ``log_Z_error_is`` (signed), ``eubo`` and ``ess_fwd`` (on the NLL's exact samples) and
    ``emc`` (entropic mode coverage). Metrics that need a reference the target lacks are
    ``None``, with the reason under ``skipped``.
    """

    metrics: dict[str, Any]
    output: SamplingOutput
    reference: Tensor | None
    skipped: dict[str, str] = field(default_factory=dict)


def exact_samples(target, n: int, generator: torch.Generator) -> Tensor | None:
    """``n`` exact samples, or ``None`` when the target has no exact sampler."""
    if getattr(target, "sample", None) is None:
        return None
    try:
        return target.sample(n, generator)
    except NotImplementedError:
        return None


def evaluate(
    residual: Trainable,
    *,
    n_samples: int = 10_000,
    seed: int = 0,
    method: str = "auto",
    steps: int = 100,
    sde_steps: int = 500,
    batch_size: int = 1_000,
    trace: str = "exact",
    sinkhorn_blur: float = 0.05,
    sinkhorn_max_samples: int = 10_000,
    energy_batch: int = 5_000,
    nll: bool = True,
    n_nll: int = 2_000,
    n_saved: int = 0,
    max_seconds: float | None = None,
    refine_budget: int = REFINEMENT_BUDGET,
) -> Evaluation:
    r"""Sample from ``residual``'s dynamics and compute the papers' metrics (the keys of
    :attr:`Evaluation.metrics`).

    ``max_seconds`` bounds the ODE/SDE solves of the sampling and the NLL together (a
    :class:`~pdesampler.sampling.ScoringClock`): samples not solved by then are unscored,
    counted in ``n_unscored`` (``n_unscored_nll`` for the NLL's exact samples) and, as failed
    samples, given weight 0 in log Z and ESS; a batch of ``batch_size`` samples still being
    solved at the deadline is unscored as a whole. Samples that blow up get finer grids within
    ``refine_budget`` grid solves of the batch (:mod:`pdesampler.sampling.refine`).
    """
    positive = {"n_samples": n_samples, "steps": steps, "sde_steps": sde_steps,
                "batch_size": batch_size, "sinkhorn_max_samples": sinkhorn_max_samples,
                "energy_batch": energy_batch, "n_nll": n_nll}  # fmt: skip
    for key, value in positive.items():
        check(key, value, POSITIVE_INT)
    check("sinkhorn_blur", sinkhorn_blur, POSITIVE)
    generator = torch.Generator().manual_seed(seed)
    options = SamplingOptions(
        method=method, steps=steps, sde_steps=sde_steps, batch_size=batch_size,
        estimator=Exact() if trace == "exact" else Hutchinson(1, generator=generator),
        fresh_probes=trace != "exact", module=residual, n_saved=n_saved,
        refine_budget=refine_budget, clock=ScoringClock.after(max_seconds),
    )  # fmt: skip
    output = _sample_model(residual, n_samples, generator, options)
    reference = exact_samples(residual.target, n_samples, generator)
    if reference is not None:
        reference = reference.to(output.samples.device)
    sinkhorn = (sinkhorn_blur, sinkhorn_max_samples, energy_batch)
    m, skipped = _metrics(residual, output, reference, generator, options, sinkhorn)
    log_q_exact = None
    if reference is not None:
        nll_options = dataclasses.replace(options, fresh_probes=False)  # one probe set a solve
        exact = reference[:n_nll] if nll else None
        nll_metrics, log_q_exact = _nll_metrics(residual, exact, nll_options, skipped)
        m.update(nll_metrics)
    m.update(_field_metrics(residual.target, output, reference, log_q_exact, m))
    for key in ("eubo", "ess_fwd"):  # both need every exact sample's log q
        if m[key] is None:
            skipped[key] = skipped.get("nll", "the target has no exact samples")
    m["skipped"] = skipped
    return Evaluation(m, output, reference, skipped)


def _metrics(
    residual: Trainable,
    output: SamplingOutput,
    reference: Tensor | None,
    generator: torch.Generator,
    options: SamplingOptions,
    sinkhorn: tuple[float, int, int],
) -> tuple[dict[str, Any], dict[str, str]]:
    """The metrics of :class:`Evaluation` but the NLL, and the reasons of those skipped;
    ``sinkhorn`` is the blur, the samples and the energy distance's batch of
    :func:`_sample_metrics`."""
    target, skipped = residual.target, {}
    m: dict[str, Any] = {"n_eval": output.samples.shape[0], "sinkhorn_blur": sinkhorn[0]}
    m["n_unscored"] = options.clock.unscored
    m["log_z_learned"] = residual.log_z_estimate()
    x = _weight_metrics(m, output, target)
    m.update(_reference_metrics(target, x, m, skipped))
    m.update(_mode_metrics(target, x, reference, skipped))
    if reference is not None and x is not None:
        m.update(_sample_metrics(x, reference, target, generator, *sinkhorn))
    elif reference is None:
        for key in (*_SAMPLE_METRICS, "nll"):
            m[key], skipped[key] = None, "the target has no exact sampler"
    return m, skipped


def _sample_model(
    residual: Trainable,
    n: int,
    generator: torch.Generator,
    options: SamplingOptions,
) -> SamplingOutput:
    """:func:`pdesampler.sampling.sample` on the residual's dynamics, in eval mode."""
    was_training = residual.training
    residual.eval()
    output = sample(residual.dynamics(), n, generator=generator, options=options)
    residual.train(was_training)
    return output


def _weight_metrics(m: dict[str, Any], output: SamplingOutput, target) -> Tensor | None:
    """Adds :func:`metrics.importance_summary` of the flow samples' log-weights (and, for an
    SDE, ``n_nonfinite_sde_samples``) to ``m``; returns the model samples with finite
    coordinates, float64 (``None`` if fewer than 2)."""
    x = output.samples.double()
    log_w = output.log_weights(target).double()
    # the weights belong to the flow samples; for an SDE loss x are independent SDE samples
    failed = ~torch.isfinite(x).all(1)
    m.update(metrics.importance_summary(log_w, ~torch.isfinite(output.flow_samples).all(1)))
    if output.samples is not output.flow_samples:
        m["n_nonfinite_sde_samples"] = int(failed.sum())
    return _finite_rows(x, failed, m["n_nonfinite_samples"])


def _reference_metrics(
    target, x: Tensor | None, m: dict[str, Any], skipped: dict[str, str]
) -> dict[str, Any]:
    """``log_Z_ref``, ``dlogZ`` (from ``m["log_Z_lb"]``), ``cross_entropy`` and ``dstd``
    against the target's reference values, or ``None`` entries with the reason in
    ``skipped``."""
    out: dict[str, Any] = {}
    log_Z, stddevs = getattr(target, "log_Z", None), getattr(target, "stddevs", None)
    if log_Z is None:
        for key in ("log_Z_ref", "dlogZ", "cross_entropy"):
            out[key], skipped[key] = None, "the target has no reference log Z"
    else:
        out["log_Z_ref"] = float(log_Z)
        out["dlogZ"] = float(metrics.delta_log_z(log_Z, m["log_Z_lb"]))
        if m["n_nonfinite_samples"]:
            skipped["dlogZ"] = (
                f"{m['n_nonfinite_samples']} of {m['n_eval']} samples failed (NaN/Inf, "
                "weight 0): the lower bound log_Z_lb is -inf"
            )
        if x is not None:
            out["cross_entropy"] = float(metrics.cross_entropy(target.log_prob(x), log_Z))
    if x is None:
        for key in ("cross_entropy", "dstd", *_SAMPLE_METRICS):
            out[key], skipped[key] = None, "every model sample is NaN/Inf"
    elif stddevs is not None:
        out["dstd"] = float(metrics.delta_std(x, stddevs))
    else:
        out["dstd"], skipped["dstd"] = None, "the target has no reference standard deviations"
    return out


def _nll_metrics(
    residual: Trainable,
    exact: Tensor | None,
    options: SamplingOptions,
    skipped: dict[str, str],
) -> tuple[dict[str, Any], Tensor | None]:
    """The forward NLL on the ``exact`` samples (``None``: disabled) by the backward ODE, on a
    fresh clock with the deadline of ``options.clock``, and the model log-densities it used."""
    dynamics = residual.dynamics()
    if exact is not None and dynamics.flow_drift is None:
        skipped["nll"] = "a trajectory baseline has no probability-flow ODE"
        return {"nll": None}, None
    if exact is None:
        skipped["nll"] = "disabled (eval.nll=false)"
        return {"nll": None}, None
    clock = ScoringClock(options.clock.deadline)
    log_q = log_density(dynamics, exact, options=dataclasses.replace(options, clock=clock))
    return {**_nll_summary(log_q, skipped, clock.unscored), "n_unscored_nll": clock.unscored}, log_q


def _field_metrics(
    target, output: SamplingOutput, reference: Tensor | None, log_q_exact: Tensor | None, m: dict
) -> dict[str, Any]:
    """The metrics of :func:`metrics.field_metrics` that ``m`` does not hold yet under another
    name (``ess_rev`` is ``ess``): ``elbo``, the signed log Z errors, and with the exact
    samples' model log-densities ``log_q_exact`` (from the NLL) ``eubo`` and ``ess_fwd``;
    ``emc`` on targets that define their modes."""
    log_rho_exact = None
    if log_q_exact is not None:
        log_rho_exact = target.log_prob(reference[: log_q_exact.shape[0]]).double()
    finite = torch.isfinite(output.samples).all(1)
    field = metrics.field_metrics(
        target.log_prob(output.flow_samples).double(),
        output.flow_log_q.double(),
        log_Z=m.get("log_Z_ref"),
        model_samples=output.samples[finite].double(),
        target=target,
        log_rho_target=log_rho_exact,
        log_q_target=None if log_q_exact is None else log_q_exact.double(),
    )
    return {k: v for k, v in field.items() if k not in m and k != "ess_rev"}


def _mode_metrics(
    target, x: Tensor | None, reference: Tensor | None, skipped: dict[str, str]
) -> dict[str, Any]:
    """:func:`metrics.mode_coverage` of the model samples (and the exact ones), or ``None``
    entries with the reason in ``skipped``."""
    weights = getattr(target, "mode_weights", None)
    keys = ("n_modes", "modes_covered", "modes_missed", "mode_tv", "modes_covered_ref",
            "mode_tv_floor")  # fmt: skip
    reason = None
    if weights is None:
        reason = "the target does not define its modes"
    elif x is None:
        reason = "every model sample is NaN/Inf"
    if reason is not None:
        skipped.update(dict.fromkeys(("modes_covered", "mode_tv"), reason))
        return dict.fromkeys(keys)
    ref_modes = None if reference is None else target.mode_of(reference.to(x))
    return metrics.mode_coverage(target.mode_of(x), weights, ref_modes)


def _finite_rows(x: Tensor, bad_rows: Tensor, n_failed: int) -> Tensor | None:
    """The model samples with finite coordinates (``None`` if fewer than 2); a warning is
    logged if any sample failed (``n_failed``: failed log-weights; ``bad_rows``: the samples
    with NaN/Inf coordinates, the SDE's own for an SDE loss)."""
    if n_failed or bool(bad_rows.any()):
        logger.warning(
            "%d of %d model samples failed (NaN/Inf sample or log-weight): log Z and ESS count "
            "them as weight 0 out of N; %d samples with NaN/Inf coordinates are dropped from "
            "dstd, w2, energy distance and cross entropy",
            n_failed,
            x.shape[0],
            int(bad_rows.sum()),
        )
    return x[~bad_rows] if int((~bad_rows).sum()) >= 2 else None


#: The keys :func:`_sample_metrics` fills (null, with the reason, when it cannot run).
_SAMPLE_METRICS = ("w2", "w2_floor", "energy_distance", "energy_floor")


def _sample_metrics(x, reference, target, generator, blur, max_samples, energy_batch) -> dict:
    """W2 and energy distance to the exact samples; ``w2_floor`` and ``energy_floor`` are the
    same between ``reference`` and a second, independent exact set of the same size: the
    estimators' values at perfection (both are positive for two finite sample sets)."""
    second = target.sample(reference.shape[0], generator).to(reference.device)
    w2 = lambda a, b: metrics.sinkhorn_w2(
        a, b, blur=blur, max_samples=max_samples, generator=generator
    )
    return {
        "w2": w2(x, reference),
        "w2_floor": w2(second, reference),
        "energy_distance": metrics.energy_distance(x, reference, batch_size=energy_batch),
        "energy_floor": metrics.energy_distance(second, reference, batch_size=energy_batch),
        "sinkhorn_max_samples": max_samples,
    }


def _nll_summary(log_q: Tensor, skipped: dict[str, str], n_unscored: int = 0) -> dict[str, Any]:
    """``nll`` (docs/metrics.md), ``n_nll`` and ``n_nonfinite_nll``. A backward solve that fails
    (NaN/Inf log q), or that the scoring budget left undone (``n_unscored`` of them, NaN too),
    leaves ``nll`` null with the reason in ``skipped``; ``nll_of_finite`` is then the mean over
    the other exact samples (biased low: the failures are the hard points)."""
    finite = torch.isfinite(log_q)
    n, n_bad = log_q.shape[0], int((~finite).sum())
    out: dict[str, Any] = {"n_nll": n, "n_nonfinite_nll": n_bad}
    if not n_bad:
        out["nll"] = metrics.forward_nll(log_q)
        return out
    out["nll"] = None
    out["nll_of_finite"] = metrics.forward_nll(log_q[finite]) if n_bad < n else None
    unscored = (
        f" and the scoring budget (eval.max_seconds) left {n_unscored} unscored"
        if n_unscored
        else ""
    )
    skipped["nll"] = (
        f"the backward ODE failed (NaN/Inf log q) on {n_bad - n_unscored} of {n} exact "
        f"samples{unscored}; nll_of_finite averages the others"
    )
    logger.warning("forward NLL: %s", skipped["nll"])
    return out
