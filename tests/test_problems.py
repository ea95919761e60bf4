"""Problem presets (configs/problem/), the default rule for targets without one, the derived
collocation boxes, and how the Hydra app and the suites pick them up."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pdesampler.collocation import collocation_target_box, make_collocation, prior_box
from pdesampler.losses import logce
from pdesampler.problems import peak_rate, problem_names, problem_overrides, problem_settings
from pdesampler.runner import collocation_settings, run_collocation
from pdesampler.targets import GMM9, Gaussian, ManyWell

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "pdesampler" / "configs"
TC_OPTIONS = {"n_trajectories": 2000, "n_times": 100, "every": 250, "fraction": 0.5, "start": 0}


def composed(*overrides: str):
    """The app's config for these command-line overrides (with the problem= alias applied)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=problem_overrides(list(overrides)))


def test_presets_exist_for_the_hard_problems_and_name_real_targets() -> None:
    assert {"gmm9", "mw5", "mw50", "gmm40", "fab_mw8"} <= set(problem_names())
    for name in problem_names():
        assert (CONFIGS / "target" / f"{problem_settings(name)['target']}.yaml").exists(), name


def test_problem_settings_returns_the_tuned_values_as_plain_python() -> None:
    assert problem_settings("mw5") == {
        "target": "mw5",
        "collocation": "box",
        "collocation_options": {"prior_box_width": 3.0},
        "net": {"width": 128, "depth": 3, "input_scale": 1.0},
        "trace": "exact",
        "lr": {0: 3e-2, 600: 1e-2},
        "lr_final": 1e-4,
        "schedule": "exponential",
        "warmup": 0.0,
        "finetune": None,
        "batch_size": 1024,
    }
    gmm9 = problem_settings("gmm9")
    assert gmm9["collocation"] == "trajectory_cache"
    assert gmm9["collocation_options"] == {"prior_box_width": 5.0, **TC_OPTIONS}
    assert problem_settings("mw50")["collocation_options"] == {"prior_box_width": 3.0}
    assert problem_settings("fab_mw8")["collocation"] == "default"
    assert problem_settings("gmm40")["net"] == {"width": 256, "depth": 4, "input_scale": 10.0}
    assert problem_settings("fab_mw8")["trace"] == "hutchinson"


def test_the_preset_chooses_the_trace_estimator_and_the_command_line_wins() -> None:
    assert composed("problem=fab_mw8", "loss=learned").trace.kind == "hutchinson"
    assert composed("target=fab_mw8", "loss=learned").trace.kind == "hutchinson"
    assert composed("problem=mw5", "loss=logce").trace.kind == "exact"
    assert composed("problem=fab_mw8", "trace.kind=exact").trace.kind == "exact"


def test_a_target_without_a_preset_gets_the_default_rule() -> None:
    rule = problem_settings("ring")
    assert rule["target"] == "ring"
    assert rule["collocation"] == "default"
    assert rule["collocation_options"] == {"prior_box_width": "auto"}
    with pytest.raises(ValueError, match="problem name"):
        problem_settings("../etc")


def test_problem_alias_adds_the_presets_target_and_rejects_bad_names() -> None:
    assert problem_overrides(["problem=mw5", "loss=logce", "--cfg", "job"]) == [
        "problem=mw5", "target=mw5", "loss=logce", "--cfg", "job",
    ]  # fmt: skip
    assert problem_overrides(["problem=mw5", "target=gmm9"]) == ["problem=mw5", "target=gmm9"]
    assert problem_overrides(["target=gaussian", "problem=default"]) == [
        "target=gaussian", "problem=default",
    ]  # fmt: skip
    own = ["target._target_=custom_residual.Ring", "+target.radius=3"]
    assert problem_overrides(own) == [own[0], "problem=default", own[1]]
    with pytest.raises(ValueError, match=r"unknown problem 'nope'; available: .*mw5"):
        problem_overrides(["problem=nope"])
    with pytest.raises(ValueError, match="sweep target="):
        problem_overrides(["problem=gmm9,mw5"])


