"""Suites that fan out and survive being killed: a lock per run directory,
``suite.jobs`` local processes at a time or submitit's executor, and a suite killed with
SIGKILL that, rerun, redoes no finished run and resumes the interrupted one from its checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from pdesampler.launch import RunJob, RunLockedError, is_locked, run_lock
from pdesampler.report import run_line, table_markdown
from pdesampler.runner import run_experiment
from pdesampler.suite import collect, run_suite
from pdesampler.suite_forecast import SuiteForecast, training_budget

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "target=gaussian", "loss=logce", "net=small", "batch_size=64", "eval.n_samples=200",
    "eval.nll=false", "sampler.steps=10", "sampler.sde_steps=20", "eval.sinkhorn_max_samples=100",
    "eval.sinkhorn_blur=1.0", "eval.figures=false", "progress=false",
]  # fmt: skip


def starts_and_ends(log: Path) -> list[tuple[float, float | None]]:
    """The ``[start t]`` / ``[end t]`` stamps :func:`launch.run_job` writes to ``run.log``."""
    text = log.read_text()
    starts = [float(s) for s in re.findall(r"\[start ([\d.]+)\]", text)]
    ends = [float(s) for s in re.findall(r"\[end ([\d.]+)\]", text)]
    return [(s, ends[i] if i < len(ends) else None) for i, s in enumerate(starts)]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------- the lock
def test_a_locked_run_directory_is_refused_at_once(tmp_path: Path) -> None:
    with run_lock(tmp_path):
        assert is_locked(tmp_path)
        with (
            pytest.raises(
                RunLockedError, match=rf"being run by another process \(pid {os.getpid()}\)"
            ),
            run_lock(tmp_path),
        ):
            pass
        with initialize_config_dir(str(ROOT / "pdesampler" / "configs"), version_base="1.3"):
            cfg = compose("config", overrides=[*TINY, "out_dir=unused"])
        with pytest.raises(RunLockedError):
            run_experiment(cfg, tmp_path)
    assert not is_locked(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # nothing else was written


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    code = f"from pdesampler.launch import run_lock\nwith run_lock({str(tmp_path)!r}):\n    input()"
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        wait_for(lambda: is_locked(tmp_path), 60, "the child to take the lock")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not is_locked(tmp_path)


# ---------------------------------------------------------------------------- fan-out
def suite_config(results: Path, *overrides: str):
    with initialize_config_dir(str(ROOT / "pdesampler" / "configs"), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "suite=smoke", f"suite.results_dir={results}", "suite.select=[logce,linear]",
                "suite.common=[" + ",".join(f"'{o}'" for o in [*TINY[2:], "optim.steps=5"]) + "]",
                *overrides,
            ],
        )  # fmt: skip


@pytest.mark.parametrize(
    "launcher", ["local", pytest.param("submitit_local", marks=pytest.mark.slow)]
)
def test_two_runs_at_a_time_each_with_its_share_of_the_cores(tmp_path, launcher, capsys):
    results = tmp_path / "results"
    cfg = suite_config(results, f"suite.launcher={launcher}", "suite.jobs=2")
    if launcher == "local":  # with a budget on every run, the bar gives the expected end
        cfg.suite.common.append("optim.max_seconds=60")
    rows = run_suite(cfg)
    printed = capsys.readouterr().err
    assert ("ends about" in printed) == (launcher == "local"), printed
    for name in ("logce", "linear"):  # one line per finished run, as it ends
        line = rf"(^|\r){name}  train \d+ s  score \d+ s  ESS \S+  dlogZ \S+"  # after the bar's \r
        assert re.search(line, printed, re.M), printed
    assert sorted(row["run"] for row in rows) == ["linear", "logce"]
    (a_start, a_end), (b_start, b_end) = (
        starts_and_ends(results / name / "run.log")[0] for name in ("logce", "linear")
    )
    assert max(a_start, b_start) < min(a_end, b_end), "the two runs did not overlap"
    share = max(1, (os.cpu_count() or 1) // 2)
    for name in ("logce", "linear"):
        assert json.loads((results / name / "metrics.json").read_text())["threads"] == share
    assert "| GMM d=2 | linear |" in (results / "table.md").read_text()


def test_each_table_row_states_its_budget() -> None:
    """The budget cell is the run's own training time and steps (Gauss-Newton steps after
    Adam's); cells read ``ours / paper (better|worse)``."""
    rows = [
        {"problem": "MW 5/5/4", "method": "adam_gn", "train_seconds": 150.4, "steps": 2345,
         "gn_steps": 40, "ess": 0.5, "paper_ess": 0.9},
        {"problem": "MW 5/5/4", "method": "logce", "train_seconds": 149.6, "steps": 3001,
         "gn_steps": 0, "ess": 0.95},
        {"problem": "MW 5/5/4", "method": "killed", "ess": None},
    ]  # fmt: skip
    lines = table_markdown(rows, ["ess"]).splitlines()
    assert lines[0] == "| problem | method | budget | ess |"
    assert (
        lines[2] == "| MW 5/5/4 | adam_gn | 150 s, 2345 steps + 40 GN | 0.5000 / 0.9000 (worse) |"
    )
    assert lines[3] == "| MW 5/5/4 | logce | 150 s, 3001 steps | 0.9500 |"
    assert lines[4] == "| MW 5/5/4 | killed | - | - |"
    row = {"problem": "GMM-40", "method": "gradflow", "modes_covered": 38, "n_modes": 40}
    assert table_markdown([row], ["modes_covered"]).splitlines()[2].endswith("| 38 of 40 |")


