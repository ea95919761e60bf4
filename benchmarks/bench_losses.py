"""Seconds per loss-plus-backward step of every catalogue entry, and what dominates it.

For each entry of :data:`pdesampler.losses.CATALOGUE` on GMM-9 (``d = 2``) and many-well 5/5/4
(``d = 5``), with the default networks (width 128, depth 3; default time networks) and
``chunk_size=auto_chunk_size(d, 128, device)``, times ``loss, _ = residual.loss(x, t);
loss.backward()`` on a batch drawn beforehand from the entry's default collocation sampler
(``make_collocation("default", ...)``). The sampler is timed separately (seconds per batch):
the Máté-Fleuret ``trajectory`` sampler of ``linear``/``learned`` integrates ODE paths of the
current drift for every batch (its batches hold ``51 * (batch // 51)`` points).

Then, for the slowest entries, the step is split into its operators, each timed alone as
forward plus parameter gradient on the same batch: the density jet of V without and with its
Laplacian, the correction network's jet alone, and the drift jet. One line per slow entry
names the operator that dominates. ``--profile`` also prints the top torch ops.

Usage::

    python benchmarks/bench_losses.py                     # batch 4096, CPU, median of 5
    python benchmarks/bench_losses.py --device cuda --repeats 10
    python benchmarks/bench_losses.py --entries score sb --targets gmm9 --profile
    python benchmarks/bench_losses.py --quick             # smoke check, tiny sizes
    python benchmarks/bench_losses.py --threads 1         # one thread (a shared machine)

Writes ``results/bench_losses.json`` (``results/bench_losses_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from _timing import add_common_args, count_matmul_flops, setup, time_call, write_run
from torch import Tensor
from torch.func import vmap

from pdesampler import ops
from pdesampler.collocation import make_collocation
from pdesampler.losses import CATALOGUE, Residual, TransportResidual, make_loss
from pdesampler.losses.parts import FreeDrift, GradientDrift
from pdesampler.runner import auto_chunk_size
from pdesampler.targets import GMM9, ManyWell, Target

TARGETS: dict[str, Callable[[], Target]] = {
    "gmm9": GMM9,
    "mw5": lambda: ManyWell(5, 5, 4.0),
}
DEFAULT_WIDTH = 128
V_PLAIN = "V jet (value, dt, grad)"
V_LAP = "V jet with Laplacian"
PHI = "phi net inside V"
FREE_DRIFT = "drift net jet (jvp divergence)"
GRADIENT_DRIFT = "Phi jet with Laplacian (drift grad Phi)"

# A component maps one point (x, t, probes) to the tensors whose mean squares it backpropagates.
PointComponent = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, ...]]


# ---------------------------------------------------------------------------- setup
def build(entry: str, target: Target, device: torch.device, net: dict[str, Any] | None) -> Residual:
    """The catalogue entry with the default nets (or ``net``), auto-chunked, float32."""
    width = int((net or {}).get("width", DEFAULT_WIDTH))
    chunk = auto_chunk_size(target.dim, width, device)
    residual = make_loss(entry, target, net=net, chunk_size=chunk)
    return residual.to(device=device, dtype=torch.float32)


def loss_step(residual: Residual, x: Tensor, t: Tensor) -> None:
    """The timed unit: the loss on the batch and its parameter gradient."""
    residual.zero_grad(set_to_none=True)
    loss, _ = residual.loss(x, t)
    loss.backward()


def bench_entry(
    entry: str, target_name: str, args: argparse.Namespace, device: torch.device
) -> tuple[dict[str, Any], Residual, tuple[Tensor, Tensor]]:
    """Time the collocation sampler and the loss step of one entry on one target."""
    torch.manual_seed(0)
    residual = build(entry, TARGETS[target_name](), device, args.net)
    generator = torch.Generator().manual_seed(0)
    sampler = make_collocation("default", residual, generator, device=device)
    sampler.update(0)
    draw = time_call(lambda: sampler(args.batch), device, repeats=args.repeats, warmup=1)
    x, t = sampler(args.batch)
    step = time_call(
        lambda: loss_step(residual, x, t), device, repeats=args.repeats, warmup=args.warmup
    )
    row = {
        "entry": entry,
        "target": target_name,
        "d": residual.dim,
        "collocation": residual.default_collocation,
        "points": int(x.shape[0]),
        "chunk_size": residual.chunk_size,
        "step_seconds": step["median"],
        "step_times": step["times"],
        "collocation_seconds": draw["median"],
        "collocation_times": draw["times"],
    }
    return row, residual, (x, t)


# ---------------------------------------------------------------------------- breakdown
def _tensors(*jets: Any) -> tuple[Tensor, ...]:
    return tuple(v for jet in jets for v in jet if isinstance(v, Tensor))


def components(residual: TransportResidual) -> dict[str, PointComponent]:
    """The operators a transport residual evaluates, each as a pointwise function."""
    density, drift, est = residual.density, residual.drift, residual.estimator
    uses_lap = residual.diffusion is not None or drift.needs_density_laplacian
    parts: dict[str, PointComponent] = {
        V_PLAIN: lambda x, t, p: _tensors(density.jet(x, t, p, est, laplacian=False))
    }
    if uses_lap:
        parts[V_LAP] = lambda x, t, p: _tensors(density.jet(x, t, p, est, laplacian=True))
    if density.correction is not None:
        phi = ops.scalar_jet(density.correction, est, laplacian=uses_lap)
        parts[PHI] = lambda x, t, p: _tensors(phi(x, t, p))
    if isinstance(drift, FreeDrift | GradientDrift):
        label = FREE_DRIFT if isinstance(drift, FreeDrift) else GRADIENT_DRIFT
        parts[label] = lambda x, t, p: _tensors(drift.jet(x, t, p, est, None)[:2])
    return parts


def component_step(
    residual: Residual, component: PointComponent, x: Tensor, t: Tensor
) -> Callable[[], None]:
    """Forward plus parameter gradient of one component, vmapped like the residual."""
    probes, probe_dim = ops.batch_probes(residual.estimator, x)
    batched = vmap(component, in_dims=(0, 0, probe_dim), chunk_size=residual.chunk_size)

    def step() -> None:
        residual.zero_grad(set_to_none=True)
        outputs = batched(x, t, probes)
        loss = sum(v.square().mean() for v in outputs if v.requires_grad)
        if isinstance(loss, Tensor):
            loss.backward()

    return step


def _percent(parts: dict[str, float], total: float) -> dict[str, float]:
    return {k: 100 * v / total if total > 0 else float("nan") for k, v in parts.items()}


def dominant(row: dict[str, Any], times: dict[str, float], flops: dict[str, float]) -> str:
    """One line: which operator takes most of the step, with the Laplacian's share."""
    share = _percent(times, row["step_seconds"])
    flop_share = _percent(flops, row["step_gflop"] * 1e9)
    density = V_LAP if V_LAP in share else V_PLAIN
    drift = next((k for k in share if k in (FREE_DRIFT, GRADIENT_DRIFT)), None)
    top = density if drift is None or share[density] >= share[drift] else drift
    line = (
        f"{row['entry']} on {row['target']} ({row['step_seconds']:.3g} s/step): {top} takes "
        f"~{share[top]:.0f}% of the time (~{flop_share[top]:.0f}% of the matmul FLOPs)"
    )
    if top == V_LAP:
        line += f", its forward-over-reverse Laplacian ~{share[top] - share[V_PLAIN]:.0f}%"
    if PHI in share and top == density:
        line += f", the phi net in it ~{share[PHI]:.0f}%"
    if drift is None:
        line += "; the drift reuses V's jet (no operator of its own)"
    others = ", ".join(f"{k} ~{v:.0f}%" for k, v in share.items() if k != top)
    return f"{line}; {others}" if others else line


