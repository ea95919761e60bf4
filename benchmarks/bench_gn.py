"""Adam alone against Adam then Gauss-Newton, at equal wall time (Sun et al. Table 3).

    python benchmarks/bench_gn.py                       # logCE on GMM-9 and MW 5/5/4, 240 s per arm
    python benchmarks/bench_gn.py --seconds 60 --targets gmm9

Both arms start from the same initialization and seed, use the same collocation sampler, and get
the same total wall-clock budget; the GN arm spends ``--gn-fraction`` of it in Gauss-Newton.
Both are scored on the same fixed evaluation batch (the loss) and the same sampling settings
(dlogZ, 1 - ESS, dstd, W2). Prints a table and writes ``results/bench_gn.json`` with the metrics
of both arms, ``loss_ratio`` and ``one_minus_ess_ratio`` (Adam alone / Adam then GN),
``gn_step_seconds`` and ``adam_step_seconds``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pdesampler import evaluate, losses, train
from pdesampler.collocation import BoxSampler
from pdesampler.runner import write_json

ROOT = Path(__file__).resolve().parents[1]
TARGET_CONFIGS = {"gmm9": "GMM d=2", "mw5": "MW 5/5/4"}
# The collocation each problem trains best with on a CPU budget (as in configs/suite/paper.yaml).
PROBLEMS = {
    "gmm9": {"collocation": "trajectory_cache", "prior_box_width": 5.0},
    "mw5": {"collocation": "box", "prior_box_width": 3.0},
}


def build(target_name: str, seed: int, width: int):
    target = instantiate(OmegaConf.load(ROOT / "configs" / "target" / f"{target_name}.yaml"))
    torch.manual_seed(seed)
    return losses.logce(target, net={"width": width, "depth": 3})


def eval_batch(residual, n: int, seed: int):
    """A fixed batch, uniform on the [S63] box, to score the loss of both arms."""
    target = residual.target
    prior_box = (-5 * torch.ones(target.dim), 5 * torch.ones(target.dim))
    box = BoxSampler(prior_box, target.box, residual.T, torch.Generator().manual_seed(seed))
    return box(n)


def fixed_loss(residual, batch) -> float:
    loss, _ = residual.loss(*batch)
    return float(loss.detach())


def run_arm(args, target_name: str, with_gn: bool) -> dict:
    residual = build(target_name, args.seed, args.width)
    gn = None
    if with_gn:
        gn = {
            "steps": 10**6,
            "solver": args.solver,
            "damping": args.damping,
            "cg_max_iter": args.cg_max_iter,
            "cg_rtol": args.cg_rtol,
            "adaptive_damping": not args.fixed_damping,
            "line_search_batch": args.line_search_batch,
        }
    result = train(
        residual,
        adam={"steps": 10**7, "lr": args.lr, "lr_final": args.lr_final, "checkpoint_every": 0},
        gn=gn,
        batch_size=args.batch_size,
        gn_batch_size=args.gn_batch_size,
        collocation=args.collocation or PROBLEMS[target_name]["collocation"],
        collocation_options={"prior_box_width": PROBLEMS[target_name]["prior_box_width"]},
        seed=args.seed,
        max_seconds=args.seconds,
        gn_time_fraction=args.gn_fraction,
        progress=not args.no_progress,
    )
    report = evaluate(
        residual, n_samples=args.n_eval, seed=args.seed + 1, nll=False, sinkhorn_max_samples=2000
    )
    m = report.metrics
    gn_steps = result.gn_history
    return {
        "loss": fixed_loss(residual, eval_batch(residual, args.eval_batch, args.seed + 7)),
        "dlogZ": m["dlogZ"],
        "one_minus_ess": m["one_minus_ess"],
        "ess": m["ess"],
        "dstd": m["dstd"],
        "w2": m["w2"],
        "w2_floor": m["w2_floor"],
        "adam_steps": result.adam.steps,
        "adam_seconds": result.adam.seconds,
        "adam_step_seconds": result.adam.seconds / max(result.adam.steps, 1),
        "gn_steps": len(gn_steps),
        "gn_seconds": result.gn_seconds,
        "gn_step_seconds": statistics.median(s["seconds"] for s in gn_steps) if gn_steps else None,
        "gn_cg_iters": statistics.median(s["cg_iters"] for s in gn_steps) if gn_steps else None,
        "gn_accepted": sum(s["accepted"] for s in gn_steps),
        "gn_solver": gn_steps[0]["solver"] if gn_steps else None,
        "train_seconds": result.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=list(TARGET_CONFIGS))
    parser.add_argument("--seconds", type=float, default=240.0, help="wall-clock budget per arm")
    parser.add_argument("--gn-fraction", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--gn-batch-size", type=int, default=1024)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--lr-final", type=float, default=1e-4)
    parser.add_argument("--solver", default="auto")
    parser.add_argument("--damping", type=float, default=1e-3)
    parser.add_argument("--fixed-damping", action="store_true", help="no Levenberg-Marquardt")
    parser.add_argument("--line-search-batch", default="fresh", choices=["same", "fresh"])
    parser.add_argument("--cg-max-iter", type=int, default=500)
    parser.add_argument("--cg-rtol", type=float, default=1e-6)
    parser.add_argument("--collocation", default=None, help="default: per problem (see PROBLEMS)")
    parser.add_argument("--n-eval", type=int, default=10_000)
    parser.add_argument("--eval-batch", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "results" / "bench_gn.json"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    report = {"settings": vars(args), "device": "cpu", "threads": torch.get_num_threads()}
    header = (
        f"{'problem':10} {'arm':9} {'loss':>10} {'dlogZ':>10} {'1-ESS':>10} {'dstd':>9} {'W2':>8}"
    )
    lines = [header]
    for name in args.targets:
        arms = {"adam": run_arm(args, name, False), "adam_gn": run_arm(args, name, True)}
        adam, gn = arms["adam"], arms["adam_gn"]
        entry = {
            **arms,
            "loss_ratio": adam["loss"] / gn["loss"],
            "one_minus_ess_ratio": adam["one_minus_ess"] / max(gn["one_minus_ess"], 1e-12),
            "gn_step_seconds": gn["gn_step_seconds"],
            "adam_step_seconds": adam["adam_step_seconds"],
            "gn_step_in_adam_steps": (gn["gn_step_seconds"] or 0) / adam["adam_step_seconds"],
            "cg_iters_per_step": gn["gn_cg_iters"],
        }
        report[name] = entry
        for arm, m in arms.items():
            lines.append(
                f"{TARGET_CONFIGS.get(name, name):10} {arm:9} {m['loss']:10.3e} {m['dlogZ']:10.3e} "
                f"{m['one_minus_ess']:10.3e} {m['dstd']:9.2e} {m['w2']:8.4f}"
            )
        lines.append(
            f"  ratios (Adam / Adam+GN): loss {entry['loss_ratio']:.2f}x, "
            f"1-ESS {entry['one_minus_ess_ratio']:.2f}x; GN step {gn['gn_step_seconds']:.2f} s "
            f"= {entry['gn_step_in_adam_steps']:.0f} Adam steps ({adam['adam_step_seconds']:.4f} s), "
            f"{gn['gn_steps']} GN steps ({gn['gn_accepted']} accepted, solver {gn['gn_solver']}, "
            f"median CG iterations {gn['gn_cg_iters']})"
        )
        print("\n".join(lines[-3:]), flush=True)
    print("\n" + "\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
