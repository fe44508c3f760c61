"""One model served on several GPU types at once (`models[i].deployments`): replica groups behind one route, each
replica with its own GPU's latency, placed on its own GPU pool, costed at its own GPU's price; bad groups refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from odhsim import catalog
from odhsim.analysis.cost_report import spend_by_model
from odhsim.cli import app
from odhsim.errors import OdhsimError
from odhsim.experiments.capacity import mixed_fleets_supported, rightsize_model
from odhsim.experiments.fleet import Fleet, FleetJob, ReplicaGroup, check_fleet, fleet_scenario
from odhsim.scenario.load import scenario_from_dict
from odhsim.sim.run import simulate

DURATION_S = 40.0


def mixed(**model: Any) -> dict[str, Any]:
    """llama3.1-8b on 3 x L40S + 1 x H200, fixed 1000-token prompts and 50-token answers at a light 2 req/s."""
    m = {
        "name": "chat",
        "profile": "llama3.1-8b",
        "deployments": [{"gpu": "L40S", "replicas": 3}, {"gpu": "H200", "replicas": 1}],
    } | model
    return {
        "name": "mixed",
        "seed": 5,
        "duration_s": DURATION_S,
        "gpu_pool": [{"gpu": "L40S", "count": 4}, {"gpu": "H200", "count": 1}],
        "models": [m],
        "gateway": {"router": {"profile": "round-robin"}},
        "workload": {"sources": [{"kind": "poisson", "rate": 2.0, "duration_s": DURATION_S,
                                  "prompt_tokens": {"dist": "fixed", "value": 1000},
                                  "output_tokens": {"dist": "fixed", "value": 50}}]},
    }  # fmt: skip


def test_a_mixed_fleet_simulates_on_every_group() -> None:
    sc = scenario_from_dict(mixed())
    m = sc.models[0]
    assert (m.gpu, m.tp, m.replicas) == ("L40S", 1, 4)
    assert [(g.gpu, g.replicas) for g in m.groups()] == [("L40S", 3), ("H200", 1)]
    res = simulate(sc)
    req = res.requests
    assert len(req) > 40 and (req["status"] == "ok").all()
    # round robin over the 4 replicas: each of them, the H200 one included, serves about a quarter
    share = req["replica"].value_counts(normalize=True)
    assert sorted(share.index) == ["chat-v1-0", "chat-v1-1", "chat-v1-2", "chat-v1-3"]
    assert share.min() > 0.2
    placed = res.events[res.events["kind"] == "deploy"]["detail"].iloc[0]
    assert "3 x llama3.1-8b on 1 x L40S" in placed and "1 x llama3.1-8b on 1 x H200" in placed


def test_each_replica_has_its_own_gpus_latency() -> None:
    """Same prompt everywhere and next to no queueing: the H200 replica's prefill (time to first token after the
    start) and whole answer are faster than each L40S replica's, by the profiles' ratio."""
    req = simulate(scenario_from_dict(mixed())).requests
    req = req.assign(prefill_s=req["first_token_s"] - req["start_s"], e2e_s=req["finish_s"] - req["start_s"])
    by = req.groupby("replica")[["prefill_s", "e2e_s"]].median()
    h200 = by.loc["chat-v1-3"]  # the second group's replica (groups are made in order)
    l40s = by.drop("chat-v1-3")
    assert (h200["prefill_s"] < 0.7 * l40s["prefill_s"]).all(), by
    assert (h200["e2e_s"] < 0.7 * l40s["e2e_s"]).all(), by
    # the L40S replicas agree with one another (same GPU, same profile)
    assert l40s["prefill_s"].max() < 1.2 * l40s["prefill_s"].min()


def test_cost_and_gpu_hours_sum_each_groups_price() -> None:
    sc = scenario_from_dict(mixed())
    res = simulate(sc)
    hours = res.summary["sim_end_s"] / 3600.0
    price = {g: catalog.gpu(g).price_per_gpu_hour for g in ("L40S", "H200")}
    ts = res.timeseries
    assert ts["gpu_hours"].sum() == pytest.approx(4 * hours, rel=1e-6)
    assert ts["cost_usd"].sum() == pytest.approx((3 * price["L40S"] + price["H200"]) * hours, rel=1e-6)
    assert ts["cost_usd"].sum() != pytest.approx(4 * price["L40S"] * hours, rel=1e-3)  # not all at the first's
    spend = spend_by_model(res, sc).iloc[0]
    assert spend["gpu"] == "1 x L40S + 1 x H200"
    assert spend["always_on_at_peak_usd"] == pytest.approx((3 * price["L40S"] + price["H200"]) * hours, rel=1e-6)


def test_a_mixed_fleet_job_runs_as_a_scenario_with_deployments() -> None:
    assert mixed_fleets_supported()
    base = scenario_from_dict(mixed())
    fleet = Fleet("chat", (ReplicaGroup("A100-80GB", 1, 1), ReplicaGroup("L40S", 1, 2)))
    job = FleetJob(base, fleet, rate_rps=3.0, base_rate_rps=2.0, duration_s=20.0)
    sc = fleet_scenario(job)
    assert [(g.gpu, g.tp, g.replicas) for g in sc.models[0].groups()] == [("A100-80GB", 1, 1), ("L40S", 1, 2)]
    assert sorted((p.gpu, p.count) for p in sc.gpu_pool) == [("A100-80GB", 1), ("L40S", 2)]
    check = check_fleet(job)
    price = catalog.gpu("A100-80GB").price_per_gpu_hour + 2 * catalog.gpu("L40S").price_per_gpu_hour
    assert check.usd_per_hour == pytest.approx(price) and check.requests > 20


@pytest.mark.parametrize(
    ("model", "where", "says"),
    [
        ({"autoscaling": {"type": "kpa"}}, "models[0].autoscaling", "several replica groups"),
        (
            {"deployments": [{"gpu": "L40S", "replicas": 1}, {"gpu": "L40S", "replicas": 2}]},
            "models[0].deployments[1].gpu",
            "one group per GPU type",
        ),
        (
            {"deployments": [{"gpu": "L40S", "replicas": 1}, {"gpu": "T4", "replicas": 1}]},
            "models[0].deployments[1].gpu",
            "gpu_pool does not have",
        ),
        ({"replicas": 7}, "models[0].replicas", "the groups' total (4)"),
        ({"gpu": "H200"}, "models[0].gpu", "the first group's (L40S)"),
        ({"deployments": [{"gpu": "L40S", "replicas": 5}]}, "", "need 5 x L40S"),
        (
            {"deployments": [{"gpu": "L40S", "replicas": 0}]},
            "models[0].deployments[0].replicas",
            "greater than or equal to 1",
        ),
        ({"deployments": [{"gpu": "L40S", "replicas": 1, "tp": 3}]}, "models[0].deployments[0].tp", "tp=3"),
    ],
)
def test_validate_refuses_bad_groups(tmp_path: Path, model: dict[str, Any], where: str, says: str) -> None:
    with pytest.raises((OdhsimError, ValueError)):
        scenario_from_dict(mixed(**model))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(mixed(**model), sort_keys=False))
    out = CliRunner().invoke(app, ["validate", str(path)])
    assert out.exit_code != 0 and "Traceback" not in out.output
    text = " ".join(out.output.split())
    assert says in text, text
    assert f"{where}: " in text, text


def test_rightsizing_picks_a_mixed_fleet_and_verifies_it_by_simulation() -> None:
    """At 5 req/s two L40S are the cheapest homogeneous fleet ($4.48/h) but one holds only part of the load: one
    L40S beside one 2 x L4 replica ($3.85/h) meets the SLOs too, and the pick is simulated as that mixed scenario."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_capacity import small  # the capacity tests' short chat scenario

    sc = scenario_from_dict(small())
    rec = rightsize_model(sc, "chat", 5.0, 4.0, rate_basis="test", duration_s=40.0)
    homogeneous = [o.best.usd_per_hour for o in rec.options if o.best is not None]
    assert rec.mixed and rec.pick is not None and rec.verified is not None
    assert len(rec.pick.groups) == 2, rec.pick.label
    assert rec.pick.usd_per_hour < min(homogeneous)
    assert rec.verified.meets and rec.verified.fleet == rec.pick and rec.verified.requests > 100
    groups = rec.to_json()["recommendation"]["fleet"]
    assert sorted(g["gpu"] for g in groups) == sorted(g.gpu for g in rec.pick.groups)
