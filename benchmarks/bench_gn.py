"""Fine-tuning from an Adam plateau at equal extra wall time (the setting of Sun et al. Table 3).

    python benchmarks/bench_gn.py                                  # GMM-9, MW 5/5/4, GMM-9 logFP
    python benchmarks/bench_gn.py --problems gmm9 --arm-seconds 60 --arms adam spring

For each problem: train Adam from scratch for ``--plateau-steps`` (lr 5e-3 decayed to 1e-4,
batch 1024; about 240 s on 2 idle cores; saved, and reused by later runs with the same settings), then continue from that same checkpoint, with the same collocation
seed, for ``--arm-seconds`` more in each arm:

- ``adam``: continued Adam, one run per learning rate of ``--adam-lrs`` (decayed 30x over the
  arm); the arm reported is the one with the lowest 1 - ESS;
- ``gn``: the line-search Gauss-Newton of optim=adam_gn_lm (Woodbury at N = 1024, Levenberg-Marquardt damping,
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
import json
import math
import statistics
import time
from pathlib import Path

import from_scratch
import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.func import functional_call

from pdesampler import runner, train
from pdesampler.collocation import BoxSampler, make_collocation
from pdesampler.evaluate import evaluate
from pdesampler.metrics import delta_log_z
from pdesampler.optim.gauss_newton import linearize
from pdesampler.problems import compose_run
from pdesampler.report import write_json
from pdesampler.snapshots import Snapshots, with_params

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"

# Benchmark problems: a problem preset (configs/problem/, its target and collocation) and a loss.
PROBLEMS = {
    "gmm9": {"label": "GMM d=2, logCE", "preset": "gmm9", "loss": "logce"},
    "mw5": {"label": "MW 5/5/4, logCE", "preset": "mw5", "loss": "logce"},
    "gmm9_logfp": {"label": "GMM d=2, logFP", "preset": "gmm9", "loss": "logfp"},
}

# The fine-tuning arms (train()'s ``gn`` mappings); "batch" is the points per step.
ARMS = {
    "gn": {
        "batch": 1024,
        "gn": {"method": "gauss_newton", "damping": 1e-3, "adaptive_damping": True,
               "line_search_batch": "fresh", "solver": "auto", "gram_dtype": "mixed"},
    },
    "spring": {
        "batch": 512,
        "gn": {"method": "spring", "lr": 0.1, "momentum": 0.99, "damping": 1e-4,
               "norm_cap": 0.1, "solver": "woodbury", "gram_dtype": "mixed"},
    },
    "hfgn": {
        "batch": 4096,
        "gn": {"method": "gauss_newton", "solver": "cg", "cg_max_iter": 50, "cg_rtol": 1e-3,
               "warm_start": True, "warm_factor": 0.95, "damping": 1e-3,
               "adaptive_damping": True, "line_search": "armijo", "curvature_fraction": 0.25},
    },
}  # fmt: skip


def run_config(problem: dict, width: int = 64, seed: int = 0) -> DictConfig:
    """The run config of ``problem``: its preset and loss, a network of ``width`` x 3 layers."""
    return compose_run([
        f"problem={problem['preset']}", f"loss={problem['loss']}", f"net.width={width}",
        "net.depth=3", "net.input_scale=1.0", f"seed={seed}",
    ])  # fmt: skip


def build(problem: dict, width: int, seed: int, dtype: torch.dtype = torch.float32):
    """The problem's residual (:func:`pdesampler.runner.build`), initialized from ``seed``."""
    return runner.build(run_config(problem, width, seed), torch.device("cpu"), dtype)


def restored(problem: dict, args, state: dict):
    """The problem's residual holding the weights ``state``."""
    residual = build(problem, args.width, args.seed)
    residual.load_state_dict(state)
    return residual


def collocation(problem: dict, residual, seed: int):
    """The problem preset's collocation sampler for ``residual`` (the run's, as
    :func:`pdesampler.runner.run_collocation` chooses it), seeded."""
    kind, options = runner.run_collocation(run_config(problem), residual)
    return make_collocation(kind, residual, torch.Generator().manual_seed(seed), **options)


def fixed_batches(problem: dict, residual, n: int, seed: int) -> dict:
    """Two fixed scoring batches: from the training collocation at the plateau, and uniform on
    the box of Sun et al. eq. (63) with a +-5 prior box."""
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


#: Points of the Sinkhorn W2 estimate (:func:`pdesampler.metrics.sinkhorn_w2`).
W2_POINTS = 2000


def sample_metrics(residual, n: int, seed: int, full: bool = True) -> dict:
    """1 - ESS and the log-weights of ``n`` samples of the (probability-flow) ODE (Sun et al.
    eq. (64)), scored by :func:`pdesampler.evaluate`; with ``full``, also dstd and W2 against
    exact samples."""
    report = evaluate(residual, n_samples=n, seed=seed, nll=False, sinkhorn_max_samples=W2_POINTS)
    log_w = report.output.log_weights(residual.target).double()
    out = {"one_minus_ess": report.metrics["one_minus_ess"], "log_w": log_w}
    if full:
        out.update(dstd=report.metrics["dstd"], w2=report.metrics["w2"])
    return out