def test_several_seeds_give_mean_and_sd_per_metric(tmp_path: Path) -> None:
    """With ``suite.seeds`` a row is the mean over the seeds that finished (``n_seeds``), with
    the sample standard deviation beside it, and keeps each seed's own metrics."""
    cfg = suite_config(tmp_path, "suite.seeds=[0,1,2]", "suite.select=null")
    for seed, (ess, steps, nll) in {0: (0.2, 100, 5.0), 2: (0.6, 103, None)}.items():
        run_dir = tmp_path / f"logce-seed{seed}"
        run_dir.mkdir()
        metrics = {"ess": ess, "steps": steps, "gn_steps": 0, "train_seconds": 150.0, "nll": nll}
        metrics.update(n_modes=9, modes_covered=9 - seed)
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (row,) = collect(cfg.suite, tmp_path)
    assert (row["run"], row["dir"], row["seeds"]) == ("logce", "logce-seed0", [0, 2])
    assert row["n_seeds"] == 2
    assert row["ess"] == pytest.approx(0.4) and row["ess_sd"] == pytest.approx(0.08**0.5)
    assert row["steps"] == 102 and row["nll"] == 5.0 and "nll_sd" not in row
    assert [r["ess"] for r in row["per_seed"]] == [0.2, 0.6]
    (line,) = table_markdown([row], ["ess"]).splitlines()[2:]
    assert line == "| GMM d=2 | logce | 150 s, 102 steps (mean of 2 seeds) | 0.4000 ± 0.2828 |"
    assert row["n_modes"] == 9 and isinstance(row["n_modes"], int)  # a count, rounded
    (line,) = table_markdown([row], ["modes_covered"]).splitlines()[2:]
    assert line.endswith("| 8.0000 ± 1.4142 of 9 |")


def test_suite_seeds_run_each_row_once_per_seed(tmp_path: Path) -> None:
    results = tmp_path / "results"
    rows = run_suite(suite_config(results, "suite.seeds=[0,1]", "suite.select=[logce]"))
    assert sorted(p.name for p in results.glob("logce-seed*")) == ["logce-seed0", "logce-seed1"]
    for seed in (0, 1):
        config = (results / f"logce-seed{seed}" / "config.yaml").read_text()
        assert f"seed: {seed}\n" in config
    (row,) = rows
    assert row["n_seeds"] == 2 and row["ess_sd"] > 0, "two seeds gave the same run"
    assert "±" in (results / "table.md").read_text()