@pytest.mark.parametrize(
    ("overrides", "kind", "width", "batch"),
    [
        (["problem=mw5"], "box", 3.0, 1024),  # the preset chooses the target too
        (["target=mw5"], "box", 3.0, 1024),  # a target alone gets its preset
        (["target=gmm9"], "trajectory_cache", 5.0, 1024),
        (["target=gaussian"], "default", "auto", 1024),  # no preset: the default rule
        (["target=mw5", "problem=default"], "default", "auto", 1024),
        (["target=mw5", "collocation=trajectory_cache"], "trajectory_cache", 5.0, 1024),
        (["problem=mw5", "collocation.prior_box_width=4", "batch_size=64"], "box", 4, 64),
    ],
)
def test_the_app_composes_presets_and_command_line_choices_win(
    overrides: list[str], kind: str, width, batch: int
) -> None:
    cfg = composed(*overrides)
    target = OmegaConf.to_container(cfg.target)["_target_"].rsplit(".", 1)[-1]
    expected_target = "ManyWell" if "mw5" in " ".join(overrides) else None
    if expected_target:
        assert target == expected_target
    assert cfg.collocation.kind == kind
    assert cfg.collocation.prior_box_width == width
    assert cfg.batch_size == batch
    assert cfg.net.width == 128
    assert cfg.optim.lr == peak_rate(cfg.problem.lr, None)  # the preset's rate without a budget


def test_the_peak_rate_is_the_rate_of_the_largest_budget_reached() -> None:
    table = {0: 3e-2, 240: 1e-2, 600: 3e-3}
    assert peak_rate(5e-3, 120.0) == 5e-3 and peak_rate(5e-3, None) == 5e-3
    assert peak_rate(table, 120.0) == 3e-2
    assert peak_rate(table, 239.9) == 3e-2 and peak_rate(table, 240.0) == 1e-2
    assert peak_rate(table, 599.0) == 1e-2 and peak_rate(table, 1e4) == 3e-3
    assert peak_rate(table, None) == 3e-3  # a step-counted run: the longest budget's rate
    assert peak_rate({60: 1e-2, 300: 1e-3}, 10.0) == 1e-2  # below the table: its first rate
    for bad in ({}, {"soon": 1e-2}, {0: "fast"}, "fast"):
        with pytest.raises(ValueError, match=r"problem\.lr: expected a rate or a table"):
            peak_rate(bad, 10.0)


@pytest.mark.parametrize(
    ("overrides", "lr"),
    [
        (["problem=gmm9", "optim.max_seconds=120"], 3e-2),
        (["problem=gmm9", "optim.max_seconds=240"], 1e-2),
        (["problem=gmm9"], 1e-2),  # no budget: the default 2000 steps
        (["problem=mw5", "optim.max_seconds=300"], 3e-2),
        (["problem=mw5", "optim.max_seconds=600"], 1e-2),
        (["problem=mw5", "optim=adam_gn", "optim.max_seconds=600"], 1e-2),
        (["problem=gmm9", "optim.max_seconds=600", "optim.lr=3e-3"], 3e-3),  # the CLI wins
        (["problem=gmm9", "problem.lr=3e-3"], 3e-3),
    ],
)
def test_the_preset_picks_its_peak_rate_by_the_budget(overrides: list[str], lr: float) -> None:
    assert composed(*overrides).optim.lr == lr


@pytest.mark.parametrize("problem", ["gmm9", "mw5", "fab_mw8"])
def test_the_fine_tuning_preset_is_spring_on_a_width_64_network(problem: str) -> None:
    """optim=adam_gn: SPRING after Adam, at width 64 (docs/results/bench_hard.md); the width and the
    SPRING settings stay overridable, and the Adam-only preset keeps the problem's width."""
    cfg = composed(f"problem={problem}", "optim=adam_gn")
    assert cfg.optim.gn.method == "spring" and cfg.optim.gn.momentum == 0.99
    assert cfg.net.width == 64 and cfg.net.depth == 3
    adam = composed(f"problem={problem}", "optim=adam").optim  # Adam's phase as in optim=adam
    assert cfg.optim.lr == adam.lr and cfg.optim.steps == adam.steps
    cfg = composed(f"problem={problem}", "optim=adam_gn", "net.width=128", "optim.gn.lr=0.05")
    assert cfg.net.width == 128 and cfg.optim.gn.lr == 0.05
    assert composed(f"problem={problem}", "optim=adam").net.width == 128
    assert composed(f"problem={problem}", "optim=adam_spring").net.width == 128


def test_methods_with_their_own_sampler_keep_it_under_a_preset() -> None:
    cfg = OmegaConf.to_container(composed("target=gmm9").collocation, resolve=True)
    sun = SimpleNamespace(default_collocation="box")
    gradflow = SimpleNamespace(default_collocation="ou")
    assert collocation_settings(cfg, sun) == (
        "trajectory_cache",
        {"prior_box_width": 5.0, **TC_OPTIONS},
    )
    assert collocation_settings(cfg, gradflow) == ("default", {"prior_box_width": 5.0})
    explicit = OmegaConf.to_container(composed("target=gmm9", "collocation=box").collocation)
    assert collocation_settings(explicit, gradflow) == ("box", {"prior_box_width": 5.0})


