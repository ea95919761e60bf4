"""The Hydra app end to end: one run, the smoke suite, resume, and clear errors on bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pdesampler.losses import CATALOGUE
from pdesampler.runner import REQUIRED_METRICS

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "optim.steps=10", "batch_size=64", "net=small", "eval.n_samples=400", "eval.n_nll=100",
    "sampler.steps=10", "sampler.sde_steps=20", "eval.sinkhorn_max_samples=400", "progress=false",
]  # fmt: skip
TIMING_KEYS = {
    "train_seconds", "adam_seconds", "gn_seconds", "sec_per_it", "gn_sec_per_it",
    "first_step_seconds", "score_seconds",
}  # fmt: skip


def run_cli(*overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), *overrides],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"run.py {' '.join(overrides)} failed:\n{proc.stderr[-3000:]}")
    return proc


def test_one_run_writes_every_artifact_and_is_reproducible(tmp_path: Path) -> None:
    metrics = []
    for name in ("a", "b"):
        out = tmp_path / name
        run_cli("target=gaussian", "loss=logce", "seed=3", *FAST, f"out_dir={out}")
        for path in (".hydra/config.yaml", "metrics.json", "model.pt", "figures/marginals.png",
                     "figures/trajectories.png", "figures/samples_2d.png", "history.json"):  # fmt: skip
            assert (out / path).exists(), path
        data = json.loads((out / "metrics.json").read_text())
        assert set(REQUIRED_METRICS) <= set(data)
        for key in ("loss", "dlogZ", "w2", "ess", "dstd", "energy_distance", "nll"):
            assert math.isfinite(data[key]), key
        metrics.append({k: v for k, v in data.items() if k not in TIMING_KEYS})
    assert metrics[0] == metrics[1], "same seed on CPU must give identical metrics"


def test_smoke_suite_end_to_end_and_every_entry_has_finite_metrics(tmp_path: Path) -> None:
    run_cli("suite=smoke", f"suite.results_dir={tmp_path}", f"out_dir={tmp_path}")
    for path in ("results.csv", "results.json", "table.md", "figures/summary.png",
                 "figures/samples_2d_GMM_d_2.png"):  # fmt: skip
        assert (tmp_path / path).exists(), path
    rows = json.loads((tmp_path / "results.json").read_text())
    assert {row["method"] for row in rows} >= set(CATALOGUE)
    for row in rows:
        for key in ("dlogZ", "w2", "ess", "dstd", "energy_distance"):
            assert row[key] is not None and math.isfinite(row[key]), (row["run"], key)
    table = (tmp_path / "table.md").read_text()
    assert "logce" in table
    threads = OmegaConf.load(tmp_path / rows[0]["dir"] / "config.yaml").threads
    assert f"CPU ({threads} torch thread" in table  # what the runs used, not the suite process


def test_interrupted_suite_resumes_without_redoing_finished_runs(tmp_path: Path) -> None:
    common = ["suite=smoke", "suite.select=[logce,ot]", f"suite.results_dir={tmp_path}",
              f"out_dir={tmp_path}"]  # fmt: skip
    run_cli(*common, "suite.max_runs=1")
    first = tmp_path / "logce" / "metrics.json"
    assert first.exists() and not (tmp_path / "ot" / "metrics.json").exists()
    stamp = first.stat().st_mtime_ns
    run_cli(*common)
    assert (tmp_path / "ot" / "metrics.json").exists()
    assert first.stat().st_mtime_ns == stamp, "a finished run was redone"
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [row["run"] for row in rows] == ["logce", "ot"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loss=nope", "Available options in 'loss'"),
        ("target=nowhere", "Available options in 'target'"),
        ("optim.stepz=3", "stepz"),
        ("device=cuda:7", "device"),
        ("trace.kind=magic", "unknown trace kind 'magic'"),
    ],
)
def test_bad_input_fails_with_a_named_error(tmp_path: Path, override: str, message: str) -> None:
    if override.startswith("device=cuda"):
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    proc = run_cli(override, *FAST, f"out_dir={tmp_path}", check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
