"""The cost report: spend and unit costs per model, idle waste, always-on comparison, right-sizing."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from odhsim.analysis.cost_report import spend_by_model
from odhsim.cli import app
from odhsim.scenario.load import scenario_from_dict
from odhsim.sim.run import simulate
from tests.conftest import REPO_ROOT
from tests.test_controller_sim import rush_scenario


def test_spend_adds_up_and_autoscaling_beats_always_on_at_peak() -> None:
    sc = scenario_from_dict(rush_scenario())
    res = simulate(sc)
    spend = spend_by_model(res, sc).set_index("model").loc["chat"]
    assert spend["cost_usd"] == pytest.approx(res.summary["cost_usd"])
    assert spend["requests_ok"] == res.summary["completed"]
    assert spend["cost_per_1k_requests_usd"] == pytest.approx(spend["cost_usd"] / spend["requests_ok"] * 1000)
    assert 0 < spend["idle_gpu_hours"] < spend["gpu_hours"]
    hours = res.summary["sim_end_s"] / 3600
    assert spend["always_on_at_peak_usd"] == pytest.approx(spend["peak_replicas"] * 5.1207 * hours)
    assert spend["saving_vs_always_on_usd"] > 0


def test_cost_command_prints_the_report() -> None:
    result = CliRunner().invoke(
        app, ["cost", str(REPO_ROOT / "scenarios" / "big_model.yaml"), "--search-duration", "30"]
    )
    assert result.exit_code == 0, result.output
    assert "always_on_at_peak_usd" in result.output and "right-sizing" in result.output
