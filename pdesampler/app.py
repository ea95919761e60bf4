"""pdesampler's command line (Hydra): ``python -m pdesampler.app`` or ``benchmarks/run.py``.

One run:    python benchmarks/run.py target=gmm9 loss=logce optim.steps=2000
A preset:   python benchmarks/run.py problem=mw5 loss=logce   (configs/problem/; target=mw5 alone too)
A suite:    python benchmarks/run.py suite=quick      (smoke | quick | paper; scale=full on a GPU)

The configs are the package's own (``pdesampler/configs/``); a suite starts each of its runs as
``python -m pdesampler.app`` in a child process (:mod:`pdesampler.launch`).
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pdesampler.launch import LOCKED_EXIT, RunLockedError, follow_parent
from pdesampler.problems import problem_overrides
from pdesampler.runner import run_experiment
from pdesampler.suite import load_suite, run_suite

__all__ = ["cli", "main"]

# Overrides every run of a suite inherits from the suite's own command line.
_INHERITED = ("seed", "device", "dtype", "progress")


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    """One run, or with ``suite=<name>`` every run of that suite."""
    if cfg.get("suite") is not None:
        overrides = HydraConfig.get().overrides.task
        base = [o for o in overrides if o.split("=", 1)[0].lstrip("+") in _INHERITED]
        run_suite(load_suite(cfg), base)
        return
    follow_parent()  # a run started by a suite dies with it
    try:
        metrics = run_experiment(cfg, HydraConfig.get().runtime.output_dir)
    except RunLockedError as err:
        print(err, file=sys.stderr)
        sys.exit(LOCKED_EXIT)
    keys = ("loss", "dlogZ", "ess", "w2", "dstd", "energy_distance", "nll", "train_seconds")
    print(" ".join(f"{k}={metrics.get(k)!r}" for k in keys if k in metrics))


def cli() -> None:
    """The command line: :func:`main` with the ``problem=`` alias applied to ``sys.argv``."""
    try:
        sys.argv[1:] = problem_overrides(sys.argv[1:])
    except ValueError as err:
        sys.exit(f"error: {err}")
    sys.exit(main())


if __name__ == "__main__":
    cli()