@pytest.mark.parametrize(
    ("seeds", "message"),
    [("[1,1]", r"suite.seeds must be distinct integers >= 0, got \[1, 1\]"),
     ("[-1]", r"suite.seeds")],
)  # fmt: skip
def test_bad_suite_seeds_are_named(tmp_path: Path, seeds: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_suite(suite_config(tmp_path, f"suite.seeds={seeds}"))


def test_unknown_launcher_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown suite.launcher 'pbs'; available"):
        run_suite(suite_config(tmp_path, "suite.launcher=pbs"))


# ---------------------------------------------------------------------------- SIGKILL, then rerun
KILL_SUITE = """# @package _global_
out_dir: {results}
suite:
  name: killtest
  results_dir: {results}
  select: null
  max_runs: null
  launcher: local
  jobs: 1
  scales: {{cpu: [], full: []}}
  common: [{common}]
  runs:
    - {{name: first, problem: Gaussian, method: short, overrides: [optim.steps=10]}}
    - {{name: second, problem: Gaussian, method: long, overrides: [optim.steps=200, optim.checkpoint_every=10]}}
"""


@pytest.mark.slow
def test_suite_killed_mid_run_resumes_without_redoing_finished_runs(tmp_path: Path) -> None:
    results = tmp_path / "results"
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "killtest.yaml").write_text(
        KILL_SUITE.format(results=results, common=",".join(TINY))
    )
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "suite=killtest",
           f"hydra.searchpath=[file://{tmp_path}]"]  # fmt: skip
    suite = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = results / "second" / "checkpoint.pt"
    try:
        wait_for(checkpoint.exists, 120, "the second run's first checkpoint")
    finally:
        suite.send_signal(signal.SIGKILL)
        suite.wait()
    first_metrics = (results / "first" / "metrics.json").stat().st_mtime_ns
    wait_for(lambda: not is_locked(results / "second"), 10, "the orphaned run to die")
    assert not (results / "second" / "metrics.json").exists()
    saved = torch.load(checkpoint, weights_only=False)["result"]
    assert 0 < saved["steps"] < 200

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(starts_and_ends(results / "first" / "run.log")) == 1  # not redone
    assert (results / "first" / "metrics.json").stat().st_mtime_ns == first_metrics
    log = (results / "second" / "run.log").read_text()
    assert len(starts_and_ends(results / "second" / "run.log")) == 2 and "resuming from" in log
    history = json.loads((results / "second" / "history.json").read_text())["adam"]
    assert history[: len(saved["history"])] == saved["history"]  # the same rows, same seconds
    metrics = json.loads((results / "second" / "metrics.json").read_text())
    assert saved["steps"] < 200 and metrics["steps"] == 200
    table = (results / "table.md").read_text()
    assert "| Gaussian | short |" in table and "| Gaussian | long |" in table
    assert len(json.loads((results / "results.json").read_text())) == 2


def test_a_finished_run_is_one_line() -> None:
    metrics = {"train_seconds": 120.4, "score_seconds": 14.2, "ess": 0.99312, "dlogZ": 0.0042,
               "modes_covered": 9, "n_modes": 9, "n_unscored": 0}  # fmt: skip
    assert run_line("gmm9_logce", metrics) == (
        "gmm9_logce  train 120 s  score 14 s  ESS 0.9931  dlogZ 0.0042  modes 9/9"
    )
    line = run_line("mw5_gradflow", {**metrics, "n_modes": None, "n_unscored": 37, "ess": None})
    assert line.endswith("ESS -  dlogZ 0.0042  unscored 37")


def test_the_forecast_follows_two_slots_and_the_measured_overhead() -> None:
    """Budgets 500, 240, 240, 240 on two slots from t = 0, with 40 s of overhead a run: the
    long run ends at 540; the 240 s runs at 280, 560 (second on the free slot) and 820 (after
    the long one). When the first short run ends at 300 instead, the overhead becomes 60 and
    every later end moves by the measured overhead, not by a rate of runs per second."""
    jobs = [
        RunJob(f"r{i}", ("loss=logce", f"optim.max_seconds={b}"), Path(f"r{i}"))
        for i, b in enumerate((500, 240, 240, 240))
    ]
    forecast = SuiteForecast(jobs, slots=2, start=0.0, overhead=40.0)
    assert forecast.end(now=0.0) == pytest.approx(820.0)
    forecast.finished("r1", 300.0)
    # r0: 0 + 500 + 60 = 560; r2: 300 + 300 = 600; r3 on r0's slot: 560 + 300 = 860
    assert forecast.end(now=300.0) == pytest.approx(860.0)
    # a run past its expected end is expected to end now, not in the past
    assert forecast.end(now=900.0) == pytest.approx(900.0 + 300.0)
    assert forecast.describe(now=300.0).startswith("ends about ")
    # a run that failed at once frees its slot but leaves the measured overhead as it was
    forecast.finished("r0", 5.0, completed=False)
    # r2: 300 + 300 = 600 (from r1's end); r3 on r0's freed slot: 5 + 300, but not before now
    assert forecast.end(now=300.0) == pytest.approx(600.0)


def test_no_forecast_without_a_budget() -> None:
    jobs = [RunJob("a", ("optim.max_seconds=60",), Path("a")), RunJob("b", (), Path("b"))]
    assert training_budget(jobs[0]) == 60.0 and training_budget(jobs[1]) is None
    assert SuiteForecast(jobs, slots=2, start=0.0).end(now=0.0) is None
    assert SuiteForecast(jobs, slots=2, start=0.0).describe(now=0.0) == ""