@pytest.mark.parametrize("problem", ["fab_mw8", "gmm9"])
def test_a_collocation_named_on_the_command_line_is_used_not_dropped(problem: str) -> None:
    """Under the problem's collocation a loss with its own sampler keeps it, but a kind or
    options given on the command line are the user's: the kind is used as given, the options go
    to the loss's own sampler (they were silently dropped before)."""
    learned = SimpleNamespace(default_collocation="trajectory")

    def settings(*overrides: str) -> tuple[str, dict]:
        return run_collocation(composed(f"problem={problem}", "loss=learned", *overrides), learned)

    box_width = {"prior_box_width": "auto" if problem == "fab_mw8" else 5.0}
    assert settings() == ("default", box_width)
    if problem == "fab_mw8":  # a kind other than the preset's
        cache = "{n_trajectories:2000,n_times:51,every:50,fraction:0.5}"
        assert settings("collocation.kind=trajectory_cache", f"collocation.options={cache}") == (
            "trajectory_cache",
            {**box_width, "n_trajectories": 2000, "n_times": 51, "every": 50, "fraction": 0.5},
        )
    else:  # GMM-9's preset is the trajectory cache
        assert settings("collocation.kind=box", "collocation.options={}") == ("box", box_width)
    assert settings("collocation.options={spread:1.5}") == ("default", {**box_width, "spread": 1.5})
    assert settings("collocation.kind=default") == ("default", box_width)


def test_suites_refer_to_presets_and_keep_the_tuned_collocation() -> None:
    for suite in ("quick", "paper"):
        runs = yaml.safe_load((CONFIGS / "suite" / f"{suite}.yaml").read_text())["suite"]["runs"]
        for run in runs:
            assert not any(o.startswith("collocation") for o in run["overrides"]), run["name"]
    cfg = composed("problem=mw50", "loss=logce")
    assert cfg.target.dim == 50 and cfg.collocation.kind == "box"
    assert cfg.collocation.prior_box_width == 3.0


def test_every_paper_row_composes_and_mw50_starts_log_z_at_the_prior_estimate() -> None:
    runs = yaml.safe_load((CONFIGS / "suite" / "paper.yaml").read_text())["suite"]["runs"]
    for run in runs:
        cfg = composed(*run["overrides"])
        learned_scalar = run["name"] in {f"mw50_{m}" for m in ("logfp", "sb", "logce", "ot")}
        assert (cfg.loss.get("log_z_init") == "prior") == learned_scalar, run["name"]


def test_auto_prior_box_reproduces_the_tuned_widths_from_the_targets_box() -> None:
    zero, one = torch.zeros(5), torch.ones(5)
    mw5 = ManyWell(5, 5, 4.0)
    lo, hi = prior_box(zero, one, collocation_target_box(mw5))
    assert torch.allclose(hi, torch.full((5,), 3.0, dtype=torch.float64))  # box +-2.97 -> +-3
    assert torch.allclose(lo, -hi)
    lo, hi = prior_box(zero[:2], one[:2], collocation_target_box(GMM9()))
    assert torch.allclose(hi, torch.full((2,), 5.0, dtype=torch.float64))  # box +-7.7 -> +-5
    # An off-centre box [-1.5, 3.5]: the prior side keeps +-3, the target side reaches 3.5.
    lo, hi = prior_box(zero[:2], one[:2], collocation_target_box(Gaussian(1.0, 0.5, dim=2)))
    assert lo.tolist() == [-3.0, -3.0] and hi.tolist() == [3.5, 3.5]
    lo, hi = prior_box(zero[:1], 2 * one[:1], (-one[:1], one[:1]), width=2.5)
    assert (lo.item(), hi.item()) == (-5.0, 5.0)
    with pytest.raises(ValueError, match="prior_box_width must be a positive number or 'auto'"):
        prior_box(zero, one, (-one, one), width="wide")


def test_the_target_box_is_capped_by_the_targets_standard_deviations() -> None:
    wide = SimpleNamespace(box=(-100 * torch.ones(2), torch.tensor([100.0, 300.0])), stddevs=None)
    assert collocation_target_box(wide)[1].tolist() == [100.0, 300.0]
    wide.stddevs = torch.tensor([1.0, 2.0])
    lo, hi = collocation_target_box(wide)
    assert lo.tolist() == [-5.0, 90.0] and hi.tolist() == [5.0, 110.0]  # centre +- 5 s