def log_z_error(residual, log_w: Tensor) -> dict:
    """dlogZ = |log Z - mean log w| with its standard error sqrt(Var(log w) / N), from the
    finite log-weights (the count of the others is reported)."""
    finite = log_w[torch.isfinite(log_w)]
    return {
        "dlogZ": delta_log_z(residual.target.log_Z, finite.mean()),
        "dlogZ_stderr": float(finite.std() / math.sqrt(len(finite))),
        "n_dlogZ": len(log_w),
        "n_nonfinite": len(log_w) - len(finite),
    }


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


def curve_point(args, residual, batches, seconds: float, steps: int) -> dict:
    point = {"seconds": seconds, "steps": steps, **batch_losses(residual, batches)}
    point["one_minus_ess"] = sample_metrics(residual, args.n_curve, args.seed + 2, False)[
        "one_minus_ess"
    ]
    return point


def screen_metrics(args, residual, batches) -> dict:
    """Every arm: the losses on the fixed batches, and 1 - ESS, dlogZ, dstd and W2 from one
    sampling seed of ``--n-screen`` samples."""
    m = sample_metrics(residual, args.n_screen, args.seed + 10)
    return {
        **batch_losses(residual, batches),
        "one_minus_ess": m["one_minus_ess"], **log_z_error(residual, m["log_w"]),
        "w2": m["w2"], "dstd": m["dstd"], "evaluation": f"1 seed x {args.n_screen}",
    }  # fmt: skip


def confirm_metrics(args, residual) -> dict:
    """The compared arms: 1 - ESS per sampling seed (``--eval-seeds`` x ``--n-eval``), and dlogZ
    with its standard error from all of those samples pooled."""
    seeds = [
        sample_metrics(residual, args.n_eval, args.seed + 20 + k, full=False)
        for k in range(args.eval_seeds)
    ]
    ess = [s["one_minus_ess"] for s in seeds]
    return {
        "one_minus_ess": statistics.mean(ess), "one_minus_ess_seeds": ess,
        "one_minus_ess_spread": max(ess) - min(ess),
        **log_z_error(residual, torch.cat([s["log_w"] for s in seeds])),
        "evaluation": f"{args.eval_seeds} seeds x {args.n_eval}",
    }  # fmt: skip


def run_arm(args, problem: dict, start_state: dict, batches: dict, arm: str, lr=None) -> dict:
    """Continue from ``start_state`` for ``--arm-seconds`` with one arm; score it."""
    residual = restored(problem, args, start_state)
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
    out = screen_metrics(args, residual, batches)
    out["state"] = {k: v.detach().clone() for k, v in residual.state_dict().items()}
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
    residual = restored(problem, args, state)
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
    residual = restored(problem, args, state)
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


def best_arms(arms: dict) -> tuple[str, str]:
    """The continued-Adam run and the second-order arm with the lowest screened 1 - ESS."""
    adam_runs = [k for k in arms if k.startswith("adam")]
    second_order = [k for k in arms if not k.startswith("adam")]
    key = lambda k: arms[k]["one_minus_ess"]
    return min(adam_runs, key=key), min(second_order, key=key)


def confirm(args, problem: dict, arm: dict) -> None:
    """Re-score ``arm`` on more samples and seeds (:func:`confirm_metrics`); the screening
    figures move under ``"screen"``."""
    residual = restored(problem, args, arm["state"])
    keys = ("one_minus_ess", "dlogZ", "dlogZ_stderr", "n_dlogZ", "n_nonfinite", "evaluation")
    arm["screen"] = {k: arm[k] for k in keys}
    arm.update(confirm_metrics(args, residual))


def compare(arms: dict, adam_key: str, best: str, start: dict) -> dict:
    """Ratios continued Adam / the best second-order arm."""
    adam, gn = arms[adam_key], arms[best]
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


