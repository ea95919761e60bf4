"""Fine-tuning from an Adam plateau at equal extra wall time (the setting of Sun et al. Table 3).

    python benchmarks/bench_gn.py                                  # GMM-9, MW 5/5/4, GMM-9 logFP
    python benchmarks/bench_gn.py --problems gmm9 --arm-seconds 60 --arms adam spring

For each problem: train Adam from scratch for ``--plateau-steps`` (lr 5e-3 decayed to 1e-4,
batch 1024; about 240 s on 2 idle cores; saved, and reused by later runs with the same settings), then continue from that same checkpoint, with the same collocation
seed, for ``--arm-seconds`` more in each arm:

- ``adam``: continued Adam, one run per learning rate of ``--adam-lrs`` (decayed 30x over the
  arm); the arm reported is the one with the lowest 1 - ESS;
- ``gn``: the Gauss-Newton of issue 5 (Woodbury at N = 1024, Levenberg-Marquardt damping,
  fresh-batch grid line search);
- ``spring``: SPRING (momentum Gauss-Newton, fixed capped step, fresh batch per step);
- ``hfgn``: Hessian-free Gauss-Newton (matrix-free CG at large N, warm start 0.95, CG cap,
  Levenberg-Marquardt damping, Armijo, curvature on a subsample).

Every arm is scored on the same fixed evaluation batch, drawn once from the training collocation
distribution at the plateau (``loss``), and on a uniform box batch (``loss_box``). 1 - ESS is
the mean over ``--eval-seeds`` sampling seeds of ``--n-eval`` samples each (spread reported);
dlogZ comes from all those samples pooled (102k by default), with its standard error
sqrt(Var(log w) / N); W2 and dstd from the first seed. Snapshots taken during each arm give loss and 1 - ESS against wall time
(``--n-curve`` samples per point; the snapshot time is not charged to the arm), plotted per
problem in ``results/bench_gn_<problem>.png``. Ratios are continued Adam / the best
second-order arm (by 1 - ESS). The from-scratch comparison at equal total wall time is Adam for
plateau + arm seconds against Adam for the plateau then the best second-order arm for the arm
seconds (``from_scratch``). Writes ``results/bench_gn.json``.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.func import functional_call

from pdesampler import evaluate, losses, train
from pdesampler.collocation import BoxSampler, make_collocation
from pdesampler.metrics import effective_sample_size
from pdesampler.optim.gauss_newton import linearize
from pdesampler.runner import write_json
from pdesampler.sampling import sample_ode

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"

# The per-problem collocation (as in configs/suite/*.yaml) and the fine-tuning network.
PROBLEMS = {
    "gmm9": {
        "label": "GMM d=2, logCE", "target": "gmm9", "loss": "logce",
        "collocation": "trajectory_cache", "prior_box_width": 5.0,
    },
    "mw5": {
        "label": "MW 5/5/4, logCE", "target": "mw5", "loss": "logce",
        "collocation": "box", "prior_box_width": 3.0,
    },
    "gmm9_logfp": {
        "label": "GMM d=2, logFP", "target": "gmm9", "loss": "logfp",
        "collocation": "trajectory_cache", "prior_box_width": 5.0,
    },
}  # fmt: skip
TRAJECTORY_CACHE = {"n_trajectories": 2000, "n_times": 100, "every": 250, "fraction": 0.5}

# The fine-tuning arms (train()'s ``gn`` mappings); "batch" is the points per step.
ARMS = {
    "gn": {
        "batch": 1024,
        "gn": {"method": "gauss_newton", "damping": 1e-3, "adaptive_damping": True,
               "line_search_batch": "fresh", "solver": "auto"},
    },
    "spring": {
        "batch": 1024,
        "gn": {"method": "spring", "lr": 0.05, "momentum": 0.95, "damping": 1e-4,
               "norm_cap": 1e-2, "solver": "woodbury", "gram_dtype": "float64"},
    },
    "hfgn": {
        "batch": 4096,
        "gn": {"method": "gauss_newton", "solver": "cg", "cg_max_iter": 50, "cg_rtol": 1e-3,
               "warm_start": True, "warm_factor": 0.95, "damping": 1e-3,
               "adaptive_damping": True, "line_search": "armijo", "curvature_fraction": 0.25},
    },
}  # fmt: skip


def build(problem: dict, width: int, seed: int, dtype: torch.dtype = torch.float32):
    target = instantiate(OmegaConf.load(ROOT / "configs" / "target" / f"{problem['target']}.yaml"))
    torch.manual_seed(seed)
    residual = getattr(losses, problem["loss"])(target, net={"width": width, "depth": 3})
    return residual.to(dtype)


def collocation(problem: dict, residual, seed: int):
    options = TRAJECTORY_CACHE if problem["collocation"] == "trajectory_cache" else {}
    return make_collocation(
        problem["collocation"],
        residual,
        torch.Generator().manual_seed(seed),
        prior_box_width=problem["prior_box_width"],
        **options,
    )


def fixed_batches(problem: dict, residual, n: int, seed: int) -> dict:
    """Two fixed scoring batches: from the training collocation at the plateau, and uniform on
    the [S63] box with a +-5 prior box."""
    sampler = collocation(problem, residual, seed)
    sampler.update(0)
    target = residual.target
    prior_box = (-5 * torch.ones(target.dim), 5 * torch.ones(target.dim))
    box = BoxSampler(prior_box, target.box, residual.T, torch.Generator().manual_seed(seed))
    return {"loss": sampler(n), "loss_box": box(n)}


def batch_losses(residual, batches: dict) -> dict:
    out = {}
    for key, (x, t) in batches.items():
        loss = 0.0
        for xs, ts in zip(x.split(2048), t.split(2048), strict=True):
            loss += float(residual.loss(xs, ts)[0].detach()) * len(xs)
        out[key] = loss / len(x)
    return out


def sample_metrics(residual, n: int, seed: int, full: bool = True) -> dict:
    """1 - ESS and the log-weights of ``n`` samples of the (probability-flow) ODE; with
    ``full``, all of :func:`pdesampler.evaluate`'s sample metrics (W2, dstd) too."""
    if full:
        report = evaluate(residual, n_samples=n, seed=seed, nll=False, sinkhorn_max_samples=2000)
        log_w, m = report.output.log_weights(residual.target), report.metrics
        return {"one_minus_ess": m["one_minus_ess"], "log_w": log_w} | {
            key: m[key] for key in ("w2", "w2_floor", "dstd")
        }
    with torch.no_grad():
        output = sample_ode(
            residual.dynamics(), n, generator=torch.Generator().manual_seed(seed), module=residual
        )
    log_w = output.log_weights(residual.target).double()
    ess = float(effective_sample_size(log_w.nan_to_num(nan=-torch.inf)))
    return {"one_minus_ess": 1 - ess, "log_w": log_w}


