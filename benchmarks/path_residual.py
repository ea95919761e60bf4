"""Where along the sampling path a trained model's log-weight error arises.

    python benchmarks/path_residual.py results/item3/tf4            # a finished run's folder
    python benchmarks/path_residual.py <run> --n 2000 --steps 400 --windows 1,0.7,0.5,0.3,0.1,0

For an ODE residual of the log-continuity form (logCE, the Boltzmann interpolations, the
gradient flow) a sample's log-weight is a boundary term plus the residual integrated along its
path (:mod:`pdesampler.diagnostics`). The script loads the run's model in float64, integrates
``--n`` paths with rk4 on ``--steps`` steps and prints, per time window of ``--windows``, the
ESS the model would have if its residual vanished there, beside the ESS of the whole budget, the
sampler's own ESS on the same paths (the two log-weights differ by a constant: the std of their
difference is the check) and the run's ESS from ``metrics.json``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pdesampler.diagnostics import log_weight_budget
from pdesampler.metrics import effective_sample_size
from pdesampler.runner import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished run's folder (config.yaml, model.pt)")
    parser.add_argument("--n", type=int, default=1000, help="paths")
    parser.add_argument("--steps", type=int, default=400, help="rk4 steps of a path")
    parser.add_argument("--windows", default="1,0.7,0.5,0.4,0.3,0.2,0.1,0", help="window edges")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = OmegaConf.load(args.run / "config.yaml")
    residual = build(cfg, torch.device("cpu"), torch.float64)
    residual.load_state_dict(torch.load(args.run / "model.pt", map_location="cpu"))
    generator = torch.Generator().manual_seed(int(cfg.seed) + 1)
    try:
        budget = log_weight_budget(residual, args.n, generator, args.steps)
    except ValueError as err:  # not an ODE residual of the log-continuity form: one line
        raise SystemExit(f"path_residual: {err}") from None

    gap = budget.sampled - budget.log_weights  # a constant where the identity holds
    metrics = args.run / "metrics.json"
    own = OmegaConf.load(metrics).get("ess") if metrics.exists() else None
    ess_budget = effective_sample_size(budget.log_weights)
    ess_sampled = effective_sample_size(budget.sampled)
    print(
        f"ESS of boundary + int r dt: {ess_budget:.4f}; the sampler's on the same paths: "
        f"{ess_sampled:.4f} (difference: std {gap.std():.2g} about {gap.mean():.4g}); the run's "
        f"own ESS: {own}; boundary std {budget.boundary.std():.3g}"
    )
    print("| t window | ESS if r = 0 there | window's integral, q01 / median / q99 |")
    print("|---|---|---|")
    edges = sorted(float(e) for e in args.windows.split(","))
    levels = torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64)
    for lo, hi in itertools.pairwise(edges):
        q = budget.window(lo, hi).quantile(levels).tolist()
        print(
            f"| [{lo:g}, {hi:g}] | {budget.ess_without(lo, hi):.4f} "
            f"| {q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f} |"
        )


if __name__ == "__main__":
    main()
