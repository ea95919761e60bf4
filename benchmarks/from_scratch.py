"""The from-scratch comparison of ``bench_gn.py --from-scratch-only``: at equal total wall time,
the best Adam schedule alone against the same schedule followed by SPRING.

Adam's peak learning rate is swept over a grid that grows by 3x steps at whichever end holds the
best 1 - ESS, until the best is inside (``adam_lr_bracketed``) or ``MAX_EXTENSIONS`` steps were
taken; the Adam + SPRING arms use that best rate and differ in the share of the budget SPRING
gets (when to switch). Every arm is a ``benchmarks/run.py`` process with one torch thread
(``_runs.py``), screened on its own 4000 evaluation samples; the best Adam arm and the best
Adam + SPRING arm are then scored again on ``eval_seeds`` sampling seeds of ``n_eval`` samples
each, and 1 - ESS and dlogZ come from all of them pooled.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from _runs import RESULTS, SCREEN, arm_name, run_all
from omegaconf import OmegaConf

from pdesampler.evaluate import evaluate
from pdesampler.metrics import delta_log_z, importance_summary
from pdesampler.runner import build

OUT = RESULTS / "bench_gn_scratch"
MAX_EXTENSIONS = 3


def arm_dir(problem: str, budget: float, arm: list[str], seed: int = 0) -> Path:
    return OUT / problem / f"{budget:g}s" / (arm_name(arm) + (f"__seed-{seed}" if seed else ""))


def base_overrides(preset: str, loss: str, budget: float, seed: int) -> list[str]:
    """Every arm's overrides. Compilation is off in all arms: its one-off cost (a minute with two
    runs side by side) would otherwise fall on Adam alone, whose phase is the longer one."""
    return [f"target={preset}", f"loss={loss}", f"optim.max_seconds={budget:g}", f"seed={seed}",
            "optim.compile=false", *SCREEN]  # fmt: skip


def one_minus_ess(metrics: dict | None) -> float:
    return math.inf if not metrics or metrics.get("ess") is None else 1 - metrics["ess"]


def sweep_adam(preset, loss, budget, lrs, seed, jobs, problem) -> dict[float, dict | None]:
    """Adam alone (``optim.gn=null``) at each rate, widening the grid until the best is inside."""
    results: dict[float, dict | None] = {}
    todo = sorted(lrs)
    for _ in range(MAX_EXTENSIONS + 1):
        arms = {lr: ["optim.gn=null", f"optim.lr={lr:g}"] for lr in todo}
        jobs_ = [(arm_dir(problem, budget, a, seed), base_overrides(preset, loss, budget, seed) + a)
                 for a in arms.values()]  # fmt: skip
        for lr, m in zip(arms, run_all(jobs_, jobs), strict=True):
            results[lr] = m
        grid = sorted(results)
        best = min(grid, key=lambda lr: one_minus_ess(results[lr]))
        if best == grid[-1]:
            todo = [grid[-1] * 3]
        elif best == grid[0]:
            todo = [grid[0] / 3]
        else:
            break
    return results


def score(run_dir: Path, n: int, seeds: int) -> dict:
    """1 - ESS and dlogZ of a finished run from ``seeds`` x ``n`` samples pooled."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    residual = build(cfg, torch.device("cpu"), torch.float32)
    residual.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    log_ws, per_seed = [], []
    for k in range(seeds):
        report = evaluate(residual, n_samples=n, seed=1000 + k, nll=False,
                          sinkhorn_max_samples=500, steps=int(cfg.sampler.steps))  # fmt: skip
        log_ws.append(report.output.log_weights(residual.target).double())
        per_seed.append(report.metrics["one_minus_ess"])
    pooled = importance_summary(torch.cat(log_ws))
    return {
        "one_minus_ess": pooled["one_minus_ess"],
        "one_minus_ess_per_seed": per_seed,
        "dlogZ": float(delta_log_z(residual.target.log_Z, pooled["log_Z_lb"])),
        "n_samples": n * seeds,
    }


def compare(problem: str, preset: str, loss: str, budget: float, args) -> dict:
    """The whole comparison for one problem: the bracketed Adam sweep, the SPRING arms at the
    best rate, and the pooled rescoring of the two winners."""
    adam = sweep_adam(preset, loss, budget, args.scratch_lrs, args.seed, args.jobs, problem)
    grid = sorted(adam)
    best_lr = min(grid, key=lambda lr: one_minus_ess(adam[lr]))
    gn_arms = {f: ["optim=adam_spring", f"optim.lr={best_lr:g}", f"optim.gn.time_fraction={f:g}"]
               for f in args.scratch_fractions}  # fmt: skip
    jobs = [(arm_dir(problem, budget, a, args.seed),
             base_overrides(preset, loss, budget, args.seed) + a) for a in gn_arms.values()]  # fmt: skip
    gn = dict(zip(gn_arms, run_all(jobs, args.jobs), strict=True))
    best_fraction = min(gn, key=lambda f: one_minus_ess(gn[f]))
    adam_dir = arm_dir(problem, budget, ["optim.gn=null", f"optim.lr={best_lr:g}"], args.seed)
    gn_dir = arm_dir(problem, budget, gn_arms[best_fraction], args.seed)
    final_adam = score(adam_dir, args.n_eval, args.eval_seeds)
    final_gn = score(gn_dir, args.n_eval, args.eval_seeds)
    return {
        "seed": args.seed,
        "budget_seconds": budget,
        "adam_lrs": grid,
        "adam_screen_one_minus_ess": {f"{lr:g}": one_minus_ess(adam[lr]) for lr in grid},
        "adam_best_lr": best_lr,
        "adam_lr_bracketed": grid[0] < best_lr < grid[-1],
        "spring_time_fractions": list(gn),
        "spring_screen_one_minus_ess": {f"{f:g}": one_minus_ess(gn[f]) for f in gn},
        "spring_best_time_fraction": best_fraction,
        "adam": final_adam,
        "adam_gn": final_gn,
        "adam_steps": (adam[best_lr] or {}).get("steps"),
        "adam_gn_steps": [(gn[best_fraction] or {}).get(k) for k in ("steps", "gn_steps")],
        "one_minus_ess_ratio": final_adam["one_minus_ess"] / final_gn["one_minus_ess"],
        "dlogZ_ratio": final_adam["dlogZ"] / final_gn["dlogZ"],
    }