def plateau(args, name: str, problem: dict) -> dict:
    """The Adam plateau (state dict, steps, seconds), trained once and cached under results/.
    Its length is a step count, so that it does not depend on the load of the machine."""
    path = RESULTS / "bench_gn" / f"{name}_w{args.width}_s{args.seed}_{args.plateau_steps}.pt"
    if path.exists():
        return torch.load(path)
    residual = build(problem, args.width, args.seed)
    result = train(
        residual,
        adam={"steps": args.plateau_steps, "lr": 5e-3, "lr_final": 1e-4, "checkpoint_every": 0},
        batch_size=1024,
        collocation=collocation(problem, residual, args.seed),
        seed=args.seed,
        progress=not args.no_progress,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": residual.state_dict(), "adam_steps": result.adam.steps}
    state["seconds"] = result.adam.seconds
    torch.save(state, path)
    return state


class Snapshots:
    """``on_step`` hook: a copy of the parameters at the first step past each time mark (a
    copy takes well under a millisecond; the evaluation happens after the arm)."""

    def __init__(self, marks: list[float]) -> None:
        self.marks, self.taken = list(marks), []

    def __call__(self, step: int, elapsed: float, params) -> None:
        if self.marks and elapsed >= self.marks[0]:
            self.marks.pop(0)
            self.taken.append((elapsed, step, {k: v.detach().clone() for k, v in params.items()}))


def with_params(residual, params: dict):
    """A copy of ``residual`` holding ``params`` (a state dict or a parameter dict)."""
    model = copy.deepcopy(residual)
    model.load_state_dict(params, strict=False)
    return model


def curve_point(args, residual, batches, seconds: float, steps: int) -> dict:
    point = {"seconds": seconds, "steps": steps, **batch_losses(residual, batches)}
    point["one_minus_ess"] = sample_metrics(residual, args.n_curve, args.seed + 2, False)[
        "one_minus_ess"
    ]
    return point


def final_metrics(args, residual, batches) -> dict:
    """1 - ESS per sampling seed (``--eval-seeds`` x ``--n-eval`` samples), and dlogZ with its
    standard error sqrt(Var(log w) / N) from all of those samples pooled."""
    seeds = [
        sample_metrics(residual, args.n_eval, args.seed + 10 + k, k == 0)
        for k in range(args.eval_seeds)
    ]
    log_w = torch.cat([s["log_w"] for s in seeds]).double()
    finite = log_w[torch.isfinite(log_w)]
    log_Z = float(residual.target.log_Z)
    ess = [s["one_minus_ess"] for s in seeds]
    return {
        **batch_losses(residual, batches),
        "one_minus_ess": statistics.mean(ess), "one_minus_ess_seeds": ess,
        "one_minus_ess_spread": max(ess) - min(ess),
        "dlogZ": abs(log_Z - float(finite.mean())),
        "dlogZ_stderr": float(finite.std() / math.sqrt(len(finite))),
        "n_dlogZ": len(log_w), "n_nonfinite": len(log_w) - len(finite),
        "w2": seeds[0]["w2"], "w2_floor": seeds[0]["w2_floor"], "dstd": seeds[0]["dstd"],
    }  # fmt: skip


def run_arm(args, problem: dict, start_state: dict, batches: dict, arm: str, lr=None) -> dict:
    """Continue from ``start_state`` for ``--arm-seconds`` with one arm; score it."""
    residual = build(problem, args.width, args.seed)
    residual.load_state_dict(start_state)
    marks = [args.arm_seconds * (i + 1) / args.curve_points for i in range(args.curve_points - 1)]
    snaps = Snapshots(marks)
    if arm == "adam":
        adam = {"steps": 10**8, "lr": lr, "lr_final": lr / 30, "checkpoint_every": 0}
        gn, batch = None, 1024
    else:
        adam, gn, batch = {"steps": 0}, {"steps": 10**6, **ARMS[arm]["gn"]}, ARMS[arm]["batch"]
    result = train(
        residual, adam=adam, gn=gn, batch_size=batch, gn_batch_size=batch,
        collocation=collocation(problem, residual, args.seed + 1), seed=args.seed + 1,
        max_seconds=args.arm_seconds, gn_time_fraction=1.0, progress=not args.no_progress,
        on_step=snaps,
    )  # fmt: skip
    history = result.gn_history
    steps = len(history) if gn else result.adam.steps
    seconds = result.gn_seconds if gn else result.adam.seconds
    out = final_metrics(args, residual, batches)
    out.update(steps=steps, seconds=seconds, step_seconds=seconds / max(steps, 1), lr=lr)
    if gn:
        out["settings"] = ARMS[arm]
        out["cg_iters_median"] = statistics.median(h["cg_iters"] for h in history) if history else 0
        out["accepted"] = sum(h["accepted"] for h in history)
        out["solver"] = history[0]["solver"] if history else None
    out["curve"] = [
        curve_point(args, with_params(residual, params), batches, elapsed, step)
        for elapsed, step, params in snaps.taken
    ]
    out["curve"].append(
        {key: out[key] for key in ("loss", "loss_box", "one_minus_ess")}
        | {"seconds": seconds, "steps": steps}
    )
    return out


def adam_step_seconds(problem: dict, args, state: dict, batch: int, repeats: int = 20) -> float:
    """Median seconds of one Adam step (loss, backward, update) at ``batch`` points."""
    residual = build(problem, args.width, args.seed)
    residual.load_state_dict(state)
    sampler = collocation(problem, residual, args.seed)
    sampler.update(0)
    optimizer = torch.optim.Adam(residual.parameters(), lr=1e-5)
    times = []
    for _ in range(repeats):
        x, t = sampler(batch)
        start = time.perf_counter()
        optimizer.zero_grad()
        residual.loss(x, t)[0].backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cg_iteration_seconds(problem: dict, args, state: dict, batch: int, repeats: int = 10) -> float:
    """Median seconds of one CG iteration of Hessian-free GN, a Gramian-vector product
    :math:`J^\\top (J v)` (double vjp on one linearization), at ``batch`` points."""
    residual = build(problem, args.width, args.seed)
    residual.load_state_dict(state)
    sampler = collocation(problem, residual, args.seed)
    sampler.update(0)
    x, t = sampler(batch)
    params = {k: v.detach() for k, v in residual.named_parameters()}
    lin = linearize(lambda p: functional_call(residual, p, (x, t)), params)
    v = torch.randn(sum(p.numel() for p in params.values()))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        lin.gramian_vector_product(v)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ratio(a: float, b: float) -> float:
    return a / max(b, 1e-300)


def compare(name: str, arms: dict, start: dict) -> dict:
    """Ratios continued Adam / best second-order arm (by 1 - ESS)."""
    second_order = {k: v for k, v in arms.items() if not k.startswith("adam")}
    adam_runs = {k: v for k, v in arms.items() if k.startswith("adam")}
    adam_key = min(adam_runs, key=lambda k: adam_runs[k]["one_minus_ess"])
    best = min(second_order, key=lambda k: second_order[k]["one_minus_ess"])
    adam, gn = adam_runs[adam_key], second_order[best]
    diff = abs(adam["dlogZ"] - gn["dlogZ"])
    noise = math.hypot(adam["dlogZ_stderr"], gn["dlogZ_stderr"])
    return {
        "continued_adam": adam_key, "best_arm": best,
        "loss_ratio": ratio(adam["loss"], gn["loss"]),
        "loss_box_ratio": ratio(adam["loss_box"], gn["loss_box"]),
        "one_minus_ess_ratio": ratio(adam["one_minus_ess"], gn["one_minus_ess"]),
        "dlogZ_ratio": ratio(adam["dlogZ"], gn["dlogZ"]),
        "dlogZ_stderr": gn["dlogZ_stderr"], "dlogZ_stderr_adam": adam["dlogZ_stderr"],
        "dlogZ_difference_significant": diff > 2 * noise,
        "w2_ratio": ratio(adam["w2"], gn["w2"]), "dstd_ratio": ratio(adam["dstd"], gn["dstd"]),
        "from_scratch": {
            "total_seconds": start["seconds"] + adam["seconds"],
            "adam_alone": {k: adam[k] for k in ("loss", "one_minus_ess", "dlogZ")},
            "adam_then_" + best: {k: gn[k] for k in ("loss", "one_minus_ess", "dlogZ")},
            "adam_then_gn_no_worse": gn["one_minus_ess"] <= adam["one_minus_ess"]
            and gn["loss"] <= adam["loss"],
        },
    }  # fmt: skip


def plot(name: str, label: str, arms: dict, start: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for arm, m in arms.items():
        points = [start["point"], *m["curve"]]
        secs = [p["seconds"] for p in points]
        axes[0].semilogy(secs, [p["loss"] for p in points], "o-", label=arm)
        axes[1].semilogy(secs, [p["one_minus_ess"] for p in points], "o-", label=arm)
    axes[0].set(xlabel="extra wall time [s]", ylabel="loss (fixed training-distribution batch)")
    axes[1].set(xlabel="extra wall time [s]", ylabel="1 - ESS")
    axes[0].legend()
    fig.suptitle(f"{label}: fine-tuning from the Adam plateau")
    fig.tight_layout()
    path = RESULTS / f"bench_gn_{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--arms", nargs="+", default=["adam", *ARMS], choices=["adam", *ARMS])
    parser.add_argument("--plateau-steps", type=int, default=8000, help="Adam steps (batch 1024)")
    parser.add_argument("--arm-seconds", type=float, default=120.0)
    parser.add_argument("--adam-lrs", type=float, nargs="+", default=[1e-3, 3e-4])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--curve-points", type=int, default=4)
    parser.add_argument("--n-curve", type=int, default=4000)
    parser.add_argument("--n-eval", type=int, default=34_000, help="samples per sampling seed")
    parser.add_argument("--eval-seeds", type=int, default=3)
    parser.add_argument("--fixed-batch", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "bench_gn.json"))
    parser.add_argument("--plateau-only", action="store_true", help="train and save plateaus")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    report = {"settings": vars(args), "threads": torch.get_num_threads(), "arms": ARMS}
    for name in args.problems:
        problem = PROBLEMS[name]
        start_state = plateau(args, name, problem)
        if args.plateau_only:
            continue
        residual = build(problem, args.width, args.seed)
        residual.load_state_dict(start_state["model"])
        batches = fixed_batches(problem, residual, args.fixed_batch, args.seed + 7)
        start = {
            "seconds": start_state["seconds"], "adam_steps": start_state["adam_steps"],
            "point": curve_point(args, residual, batches, 0.0, 0),
        }  # fmt: skip
        arms = {}
        for arm in args.arms:
            for lr in args.adam_lrs if arm == "adam" else [None]:
                key = f"adam_lr{lr:g}" if arm == "adam" else arm
                arms[key] = run_arm(args, problem, start_state["model"], batches, arm, lr)
                m = arms[key]
                print(
                    f"{name:11} {key:13} loss {m['loss']:.3e} (box {m['loss_box']:.3e}) "
                    f"1-ESS {m['one_minus_ess']:.3e} +- {m['one_minus_ess_spread']:.1e} "
                    f"dlogZ {m['dlogZ']:.2e} +- {m['dlogZ_stderr']:.1e} W2 {m['w2']:.4f} "
                    f"dstd {m['dstd']:.2e} | {m['steps']} steps, {m['step_seconds']:.3f} s/step",
                    flush=True,
                )
        entry = {"label": problem["label"], "plateau": start, "arms": arms}
        entry["adam_step_seconds"] = {
            str(b): adam_step_seconds(problem, args, start_state["model"], b) for b in (1024, 4096)
        }
        cg_seconds = cg_iteration_seconds(problem, args, start_state["model"], 4096)
        entry["cg_iteration_seconds_4096"] = cg_seconds
        entry["cg_iteration_in_adam_steps"] = cg_seconds / entry["adam_step_seconds"]["4096"]
        if len([a for a in arms if a.startswith("adam")]) and len(arms) > 1:
            entry.update(compare(name, arms, start))
            print(
                f"{name}: continued Adam / {entry['best_arm']}: loss {entry['loss_ratio']:.2f}x, "
                f"1-ESS {entry['one_minus_ess_ratio']:.2f}x, dlogZ {entry['dlogZ_ratio']:.2f}x "
                f"(significant: {entry['dlogZ_difference_significant']})",
                flush=True,
            )
        entry["figure"] = str(plot(name, problem["label"], arms, start).relative_to(ROOT))
        report[name] = entry
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, report)
    if "gmm9" in report and "loss_ratio" in report["gmm9"]:
        for key in ("loss_ratio", "one_minus_ess_ratio", "dlogZ_ratio", "dlogZ_stderr"):
            report[key] = report["gmm9"][key]
    write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
