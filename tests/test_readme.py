"""The README's two set-up commands stay true: the second is what CI runs, and the first
installs everything the README then tells a newcomer to run."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def _extras(command: str) -> set[str]:
    match = re.search(r"pip install -e '\.\[([a-z,]+)\]'", command)
    assert match, f"no 'pip install -e .[...]' in {command!r}"
    return set(match.group(1).split(","))


def test_exactly_two_commands_and_ci_runs_the_second() -> None:
    commands = _commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)  # one line each, to copy and paste
    ci = (ROOT / ".ci/run").read_text()
    assert commands[1] in ci.splitlines()


def test_first_command_installs_what_the_newcomer_runs_next() -> None:
    """Command 1 runs a torch study; the README then says `autotune dashboard`, which
    needs plotly (the dashboard extra)."""
    first = _commands()[0]
    extras = _extras(first)
    # torch for the quickstart, dashboard to look at it, pruning for examples/models
    assert {"torch", "dashboard", "pruning"} <= extras
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras <= set(declared)
    assert any(dep.startswith("plotly") for dep in declared["dashboard"])
    assert "study create quickstart --space search_spaces/quickstart.yaml" in first
    assert (ROOT / "search_spaces/quickstart.yaml").is_file()
    assert "autotune dashboard" in (ROOT / "README.md").read_text()