def breakdown(
    row: dict[str, Any],
    residual: Residual,
    batch: tuple[Tensor, Tensor],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """Time each operator of a slow entry alone and say which one dominates."""
    split: dict[str, Any] = {k: row[k] for k in ("entry", "target", "step_seconds")}
    if not isinstance(residual, TransportResidual):
        return {**split, "components": {}, "dominant": f"{row['entry']}: no breakdown"}
    steps = {
        name: component_step(residual, fn, *batch) for name, fn in components(residual).items()
    }
    times = {
        name: time_call(step, device, repeats=args.repeats, warmup=args.warmup)["median"]
        for name, step in steps.items()
    }
    flops = {name: count_matmul_flops(step, device) for name, step in steps.items()}
    row["step_gflop"] = count_matmul_flops(lambda: loss_step(residual, *batch), device) / 1e9
    return {
        **split,
        "step_gflop": row["step_gflop"],
        "components": times,
        "component_gflop": {k: v / 1e9 for k, v in flops.items()},
        "dominant": dominant(row, times, flops),
    }


def profile(residual: Residual, batch: tuple[Tensor, Tensor], device: torch.device) -> str:
    """The top torch ops of one loss step, by self time."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    loss_step(residual, *batch)
    with torch.profiler.profile(activities=activities) as prof:
        loss_step(residual, *batch)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=10)


# ---------------------------------------------------------------------------- reporting
def markdown_table(rows: list[dict[str, Any]], targets: list[str]) -> str:
    head = ["entry", "collocation"]
    head += [f"{tg} s/step" for tg in targets] + [f"{tg} colloc. s/batch" for tg in targets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_key = {(r["entry"], r["target"]): r for r in rows}
    for entry in dict.fromkeys(r["entry"] for r in rows):
        found = [by_key.get((entry, tg)) for tg in targets]
        colloc = next(r["collocation"] for r in found if r is not None)
        steps = [f"{r['step_seconds']:.4f}" if r else "-" for r in found]
        draws = [f"{r['collocation_seconds']:.4f}" if r else "-" for r in found]
        lines.append("| " + " | ".join([entry, colloc, *steps, *draws]) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--entries", nargs="+", default=list(CATALOGUE), choices=list(CATALOGUE))
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--top", type=int, default=3, help="slowest (entry, target) to split")
    parser.add_argument("--profile", action="store_true", help="top torch ops of the slowest")
    args = parser.parse_args(argv)
    args.net = None
    if args.quick:
        args.batch, args.repeats, args.warmup, args.top = 128, 2, 1, 2
        args.net = {"width": 16, "depth": 2}
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device, env = setup(args)
    net = args.net or {"width": DEFAULT_WIDTH, "depth": 3}
    print(f"batch {args.batch}, nets {net}, median of {args.repeats}")
    rows, kept = [], {}
    for target_name in args.targets:
        for entry in args.entries:
            row, residual, batch = bench_entry(entry, target_name, args, device)
            print(
                f"  {entry:<13} {target_name:<5} {row['step_seconds']:.4f} s/step  "
                f"(collocation {row['collocation']}: {row['collocation_seconds']:.4f} s/batch)"
            )
            rows.append(row)
            kept[entry, target_name] = (residual, batch)
    print()
    print(markdown_table(rows, args.targets))
    slowest = sorted(rows, key=lambda r: r["step_seconds"], reverse=True)[: args.top]
    print(f"\nWhat dominates the {len(slowest)} slowest steps (operator time / step time):")
    splits = []
    for row in slowest:
        residual, batch = kept[row["entry"], row["target"]]
        split = breakdown(row, residual, batch, args, device)
        print(f"  {split['dominant']}")
        if args.profile:
            print(profile(residual, batch, device))
        splits.append(split)
    write_run(args, env, "bench_losses", results=rows, breakdown=splits)


if __name__ == "__main__":
    main()
