"""Seconds per training step: the trajectory baselines (PIS, DIS) against PINN losses.

The paper's point (Sun et al., Remark 3.2 and the sec./it. column of Table 2) is that the PINN
losses are simulation-free: one step evaluates the residual on a batch of collocation points,
whereas a PIS or DIS step simulates ``steps`` Euler-Maruyama steps of the controlled SDE for
every path of the batch and backpropagates through (KL) or along (log-variance) them. This
script times, in one process and on one batch size, one loss-plus-backward step of each:

* ``logce`` and ``logfp`` (``Residual.loss`` on a batch from the entry's default collocation
  sampler, drawn beforehand, as in ``bench_losses.py``);
* ``pis_kl``, ``pis_lv``, ``dis_kl``, ``dis_lv`` (``TrajectoryLoss.path_loss`` on ``batch``
  fresh paths of ``--steps`` Euler-Maruyama steps, the configs' 200 by default).

Every method uses the same network (MLP, width 128, depth 3 unless ``--width``) on GMM-9 and
many-well 5/5/4, float32.

Usage::

    python benchmarks/bench_baselines.py                  # batch 1024, CPU, median of 3
    python benchmarks/bench_baselines.py --device cuda --batch 4096 --repeats 10
    python benchmarks/bench_baselines.py --quick          # smoke check, tiny sizes

Writes ``results/bench_baselines.json`` (``results/bench_baselines_quick.json`` with
``--quick``).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from _timing import add_common_args, setup, time_call, write_results
from bench_losses import TARGETS, build, loss_step

from pdesampler.collocation import make_collocation
from pdesampler.losses import BASELINES, TrajectoryLoss

PINN_ENTRIES = ("logce", "logfp")


def path_step(loss: TrajectoryLoss, batch: int, generator: torch.Generator) -> None:
    """The timed unit of a baseline: the path loss on fresh paths and its parameter gradient."""
    loss.zero_grad(set_to_none=True)
    value, _ = loss.path_loss(batch, generator)
    value.backward()


def bench(method: str, target_name: str, args: argparse.Namespace, device) -> dict[str, Any]:
    torch.manual_seed(0)
    target = TARGETS[target_name]()
    net = {"width": args.width, "depth": 3}
    generator = torch.Generator().manual_seed(0)
    if method in BASELINES:
        loss = BASELINES[method](target, net=net, steps=args.steps).to(device, torch.float32)
        step = lambda: path_step(loss, args.batch, generator)
    else:
        residual = build(method, target, device, net)
        sampler = make_collocation("default", residual, generator, device=device)
        sampler.update(0)
        x, t = sampler(args.batch)
        step = lambda: loss_step(residual, x, t)
    timing = time_call(step, device, repeats=args.repeats, warmup=args.warmup)
    return {"method": method, "target": target_name, "seconds": timing["median"], **timing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, batch=1024)
    parser.add_argument("--steps", type=int, default=200, help="EM steps per baseline path")
    parser.add_argument("--width", type=int, default=128, help="network width")
    parser.set_defaults(repeats=3, warmup=1)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.steps, args.width, args.repeats, args.warmup = 64, 10, 16, 1, 0
    device, env = setup(args)
    methods = (*PINN_ENTRIES, *BASELINES)
    rows = [bench(m, name, args, device) for name in TARGETS for m in methods]
    print(f"seconds per step, batch {args.batch}, {args.steps} EM steps per baseline path")
    print(f"{'method':<8} " + " ".join(f"{name:>10}" for name in TARGETS))
    for m in methods:
        cells = [r["seconds"] for r in rows if r["method"] == m]
        print(f"{m:<8} " + " ".join(f"{c:>10.4f}" for c in cells))
    settings = {k: getattr(args, k) for k in ("batch", "steps", "width", "repeats", "warmup")}
    name = "bench_baselines_quick.json" if args.quick else "bench_baselines.json"
    path = write_results({"environment": env, "settings": settings, "rows": rows}, args.out, name)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
