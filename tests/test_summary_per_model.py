"""summary.json gives every metric per model as well as pooled, the requests that missed their SLO, the SLOs used,
run-level warnings, and the models that could not serve with why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from odhsim.results.run_result import RunResult
from odhsim.results.summary import latency_columns, slo_met
from odhsim.scenario.load import load_scenario
from odhsim.sim.run import simulate
from tests.conftest import REPO_ROOT

DEFAULT = REPO_ROOT / "scenarios" / "default.yaml"


def _two_models(tmp_path: Path, **second: Any) -> Path:
    """default.yaml cut to 60 s, with a second LLM model `small` taking 40% of the traffic, normal TTFT 0.25 s."""
    doc = yaml.safe_load(DEFAULT.read_text())
    doc["duration_s"] = 60
    doc["workload"]["sources"][0]["duration_s"] = 60
    model = {"name": "small", "kind": "llm", "profile": "llama3.1-8b", "gpu": "A100-80GB", "tp": 1, "replicas": 1}
    doc["models"].append({**model, **second})
    doc["workload"]["models"] = {"chat": 0.6, "small": 0.4}
    doc["slos"]["normal"] = {"ttft_s": 0.25, "e2e_s": 120.0}  # tight enough that some requests miss it
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def two_model_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, RunResult]:
    sc = load_scenario(_two_models(tmp_path_factory.mktemp("two")))
    return sc, simulate(sc)


def test_by_model_splits_the_pooled_counts(two_model_run: tuple[Any, RunResult]) -> None:
    _, result = two_model_run
    s = result.summary
    assert list(s["by_model"]) == ["chat", "small"]
    for key in ("requests", "completed", "shed", "failed", "timeout", "in_flight_at_stop", "slo_missed"):
        assert sum(m[key] for m in s["by_model"].values()) == s[key], key
    chat, small = s["by_model"]["chat"], s["by_model"]["small"]
    assert chat["requests"] > small["requests"] > 50  # 60/40 split of about 330 requests
    assert chat["throughput_rps"] + small["throughput_rps"] == pytest.approx(s["throughput_rps"])
    assert chat["gpu_hours"] == pytest.approx(4 * small["gpu_hours"], rel=0.01)  # 4 replicas vs 1, whole run
    assert chat["cost_usd"] + small["cost_usd"] == pytest.approx(s["cost_usd"])


def test_per_model_latency_is_computed_on_that_models_requests(two_model_run: tuple[Any, RunResult]) -> None:
    _, result = two_model_run
    req = result.requests
    ttft = latency_columns(req)["ttft_s"]
    for name, m in result.summary["by_model"].items():
        mine = ttft[(req["model"].astype(str) == name).to_numpy()].dropna().to_numpy()
        assert m["ttft_p50_s"] == pytest.approx(float(np.percentile(mine, 50)))
        assert m["ttft_p99_s"] == pytest.approx(float(np.percentile(mine, 99)))
    # one replica for 40% of the traffic queues more than four for 60%
    assert result.summary["by_model"]["small"]["ttft_p99_s"] > result.summary["by_model"]["chat"]["ttft_p99_s"]


def test_slo_missed_counts_requests_not_finished_ok_within_their_class_targets(
    two_model_run: tuple[Any, RunResult],
) -> None:
    sc, result = two_model_run
    met = slo_met(result.requests, sc)
    s = result.summary
    assert s["slo_missed"] == len(met) - int(met.sum()) > 0
    assert s["slo_attainment"] == pytest.approx(1 - s["slo_missed"] / s["requests"])


def test_slos_used_are_written_per_class() -> None:
    sc = load_scenario(DEFAULT, ["duration_s=20", "workload.sources[0].duration_s=20"])
    slos = simulate(sc).summary["slos"]
    assert slos == {
        "critical": {"ttft_s": 1.0, "e2e_s": 30.0},
        "high": {"ttft_s": 3.0, "e2e_s": 60.0},
        "normal": {"ttft_s": 10.0, "e2e_s": 120.0},
        "low": {"ttft_s": None, "e2e_s": None},
    }
    custom = load_scenario(DEFAULT, ["duration_s=20", "slos.critical.ttft_s=0.5"])
    assert simulate(custom).summary["slos"]["critical"] == {"ttft_s": 0.5, "e2e_s": 30.0}


def test_summary_json_carries_by_model_slos_and_warnings(two_model_run: tuple[Any, RunResult], tmp_path: Path) -> None:
    _, result = two_model_run
    result.write(tmp_path)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["by_model"]["small"]["requests"] == result.summary["by_model"]["small"]["requests"]
    assert written["slos"]["low"] == {"ttft_s": None, "e2e_s": None}
    assert isinstance(written["warnings"], list)
    assert written["unserved_models"] == {}


def test_unserved_models_name_why(tmp_path: Path) -> None:
    rejected = load_scenario(_two_models(tmp_path, profile="llama3-70b"))  # 131 GiB of weights on one 80 GB GPU
    s = simulate(rejected).summary
    assert list(s["unserved_models"]) == ["small"]
    assert s["unserved_models"]["small"].startswith("deploy rejected: llama3-70b")
    assert s["by_model"]["small"]["completed"] == 0 and s["by_model"]["chat"]["completed"] > 0
    idle = load_scenario(_two_models(tmp_path, replicas=0))
    s = simulate(idle).summary
    assert s["unserved_models"]["small"].startswith("replicas: 0 and no autoscaler")
    assert s["by_model"]["small"]["failed"] == s["by_model"]["small"]["requests"] > 0


def test_a_model_that_scales_from_zero_when_asked_is_not_unserved(tmp_path: Path) -> None:
    auto = {"type": "kpa", "params": {"min_replicas": 0, "max_replicas": 1, "container_concurrency": 8}}
    sc = load_scenario(_two_models(tmp_path, replicas=0, autoscaling=auto))
    s = simulate(sc).summary
    assert s["unserved_models"] == {}
    assert s["by_model"]["small"]["completed"] > 0
