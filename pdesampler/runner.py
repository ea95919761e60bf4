"""One run from a resolved Hydra config: build, train, evaluate, save.

A run directory holds ``.hydra/`` (written by Hydra), ``checkpoint.pt`` while training,
``model.pt``, ``metrics.json`` (written last and atomically, so its presence means the run is
complete) and ``figures/``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pdesampler.checks import check_config
from pdesampler.evaluate import Evaluation, evaluate
from pdesampler.launch import run_lock
from pdesampler.losses.base import Residual
from pdesampler.losses.trajectory import TrajectoryLoss
from pdesampler.losses.validate import validate_target
from pdesampler.ops import Exact, Hutchinson, TraceEstimator
from pdesampler.optim import StepHook
from pdesampler.plots import plot_marginals, plot_samples_2d, plot_trajectories
from pdesampler.train import CHECKPOINT, TrainResult, train

__all__ = [
    "METRICS_FILE",
    "REQUIRED_METRICS",
    "evaluate_run",
    "is_complete",
    "resolve_device",
    "resolve_dtype",
    "run_experiment",
    "train_run",
]

METRICS_FILE = "metrics.json"
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


def build(cfg: DictConfig, device: torch.device, dtype: torch.dtype) -> Residual | TrajectoryLoss:
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
    if not isinstance(residual, Residual | TrajectoryLoss):
        raise TypeError(
            f"loss._target_ built a {type(residual).__name__}, not a pdesampler Residual "
            "or TrajectoryLoss"
        )
    return residual.to(device=device, dtype=dtype)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_text(path: Path, text: str) -> None:
    """Write atomically: a temporary file of this process, then a rename, so that readers and
    concurrent writers (two suites collecting one results directory) never see half a file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (:func:`write_text`); NaN and Inf become ``null``."""
    write_text(path, json.dumps(_clean(data), indent=2, default=str))


def collocation_settings(
    collocation: dict[str, Any],
    residual: Residual | TrajectoryLoss,
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


def run_collocation(cfg: DictConfig, residual: Residual | TrajectoryLoss) -> tuple[str, dict]:
    """:func:`collocation_settings` of a composed run config, against its problem's preset."""
    collocation = OmegaConf.to_container(cfg.collocation, resolve=True)
    preset = cfg.get("problem", {}).get("collocation")
    preset = None if preset is None else OmegaConf.to_container(preset, resolve=True)
    return collocation_settings(collocation, residual, preset)


def train_run(
    cfg: DictConfig,
    residual: Residual | TrajectoryLoss,
    checkpoint_dir: str | Path | None = None,
    on_step: StepHook | None = None,
) -> TrainResult:
    """Train ``residual`` as ``cfg`` says (``cfg.optim``, the collocation, batch, seed); the
    ``train`` call of :func:`run_experiment`, for benchmarks that watch a run (``on_step``)."""
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    gn = optim.pop("gn", None)
    preset_gn = OmegaConf.select(cfg, "problem.finetune")
    if isinstance(preset_gn, DictConfig):
        preset_gn = OmegaConf.to_container(preset_gn, resolve=True)
    if isinstance(residual, TrajectoryLoss) and gn is not None and gn == preset_gn:
        gn = None  # the problem's fine-tuner is for PDE residuals; a trajectory baseline keeps Adam
    max_seconds = optim.pop("max_seconds", None)
    gn_time_fraction = gn.pop("time_fraction", 0.5) if gn else 0.5
    gn_batch_size = gn.pop("batch_size", None) if gn else None
    compile_loss = optim.pop("compile", "auto")
    kind, options = run_collocation(cfg, residual)
    return train(
        residual,
        adam=optim,
        gn=gn,
        batch_size=int(cfg.batch_size),
        collocation=kind,
        collocation_options=options,
        seed=int(cfg.seed),
        max_seconds=max_seconds,
        gn_time_fraction=gn_time_fraction,
        gn_batch_size=gn_batch_size,
        checkpoint_dir=checkpoint_dir,
        progress=bool(cfg.progress),
        on_step=on_step,
        compile=compile_loss,
    )


def evaluate_run(
    cfg: DictConfig,
    residual: Residual | TrajectoryLoss,
    n_samples: int | None = None,
    nll: bool | None = None,
    figures: bool = False,
) -> Evaluation:
    """Evaluate ``residual`` with ``cfg.sampler`` and ``cfg.eval``; ``n_samples`` and ``nll``
    override the config's (a benchmark scoring snapshots uses fewer samples). Samples that blow
    up get finer grids within ``cfg.sampler.refine_budget`` grid solves of the batch."""
    sampler_cfg, eval_cfg = cfg.sampler, cfg.eval
    return evaluate(
        residual,
        n_samples=int(eval_cfg.n_samples if n_samples is None else n_samples),
        seed=int(cfg.seed) + 1,
        method=str(sampler_cfg.method),
        steps=int(sampler_cfg.steps),
        sde_steps=int(sampler_cfg.sde_steps),
        batch_size=int(sampler_cfg.batch_size),
        trace=str(sampler_cfg.trace),
        sinkhorn_blur=float(eval_cfg.sinkhorn_blur),
        sinkhorn_max_samples=int(eval_cfg.sinkhorn_max_samples),
        energy_batch=int(eval_cfg.energy_batch),
        nll=bool(eval_cfg.nll if nll is None else nll),
        n_nll=int(eval_cfg.n_nll),
        n_saved=min(101, sampler_cfg.steps + 1, sampler_cfg.sde_steps + 1) if figures else 0,
        max_seconds=eval_cfg.get("max_seconds"),
        refine_budget=int(sampler_cfg.refine_budget),
    )


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
    keep = {"samples": report.output.samples[:5000].float().cpu()}
    if report.reference is not None:
        keep["reference"] = report.reference[:5000].float()
    torch.save(keep, out / "samples.pt")
    if eval_cfg.figures:
        _figures(out / "figures", report, metrics, residual.target)
    write_json(out / "history.json", {"adam": result.adam.history, "gn": result.gn_history})
    write_json(out / METRICS_FILE, metrics)
    return metrics


def density_2d(target) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``log_prob`` of a 2-D target for contour plots (float64 CPU points in and out); ``None``
    when ``d != 2`` (the figures then draw the pairwise marginal of exact samples)."""
    if target.dim != 2:
        return None
    ref = next(iter(target.buffers()), None) if isinstance(target, torch.nn.Module) else None
    device, dtype = (ref.device, ref.dtype) if ref is not None else ("cpu", torch.float64)
    return lambda x: target.log_prob(x.to(device, dtype)).detach().double().cpu()


def _figures(folder: Path, report, metrics: dict, target) -> None:
    method = metrics["loss_name"].rsplit(".", 1)[-1]
    title = f"{method}: ESS {metrics['ess']:.3f}"
    plot_marginals(report.output.samples, report.reference, folder / "marginals.png", title=title)
    if target.dim >= 2:
        plot_samples_2d(
            {method: report.output.samples},
            folder / "samples_2d.png",
            log_prob=density_2d(target),
            reference=report.reference,
            title=title,
        )
    if report.output.trajectory is not None:
        plot_trajectories(
            report.output.trajectory, report.output.times, folder / "trajectories.png", title=title
        )