def plot(path: Path, label: str, arms: dict, start: dict) -> Path:
    """Loss and 1 - ESS against extra wall time, every arm, into ``path``."""
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--arms", nargs="+", default=["adam", *ARMS], choices=["adam", *ARMS])
    parser.add_argument("--plateau-steps", type=int, default=8000, help="Adam steps (batch 1024)")
    parser.add_argument("--arm-seconds", type=float, default=120.0)
    parser.add_argument("--adam-lrs", type=float, nargs="+", default=[3e-2, 1e-2, 3e-3, 1e-3])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--curve-points", type=int, default=4)
    parser.add_argument("--n-curve", type=int, default=4000)
    parser.add_argument("--n-screen", type=int, default=20_000, help="samples to score each arm")
    parser.add_argument("--n-eval", type=int, default=34_000, help="per seed, compared arms")
    parser.add_argument("--eval-seeds", type=int, default=3)
    parser.add_argument("--fixed-batch", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "bench_gn.json"))
    parser.add_argument("--plateau-only", action="store_true", help="train and save plateaus")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--from-scratch-only", action="store_true",
                        help="only the from-scratch comparison against the best Adam")  # fmt: skip
    parser.add_argument("--scratch-seconds", type=float, default=None,
                        help="its total budget per run (default: SCRATCH_SECONDS)")  # fmt: skip
    parser.add_argument("--scratch-lrs", type=float, nargs="+", default=[3e-3, 1e-2, 3e-2])
    parser.add_argument("--scratch-fractions", type=float, nargs="+", default=[0.33, 0.5],
                        help="SPRING's shares of the budget")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2, help="from-scratch runs at a time")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.from_scratch_only:
        scratch_main(args)
        return

    out = Path(args.out)
    report = {"settings": vars(args), "threads": torch.get_num_threads(), "arms": ARMS}
    for name in args.problems:
        start_state = plateau(args, name, PROBLEMS[name])
        if args.plateau_only:
            continue
        report[name] = problem_entry(args, name, start_state, out)
        save(out, report, name)
    print(f"wrote {out}")


def problem_entry(args, name: str, start_state: dict, out: Path) -> dict:
    """Every arm of problem ``name`` from its plateau ``start_state``, the step timings, the
    confirmed comparison of the best arms and the figure, printed as they finish."""
    problem = PROBLEMS[name]
    residual = restored(problem, args, start_state["model"])
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
                f"1-ESS {m['one_minus_ess']:.3e} "
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
    if any(a.startswith("adam") for a in arms) and not all(a.startswith("adam") for a in arms):
        adam_key, best = best_arms(arms)
        for key in (adam_key, best):
            confirm(args, problem, arms[key])
        entry.update(compare(arms, adam_key, best, start))
        for key in (adam_key, best):
            m = arms[key]
            print(
                f"{name:11} {key:13} confirmed: 1-ESS {m['one_minus_ess']:.3e} "
                f"(spread {m['one_minus_ess_spread']:.1e}) dlogZ {m['dlogZ']:.2e} "
                f"+- {m['dlogZ_stderr']:.1e} on {m['n_dlogZ']} samples",
                flush=True,
            )
        print(
            f"{name}: continued Adam / {entry['best_arm']}: loss {entry['loss_ratio']:.2f}x, "
            f"1-ESS {entry['one_minus_ess_ratio']:.2f}x, dlogZ {entry['dlogZ_ratio']:.2f}x "
            f"(significant: {entry['dlogZ_difference_significant']})",
            flush=True,
        )
    figure = plot(out.with_name(f"{out.stem}_{name}.png"), problem["label"], arms, start)
    entry["figure"] = figure.name  # next to the JSON
    for arm in arms.values():
        arm.pop("state")
    return entry


#: Total training seconds per run of the from-scratch comparison (one torch thread).
SCRATCH_SECONDS = {"gmm9": 120.0, "mw5": 300.0, "gmm9_logfp": 120.0}


def scratch_main(args) -> None:
    """``--from-scratch-only``: :func:`from_scratch.compare` per problem, into
    ``from_scratch.<problem>`` of ``--out``."""
    out = Path(args.out)
    for name in args.problems:
        problem = PROBLEMS[name]
        budget = args.scratch_seconds or SCRATCH_SECONDS[name]
        entry = from_scratch.compare(name, problem["preset"], problem["loss"], budget, args)
        merged = json.loads(out.read_text()) if out.exists() else {}
        key = name if not args.seed else f"{name}_seed{args.seed}"
        merged.setdefault("from_scratch", {})[key] = entry
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, merged)
        a, g = entry["adam"], entry["adam_gn"]
        print(
            f"{name}, {budget:g} s from scratch: best Adam (lr {entry['adam_best_lr']:g}, "
            f"bracketed: {entry['adam_lr_bracketed']}) 1-ESS {a['one_minus_ess']:.3e} dlogZ "
            f"{a['dlogZ']:.2e}; Adam + SPRING ({entry['spring_best_time_fraction']:g} of the "
            f"budget) 1-ESS {g['one_minus_ess']:.3e} dlogZ {g['dlogZ']:.2e}; ratio "
            f"{entry['one_minus_ess_ratio']:.2f}x on {a['n_samples']} samples each",
            flush=True,
        )
    print(f"wrote {out}")


def save(out: Path, report: dict, name: str) -> None:
    """Write ``report``'s entry ``name`` into ``out``, keeping the other problems already there
    (so problems can run in separate processes), with GMM-9's ratios at the top level."""
    merged = json.loads(out.read_text()) if out.exists() else {}
    merged.update({k: v for k, v in report.items() if k not in PROBLEMS or k == name})
    if "loss_ratio" in merged.get("gmm9", {}):
        for key in ("loss_ratio", "one_minus_ess_ratio", "dlogZ_ratio", "dlogZ_stderr"):
            merged[key] = merged["gmm9"][key]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, merged)


if __name__ == "__main__":
    main()
