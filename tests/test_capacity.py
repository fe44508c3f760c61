"""Right-sizing by simulating whole fleets (odhsim.experiments.capacity): the search against an exhaustive sweep,
the rate it sizes for, the scenario a fleet runs as, and the `cost --rate --json` contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from odhsim import catalog
from odhsim.analysis.cost_report import cost_report, mean_rate
from odhsim.cli import app
from odhsim.experiments.capacity import rightsize_model
from odhsim.experiments.fleet import Fleet, FleetJob, ReplicaGroup, check_fleet, fleet_scenario
from odhsim.experiments.max_rate import CapacityJob, SloSpec, SloSpecError, search_capacity
from odhsim.scenario.load import scenario_from_dict
from odhsim.sim.run import simulate

OPTIONS = [("L40S", 1), ("A100-80GB", 1)]


def small(rate: float = 4.0, duration_s: float = 40.0) -> dict[str, Any]:
    """A short chat scenario: llama3.1-8b on 2 x A100, gamma arrivals, SLOs loose enough for a 40-s sample."""
    return {
        "name": "small",
        "seed": 3,
        "duration_s": duration_s,
        "gpu_pool": [{"gpu": "A100-80GB", "count": 2}],
        "models": [{"name": "chat", "profile": "llama3.1-8b", "gpu": "A100-80GB", "replicas": 2,
                    "autoscaling": {"type": "kpa", "params": {"min_replicas": 1, "max_replicas": 2}}}],
        "workload": {
            "sources": [{"kind": "gamma", "rate": rate, "cv": 2.0, "duration_s": duration_s,
                         "prompt_tokens": {"dist": "lognormal", "median": 1020, "sigma": 0.9, "max": 8000},
                         "output_tokens": {"dist": "lognormal", "median": 129, "sigma": 1.0, "max": 1000}}],
            "models": {"chat": 1.0},
            "priorities": {"critical": 0.05, "high": 0.15, "normal": 0.6, "low": 0.2},
        },
        "slos": {"critical": {"ttft_s": 4.0, "e2e_s": 60.0}, "high": {"ttft_s": 6.0, "e2e_s": 60.0}},
    }  # fmt: skip


def test_fleet_scenario_serves_the_model_alone_at_the_target_rate() -> None:
    sc = scenario_from_dict(small())
    job = FleetJob(sc, Fleet("chat", (ReplicaGroup("L40S", 1, 3),)), rate_rps=10.0, base_rate_rps=4.0, duration_s=30)
    fs = fleet_scenario(job)
    m = fs.models[0]
    assert (m.gpu, m.tp, m.replicas, m.autoscaling) == ("L40S", 1, 3, None)
    assert [(p.gpu, p.count) for p in fs.gpu_pool] == [("L40S", 3)]
    assert fs.workload.sources[0].rate == pytest.approx(10.0) and fs.duration_s == 30
    arrivals = simulate(fs).requests["arrival_s"]
    assert 10.0 * 30 * 0.6 < len(arrivals) < 10.0 * 30 * 1.5  # bursty (cv 2), so loose; 4 req/s would be 120


def exhaustive(sc: Any, rate: float, base: float, duration_s: float, max_n: int = 6) -> float:
    """The cheapest homogeneous fleet meeting the SLOs, every count of every option simulated."""
    costs = []
    for gpu, tp in OPTIONS:
        for n in range(1, max_n + 1):
            c = check_fleet(FleetJob(sc, Fleet("chat", (ReplicaGroup(gpu, tp, n),)), rate, base, duration_s))
            if c.meets:
                costs.append(c.usd_per_hour)
    return min(costs)


def test_search_is_within_5_percent_of_the_exhaustive_sweep() -> None:
    sc = scenario_from_dict(small())
    rec = rightsize_model(sc, "chat", 8.0, 4.0, rate_basis="test", duration_s=40.0, options=OPTIONS, mixed=False)
    best = exhaustive(sc, 8.0, 4.0, 40.0)
    assert rec.pick is not None and rec.verified is not None
    assert rec.pick.usd_per_hour <= best * 1.05
    assert rec.verified.meets and rec.verified.rate_rps == 8.0
    # the search simulated fewer fleets than the sweep's 12
    assert sum(len(o.checks) for o in rec.options) < 2 * 6


def test_cost_report_sizes_for_the_rate_given_or_the_mean_rate() -> None:
    sc = scenario_from_dict(small(duration_s=30.0))
    res = simulate(sc)
    base = mean_rate(res, sc, "chat")
    assert base == pytest.approx(int((res.requests["model"] == "chat").sum()) / 30.0)
    report = cost_report(res, sc, rate=6.0, duration_s=20.0)
    row = report.rightsizing.set_index("model").loc["chat"]
    assert row["target_rps"] == 6.0 and row["rate_basis"] == "the --rate given"
    assert report.recommendations[0].verified is not None
    assert row["cheapest_usd_per_hour"] == pytest.approx(report.recommendations[0].pick.usd_per_hour)
    assert "peak_rps_p95" not in report.rightsizing.columns


def test_cost_command_json_has_the_recommendation(tmp_path: Path) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(small(duration_s=20.0)))
    result = CliRunner().invoke(app, ["cost", str(path), "--rate", "3", "--json", "--search-duration", "20"])
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)["recommendation"]
    assert set(rec["verified"]) >= {"slo_attainment", "ttft_p99_s", "e2e_p99_s"}
    assert rec["fleet"] and all(set(g) >= {"model", "gpu", "replicas"} for g in rec["fleet"])
    # the price is the fleet's, each group at its own GPU's catalogue price (a missing GPU raises, not 0)
    price = {g: catalog.gpu(g).price_per_gpu_hour for g in catalog.gpu_names()}
    assert rec["usd_per_hour"] > 0
    assert rec["usd_per_hour"] == pytest.approx(sum(g["replicas"] * g["tp"] * price[g["gpu"]] for g in rec["fleet"]))
    assert rec["verified"]["meets_slos"] is True and 0.99 <= rec["verified"]["slo_attainment"] <= 1.0
    assert rec["verified"]["ttft_p99_s"] <= 10.0  # the loosest TTFT target (normal: the 10-s default)
    # the cheapest: no GPU option that met the SLOs alone was cheaper than the pick
    options = json.loads(result.stdout)["recommendations"][0]["options"]
    met = [o["usd_per_hour"] for o in options if o["usd_per_hour"] is not None]
    assert met and rec["usd_per_hour"] <= min(met) + 1e-9
    bad = CliRunner().invoke(app, ["cost", str(path), "--rate", "-1"])
    assert bad.exit_code != 0 and "rate" in bad.output and "Traceback" not in bad.output


MIXED_SMALL = {"gpu_pool": [{"gpu": "L40S", "count": 1}, {"gpu": "H200", "count": 1}]}


def test_slo_spec_parses_and_refuses_with_the_reason() -> None:
    assert SloSpec.parse("ttft_p99=2") == SloSpec("ttft", 99.0, 2.0)
    assert SloSpec.parse("e2e_p99.9=30.5").name == "e2e_p99.9"
    for bad in ("ttft=2", "latency_p99=2", "ttft_p99=-1", "ttft_p0=1", "ttft_p99=x"):
        with pytest.raises(SloSpecError, match="--slo"):
            SloSpec.parse(bad)


def test_capacity_search_brackets_the_rate_within_the_tolerance() -> None:
    sc = scenario_from_dict(small(duration_s=20.0))
    slos = (SloSpec("ttft", 99.0, 2.0),)
    found = {}
    for gpu in ("L40S", "H200"):
        fleet = Fleet("chat", (ReplicaGroup(gpu, 1, 1),))
        job = CapacityJob(gpu, FleetJob(sc, fleet, 4.0, 4.0, 20.0, 3), slos, rel_tol=0.1)
        r = search_capacity(job)
        assert r.converged and 0 < r.rate_rps < r.failing_rps <= r.rate_rps * 1.1 + 1e-9
        by_rate = {p.rate_rps: p for p in r.probes}
        assert by_rate[r.rate_rps].meets and by_rate[r.rate_rps].latency_s["ttft_p99"] <= 2.0
        assert not min((p for p in r.probes if p.rate_rps >= r.failing_rps), key=lambda p: p.rate_rps).meets
        found[gpu] = r.rate_rps
    assert found["H200"] > 1.5 * found["L40S"]  # the faster GPU sustains more


def test_capacity_command_writes_the_table_and_the_plot(tmp_path: Path) -> None:
    data = small(duration_s=20.0)
    data["models"][0] = {"name": "chat", "profile": "llama3.1-8b",
                         "deployments": [{"gpu": "L40S", "replicas": 1}, {"gpu": "H200", "replicas": 1}]}  # fmt: skip
    data |= MIXED_SMALL
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "cap"
    args = ["capacity", str(path), "--slo", "ttft_p99=2", "--gpu", "L40S", "--rel-tol", "0.1", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = {r["configuration"]: r for r in report["configurations"]}
    assert set(rows) == {"scenario", "L40S x1"}
    assert rows["scenario"]["fleet"] == "1 x (L40S x1) + 1 x (H200 x1)"  # its groups, in its order
    assert rows["scenario"]["max_rate_rps"] > rows["L40S x1"]["max_rate_rps"] > 0
    assert all(r["converged"] and r["failing_rps"] <= r["max_rate_rps"] * 1.1 + 1e-9 for r in rows.values())
    table = pd.read_csv(out / "capacity.csv")
    assert list(table["configuration"]) == ["scenario", "L40S x1"]
    probes = pd.read_csv(out / "probes.csv")
    assert probes.groupby("configuration")["meets_slos"].agg(["any", "all"]).to_dict("index") == {
        "L40S x1": {"any": True, "all": False}, "scenario": {"any": True, "all": False}}  # fmt: skip
    assert (out / "latency_vs_load.png").stat().st_size > 10_000
    bad = CliRunner().invoke(app, ["capacity", str(path), "--slo", "ttft<2"])
    assert bad.exit_code == 2 and "METRIC_pNN=SECONDS" in bad.output and "Traceback" not in bad.output
