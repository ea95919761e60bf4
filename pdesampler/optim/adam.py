"""The first-order phase: Adam with a learning-rate schedule, gradient clipping, a NaN/Inf
guard, checkpoints and a progress bar. It knows nothing about the residual it trains."""

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
    NON_NEGATIVE_INT_OR_NONE,
    POSITIVE,
    POSITIVE_INT,
    POSITIVE_OR_NONE,
    UNIT_POWER_OR_NONE,
    Rule,
    check_fields,
)
from pdesampler.optim.finetuner import StepHook, step_limit

__all__ = [
    "DEFAULT_STEPS",
    "SCHEDULES",
    "AdamConfig",
    "AdamResult",
    "NonFiniteLossError",
    "learning_rate",
    "run_adam",
    "temper_power",
]

#: Adam steps when neither ``steps`` nor a wall-clock budget is given.
DEFAULT_STEPS = 2000
#: The learning-rate schedules of :func:`learning_rate`.
SCHEDULES = ("exponential", "cosine", "warmup_cosine", "wsd", "constant")


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses or gradients too many times in a row."""


@dataclass
class AdamConfig:
    r"""Settings of the Adam phase.

    The learning rate follows ``schedule`` (:func:`learning_rate`) from ``lr`` towards
    ``lr_final`` over the progress :math:`p \in [0, 1]`: ``step / steps``, the share
    ``elapsed / max_seconds`` of a wall-clock budget, or the larger of the two when both are
    set (a time-limited run then anneals on time and is no longer bit-reproducible).
    ``steps=None`` means no step cap under a budget and :data:`DEFAULT_STEPS` without one.
    ``loss_form`` is the objective :func:`pdesampler.train` hands this phase: ``"squares"`` or
    Máté & Fleuret's ``"abs_and_squares"`` (:meth:`pdesampler.losses.base.Residual.loss`); a
    Gauss-Newton phase after it always fits the squares. ``temper_from`` (``None``: off) tempers
    the target early: :func:`pdesampler.train` trains on :math:`\rho^{\beta}` with
    :math:`\beta` rising linearly from ``temper_from`` to 1 over the first ``temper_until`` of
    the progress :math:`p` (:func:`temper_power`), so that wells start shallow.
    """

    steps: int | None = None
    lr: float = 5e-3
    lr_final: float = 1e-4
    schedule: str = "exponential"
    warmup: float = 0.0
    decay: float = 0.2
    clip: float | None = 1.0
    max_seconds: float | None = None
    checkpoint_every: int = 500
    nan_patience: int = 20
    log_every: int = 10
    loss_form: str = "squares"
    temper_from: float | None = None
    temper_until: float = 0.5

    def __post_init__(self) -> None:
        check_fields(self, ADAM_RULES)


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


SCHEDULE: Rule = (" | ".join(SCHEDULES), lambda v: v in SCHEDULES)

ADAM_RULES = {
    "steps": NON_NEGATIVE_INT_OR_NONE,
    "lr": POSITIVE,
    "lr_final": POSITIVE,
    "schedule": SCHEDULE,
    "warmup": FRACTION,
    "decay": FRACTION,
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
    limit = step_limit(cfg.steps, cfg.max_seconds, DEFAULT_STEPS)
    p = step / max(limit, 1)
    if cfg.max_seconds:
        p = max(p, elapsed / cfg.max_seconds)
    return min(p, 1.0)


def learning_rate(cfg: AdamConfig, progress: float) -> float:
    r"""The learning rate at progress :math:`p \in [0, 1]` of the Adam phase, from
    :math:`\eta_0` = ``lr`` to :math:`\eta_1` = ``lr_final``:

    * ``exponential``: :math:`\eta_0 (\eta_1 / \eta_0)^{p}`;
    * ``cosine``: :math:`\eta_1 + (\eta_0 - \eta_1)(1 + \cos \pi p) / 2`;
    * ``warmup_cosine``: linear from :math:`\eta_1` to :math:`\eta_0` over the first
      :math:`w` = ``warmup`` of the progress, then the cosine over :math:`(p - w) / (1 - w)`;
    * ``wsd`` (warm-up, stable, decay): the same warm-up, :math:`\eta_0` until
      :math:`1 - \delta` (:math:`\delta` = ``decay``), then exponential decay to
      :math:`\eta_1` over :math:`(p - 1 + \delta) / \delta`;
    * ``constant``: :math:`\eta_0`.

    ``warmup`` also prefixes a linear warm-up to ``exponential`` and ``cosine`` when it is > 0.
    """
    lr0, lr1, p = cfg.lr, cfg.lr_final, min(max(progress, 0.0), 1.0)
    w = cfg.warmup
    if cfg.schedule == "constant":
        return lr0
    if w > 0 and p < w:
        return lr1 + (lr0 - lr1) * p / w
    if cfg.schedule == "wsd":
        start = max(1.0 - cfg.decay, w)
        q = (p - start) / max(1.0 - start, 1e-12) if p > start else 0.0
        return lr0 * (lr1 / lr0) ** q
    q = (p - w) / (1.0 - w) if w < 1 else 1.0
    if cfg.schedule == "exponential":
        return lr0 * (lr1 / lr0) ** q
    return lr1 + (lr0 - lr1) * 0.5 * (1.0 + math.cos(math.pi * q))


def temper_power(cfg: AdamConfig, progress: float) -> float:
    r"""The power :math:`\beta` of the tempered target at progress ``p`` of the Adam phase:
    :math:`\beta = \beta_0 + (1 - \beta_0) \min(1, p / p_1)` with ``temper_from`` =
    :math:`\beta_0` and ``temper_until`` = :math:`p_1`; 1 when tempering is off."""
    if cfg.temper_from is None:
        return 1.0
    ramp = min(1.0, progress / cfg.temper_until) if cfg.temper_until > 0 else 1.0
    return cfg.temper_from + (1.0 - cfg.temper_from) * ramp


def _finite_grads(params: list[nn.Parameter]) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)


class _AdamPhase:
    """One run of the Adam phase: the optimizer, the result so far (resumed from a checkpoint
    ``state``), the clock, the progress bar and the NaN guard."""

    def __init__(self, model: nn.Module, cfg: AdamConfig, state: dict | None, progress: bool):
        self.model, self.cfg = model, cfg
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr)
        self.result = AdamResult()
        if state is not None:
            model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.result = AdamResult(**state["result"])
        self.limit = step_limit(cfg.steps, cfg.max_seconds, DEFAULT_STEPS)
        self.bad_in_a_row = 0
        self.start = time.perf_counter() - self.result.seconds
        self.bar = tqdm(
            total=None if math.isinf(self.limit) else self.limit,
            initial=self.result.steps,
            disable=not progress,
            desc="adam",
            leave=False,
        )

    def elapsed(self) -> float:
        """Seconds of the phase, those before a resume included."""
        return time.perf_counter() - self.start

    def step(self, loss_fn: LossFn, lr: float) -> tuple[Tensor, dict[str, Tensor]] | None:
        """One Adam step at learning rate ``lr`` on ``loss_fn``'s loss, its gradient clipped to
        ``cfg.clip``; ``(loss, parts)``, or ``None`` when the loss or a gradient is not finite
        and the step is skipped (``cfg.nan_patience`` skips in a row raise
        :class:`NonFiniteLossError`)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss, parts = loss_fn(self.result.steps)
        finite = bool(torch.isfinite(loss))
        if finite:
            loss.backward()
            finite = _finite_grads(self.params)
        if not finite:
            self.result.skipped += 1
            self.bad_in_a_row += 1
            if self.bad_in_a_row >= self.cfg.nan_patience:
                raise NonFiniteLossError(
                    f"{self.bad_in_a_row} consecutive non-finite losses/gradients at Adam step "
                    f"{self.result.steps}; lower optim.lr, tighten the collocation box or clip"
                )
            return None
        self.bad_in_a_row = 0
        if self.cfg.clip:
            nn.utils.clip_grad_norm_(self.params, self.cfg.clip)
        self.optimizer.step()
        return loss, parts

    def record(self, loss: Tensor, parts: dict[str, Tensor], lr: float) -> None:
        """Count an applied step; every ``cfg.log_every`` steps and at the last, a history row."""
        result = self.result
        result.steps += 1
        if result.steps == 1:
            result.first_step_seconds = self.elapsed()
        self.bar.update(1)
        if result.steps % self.cfg.log_every == 0 or result.steps == self.limit:
            row = {"step": result.steps, "loss": float(loss.detach()), "lr": lr}
            row.update({k: float(v) for k, v in parts.items()})
            row["seconds"] = self.elapsed()
            result.history.append(row)
            self.bar.set_postfix(loss=f"{row['loss']:.3e}", lr=f"{lr:.1e}")

    def save(self, checkpoint: Path | None, on_checkpoint: Callable[[], dict] | None) -> None:
        """Write ``{model, optimizer, result, extra}`` to ``checkpoint`` (if any), atomically."""
        if checkpoint is None:
            return
        self.result.seconds = self.elapsed()
        extra = on_checkpoint() if on_checkpoint else {}
        payload = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        payload.update(result=vars(self.result), extra=extra)
        tmp = checkpoint.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(checkpoint)


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
    run = _AdamPhase(model, cfg, state, progress)
    result = run.result
    while result.steps < run.limit:
        elapsed = run.elapsed()
        if cfg.max_seconds is not None and elapsed >= cfg.max_seconds:
            break
        progress_now = _progress(cfg, result.steps, elapsed)
        lr = learning_rate(cfg, progress_now)
        if on_progress is not None:
            on_progress(progress_now)
        applied = run.step(loss_fn, lr)
        if applied is None:
            continue
        run.record(*applied, lr)
        if on_step is not None:
            on_step(result.steps, run.elapsed(), dict(model.named_parameters()))
        if cfg.checkpoint_every and result.steps % cfg.checkpoint_every == 0:
            run.save(checkpoint, on_checkpoint)
    run.bar.close()
    result.seconds = run.elapsed()
    run.save(checkpoint, on_checkpoint)
    return result
