"""Training: an Adam phase, then an optional Gauss-Newton phase, on any Residual.

Both phases see the residual only through its interface: Adam minimizes
:meth:`Residual.loss` on collocation batches, and Gauss-Newton linearizes the stacked vector
:meth:`Residual.forward` through ``torch.func.functional_call`` (per-point Jacobians when the
residual is ``pointwise``). Checkpoints let an interrupted run resume.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from pdesampler.checks import FRACTION, POSITIVE_INT, POSITIVE_OR_NONE, check
from pdesampler.collocation import CollocationSampler, make_collocation
from pdesampler.compiling import CompiledOrEager, should_compile
from pdesampler.losses.base import Residual
from pdesampler.losses.parts import LogDensityPath
from pdesampler.losses.trajectory import TrajectoryLoss
from pdesampler.losses.validate import non_finite_log_prob, validate_residual
from pdesampler.ops import Exact
from pdesampler.optim import FinetuneConfig, build_config, finetune_config, run_finetuner
from pdesampler.optim.adam import (
    DEFAULT_STEPS,
    AdamConfig,
    AdamResult,
    NonFiniteLossError,
    run_adam,
    temper_power,
)
from pdesampler.optim.gauss_newton import StepHook, per_point_jacobian, step_limit

__all__ = ["TrainResult", "collocation_loss", "train"]

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainResult:
    """What training did: steps and seconds per phase, and the histories."""

    adam: AdamResult
    gn_history: list[dict[str, Any]] = field(default_factory=list)
    gn_seconds: float = 0.0
    final_loss: float | None = None

    @property
    def seconds(self) -> float:
        return self.adam.seconds + self.gn_seconds

    def summary(self) -> dict[str, Any]:
        gn_steps = len(self.gn_history)
        return {
            "loss": self.final_loss,
            "steps": self.adam.steps,
            "gn_steps": gn_steps,
            "train_seconds": self.seconds,
            "adam_seconds": self.adam.seconds,
            "gn_seconds": self.gn_seconds,
            "sec_per_it": self.adam.seconds_per_step,
            "first_step_seconds": self.adam.first_step_seconds,
            "gn_sec_per_it": self.gn_seconds / gn_steps if gn_steps else None,
            "nan_skipped": self.adam.skipped,
        }


def _param_dtype_device(module: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    p = next(module.parameters())
    return p.dtype, p.device


def collocation_loss(residual: Residual, sampler: CollocationSampler, n: int) -> float:
    """The loss on one fresh collocation batch (the 'loss' column of the results)."""
    x, t = sampler(n)
    loss, _ = residual.loss(x, t)
    return float(loss.detach())


def train(
    residual: Residual | TrajectoryLoss,
    *,
    adam: AdamConfig | Mapping | None = None,
    gn: FinetuneConfig | Mapping | None = None,
    batch_size: int = 1024,
    collocation: str | CollocationSampler = "default",
    collocation_options: Mapping | None = None,
    seed: int = 0,
    max_seconds: float | None = None,
    gn_time_fraction: float = 0.5,
    gn_batch_size: int | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    validate: bool = True,
    on_step: StepHook | None = None,
    compile: bool | str = "auto",
) -> TrainResult:
    """Train ``residual`` in place: Adam, then a second-order fine-tuner if ``gn`` is given. A
    trajectory baseline (:class:`TrajectoryLoss`) trains with Adam on simulated paths and
    refuses a fine-tuner.

    Args:
        residual: any :class:`Residual` (its parameters' dtype and device are used).
        adam: :class:`AdamConfig` or a mapping of its fields (``steps=0`` skips Adam).
        gn: the fine-tuning phase (``None``: none): a :class:`SpringConfig`, a
            :class:`GaussNewtonConfig`, or a mapping of its fields with ``method`` naming it
            (``"spring"``, the default, as ``optim=adam_gn``, or ``"gauss_newton"``; see
            :func:`pdesampler.optim.finetune_config`).
        batch_size: collocation points per Adam step.
        collocation: a sampler, or a kind for :func:`make_collocation` (``"default"``: the
            residual's own choice).
        collocation_options: keyword arguments of :func:`make_collocation`.
        seed: seeds the collocation stream.
        max_seconds: wall-clock budget of the whole training; GN gets ``gn_time_fraction``.
        gn_batch_size: collocation points per GN step (default ``batch_size``).
        checkpoint_dir: where ``checkpoint.pt`` is written and resumed from.
        progress: tqdm bars.
        validate: first run the residual on a few points (:func:`validate_residual`), so that
            a residual torch.func cannot transform, a wrong term shape or broken dynamics fail
            at once with a clear message.
        on_step: ``(steps, elapsed seconds, parameters)`` after every step of each phase
            (steps and seconds count from the start of that phase).
        compile: evaluate the Adam phase's loss through ``torch.compile`` (``"auto"``: on CPU
            for a phase of at least five minutes and 10 s per dimension, or 1000 steps; see
            :mod:`pdesampler.compiling`); a residual that does not compile runs eagerly, with a
            warning.
    """
    check("batch_size", batch_size, POSITIVE_INT)
    check("max_seconds", max_seconds, POSITIVE_OR_NONE)
    check("gn_time_fraction", gn_time_fraction, FRACTION)
    if gn_batch_size is not None:
        check("gn_batch_size", gn_batch_size, POSITIVE_INT)
    adam_cfg = build_config(AdamConfig, adam) or AdamConfig()
    gn_cfg = finetune_config(gn)
    if isinstance(residual, TrajectoryLoss):
        return _train_trajectory(
            residual, adam_cfg, gn_cfg, batch_size, seed, max_seconds, checkpoint_dir, progress
        )
    if max_seconds is not None:
        share = gn_time_fraction if gn_cfg is not None else 0.0
        adam_cfg.max_seconds = max_seconds * (1 - share)
        if gn_cfg is not None:
            gn_cfg.max_seconds = max_seconds * share
    if validate:
        finetuning = gn_cfg is not None and gn_cfg.steps != 0
        gn_product = getattr(gn_cfg, "jacobian_product", "double_vjp") if finetuning else None
        validate_residual(residual, gauss_newton=gn_product)
    dtype, device = _param_dtype_device(residual)
    generator = torch.Generator().manual_seed(seed)
    sampler = (
        collocation
        if isinstance(collocation, CollocationSampler)
        else make_collocation(
            collocation,
            residual,
            generator,
            dtype=dtype,
            device=device,
            **dict(collocation_options or {}),
        )
    )
    sampler.bind(residual)
    path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    state = torch.load(path, weights_only=False) if path is not None and path.exists() else None
    if state is not None:
        sampler.generator.set_state(state["extra"]["generator"])
    if state is not None and state["extra"].get("phase") == "done":
        residual.load_state_dict(state["model"])
        extra_state = state["extra"]
        return TrainResult(
            AdamResult(**state["result"]),
            extra_state["gn_history"],
            extra_state["gn_seconds"],
            extra_state["final_loss"],
        )

    last_batch: list[Tensor] = []
    residual_loss = residual.loss  # a residual of one's own may override loss(x, t) without form
    if adam_cfg.loss_form != "squares":
        residual_loss = partial(residual.loss, form=adam_cfg.loss_form)
    adam_steps = step_limit(adam_cfg.steps, adam_cfg.max_seconds, DEFAULT_STEPS)
    if should_compile(compile, device, adam_steps, adam_cfg.max_seconds, residual.dim):
        residual_loss = CompiledOrEager(residual_loss, f"{type(residual).__name__}.loss")

    def loss_fn(step: int):
        sampler.update(step)
        x, t = sampler(batch_size)
        last_batch[:] = [x]
        return residual_loss(x, t)

    def extra(phase: str = "adam", **more) -> dict:
        return {"generator": sampler.generator.get_state(), "phase": phase, **more}

    residual.train()
    set_power = _tempering(residual, adam_cfg)
    try:
        adam_result = run_adam(
            residual,
            loss_fn,
            adam_cfg,
            checkpoint=path,
            state=state,
            progress=progress,
            on_checkpoint=extra,
            on_step=on_step,
            on_progress=set_power,
        )
    except NonFiniteLossError as err:
        raise NonFiniteLossError(f"{err}{_blame(residual.target, last_batch[0])}") from err
    finally:
        if set_power is not None:  # the untempered target after Adam, however it ended
            set_power(1.0)
    result = TrainResult(adam_result)
    if gn_cfg is not None and gn_cfg.steps != 0:
        start = time.perf_counter()
        history = run_finetuner(
            gn_cfg,
            residual,
            _gn_batches(residual, sampler, gn_batch_size or batch_size, gn_cfg),
            progress=progress,
            on_step=on_step,
        )
        result.gn_seconds = time.perf_counter() - start
        result.gn_history = [asdict(info) for info in history]
    result.final_loss = collocation_loss(residual, sampler, batch_size)
    if path is not None:
        payload = {"model": residual.state_dict(), "result": asdict(result.adam)}
        payload["extra"] = extra(
            "done",
            gn_history=result.gn_history,
            gn_seconds=result.gn_seconds,
            final_loss=result.final_loss,
        )
        torch.save(payload, path)
    return result


def _tempering(residual: Residual, adam_cfg: AdamConfig) -> Callable[[float], None] | None:
    """The hook that sets the tempered target's power from the Adam phase's progress
    (:func:`temper_power`), or ``None`` when ``temper_from`` is off."""
    if adam_cfg.temper_from is None:
        return None
    density = getattr(residual, "density", None)
    if not isinstance(density, LogDensityPath):
        raise ValueError(
            f"optim.temper_from needs a residual whose log-density path reads the target "
            f"(a LogDensityPath at .density); {type(residual).__name__} has none"
        )

    def set_power(progress: float) -> None:
        density.target_power.fill_(temper_power(adam_cfg, progress))

    return set_power


def _train_trajectory(
    loss: TrajectoryLoss,
    adam_cfg: AdamConfig,
    gn_cfg: FinetuneConfig | None,
    batch_size: int,
    seed: int,
    max_seconds: float | None,
    checkpoint_dir: str | Path | None,
    progress: bool,
) -> TrainResult:
    """Adam on :meth:`TrajectoryLoss.path_loss` with ``batch_size`` fresh paths per step (the
    seed drives the Brownian increments); checkpoints and resume as for a residual."""
    if adam_cfg.loss_form != "squares" or adam_cfg.temper_from is not None:
        raise ValueError(
            f"optim.loss_form and optim.temper_from apply to PDE residuals; the trajectory "
            f"baseline {type(loss).__name__} trains on its own path loss"
        )
    if gn_cfg is not None and gn_cfg.steps != 0:
        raise ValueError(
            f"Gauss-Newton does not apply to the trajectory baseline {type(loss).__name__} "
            f"({loss.divergence}): its loss is an expectation over simulated paths, not a "
            "least-squares residual; use optim=adam"
        )
    if max_seconds is not None:
        adam_cfg.max_seconds = max_seconds
    generator = torch.Generator().manual_seed(seed)
    path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    state = torch.load(path, weights_only=False) if path is not None and path.exists() else None
    if state is not None:
        generator.set_state(state["extra"]["generator"])
    if state is not None and state["extra"].get("phase") == "done":
        loss.load_state_dict(state["model"])
        return TrainResult(AdamResult(**state["result"]), final_loss=state["extra"]["final_loss"])

    def extra(phase: str = "adam", **more) -> dict:
        return {"generator": generator.get_state(), "phase": phase, **more}

    loss.train()
    result = TrainResult(
        run_adam(
            loss,
            lambda step: loss.path_loss(batch_size, generator),
            adam_cfg,
            checkpoint=path,
            state=state,
            progress=progress,
            on_checkpoint=extra,
        )
    )
    with torch.no_grad():
        result.final_loss = float(loss.path_loss(batch_size, generator)[0])
    if path is not None:
        payload = {"model": loss.state_dict(), "result": asdict(result.adam)}
        torch.save({**payload, "extra": extra("done", final_loss=result.final_loss)}, path)
    return result


def _blame(target, x: Tensor) -> str:
    """Why the last collocation batch ``x`` may have given a non-finite loss: NaN/Inf points,
    or a target log-density that is not finite there ("" when neither)."""
    bad_rows = int((~torch.isfinite(x).all(1)).sum())
    if bad_rows:
        return f"; the collocation batch has {bad_rows} of {len(x)} NaN/Inf points"
    problem = non_finite_log_prob(target, x.detach(), "of the last collocation batch")
    return f"; the target is the cause: {problem}" if problem else ""


def _gn_batches(residual: Residual, sampler: CollocationSampler, n: int, cfg: FinetuneConfig):
    """``step -> (residual_fn, point_jacobian_fn, search_fn, curvature_fn)`` on a fresh
    collocation batch per step.

    A fine-tuner's config may ask for two extras: ``line_search_batch="fresh"`` (``search_fn``
    on an independent batch) and ``curvature_fraction < 1`` (``curvature_fn`` on the first
    points of the batch). Fine-tuners need a fixed function of the parameters per batch: with
    a Hutchinson estimator the probe stream is rewound before every evaluation, and per-point
    Jacobians (random draws inside vmap) are not offered, so they use CG.
    """
    work_dtype = getattr(torch, cfg.dtype) if cfg.dtype else None
    probe_stream = getattr(residual.estimator, "generator", None)
    fresh_search = getattr(cfg, "line_search_batch", "same") == "fresh"
    curvature_points = max(1, round(getattr(cfg, "curvature_fraction", 1.0) * n))

    def batch():
        x, t = sampler(n)
        if work_dtype is not None:
            x, t = x.to(work_dtype), t.to(work_dtype)
        return x, t

    def make(step: int):
        sampler.update(step)
        x, t = batch()
        probe_state = probe_stream.get_state() if probe_stream is not None else None

        def on(x: Tensor, t: Tensor):
            def residual_fn(params):
                if probe_state is not None:
                    probe_stream.set_state(probe_state)
                return functional_call(residual, params, (x, t), tie_weights=False)

            return residual_fn

        def jacobian_fn(params):
            return per_point_jacobian(residual, params, x, t)

        exact = isinstance(residual.estimator, Exact)
        search_fn = on(*batch()) if fresh_search else None
        curvature_fn = (
            on(x[:curvature_points], t[:curvature_points]) if curvature_points < n else None
        )
        jacobian = jacobian_fn if residual.pointwise and exact else None
        return on(x, t), jacobian, search_fn, curvature_fn

    return make
