"""The cost report: spend and unit costs per model, idle waste, always-on comparison, right-sizing."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from odhsim.analysis.cost_report import MAX_PROBES, cost_report, spend_by_model
from odhsim.cli import app
from odhsim.scenario.load import load_scenario, scenario_from_dict
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


def test_rightsizing_finds_an_option_at_least_as_cheap_as_the_current_fleet() -> None:
    sc = load_scenario(REPO_ROOT / "scenarios" / "big_model.yaml")
    report = cost_report(simulate(sc), sc)
    rows = report.rightsizing.set_index("model")
    assert list(rows.index) == ["big-tp4", "small-on-l40s"]  # the rejected model served nothing itself
    big = rows.loc["big-tp4"]
    assert big["cheapest_usd_per_hour"] <= big["current_usd_per_hour"]
    assert big["saving_usd_per_hour"] == pytest.approx(big["current_usd_per_hour"] - big["cheapest_usd_per_hour"])
    assert "H100-80GB x2" in big["slo_throughput_per_replica"]  # 70B needs two 80 GB GPUs at least
    # every option's SLO rate comes from a bounded search below its saturation throughput
    for part in big["slo_throughput_per_replica"].split("; "):
        rate, saturation = (float(x) for x in re.findall(r"([0-9.]+)/s", part))
        assert 0 < rate < saturation
    assert big["search_probes"] <= 7 * (MAX_PROBES + 1)
    small = rows.loc["small-on-l40s"]
    assert small["peak_rps_p95"] > 0  # its load is the fallback traffic of the rejected model
    spend = report.models.set_index("model")
    assert spend.loc["big-on-l40s", "requests_ok"] == 0 and spend.loc["small-on-l40s", "requests_ok"] > 0


def test_cost_command_prints_the_report() -> None:
    result = CliRunner().invoke(app, ["cost", str(REPO_ROOT / "scenarios" / "big_model.yaml")])
    assert result.exit_code == 0, result.output
    assert "always_on_at_peak_usd" in result.output and "right-sizing" in result.output
