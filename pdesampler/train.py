"""Training: an Adam phase, then an optional second-order fine-tuner, on any :class:`Trainable`.

Both phases see the loss only through its interface: Adam minimizes
:meth:`Trainable.training_loss` on :meth:`Trainable.training_batches` (collocation points for a
residual, simulated paths for a trajectory baseline), and a fine-tuner (Gauss-Newton, SPRING)
linearizes a residual's stacked vector :meth:`Residual.forward` through
``torch.func.functional_call`` (:meth:`Trainable.finetune_batches`). A :class:`Checkpoint` lets
an interrupted run resume.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from pdesampler.checkpoint import CHECKPOINT, Checkpoint
from pdesampler.checks import FRACTION, POSITIVE_INT, POSITIVE_OR_NONE, check
from pdesampler.collocation import CollocationSampler
from pdesampler.compiling import CompiledOrEager, should_compile
from pdesampler.losses.base import Trainable, TrainingBatches
from pdesampler.optim import (
    FinetuneConfig,
    StepHook,
    build_config,
    finetune_config,
    run_finetuner,
    step_limit,
)
from pdesampler.optim.adam import (
    DEFAULT_STEPS,
    AdamConfig,
    AdamResult,
    NonFiniteLossError,
    run_adam,
    temper_power,
)

__all__ = ["CHECKPOINT", "TrainResult", "collocation_loss", "train"]


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


def collocation_loss(residual: Trainable, sampler: TrainingBatches, n: int) -> float:
    """The loss on one fresh training batch of size ``n`` (the 'loss' column of the results)."""
    value, _ = residual.training_loss(sampler(n))
    return float(value.detach())


def train(
    residual: Trainable,
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
    """Train ``residual`` in place: Adam, then a second-order fine-tuner if ``gn`` is given (a
    trajectory baseline refuses one), resuming from ``checkpoint_dir``.

    Args:
        residual: any :class:`Trainable` (its parameters' dtype and device are used).
        adam: :class:`AdamConfig` or a mapping of its fields (``steps=0`` skips Adam).
        gn: the fine-tuning phase (``None``: none): a :class:`SpringConfig`, a
            :class:`GaussNewtonConfig`, or a mapping of its fields with ``method`` naming it
            (``"spring"``, the default, or ``"gauss_newton"``; :func:`finetune_config`).
        batch_size: collocation points (or paths) per Adam step.
        collocation, collocation_options: a sampler, or a kind for :func:`make_collocation`
            (``"default"``: the residual's own choice) and its keyword arguments.
        seed: seeds the stream of training batches.
        max_seconds: wall-clock budget of the whole training; GN gets ``gn_time_fraction``.
        gn_batch_size: collocation points per GN step (default ``batch_size``).
        checkpoint_dir: where ``checkpoint.pt`` is written and resumed from.
        progress: tqdm bars.
        validate: first run the loss on a few points (:meth:`Trainable.validate_training`).
        on_step: ``(steps, elapsed seconds, parameters)`` after every step of each phase
            (steps and seconds count from the start of that phase).
        compile: evaluate the Adam phase's loss through ``torch.compile`` (``"auto"``: on CPU
            for a long enough phase; :func:`should_compile`); one that does not compile runs
            eagerly, with a warning.
    """
    sizes = (batch_size, gn_batch_size)
    adam_cfg, gn_cfg = _configs(residual, adam, gn, sizes, max_seconds, gn_time_fraction)
    if validate:
        residual.validate_training(gn_cfg)
    generator = torch.Generator().manual_seed(seed)
    batches = residual.training_batches(collocation, generator, collocation_options)
    checkpoint = Checkpoint(checkpoint_dir, batches.generator)
    if checkpoint.phase == "done":
        return _restored(residual, checkpoint)
    hooks = {"progress": progress, "on_step": on_step}
    adam_result = _adam_phase(residual, batches, adam_cfg, batch_size, checkpoint, compile, **hooks)
    result = TrainResult(adam_result)
    if gn_cfg is not None and gn_cfg.steps != 0:
        finetune = residual.finetune_batches(batches, gn_batch_size or batch_size, gn_cfg)
        _finetune_phase(result, residual, gn_cfg, finetune, **hooks)
    result.final_loss = collocation_loss(residual, batches, batch_size)
    done = {"gn_history": result.gn_history, "gn_seconds": result.gn_seconds}
    checkpoint.save(residual, asdict(result.adam), "done", **done, final_loss=result.final_loss)
    return result


def _configs(
    loss: Trainable,
    adam: AdamConfig | Mapping | None,
    gn: FinetuneConfig | Mapping | None,
    sizes: tuple[int, int | None],
    max_seconds: float | None,
    gn_time_fraction: float,
) -> tuple[AdamConfig, FinetuneConfig | None]:
    """The checked phase configs, the fine-tuner ``None`` where none runs, with the time budget
    ``max_seconds`` split: the fine-tuner's share is ``gn_time_fraction``. ``sizes`` are the
    batch sizes of the two phases."""
    batch_size, gn_batch_size = sizes
    check("batch_size", batch_size, POSITIVE_INT)
    check("max_seconds", max_seconds, POSITIVE_OR_NONE)
    check("gn_time_fraction", gn_time_fraction, FRACTION)
    if gn_batch_size is not None:
        check("gn_batch_size", gn_batch_size, POSITIVE_INT)
    adam_cfg = build_config(AdamConfig, adam) or AdamConfig()
    gn_cfg = loss.check_training(adam_cfg, finetune_config(gn))
    if max_seconds is not None:
        share = gn_time_fraction if gn_cfg is not None else 0.0
        adam_cfg.max_seconds = max_seconds * (1 - share)
        if gn_cfg is not None:
            gn_cfg.max_seconds = max_seconds * share
    return adam_cfg, gn_cfg


def _restored(loss: Trainable, checkpoint: Checkpoint) -> TrainResult:
    """The result of a finished run, its weights loaded into ``loss``."""
    result, extra = checkpoint.restore(loss)
    gn_history, gn_seconds = extra.get("gn_history", []), extra.get("gn_seconds", 0.0)
    return TrainResult(AdamResult(**result), gn_history, gn_seconds, extra["final_loss"])


def _adam_phase(
    loss: Trainable,
    batches: TrainingBatches,
    cfg: AdamConfig,
    batch_size: int,
    checkpoint: Checkpoint,
    compile: bool | str,
    *,
    progress: bool,
    on_step: StepHook | None,
) -> AdamResult:
    """Adam on :meth:`Trainable.training_loss` with a fresh batch of ``batch_size`` per step,
    checkpointed; a non-finite loss says what in the last batch may be the cause."""
    objective = partial(loss.training_loss, form=cfg.loss_form)
    steps = step_limit(cfg.steps, cfg.max_seconds, DEFAULT_STEPS)
    device = next(loss.parameters()).device
    if loss.compilable and should_compile(compile, device, steps, cfg.max_seconds, loss.dim):
        objective = CompiledOrEager(objective, f"{type(loss).__name__}.loss")
    last_batch: list = []

    def loss_fn(step: int):
        batches.update(step)
        last_batch[:] = [batches(batch_size)]
        return objective(last_batch[0])

    loss.train()
    set_power = _tempering(loss, cfg)
    try:
        return run_adam(
            loss,
            loss_fn,
            cfg,
            checkpoint=checkpoint.path,
            state=checkpoint.state,
            progress=progress,
            on_checkpoint=checkpoint.extra,
            on_step=on_step,
            on_progress=set_power,
        )
    except NonFiniteLossError as err:
        raise NonFiniteLossError(f"{err}{loss.non_finite_cause(last_batch[0])}") from err
    finally:
        if set_power is not None:  # the untempered target after Adam, however it ended
            set_power(1.0)


def _finetune_phase(
    result: TrainResult,
    loss: Trainable,
    cfg: FinetuneConfig,
    batches: Callable[[int], tuple],
    *,
    progress: bool,
    on_step: StepHook | None,
) -> None:
    """The fine-tuner ``cfg`` on the step batches of :meth:`Trainable.finetune_batches`; its
    history and seconds go to ``result``."""
    start = time.perf_counter()
    history = run_finetuner(cfg, loss, batches, progress=progress, on_step=on_step)
    result.gn_seconds = time.perf_counter() - start
    result.gn_history = [asdict(info) for info in history]


def _tempering(loss: Trainable, cfg: AdamConfig) -> Callable[[float], None] | None:
    """The hook that sets the tempered target's power from the Adam phase's progress
    (:func:`temper_power`), or ``None`` when ``temper_from`` is off."""
    if cfg.temper_from is None:
        return None

    def set_power(progress: float) -> None:
        loss.set_target_power(temper_power(cfg, progress))

    return set_power
