"""The first-order phase: Adam with exponential learning-rate decay, gradient clipping, a
NaN/Inf guard, checkpoints and a progress bar. It knows nothing about the residual it trains."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pdesampler.checks import (
    FRACTION,
    LOSS_FORM,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    POSITIVE_OR_NONE,
    UNIT_POWER_OR_NONE,
    check_config,
)
from pdesampler.optim.gauss_newton import StepHook

__all__ = ["AdamConfig", "AdamResult", "NonFiniteLossError", "run_adam", "temper_power"]


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses or gradients too many times in a row."""


@dataclass
class AdamConfig:
    """Settings of the Adam phase.

    The learning rate decays exponentially from ``lr`` to ``lr_final``,
    :math:`\\eta_k = \\eta_0 (\\eta_{final}/\\eta_0)^{p_k}`, where the progress :math:`p_k` is
    ``step / steps``, or the larger of that and ``elapsed / max_seconds`` under a wall-clock
    budget (so a time-limited run still anneals; it is then no longer bit-reproducible).
    ``loss_form`` is the objective :func:`pdesampler.train` hands this phase: ``"squares"`` or
    Máté & Fleuret's ``"abs_and_squares"`` (:meth:`pdesampler.losses.base.Residual.loss`); a
    Gauss-Newton phase after it always fits the squares. ``temper_from`` (``None``: off) tempers
    the target early: :func:`pdesampler.train` trains on :math:`\\rho^{\\beta}` with
    :math:`\\beta` rising linearly from ``temper_from`` to 1 over the first ``temper_until`` of
    the progress :math:`p_k` (:func:`temper_power`), so that wells start shallow.
    """

    steps: int = 2000
    lr: float = 5e-3
    lr_final: float = 1e-4
    clip: float | None = 1.0
    max_seconds: float | None = None
    checkpoint_every: int = 500
    nan_patience: int = 20
    log_every: int = 10
    loss_form: str = "squares"
    temper_from: float | None = None
    temper_until: float = 0.5

    def __post_init__(self) -> None:
        check_config(vars(self), ADAM_RULES)


@dataclass
class AdamResult:
    """History of the Adam phase: one row per ``log_every`` steps. ``first_step_seconds`` is
    the time to the first applied step (with a compiled loss, its compilation)."""

    steps: int = 0
    seconds: float = 0.0
    skipped: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    first_step_seconds: float | None = None

    @property
    def seconds_per_step(self) -> float:
        """Seconds per step after the first: ``(seconds - first_step_seconds) / (steps - 1)``
        (all the time over the steps when there are fewer than two)."""
        if self.steps < 2 or self.first_step_seconds is None:
            return self.seconds / max(self.steps, 1)
        return (self.seconds - self.first_step_seconds) / (self.steps - 1)


ADAM_RULES = {
    "steps": NON_NEGATIVE_INT,
    "lr": POSITIVE,
    "lr_final": POSITIVE,
    "clip": POSITIVE_OR_NONE,
    "max_seconds": POSITIVE_OR_NONE,
    "checkpoint_every": NON_NEGATIVE_INT,
    "nan_patience": POSITIVE_INT,
    "log_every": POSITIVE_INT,
    "loss_form": LOSS_FORM,
    "temper_from": UNIT_POWER_OR_NONE,
    "temper_until": FRACTION,
}

LossFn = Callable[[int], tuple[Tensor, dict[str, Tensor]]]


def _progress(cfg: AdamConfig, step: int, elapsed: float) -> float:
    p = step / max(cfg.steps, 1)
    if cfg.max_seconds:
        p = max(p, elapsed / cfg.max_seconds)
    return min(p, 1.0)


def temper_power(cfg: AdamConfig, progress: float) -> float:
    """The power :math:`\\beta` of the tempered target at progress ``p`` of the Adam phase:
    :math:`\\beta = \\beta_0 + (1 - \\beta_0) \\min(1, p / p_1)` with ``temper_from`` =
    :math:`\\beta_0` and ``temper_until`` = :math:`p_1`; 1 when tempering is off."""
    if cfg.temper_from is None:
        return 1.0
    ramp = min(1.0, progress / cfg.temper_until) if cfg.temper_until > 0 else 1.0
    return cfg.temper_from + (1.0 - cfg.temper_from) * ramp


