r"""Reference log Z and posterior moments of the breast-cancer logistic regression (d = 31).

Annealed importance sampling (Neal 2001, "Annealed importance sampling") in the whitened
coordinates of the Laplace approximation N(w*, H^{-1}) (:func:`pdesampler.targets.logreg.laplace`):
w = w* + L^{-T} z with H = L L^T, so that the posterior in z is close to N(0, I). The path is
geometric, log f_b(z) = (1 - b) log N(z; 0, I) + b log pi(z), pi(z) = rho(w(z)) |det L|^{-1},
over ``--temps`` inverse temperatures b_k = (k / K)^2 (finer near the Laplace start, where
log pi - log N changes fastest); each step moves every particle with one Hamiltonian Monte Carlo
move (unit mass, ``--leapfrog`` leapfrog steps of size ``--eps``, Metropolis correction).

Each of ``--repeats`` independent runs of ``--particles`` particles gives
log Z_r = LSE(log w) - log P; the script prints their mean and its standard error
sd(log Z_r) / sqrt(R), the pooled estimate over all R P particles, the mean HMC acceptance
rate and the ESS fraction of the final weights, and writes the importance-weighted posterior
mean and standard deviation (pooled) to ``pdesampler/data/breast_cancer_reference.json``.

Run: ``OMP_NUM_THREADS=1 python benchmarks/reference_logreg.py`` (7 to 12 minutes on one core of
a busy 2-core machine).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import torch

from pdesampler.targets import BayesianLogisticRegression
from pdesampler.targets.logreg import breast_cancer_design, laplace

OUT = Path(__file__).resolve().parents[1] / "pdesampler" / "data" / "breast_cancer_reference.json"


def whitened(target: BayesianLogisticRegression):
    """``(log pi, grad log pi, to_w)`` in the Laplace-whitened coordinates ``z``."""
    signed = target.signed_design
    w_map, cov = laplace(signed, target.prior_std)
    chol_cov = torch.linalg.cholesky(cov)  # w = w* + C z with C C^T = H^{-1}
    log_det = float(chol_cov.diagonal().log().sum())  # |dw/dz|

    def to_w(z):
        return w_map + z @ chol_cov.T

    def log_pi(z):
        return target.log_prob(to_w(z)) + log_det

    def grad_log_pi(z):
        w = to_w(z)
        grad_w = -w / target.prior_std**2 + torch.sigmoid(-(w @ signed.T)) @ signed
        return grad_w @ chol_cov

    return log_pi, grad_log_pi, to_w


def ais_run(target, n: int, temps: int, eps: float, leapfrog: int, gen) -> tuple:
    """One AIS run: ``(log weights (n,), final w (n, d), mean acceptance)``."""
    log_pi, grad_log_pi, to_w = whitened(target)
    d = target.dim

    def log_n(z):
        return -0.5 * (z * z).sum(-1) - 0.5 * d * math.log(2 * math.pi)

    def log_f(z, b):
        return (1 - b) * log_n(z) + b * log_pi(z)

    def grad_f(z, b):
        return -(1 - b) * z + b * grad_log_pi(z)

    z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    log_w = torch.zeros(n, dtype=torch.float64)
    betas = [(k / temps) ** 2 for k in range(temps + 1)]
    accepted = 0.0
    for b_prev, b in itertools.pairwise(betas):
        log_w += (b - b_prev) * (log_pi(z) - log_n(z))
        p = torch.randn(n, d, generator=gen, dtype=torch.float64)
        z_new, p_new = z.clone(), p + 0.5 * eps * grad_f(z, b)
        for step in range(leapfrog):
            z_new = z_new + eps * p_new
            scale = eps if step < leapfrog - 1 else 0.5 * eps
            p_new = p_new + scale * grad_f(z_new, b)
        log_acc = log_f(z_new, b) - log_f(z, b) - 0.5 * ((p_new**2).sum(-1) - (p**2).sum(-1))
        accept = torch.rand(n, generator=gen, dtype=torch.float64).log() < log_acc
        z = torch.where(accept[:, None], z_new, z)
        accepted += float(accept.double().mean())
    return log_w, to_w(z), accepted / temps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--temps", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--leapfrog", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    target = BayesianLogisticRegression(*breast_cancer_design(), prior_std=1.0)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    runs = [
        ais_run(target, args.particles, args.temps, args.eps, args.leapfrog, gen)
        for _ in range(args.repeats)
    ]
    per_run = torch.tensor(
        [float(torch.logsumexp(lw, 0)) - math.log(len(lw)) for lw, _, _ in runs],
        dtype=torch.float64,
    )
    log_w = torch.cat([lw for lw, _, _ in runs])
    w_final = torch.cat([w for _, w, _ in runs])
    weights = torch.softmax(log_w, 0)
    mean = weights @ w_final
    std = (weights @ (w_final - mean) ** 2).sqrt()
    stderr = float(per_run.std(correction=1)) / math.sqrt(args.repeats)
    ess = float(torch.logsumexp(log_w, 0) * 2 - torch.logsumexp(2 * log_w, 0)) - math.log(
        len(log_w)
    )
    print(f"log Z per repeat: {[round(float(v), 4) for v in per_run]}")
    print(
        f"log Z = {float(per_run.mean()):.4f} +- {stderr:.4f} (standard error, {args.repeats} repeats)"
    )
    print(f"pooled log Z = {float(torch.logsumexp(log_w, 0)) - math.log(len(log_w)):.4f}")
    print(
        f"HMC acceptance {sum(a for _, _, a in runs) / len(runs):.3f}, weight ESS {math.exp(ess):.3f}"
    )
    print(f"{time.perf_counter() - start:.0f} s; args {vars(args)}")
    if not args.no_write:
        record = {
            "log_Z": float(per_run.mean()),
            "log_Z_stderr": stderr,
            "repeats": args.repeats,
            "command": "OMP_NUM_THREADS=1 python benchmarks/reference_logreg.py",
            "args": vars(args),
            "posterior_mean": mean.tolist(),
            "posterior_std": std.tolist(),
        }
        OUT.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