def test_make_collocation_auto_box_samples_inside_the_derived_box() -> None:
    torch.manual_seed(0)
    residual = logce(ManyWell(5, 5, 4.0), net={"width": 8, "depth": 1})
    sampler = make_collocation("box", residual, torch.Generator().manual_seed(0))
    x, t = sampler(4096)
    start = x[t < 0.05 * residual.T]
    assert start.abs().max() <= 3.0 + 1e-6 and start.abs().max() > 2.8
    assert math.isclose(float(x.abs().max()), 3.0, abs_tol=0.02)


def test_cli_problem_alone_trains_the_presets_target_with_its_collocation(tmp_path: Path) -> None:
    from test_cli import FAST, run_cli

    run_cli("problem=mw5", "loss=logce", *FAST, f"out_dir={tmp_path}")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["target"]["_target_"] == "pdesampler.targets.ManyWell"
    assert saved["collocation"]["kind"] == "box" and saved["collocation"]["prior_box_width"] == 3.0
    assert (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("kind", ["exact", "hutchinson"])
def test_the_app_builds_the_configured_trace_estimator(kind: str) -> None:
    """``trace.kind`` reaches the residual as an estimator object (Hydra's instantiate would
    turn a dataclass argument into a config, which has no ``probes``)."""
    from pdesampler.ops import Exact, Hutchinson
    from pdesampler.runner import build

    cfg = composed("problem=mw5", "loss=logce", f"trace.kind={kind}", "net.width=8")
    residual = build(cfg, torch.device("cpu"), torch.float64)
    expected = {"exact": Exact, "hutchinson": Hutchinson}[kind]
    assert type(residual.estimator) is expected
    x, t = torch.randn(4, 5, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    assert torch.isfinite(residual(x, t)).all()


def test_a_preset_can_name_its_fine_tuner_and_optim_gn_null_runs_adam_alone() -> None:
    """``problem.finetune`` is the fine-tuner ``optim=adam`` runs after Adam; ``optim.gn=null``
    turns it off, and a named optimizer (``optim=adam_gn_lm``) replaces it."""
    spring = "problem.finetune={method:spring,time_fraction:0.5,batch_size:256}"
    cfg = composed("target=mw5", spring)
    gn = OmegaConf.to_container(cfg.optim.gn, resolve=True)
    assert gn == {"method": "spring", "time_fraction": 0.5, "batch_size": 256}
    assert composed("target=mw5", spring, "optim.gn=null").optim.gn is None
    assert composed("target=mw5", spring, "optim=adam_gn_lm").optim.gn.method == "gauss_newton"
    assert composed("target=gmm9").optim.gn is None  # the shipped presets name none
    assert composed("target=gmm9").optim.steps is None  # no step cap under a budget


def test_every_field_row_composes_and_logce_starts_log_z_at_the_prior_estimate() -> None:
    """logCE learns log Z from its start; where it is far from 0 (ManyWell-32: 164.7, the
    logistic regression: -55.2) the suite starts it at the prior's estimate."""
    runs = yaml.safe_load((CONFIGS / "suite" / "field.yaml").read_text())["suite"]["runs"]
    far_from_zero = {"fab_mw32_logce", "logreg_cancer_logce"}
    for run in runs:
        cfg = composed(*run["overrides"])
        if run["method"] == "logce":
            assert (cfg.loss.get("log_z_init") == "prior") == (run["name"] in far_from_zero)
        # DIS on the funnel trains in float64: its first gradients overflow float32
        assert (cfg.dtype == "float64") == (run["name"] == "funnel_dis_lv")


def test_importing_the_package_registers_the_configs_resolvers() -> None:
    """A config composed from the shipped files resolves with nothing but ``import pdesampler``
    (the peak rate is an OmegaConf resolver): here in a fresh interpreter, as a user's script."""
    script = (
        "import pdesampler\n"
        "from hydra import compose, initialize_config_dir\n"
        "from omegaconf import OmegaConf\n"
        "with initialize_config_dir(str(pdesampler.problems.CONFIG_DIR), version_base='1.3'):\n"
        "    cfg = compose('config', overrides=['target=gmm9', 'optim.max_seconds=120'])\n"
        "print(OmegaConf.to_container(cfg.optim, resolve=True)['lr'])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) == 3e-2  # GMM-9 below 240 s
