"""The commands shown in README.md and docs/ work: every ``python benchmarks/run.py ...`` in a
```bash block composes against configs/ the way ``benchmarks/run.py`` composes it (the
``problem=`` alias first, ``-m`` sweeps expanded into their single runs), and every other
``python benchmarks/<script>.py ...`` names a script that exists and flags it defines. Nothing
is run, so the whole file takes a few seconds."""

from __future__ import annotations

import itertools
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from pdesampler.problems import problem_overrides

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "pdesampler" / "configs"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}
MULTIRUN = {"-m", "--multirun"}


def bash_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, command)`` for each command in the page's ```bash blocks, with
    backslash-continued lines joined."""
    out: list[tuple[int, str]] = []
    fence, pending, start = None, "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip() if fence is None else None
            continue
        if fence not in ("bash", "sh", "shell"):
            continue
        if not pending:
            start = number
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            if pending.strip():
                out.append((start, pending.strip()))
            pending = ""
    return out


def script_calls(command: str) -> list[tuple[str, list[str]]]:
    """``(script, arguments)`` for each ``python benchmarks/<script>.py ...`` in a command line,
    the arguments ending at a shell operator or comment."""
    tokens = shlex.split(command, comments=True)
    calls = []
    for i, token in enumerate(tokens):
        script = token.startswith("benchmarks/") and token.endswith(".py")
        if script and i > 0 and Path(tokens[i - 1]).name.startswith("python"):
            rest = itertools.takewhile(lambda t: t not in SHELL_OPERATORS, tokens[i + 1 :])
            calls.append((token, list(rest)))
    return calls


def shown_calls() -> list[tuple[str, str, str, list[str]]]:
    """``(where, command, script, arguments)`` of every benchmark script shown in the pages."""
    calls = []
    for page in PAGES:
        for number, command in bash_lines(page):
            for script, args in script_calls(command):
                where = f"{page.relative_to(ROOT)}:{number}"
                calls.append((where, command, script, args))
    return calls


def distinct(calls: list[tuple[str, str, str, list[str]]]) -> list[tuple[str, str, str, list[str]]]:
    """One entry per distinct script and arguments, ``where`` listing every place it is shown."""
    seen: dict[tuple[str, ...], list] = {}
    for where, command, script, args in calls:
        key = (script, *args)
        if key in seen:
            seen[key][0] += f", {where}"
        else:
            seen[key] = [where, command, script, args]
    return [tuple(entry) for entry in seen.values()]


CALLS = distinct(shown_calls())
RUNS = [c for c in CALLS if c[2] == "benchmarks/run.py"]
OTHERS = [c for c in CALLS if c[2] != "benchmarks/run.py"]


def single_runs(args: list[str]) -> list[list[str]]:
    """The override lists ``run.py`` composes for ``args``: the ``problem=`` alias applied, and
    with ``-m`` one list per combination of the swept values."""
    overrides = problem_overrides(args)
    multirun = any(a in MULTIRUN for a in overrides)
    overrides = [a for a in overrides if a not in MULTIRUN]
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for text, override in zip(overrides, parsed, strict=True):
        if override.is_sweep_override():
            if not multirun:
                raise ValueError(f"{text} is a sweep: it needs -m")
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([text])
    return [list(combination) for combination in itertools.product(*choices)]


def test_the_pages_show_commands() -> None:
    assert len(RUNS) >= 10, "no python benchmarks/run.py commands found in README.md and docs/"
    assert any(c[0].startswith("README.md") and c[3] == ["suite=quick"] for c in RUNS)


def test_the_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert commands == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
        "pip install -e '.[dev]' && python benchmarks/run.py suite=quick",
        "python -m pytest -q",
    ]


@pytest.mark.parametrize(
    ("where", "command", "args"),
    [(c[0], c[1], c[3]) for c in RUNS],
    ids=[c[0].split(",")[0] for c in RUNS],
)
def test_run_commands_compose(
    where: str, command: str, args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if any("<" in a and ">" in a for a in args):
        pytest.skip("a placeholder such as <run folder>")
    monkeypatch.chdir(ROOT)  # file:// search paths are relative to the current directory
    try:
        runs = single_runs(args)
        for overrides in runs:
            with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
                compose("config", overrides=overrides, return_hydra_config=True)
    except Exception as err:  # any failure names the command and where it is shown
        pytest.fail(f"{where}: `{command}` does not compose against configs/:\n{err}")


@pytest.mark.parametrize(
    ("where", "command", "script", "args"), OTHERS, ids=[c[0].split(",")[0] for c in OTHERS]
)
def test_script_commands_name_real_scripts_and_flags(
    where: str, command: str, script: str, args: list[str]
) -> None:
    path = ROOT / script
    assert path.is_file(), f"{where}: `{command}`: {script} does not exist"
    source = path.read_text(encoding="utf-8") + (ROOT / "benchmarks/_timing.py").read_text()
    for flag in (a.split("=", 1)[0] for a in args if a.startswith("--")):
        assert f'"{flag}"' in source, f"{where}: `{command}`: {script} has no flag {flag}"