def _finite_grads(params: list[nn.Parameter]) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)


def run_adam(
    model: nn.Module,
    loss_fn: LossFn,
    cfg: AdamConfig,
    *,
    checkpoint: Path | None = None,
    state: dict | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[], dict] | None = None,
    on_step: StepHook | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> AdamResult:
    """Minimize ``loss_fn(step)`` over ``model``'s parameters.

    Args:
        model: the module whose parameters are trained.
        loss_fn: ``step -> (loss, parts)``; draws its own collocation batch.
        cfg: the settings.
        checkpoint: where to save ``{model, optimizer, result, extra}`` every
            ``cfg.checkpoint_every`` steps (and at the end).
        state: a checkpoint dictionary to resume from.
        progress: show a tqdm bar with the loss and the learning rate.
        on_checkpoint: returns extra state (e.g. random generators) to store in checkpoints.
        on_step: called after every applied step with ``(steps, elapsed seconds, parameters)``
            (for example to snapshot the model along the way; keep it cheap, its time counts).
        on_progress: called before every step with the progress in ``[0, 1]`` that sets the
            learning rate (for schedules of one's own, such as the tempered target's power).

    A non-finite loss or gradient skips the step; ``cfg.nan_patience`` consecutive skips raise
    :class:`NonFiniteLossError`.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    result = AdamResult()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        result = AdamResult(**state["result"])
    log_ratio = math.log(cfg.lr_final / cfg.lr)
    bad_in_a_row = 0
    start = time.perf_counter() - result.seconds
    bar = tqdm(
        total=cfg.steps, initial=result.steps, disable=not progress, desc="adam", leave=False
    )

    def save() -> None:
        if checkpoint is not None:
            result.seconds = time.perf_counter() - start
            extra = on_checkpoint() if on_checkpoint else {}
            payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            payload.update(result=vars(result), extra=extra)
            tmp = checkpoint.with_suffix(".tmp")
            torch.save(payload, tmp)
            tmp.replace(checkpoint)

    while result.steps < cfg.steps:
        elapsed = time.perf_counter() - start
        if cfg.max_seconds is not None and elapsed >= cfg.max_seconds:
            break
        progress_now = _progress(cfg, result.steps, elapsed)
        lr = cfg.lr * math.exp(log_ratio * progress_now)
        if on_progress is not None:
            on_progress(progress_now)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss, parts = loss_fn(result.steps)
        finite = bool(torch.isfinite(loss))
        if finite:
            loss.backward()
            finite = _finite_grads(params)
        if not finite:
            result.skipped += 1
            bad_in_a_row += 1
            if bad_in_a_row >= cfg.nan_patience:
                raise NonFiniteLossError(
                    f"{bad_in_a_row} consecutive non-finite losses/gradients at Adam step "
                    f"{result.steps}; lower optim.adam.lr, tighten the collocation box or clip"
                )
            continue
        bad_in_a_row = 0
        if cfg.clip:
            nn.utils.clip_grad_norm_(params, cfg.clip)
        optimizer.step()
        result.steps += 1
        if result.steps == 1:
            result.first_step_seconds = time.perf_counter() - start
        bar.update(1)
        if result.steps % cfg.log_every == 0 or result.steps == cfg.steps:
            row = {"step": result.steps, "loss": float(loss.detach()), "lr": lr}
            row.update({k: float(v) for k, v in parts.items()})
            row["seconds"] = time.perf_counter() - start
            result.history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3e}", lr=f"{lr:.1e}")
        if on_step is not None:
            on_step(result.steps, time.perf_counter() - start, dict(model.named_parameters()))
        if cfg.checkpoint_every and result.steps % cfg.checkpoint_every == 0:
            save()
    bar.close()
    result.seconds = time.perf_counter() - start
    save()
    return result
