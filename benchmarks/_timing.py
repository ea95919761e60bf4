"""Shared helpers of the benchmark scripts: warm-up plus median timing, environment, JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "add_common_args",
    "count_matmul_flops",
    "environment",
    "resolve_device",
    "setup",
    "time_call",
    "write_results",
    "write_run",
]

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


def add_common_args(parser: argparse.ArgumentParser, batch: int = 4096) -> None:
    """``--device``, ``--batch``, ``--repeats``, ``--warmup``, ``--quick``, ``--out``, ``--threads``."""
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    parser.add_argument("--batch", type=int, default=batch, help=f"points (default: {batch})")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke check only")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: results/)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: leave it)"
    )


def setup(args: argparse.Namespace) -> tuple[torch.device, dict[str, Any]]:
    """Apply ``--threads``, resolve ``--device``, print and return the environment."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    env = environment(device)
    print(
        f"torch {env['torch']} | device {env['device']} ({env['device_name']}) | "
        f"torch.get_num_threads() = {env['num_threads']} | {env['cpu_count']} CPUs, "
        f"load average {env['load_average']}"
    )
    return device, env


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name} requested but CUDA is not available")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], Any], device: torch.device, *, repeats: int, warmup: int
) -> dict[str, Any]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; the median and all times (s)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "times": times}


def count_matmul_flops(fn: Callable[[], Any], device: torch.device) -> float:
    """FLOPs of the matrix products (mm, addmm, bmm, ...) of one call of ``fn``, from
    ``torch.profiler``: independent of the machine's load, unlike the timings."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, with_flops=True) as prof:
        fn()
        _sync(device)
    return float(sum(event.flops for event in prof.key_averages()))


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers depend on: torch version, device name, threads, machine."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "torch": torch.__version__,
        "device": str(device),
        "device_name": name or platform.machine(),
        "num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_results(data: dict[str, Any], out: Path | None, default_name: str) -> Path:
    """Write ``data`` as JSON to ``out`` (default ``results/<default_name>``); returns the path."""
    path = out if out is not None else RESULTS_DIR / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def write_run(args: argparse.Namespace, env: dict[str, Any], bench: str, **results: Any) -> None:
    """Write ``{"environment", "config" (the arguments but ``out``), **results}`` to
    ``results/<bench>.json`` (``<bench>_quick.json`` with ``--quick``, or ``--out``) and print
    where."""
    config = {k: v for k, v in vars(args).items() if k != "out"}
    name = f"{bench}_quick.json" if args.quick else f"{bench}.json"
    path = write_results({"environment": env, "config": config, **results}, args.out, name)
    print(f"\nwrote {path}")
