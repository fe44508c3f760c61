"""The README's promises: exactly two set-up commands, CI runs the test one, the example scenario is valid."""

from __future__ import annotations

import re

import yaml

from odhsim.scenario.load import scenario_from_dict
from odhsim.sim.run import simulate
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def test_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    blocks = re.findall(r"```\n(.*?)```", _section("Set-up on a fresh machine"), re.S)
    commands = [line for block in blocks for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()


def test_readme_example_scenario_validates_and_runs() -> None:
    block = re.search(r"```yaml\n(.*?)```", README, re.S)
    assert block is not None
    data = yaml.safe_load(block.group(1))
    data["duration_s"] = 30
    data["workload"]["sources"][0]["duration_s"] = 30
    result = simulate(scenario_from_dict(data, source="README.md"))
    assert set(result.requests["model"].unique()) == {"chat", "clf"}
    assert result.summary["completed"] == result.summary["requests"] > 0
