"""Metrics against wall time: logCE trained for 1, 3 and 10 minutes on this machine.

    python benchmarks/bench_walltime.py                          # GMM-9 and MW 5/5/4, 60/180/600 s
    python benchmarks/bench_walltime.py --budgets 30 60 --targets gmm9

Each budget is its own run from the same seed (the learning rate decays over the budget, so a
short run is not a prefix of a long one). The "plain" row repeats a first attempt: an MLP of
width 64 with box collocation, batch 1024, Adam, at 200 s. Prints a table and writes
``results/bench_walltime.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from bench_gn import PROBLEMS, build

from pdesampler import evaluate, train
from pdesampler.problems import problem_settings
from pdesampler.report import write_json

ROOT = Path(__file__).resolve().parents[1]


def run(name: str, seconds: float, width: int, collocation: str, options: dict, seed: int):
    residual = build(PROBLEMS[name], width, seed)
    result = train(
        residual,
        adam={"steps": 10**7, "checkpoint_every": 0},
        batch_size=1024,
        collocation=collocation,
        collocation_options=options,
        seed=seed,
        max_seconds=seconds,
        progress=False,
    )
    m = evaluate(residual, n_samples=10_000, seed=seed + 1, nll=False, sinkhorn_max_samples=2000)
    return {
        "target": name,
        "seconds": seconds,
        "width": width,
        "collocation": collocation,
        "prior_box_width": options["prior_box_width"],
        "steps": result.adam.steps,
        "sec_per_it": result.adam.seconds_per_step,
        "first_step_seconds": result.adam.first_step_seconds,
        **{k: m.metrics[k] for k in ("ess", "dlogZ", "log_Z_lb", "log_z_learned", "dstd", "w2")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=["gmm9", "mw5"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[60, 180, 600])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--no-plain", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "results" / "bench_walltime.json"))
    args = parser.parse_args()
    rows = []
    header = f"{'target':6} {'setup':28} {'s':>5} {'steps':>6} {'ESS':>7} {'dlogZ':>8} {'dstd':>7}"
    print(header, flush=True)
    for name in args.targets:
        preset = problem_settings(PROBLEMS[name]["preset"])
        tuned = (preset["collocation"], preset["collocation_options"])
        setups = [(args.width, *tuned, b) for b in args.budgets]
        if not args.no_plain:
            setups.append((64, "box", {"prior_box_width": 5.0}, 200.0))
        for width, collocation, options, seconds in setups:
            row = run(name, seconds, width, collocation, options, args.seed)
            rows.append(row)
            label = f"w{width} {collocation} box+-{options['prior_box_width']:g}"
            print(
                f"{name:6} {label:28} {seconds:5.0f} {row['steps']:6d} {row['ess']:7.4f} "
                f"{row['dlogZ']:8.4f} {row['dstd']:7.4f}",
                flush=True,
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"threads": torch.get_num_threads(), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
