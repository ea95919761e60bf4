"""Seconds per Adam step, eager against ``torch.compile`` (``optim.compile``), per problem and loss.

    python benchmarks/bench_compile.py                     # every case, one thread (~6 min)
    python benchmarks/bench_compile.py --cases mw5:logce --threads 2

Each case builds the run of ``run.py problem=<p> loss=<l>`` (its preset network, batch and
collocation), draws one collocation batch and times full Adam steps on it (loss, backward,
clipping, update): ``--steps`` eager steps, then the compiled loss's first call (the compilation)
and ``--steps`` compiled steps, both from the same initial weights. A residual that does not
compile falls back to eager (``fallback``). Prints a Markdown table; writes
``results/bench_compile.json``.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from pdesampler.collocation import make_collocation
from pdesampler.compiling import CompiledOrEager
from pdesampler.problems import compose_run
from pdesampler.report import write_json
from pdesampler.runner import build, resolve_dtype, run_collocation

ROOT = Path(__file__).resolve().parents[1]
CASES = [
    "gmm9:logce", "mw5:logce", "fab_mw8:logce", "mw50:logce", "gmm40:linear", "fab_mw8:learned",
    "mw5:logfp", "gmm40:gradflow", "mw50:logce:trace.kind=hutchinson",
]  # fmt: skip


def time_steps(residual, loss_fn, x, t, steps: int) -> tuple[float, float]:
    """(seconds of the first step, mean seconds of the next ``steps``) of Adam on ``(x, t)``."""
    params = [p for p in residual.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = loss_fn(x, t)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return first, (time.perf_counter() - start) / steps


def run_case(case: str, steps: int) -> dict:
    problem, loss, *extra = case.split(":")
    cfg = compose_run([f"problem={problem}", f"loss={loss}", *extra])
    residual = build(cfg, torch.device("cpu"), resolve_dtype(str(cfg.dtype)))
    kind, options = run_collocation(cfg, residual)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    x, t = make_collocation(kind, residual, generator, **options)(int(cfg.batch_size))
    initial = copy.deepcopy(residual.state_dict())
    _, eager = time_steps(residual, residual.loss, x, t, steps)
    residual.load_state_dict(initial)
    compiled_loss = CompiledOrEager(residual.loss, case)
    first, compiled = time_steps(residual, compiled_loss, x, t, steps)
    return {
        "case": case, "batch": int(cfg.batch_size), "eager_s_per_step": eager,
        "compiled_s_per_step": compiled, "compile_seconds": first,
        "speedup": eager / compiled, "fallback": not compiled_loss.compiled,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=CASES, help="problem:loss[:override...]")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "results" / "bench_compile.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print("| case | batch | eager s/step | compiled s/step | speedup | first call (s) |")
    print("|---|---|---|---|---|---|")
    for case in args.cases:
        row = run_case(case, args.steps)
        rows.append(row)
        speedup = "fallback (eager)" if row["fallback"] else f"{row['speedup']:.2f}x"
        print(
            f"| {case} | {row['batch']} | {row['eager_s_per_step']:.4f} | "
            f"{row['compiled_s_per_step']:.4f} | {speedup} | {row['compile_seconds']:.1f} |",
            flush=True,
        )
    write_json(Path(args.out), {"threads": args.threads, "steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
