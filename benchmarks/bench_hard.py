"""Quality per CPU-minute on the hard targets: ESS (and the goal's other metrics) against wall
time, one run per method with the problem's tuned preset (configs/problem/).

    python benchmarks/bench_hard.py                                # every arm (about 10 h)
    python benchmarks/bench_hard.py --problems fab_mw8 --methods learned --scale 0.5
    python benchmarks/bench_hard.py --threads 1 --problems mw5 &   # two goals side by side
    python benchmarks/bench_hard.py --threads 1 --problems gmm40 &

Each run is built from the same Hydra config as ``python benchmarks/run.py problem=<p>
loss=<m>``, trains for the goal's budget (times ``--scale``) and keeps a copy of the weights at
``--curve-points`` wall-clock marks; the copies are scored after training (so scoring costs no
training time) on ``--n-curve`` samples, the final weights on the config's ``eval.n_samples``.
The resolved config and final weights of each run go to ``results/bench_hard/<problem>_<method>/``.
Finished runs are merged into ``results/bench_hard.json`` one at a time and are not redone
(``--force`` redoes them), so goals can run in separate processes and an interrupted benchmark
resumes. The figures ``results/bench_hard_<problem>.png`` show ESS and |dlogZ| (and the NLL gap
where the goal has one) against wall time, one line per method.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from omegaconf import DictConfig, OmegaConf

from pdesampler.problems import compose_run
from pdesampler.report import write_json
from pdesampler.runner import build, evaluate_run, resolve_device, resolve_dtype, train_run
from pdesampler.snapshots import Snapshots, with_params

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"

# The goals of the hard targets: budget in seconds, the methods raced (Hydra overrides on
# top of the problem preset) and the thresholds. "nll_gap": forward NLL minus the entropy. The
# MW 5/5/4 goal is logCE's (Adam alone, and Adam then SPRING: optim=adam_gn); its gradflow run
# shows whether a trained gradient flow samples finitely.
GOALS = {
    "mw5": {
        "label": "MW 5/5/4", "seconds": 600, "goal": {"ess": 0.99, "dlogZ": 0.01},
        "methods": {
            "logce": ["loss=logce"],
            "logce_eager": ["loss=logce", "optim.compile=false"],  # the compiled step's worth
            # SPRING until the budget ends (its 500-step cap ends it at ~150 of its 200 s)
            "logce_spring": ["loss=logce", "optim=adam_gn", "optim.gn.steps=100000"],
            "gradflow": ["loss=gradflow"],
        },
    },
    # Not one of the goals: the fine-tuning preset's network-size check on GMM-9 (width 128
    # with Adam against optim=adam_gn, which is width 64 with SPRING), next to the MW 5/5/4 one.
    "gmm9": {
        "label": "GMM-9", "seconds": 600, "goal": {"ess": 0.999, "dlogZ": 0.001},
        "methods": {"logce": ["loss=logce"], "logce_spring": ["loss=logce", "optim=adam_gn"]},
    },
    "fab_mw8": {
        "label": "ManyWell-8 (FAB)", "seconds": 900, "goal": {"ess": 0.9},
        # The preset trains with one Hutchinson probe (trace: hutchinson). Earlier runs used the
        # exact divergence: their results carry the suffix "_exact".
        "methods": {
            **{m: [f"loss={m}"] for m in ("linear", "learned", "gradflow", "logce")},
            "learned_exact": ["loss=learned", "trace.kind=exact"],  # d = 8 passes for div v
            # the MW 5/5/4 recipe: compiled Adam, then SPRING until the budget ends (width 64)
            "logce_spring": ["loss=logce", "optim=adam_gn", "optim.gn.steps=100000"],
            # log z started at the prior's estimate (log Z = 41.2; from 0 Adam ends 37-40 short)
            "logce_logz": ["loss=logce", "+loss.log_z_init=prior"],
            "logce_logz_spring": [
                "loss=logce", "+loss.log_z_init=prior", "optim=adam_gn", "optim.gn.steps=100000"
            ],
            # half the batch from cached trajectories (2000 paths every 50 steps), half from the
            # box that moves from the prior's to the target's: the PDE is also checked off the
            # flow's own paths
            "learned_mixed": [
                "loss=learned", "collocation.kind=trajectory_cache",
                "collocation.options={n_trajectories:2000,n_times:51,every:50,fraction:0.5}",
            ],
            # trained on rho^beta, beta rising from 0.3 (0.1) to 1 over the first half of the
            # budget: shallow wells first, so that every pair splits before the barriers rise
            "learned_temper": ["loss=learned", "optim.temper_from=0.3"],
            "learned_temper01": ["loss=learned", "optim.temper_from=0.1"],
            # beta at 1 from a quarter of the budget on: longer to settle the wells' masses
            "learned_temper_q": ["loss=learned", "optim.temper_from=0.3", "optim.temper_until=0.25"],
            # paths started from the prior widened 1.5x (2x): the PDE also checked along paths
            # from the prior's tails, which feed the modes the bulk's paths miss
            "learned_spread15": ["loss=learned", "collocation.options={spread:1.5}"],
            "learned_spread2": ["loss=learned", "collocation.options={spread:2.0}"],
            # C_t started at 0 instead of the prior's estimate of log Z (41.2): the old default
            "learned_logz0": ["loss=learned", "+loss.log_z_init=0"],
            # 2000 prior paths every 50 steps instead of 20 fresh paths per step
            "learned_cache": [
                "loss=learned", "collocation.kind=trajectory_cache",
                "collocation.options={n_trajectories:2000,n_times:51,every:50,fraction:1.0}",
            ],
        },
    },
    "gmm40": {
        "label": "GMM-40", "seconds": 900, "goal": {"ess": 0.5, "nll_gap": 0.2},
        "methods": {
            # the preset's width 256 / depth 4: the best at 10 000 steps (NLL gap 0.12)
            **{m: [f"loss={m}"] for m in ("linear", "learned", "gradflow")},
            "learned_wide": ["loss=learned", "prior_std=20"],  # a prior as wide as the modes
            # the smaller networks the preset had before (results renamed with these suffixes)
            "gradflow_w128d3": ["loss=gradflow", "net.width=128", "net.depth=3"],
            "gradflow_w256d3": ["loss=gradflow", "net.depth=3"],
            "gradflow_b2048": ["loss=gradflow", "batch_size=2048"],
            # the MW 5/5/4 recipe: compiled Adam, then SPRING until the budget ends (width 64)
            "gradflow_spring": ["loss=gradflow", "optim=adam_gn", "optim.gn.steps=100000"],
        },
    },
    "mw50": {
        "label": "MW 50/5/2", "seconds": 1200, "goal": {"ess": 0.5},
        # scoring at d = 50 costs 50 passes per divergence: fewer samples and steps, as the suite
        "eval": ["eval.n_samples=2000", "sampler.steps=50", "eval.n_nll=500"], "n_curve": 500,
        "methods": {
            "logce_exact": ["loss=logce", "trace.kind=exact"],
            "logce_hutchinson": ["loss=logce", "trace.kind=hutchinson"],
            "logce_hutchinson_logz": [
                "loss=logce", "trace.kind=hutchinson", "+loss.log_z_init=prior"
            ],
            # the MW 5/5/4 recipe: compiled Adam, then SPRING until the budget ends (width 64)
            "logce_exact_logz_spring": [
                "loss=logce", "trace.kind=exact", "+loss.log_z_init=prior",
                "optim=adam_gn", "optim.gn.steps=100000",
            ],
            "logce_hutchinson_logz_spring": [
                "loss=logce", "trace.kind=hutchinson", "+loss.log_z_init=prior",
                "optim=adam_gn", "optim.gn.steps=100000",
            ],
        },
    },
}  # fmt: skip


def run_config(problem: str, overrides: list[str]) -> DictConfig:
    """The config ``run.py problem=<problem> <overrides>`` would run."""
    return compose_run([f"problem={problem}", *overrides])


def goal_metrics(metrics: dict, entropy: float | None) -> dict:
    keys = ("ess", "dlogZ", "nll", "w2", "dstd", "energy_distance", "n_nonfinite_samples")
    out = {k: metrics.get(k) for k in keys}
    if entropy is not None and out.get("nll") is not None:
        out["nll_gap"] = out["nll"] - entropy
    return out


def meets(point: dict, goal: dict) -> bool:
    """Whether ``point`` reaches every threshold: ESS at least, the others at most."""
    for key, threshold in goal.items():
        value = point.get(key)
        if value is None or not math.isfinite(value):
            return False
        if (value < threshold) if key == "ess" else (abs(value) > threshold):
            return False
    return True


def run_method(args, problem: str, spec: dict, overrides: list[str], folder: Path) -> dict:
    """Train one method for the goal's budget, score its snapshots and final weights; the
    resolved config and the final weights go to ``folder``."""
    seconds = spec["seconds"] * args.scale
    cfg = run_config(
        problem,
        [*overrides, *spec.get("eval", []), f"optim.max_seconds={seconds}",
         "optim.steps=100000000", f"seed={args.seed}", "progress=false", *args.override],
    )  # fmt: skip
    residual = build(cfg, resolve_device(str(cfg.device)), resolve_dtype(str(cfg.dtype)))
    marks = [seconds * (i + 1) / args.curve_points for i in range(args.curve_points - 1)]
    snaps = Snapshots(marks, wall_clock=True)
    result = train_run(cfg, residual, on_step=snaps)
    train_seconds = time.perf_counter() - snaps.start
    folder.mkdir(parents=True, exist_ok=True)
    kept = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "out_dir"])  # out_dir needs Hydra
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(kept, resolve=True))
    torch.save(residual.state_dict(), folder / "model.pt")
    entropy = getattr(residual.target, "entropy", None) if "nll_gap" in spec["goal"] else None
    n_curve = spec.get("n_curve", args.n_curve)
    curve = []
    for elapsed, _, params in snaps.taken:
        m = evaluate_run(
            cfg, with_params(residual, params), n_samples=n_curve, nll=entropy is not None
        )
        curve.append({"seconds": elapsed, **goal_metrics(m.metrics, entropy)})
    start = time.perf_counter()
    final = goal_metrics(evaluate_run(cfg, residual).metrics, entropy)
    final["eval_seconds"] = time.perf_counter() - start
    curve.append({"seconds": train_seconds, **final})
    reached = next((p["seconds"] for p in curve if meets(p, spec["goal"])), None)
    return {
        "overrides": overrides, "budget_seconds": seconds, "train_seconds": train_seconds,
        "steps": result.adam.steps + len(result.gn_history), "threads": torch.get_num_threads(),
        "final": final, "curve": curve, "goal_met": meets(final, spec["goal"]),
        "goal_reached_at_seconds": reached, "entropy": entropy,
        "n_curve": n_curve, "n_final": int(cfg.eval.n_samples),
    }  # fmt: skip


def plot(report: dict, problem: str, path: Path) -> Path:
    """ESS and dlogZ against wall time on ``problem``, one line per method, the goal dashed;
    where the goal has an NLL gap, a third panel shows it (a model that misses modes can have
    ESS ~ 1)."""
    goal = GOALS[problem]["goal"]
    panels = ["ess", "dlogZ", *(["nll_gap"] if "nll_gap" in goal else [])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.4), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        for method, run in report[problem]["methods"].items():
            points = [
                (p["seconds"] / 60, abs(p[key])) for p in run["curve"] if p.get(key) is not None
            ]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=method)
        if key in goal:
            ax.axhline(goal[key], color="grey", ls="--", lw=1, label="goal")
        if key == "ess":
            ax.set(ylabel="ESS", ylim=(0, 1.02))
        else:
            label = {"dlogZ": "|dlogZ|", "nll_gap": "forward NLL - entropy (nats)"}[key]
            ax.set(ylabel=label, yscale="log")
        ax.set(title=GOALS[problem]["label"], xlabel="CPU minutes")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_run(out: Path, problem: str, method: str, run: dict) -> dict:
    """Merge one finished run into ``out`` (re-read first: other processes write it too)."""
    report = json.loads(out.read_text()) if out.exists() else {}
    entry = report.setdefault(problem, {"label": GOALS[problem]["label"], "methods": {}})
    entry["goal"] = GOALS[problem]["goal"]
    entry["methods"][method] = run
    # best: the lowest NLL gap where the goal has one (a collapsed model can have ESS ~ 1)
    by_gap = "nll_gap" in GOALS[problem]["goal"]

    def score(run: dict) -> float:
        value = run["final"].get("nll_gap" if by_gap else "ess")
        return -math.inf if value is None else (-value if by_gap else value)

    entry["best_method"] = max(entry["methods"], key=lambda m: score(entry["methods"][m]))
    entry["goal_met"] = any(r["goal_met"] for r in entry["methods"].values())
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", default=list(GOALS), choices=list(GOALS))
    parser.add_argument("--methods", nargs="+", default=None, help="default: every method")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each budget")
    parser.add_argument("--curve-points", type=int, default=6)
    parser.add_argument(
        "--n-curve", type=int, default=2000, help="samples per curve point (MW50: 500)"
    )
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides for all runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--force", action="store_true", help="redo runs already in --out")
    parser.add_argument("--out", default=str(RESULTS / "bench_hard.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    for problem in args.problems:
        spec = GOALS[problem]
        for method, overrides in spec["methods"].items():
            if args.methods and method not in args.methods:
                continue
            done = json.loads(out.read_text()).get(problem, {}) if out.exists() else {}
            if method in done.get("methods", {}) and not args.force:
                print(f"{problem} {method}: done, skipped (--force redoes it)", flush=True)
                continue
            folder = out.with_suffix("") / f"{problem}_{method}"
            run = run_method(args, problem, spec, overrides, folder)
            report = save_run(out, problem, method, run)
            final = run["final"]
            print(
                f"{problem:8} {method:17} {run['train_seconds']:6.0f} s {run['steps']:6d} steps | "
                + " ".join(f"{k} {v:.4g}" for k, v in final.items() if v is not None)
                + f" | goal {'met' if run['goal_met'] else 'missed'}",
                flush=True,
            )
            plot(report, problem, out.with_name(f"{out.stem}_{problem}.png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
