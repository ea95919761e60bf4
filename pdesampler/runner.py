"""One run from a resolved Hydra config: build, train, evaluate, save.

A run directory holds ``.hydra/`` (written by Hydra), ``checkpoint.pt`` while training,
``model.pt``, ``metrics.json`` (written last and atomically, so its presence means the run is
complete) and ``figures/``.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pdesampler.checks import check_config
from pdesampler.evaluate import Evaluation, evaluate
from pdesampler.launch import run_lock
from pdesampler.losses.base import Trainable
from pdesampler.losses.validate import validate_target
from pdesampler.ops import Exact, Hutchinson, TraceEstimator
from pdesampler.optim import StepHook
from pdesampler.report import METRICS_FILE, write_run_outputs
from pdesampler.train import CHECKPOINT, TrainResult, train

__all__ = [
    "METRICS_FILE",
    "REQUIRED_METRICS",
    "config_kwargs",
    "evaluate_run",
    "is_complete",
    "resolve_device",
    "resolve_dtype",
    "run_experiment",
    "train_run",
]

REQUIRED_METRICS = (
    "loss", "log_Z_ref", "log_Z_lb", "log_Z_is", "log_z_learned", "dlogZ", "w2", "ess", "dstd",
    "energy_distance", "nll", "sec_per_it", "train_seconds", "steps", "n_eval",
)  # fmt: skip


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available; use device=cpu")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    """The torch dtype of a run's ``dtype`` key (``float32`` or ``float64``)."""
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dtypes[dtype]


