"""Adam's schedule against wall time: a grid of overrides, each run at fixed budgets.

Every arm is one ``benchmarks/run.py`` process (one torch thread, ``--jobs`` at a time) with
``optim.max_seconds`` set to the budget and no step cap, so arms compare at equal wall time.
An arm is a point of the Cartesian product of the ``--grid`` values; ``--arm`` adds named
override lists. Finished runs are not redone (their ``metrics.json`` is complete), so a grid
can be widened and rerun. Writes ``results/bench_schedule/<problem>/<budget>s/<arm>/seed<k>/``,
``results/bench_schedule.json`` (every run's metrics), a Markdown table on stdout and
``results/bench_schedule_<problem>.png`` (1 - ESS and dlogZ against the budget, one line an arm).

    python benchmarks/bench_schedule.py --problems gmm9:logce --budgets 60 120 \\
        --grid optim.lr=3e-3,1e-2,3e-2,1e-1 optim.schedule=exponential,cosine

A problem is a target config name (``gmm9``: its preset applies) or a target class
(``unseen_targets.Banana``: the default rule applies), then ``:`` and the loss. The default
rule's check on targets no preset was tuned on:

    python benchmarks/bench_schedule.py --budgets 180 --problems \\
        unseen_targets.RotatedMixture:logce unseen_targets.Banana:logce unseen_targets.Funnel2D:logce
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from _runs import RESULTS, SCREEN, arm_name, run_all, target_override

OUT = RESULTS / "bench_schedule"
COLUMNS = ("ess", "dlogZ", "w2", "steps", "train_seconds", "score_seconds")


def grid_arms(grid: list[str]) -> dict[str, list[str]]:
    """The Cartesian product of ``key=v1,v2,...`` entries, one override list per arm."""
    axes = []
    for entry in grid:
        key, values = entry.split("=", 1)
        axes.append([f"{key}={v}" for v in values.split(",")])
    return {arm_name(list(combo)): list(combo) for combo in itertools.product(*axes)}


def arm_dir(problem: str, budget: float, arm: list[str], seed: int) -> Path:
    return OUT / problem.rsplit(".", 1)[-1] / f"{budget:g}s" / arm_name(arm) / f"seed{seed}"


def plot(problem: str, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm in sorted({r["arm"] for r in rows}):
        mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["budget"])
        budgets = sorted({r["budget"] for r in mine})
        for ax, key in zip(axes, ("one_minus_ess", "dlogZ"), strict=True):
            vals = []
            for b in budgets:
                seen = [r[key] for r in mine if r["budget"] == b and r[key] is not None]
                vals.append(sum(seen) / len(seen) if seen else float("nan"))
            ax.plot(budgets, vals, marker="o", label=arm)
    for ax, label in zip(axes, ("1 - ESS", "|dlogZ|"), strict=True):
        ax.set(xscale="log", yscale="log", xlabel="training budget (s, one thread)", ylabel=label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6, loc="best")
    fig.suptitle(f"{problem}: Adam schedules at equal wall time")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", nargs="+", default=["gmm9:logce"], help="target:loss")
    parser.add_argument("--budgets", nargs="+", type=float, default=[120.0])
    parser.add_argument("--grid", nargs="*", default=[], help="key=v1,v2 (Cartesian product)")
    parser.add_argument("--arm", nargs="*", default=[], help="overrides of one arm, ';'-joined")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    args = parser.parse_args()

    arms = grid_arms(args.grid) if args.grid else {}
    for entry in args.arm:
        overrides = [o for o in entry.split(";") if o]
        arms[arm_name(overrides)] = overrides
    arms = arms or {"default": []}
    jobs = []
    for spec in args.problems:
        problem, loss = spec.split(":")
        for budget in args.budgets:
            for arm in arms.values():
                for seed in args.seeds:
                    overrides = [target_override(problem), f"loss={loss}",
                                 f"optim.max_seconds={budget:g}", f"seed={seed}", *SCREEN, *arm]  # fmt: skip
                    jobs.append((arm_dir(problem, budget, arm, seed), overrides))
    print(f"{len(jobs)} run(s), {args.jobs} at a time", flush=True)
    run_all(jobs, args.jobs, label=lambda out: str(out.relative_to(OUT)))
    collect(args.problems)


def collect(problems: list[str]) -> None:
    """Every finished run under ``results/bench_schedule/`` of ``problems``: the JSON, the
    table and the figures."""
    rows = []
    for spec in problems:
        problem = spec.split(":")[0].rsplit(".", 1)[-1]
        for path in sorted((OUT / problem).glob("*s/*/seed*/metrics.json")):
            m = json.loads(path.read_text())
            ess = m.get("ess")
            rows.append({
                "problem": problem, "budget": float(path.parts[-4][:-1]), "arm": path.parts[-3],
                "seed": int(path.parts[-2][4:]), **{k: m.get(k) for k in COLUMNS},
                "one_minus_ess": None if ess is None else 1 - ess,
            })  # fmt: skip
    previous = (
        json.loads((RESULTS / "bench_schedule.json").read_text())
        if (RESULTS / "bench_schedule.json").exists()
        else []
    )
    keep = [r for r in previous if r["problem"] not in {row["problem"] for row in rows}]
    (RESULTS / "bench_schedule.json").write_text(json.dumps(keep + rows, indent=1))
    print("\n| problem | budget s | arm | seed | ESS | dlogZ | W2 | steps |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["problem"], r["budget"], -(r["ess"] or 0))):
        ess, dz, w2 = (r[k] for k in ("ess", "dlogZ", "w2"))
        print(
            f"| {r['problem']} | {r['budget']:g} | {r['arm']} | {r['seed']} | "
            f"{ess if ess is None else f'{ess:.4f}'} | {dz if dz is None else f'{dz:.4f}'} | "
            f"{w2 if w2 is None else f'{w2:.3f}'} | {r['steps']} |"
        )
    for problem in sorted({r["problem"] for r in rows}):
        plot(problem, [r for r in rows if r["problem"] == problem],
             RESULTS / f"bench_schedule_{problem}.png")  # fmt: skip


if __name__ == "__main__":
    main()