def auto_chunk_size(dim: int, width: int, device: torch.device) -> int | None:
    """Points per vmap chunk. On CPU, chunks whose forward-mode tangents ``(chunk, d, width)``
    stay near 2^20 elements keep the work in cache (1.5-2.5x faster at d = 50, measured in
    ``benchmarks/bench_ops.py``); on CUDA one large batch is best."""
    if device.type != "cpu":
        return None
    return max(64, 2**20 // max(dim * width, 1))


def make_estimator(cfg: DictConfig, seed: int) -> TraceEstimator:
    if cfg.kind == "exact":
        return Exact()
    if cfg.kind == "hutchinson":
        gen = torch.Generator().manual_seed(seed + 17)
        return Hutchinson(int(cfg.n_probes), str(cfg.distribution), gen)
    raise ValueError(f"unknown trace kind {cfg.kind!r}; available: exact, hutchinson")


def is_complete(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a complete ``metrics.json``."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return False
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return all(key in data for key in REQUIRED_METRICS)


def build(cfg: DictConfig, device: torch.device, dtype: torch.dtype) -> Trainable:
    """The target and the residual of a config, on ``device`` in ``dtype``."""
    torch.manual_seed(int(cfg.seed))
    target = instantiate(cfg.target)
    validate_target(target)  # dim, box, log_prob finite on the box; log_Z, stddevs, sample optional
    chunk = cfg.chunk_size
    if chunk == "auto":
        chunk = auto_chunk_size(target.dim, int(cfg.net.width), device)
    estimator = make_estimator(cfg.trace, int(cfg.seed))
    # _partial_: Hydra would turn the estimator (a dataclass) passed to instantiate into a config
    residual = instantiate(cfg.loss, _partial_=True)(
        target=target, estimator=estimator, chunk_size=chunk
    )
    if not isinstance(residual, Trainable):
        raise TypeError(
            f"loss._target_ built a {type(residual).__name__}, not a pdesampler Trainable "
            "(a Residual or a TrajectoryLoss)"
        )
    return residual.to(device=device, dtype=dtype)


def collocation_settings(
    collocation: dict[str, Any],
    residual: Trainable,
    preset: dict[str, Any] | None = None,
) -> tuple[str, dict]:
    """The collocation kind and options of a run. With ``keep_loss_sampler`` (the problem's
    collocation, ``collocation=default``), a loss with a sampler of its own (linear / learned:
    trajectory, gradflow: ou) keeps it; the problem's kind and options replace only the box of
    Sun et al. eq. (63). ``preset`` is the problem's collocation: a kind that differs from it (say
    ``collocation.kind=trajectory_cache``) is the user's and is used as given, and options that
    differ from it (``collocation.options={spread:1.5}``) go to the loss's own sampler."""
    box_width = {"prior_box_width": collocation["prior_box_width"]}
    # A trajectory baseline has no collocation (it simulates its own paths; train ignores it).
    own = getattr(residual, "default_collocation", "box")
    kind, options = str(collocation["kind"]), dict(collocation["options"] or {})
    keeps_own = collocation.get("keep_loss_sampler") and own != "box"
    if not keeps_own or (preset is not None and kind not in (preset["kind"], "default")):
        return kind, {**box_width, **options}
    chosen = preset is not None and options != dict(preset["options"] or {})
    return "default", {**box_width, **(options if chosen else {})}


def run_collocation(cfg: DictConfig, residual: Trainable) -> tuple[str, dict]:
    """:func:`collocation_settings` of a composed run config, against its problem's preset."""
    collocation = OmegaConf.to_container(cfg.collocation, resolve=True)
    preset = cfg.get("problem", {}).get("collocation")
    preset = None if preset is None else OmegaConf.to_container(preset, resolve=True)
    return collocation_settings(collocation, residual, preset)


def config_kwargs(fn: Callable, *sections: Mapping | DictConfig) -> dict[str, Any]:
    """The keys of ``sections`` that name parameters of ``fn``, as plain values (a later section
    wins): a config section that maps one to one onto ``fn``'s keyword arguments."""
    names = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {}
    for section in sections:
        if isinstance(section, DictConfig):
            section = OmegaConf.to_container(section, resolve=True)
        kwargs.update({k: v for k, v in section.items() if k in names})
    return kwargs


def train_run(
    cfg: DictConfig,
    residual: Trainable,
    checkpoint_dir: str | Path | None = None,
    on_step: StepHook | None = None,
) -> TrainResult:
    """Train ``residual`` as ``cfg`` says (``cfg.optim``, the collocation, batch, seed); the
    ``train`` call of :func:`run_experiment`, for benchmarks that watch a run (``on_step``).
    ``cfg.optim`` is Adam's config but for the keys that are :func:`train`'s own (``gn``,
    ``max_seconds``, ``compile``); ``gn.time_fraction`` and ``gn.batch_size`` are ``train``'s
    ``gn_time_fraction`` and ``gn_batch_size``."""
    adam = OmegaConf.to_container(cfg.optim, resolve=True)
    own = config_kwargs(train, adam)
    adam = {k: v for k, v in adam.items() if k not in own}
    gn = own.pop("gn", None)
    preset_gn = OmegaConf.select(cfg, "problem.finetune")
    if isinstance(preset_gn, DictConfig):
        preset_gn = OmegaConf.to_container(preset_gn, resolve=True)
    if not residual.least_squares and gn is not None and gn == preset_gn:
        gn = None  # the problem's fine-tuner is for PDE residuals; a trajectory baseline keeps Adam
    if gn:
        own["gn_time_fraction"] = gn.pop("time_fraction", 0.5)
        own["gn_batch_size"] = gn.pop("batch_size", None)
    kind, options = run_collocation(cfg, residual)
    return train(
        residual,
        adam=adam,
        gn=gn,
        batch_size=int(cfg.batch_size),
        collocation=kind,
        collocation_options=options,
        seed=int(cfg.seed),
        checkpoint_dir=checkpoint_dir,
        progress=bool(cfg.progress),
        on_step=on_step,
        **own,
    )


def evaluate_run(
    cfg: DictConfig,
    residual: Trainable,
    n_samples: int | None = None,
    nll: bool | None = None,
    figures: bool = False,
) -> Evaluation:
    """Evaluate ``residual`` with ``cfg.sampler`` and ``cfg.eval`` (their keys that are
    :func:`evaluate`'s arguments); ``n_samples`` and ``nll`` override the config's (a benchmark
    scoring snapshots uses fewer samples). Samples that blow up get finer grids within
    ``cfg.sampler.refine_budget`` grid solves of the batch."""
    sampler_cfg = cfg.sampler
    kwargs = config_kwargs(evaluate, sampler_cfg, cfg.eval)
    kwargs.update({k: v for k, v in {"n_samples": n_samples, "nll": nll}.items() if v is not None})
    saved = min(101, sampler_cfg.steps + 1, sampler_cfg.sde_steps + 1) if figures else 0
    return evaluate(residual, seed=int(cfg.seed) + 1, n_saved=saved, **kwargs)


def run_experiment(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """Train and evaluate the run described by ``cfg``, writing everything into ``out_dir``.

    A run whose ``metrics.json`` is complete is not redone; an interrupted run resumes from
    its ``checkpoint.pt``. The run holds ``out_dir``'s lock (:func:`launch.run_lock`) throughout,
    so a second process on the same directory fails at once with :class:`RunLockedError`.
    """
    check_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):
        return _run_locked(cfg, out)


def _run_locked(cfg: DictConfig, out: Path) -> dict[str, Any]:
    if is_complete(out):
        return json.loads((out / METRICS_FILE).read_text())
    if cfg.get("threads") is not None:
        torch.set_num_threads(int(cfg.threads))
    if (out / CHECKPOINT).exists():
        print(f"resuming from {out / CHECKPOINT}", flush=True)
    device = resolve_device(str(cfg.device))
    residual = build(cfg, device, resolve_dtype(str(cfg.dtype)))
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    result = train_run(cfg, residual, checkpoint_dir=out)
    torch.save(residual.state_dict(), out / "model.pt")
    eval_cfg = cfg.eval
    scoring = time.perf_counter()
    report = evaluate_run(cfg, residual, figures=bool(eval_cfg.figures))
    metrics = {
        **report.metrics,
        **result.summary(),
        "score_seconds": time.perf_counter() - scoring,
        "target": str(cfg.target._target_),
        "loss_name": str(cfg.loss._target_),
        "device": str(device),
        "seed": int(cfg.seed),
        "threads": torch.get_num_threads(),
    }
    write_run_outputs(out, report, result, metrics, residual.target, bool(eval_cfg.figures))
    return metrics
