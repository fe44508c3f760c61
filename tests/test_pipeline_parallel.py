"""Pipeline parallelism across nodes: memory fit and the deploy verdict with pp, stages on distinct nodes, the
latency's inter-node term (hand-computed), and the virtual engines of a pipeline replica on a hand timeline."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import simpy

from odhsim import catalog
from odhsim.errors import ScenarioError
from odhsim.profiles.latency import LatencyModel, latency_model, pipeline_model
from odhsim.scenario.deployment import EngineLimits, GpuPool, ModelDeployment
from odhsim.scenario.load import scenario_from_dict
from odhsim.sim.gpu_pool import Allocation, SimGpuPool
from odhsim.sim.pipeline_replica import PipelineReplica
from odhsim.sim.request import SimRequest
from odhsim.sim.run import simulate
from policies.builtin import REGISTRY
from policies.placement import BestFit, FirstFitDecreasing, NodeState, ReplicaRequest, apply

GIB = 2**30
H100 = 80 * GIB


def big(pp: int = 1, **extra: Any) -> ModelDeployment:
    return ModelDeployment(name="big", profile="llama3-70b", gpu="L40S", tp=2, pp=pp, **extra)


def big_scenario(pp: int, count: int = 4, rate: float = 0.5) -> dict[str, Any]:
    return {
        "name": "pp",
        "seed": 1,
        "duration_s": 300,
        "gpu_pool": [{"gpu": "L40S", "count": count, "gpus_per_node": 2}],
        "models": [{"name": "big", "profile": "llama3-70b", "gpu": "L40S", "tp": 2, "pp": pp}],
        "workload": {
            "sources": [
                {
                    "kind": "poisson",
                    "rate": rate,
                    "duration_s": 300,
                    "prompt_tokens": {"dist": "lognormal", "median": 600, "sigma": 0.7, "max": 6000},
                    "output_tokens": {"dist": "lognormal", "median": 120, "sigma": 0.7, "max": 800},
                }
            ]
        },
    }


# --- memory and the deploy verdict ----------------------------------------------------------------------------


def test_kv_capacity_with_pipeline_stages_by_hand() -> None:
    # llama3-70b: 141.108e9 bytes of weights, 80 layers, 327,680 KV bytes per token; L40S: 48 GiB.
    # tp=2, pp=2: each stage holds 40 layers, half the weights and half of each token's KV.
    free = 48 * GIB * 2 * 0.9 - 141_108_000_000 * 0.5 - 2 * GIB  # 20,069,809,945.6 bytes per stage
    assert catalog.kv_cache_capacity_tokens("llama3-70b", "L40S", 2, pp=2) == int(free // (327_680 * 0.5)) == 122_496
    assert catalog.kv_cache_capacity_tokens("llama3-70b", "L40S", 2) == 0  # 131 GiB into 2 x 48 GB: no room
    assert catalog.fits("llama3-70b", "L40S", 2, pp=2)  # each of the 2 virtual engines: 61,248 >= 8,192 tokens
    assert not catalog.fits("llama3-70b", "L40S", 2)
    # an uneven split sizes by the fullest stage: 80 layers over 3 stages -> 27 layers there
    free3 = 48 * GIB * 2 * 0.9 - 141_108_000_000 * 27 / 80 - 2 * GIB
    assert catalog.kv_cache_capacity_tokens("llama3-70b", "L40S", 2, pp=3) == int(free3 // (327_680 * 27 / 80))


def test_too_big_for_one_node_is_rejected_without_pp_and_approved_with_pp2() -> None:
    assert big().deploy_verdict() == (
        False,
        "rejected: llama3-70b (131 GiB of weights) does not fit 2 x L40S (48 GB each) with room for a KV cache of "
        "8192 tokens; raise tp, add pipeline stages across nodes (pp) or lower engine.max_model_len",
    )
    assert big(pp=2).deploy_verdict() == (
        True,
        "approved: 1 x llama3-70b on 2 stages of 2 x L40S (4 GPUs: tensor parallel inside each node, 2 pipeline "
        "stages on 2 nodes)",
    )
    assert big(pp=2).gpus_per_replica == 4


def test_pipeline_stages_need_as_many_nodes_and_only_llms_have_them() -> None:
    with pytest.raises(ScenarioError, match=r"models\[0\]\.pp: model 'big': pp=2 pipeline stages need 2 nodes with 2 x "
                       r"L40S each; gpu_pool has 1"):  # fmt: skip
        scenario_from_dict(big_scenario(pp=2, count=2))
    with pytest.raises(ValueError, match="pipeline stages"):
        ModelDeployment(name="f", kind="fixed", gpu="T4", pp=2, service_time={"mean_s": 1.0})
    assert GpuPool(gpu="L40S", count=5, gpus_per_node=2).nodes_with(2) == 2  # the fifth GPU is a 1-GPU node
    assert GpuPool(gpu="L40S", count=5, gpus_per_node=2).nodes_with(1) == 3


# --- placement: one stage per node --------------------------------------------------------------------------


def nodes(*free: int) -> tuple[NodeState, ...]:
    return tuple(NodeState.with_free_count(f"n{i}", "H100", 8, H100, f) for i, f in enumerate(free))


def test_placement_puts_each_stage_on_its_own_node() -> None:
    request = ReplicaRequest("r", tp=4, gpu_type="H100", pp=2)
    cluster = nodes(8, 2, 8, 4)
    ffd = FirstFitDecreasing().place(request, cluster)
    assert ffd is not None and ffd.stages == (("n0", (0, 1, 2, 3)), ("n2", (0, 1, 2, 3)))
    best = BestFit().place(request, cluster)  # the fullest fitting nodes: n3 (4 free) first, then n0
    assert best is not None and best.stages == (("n3", (4, 5, 6, 7)), ("n0", (0, 1, 2, 3)))
    after = apply(cluster, best)
    assert [n.free_gpus for n in after] == [4, 2, 8, 0]
    assert FirstFitDecreasing().place(ReplicaRequest("r", tp=4, gpu_type="H100", pp=4), cluster) is None  # 3 fit
    assert request.memory_need_bytes == 0.0 and ReplicaRequest("m", 2, 10.0, None, 3).memory_need_bytes == 60.0


def test_sim_pool_allocates_stages_on_distinct_nodes_and_frees_them_all() -> None:
    pools = [GpuPool(gpu="L40S", count=6, gpus_per_node=2)]
    pool = SimGpuPool(pools, REGISTRY.build("placement", "first-fit-decreasing", {}, np.random.default_rng(0)))
    a = pool.allocate("L40S", 2, 2)
    assert a is not None and [n.name for n in a.nodes] == ["l40s-node-0", "l40s-node-1"]
    assert pool.free_gpus("L40S") == 2
    got: list[Allocation] = []
    assert not pool.request("L40S", 2, got.append, 2)  # one node left: the two-stage replica waits
    pool.release(a)
    assert len(got) == 1 and len({n.name for n in got[0].nodes}) == 2 and pool.free_gpus("L40S") == 2


def test_a_pipeline_replica_runs_on_two_nodes_in_the_simulator() -> None:
    res = simulate(scenario_from_dict(big_scenario(pp=2)))
    s, ev = res.summary, res.events
    assert s["requests"] == s["completed"] > 100
    assert ev.loc[ev["kind"] == "deploy", "detail"].iloc[0].startswith("approved: 1 x llama3-70b on 2 stages")
    assert (res.timeseries["gpus"] == 4).all()  # tp x pp GPUs held and costed
    rejected = simulate(scenario_from_dict(big_scenario(pp=1)))
    assert rejected.summary["completed"] == 0 and rejected.summary["failed"] == rejected.summary["requests"]


def test_initial_pipeline_replicas_land_on_distinct_nodes() -> None:
    sc = big_scenario(pp=2, count=8)
    sc["models"][0]["replicas"] = 2
    sc["gpu_pool"][0]["model_cache_gb"] = 0
    sc["models"][0]["autoscaling"] = None
    res = simulate(scenario_from_dict(sc))
    assert (res.timeseries["gpus"] == 8).all()
    assert res.summary["requests"] == res.summary["completed"]


# --- latency: the inter-node term ---------------------------------------------------------------------------


def test_pipeline_latency_adds_the_inter_node_sends_by_hand() -> None:
    # llama3-70b hidden 8192 x 2 bytes = 16,384 bytes of activations per token per stage boundary; the default
    # inter-node link: 200 Gb/s = 25e9 bytes/s, 10 us per send.
    tp_only = latency_model("llama3-70b", "L40S", 2)
    two = latency_model("llama3-70b", "L40S", 2, 2, 25e9, 10e-6)
    four = latency_model("llama3-70b", "L40S", 2, 4, 25e9, 10e-6)
    per_token = 16_384 / 25e9  # 0.65536 us
    for batch, context in ((1, 500), (32, 40_000)):
        extra = two.decode_step_s(batch, context) - tp_only.decode_step_s(batch, context)
        assert extra == pytest.approx(10e-6 + batch * per_token, rel=1e-9)  # one send of `batch` hidden states
        extra4 = four.decode_step_s(batch, context) - tp_only.decode_step_s(batch, context)
        assert extra4 == pytest.approx(3 * (10e-6 + batch * per_token), rel=1e-9)  # pp - 1 = 3 sends
    assert two.prefill_s(2048) - tp_only.prefill_s(2048) == pytest.approx(10e-6 + 2048 * per_token, rel=1e-9)
    assert two.pp == 2 and two.source == "roofline+pp2" and latency_model("llama3-70b", "L40S", 2, 1) == tp_only
    slow = latency_model("llama3-70b", "L40S", 2, 2, 12.5e9, 10e-6)  # a 100 Gb/s link: twice the per-token cost
    assert slow.decode_per_seq_s - tp_only.decode_per_seq_s == pytest.approx(2 * per_token, rel=1e-9)
    with pytest.raises(ValueError, match="without pipeline"):
        pipeline_model(two, 2, 16_384, 25e9, 10e-6)


def test_pool_link_settings_reach_the_replicas() -> None:
    sc = big_scenario(pp=2)
    sc["gpu_pool"][0] |= {"inter_node_gbps": 100, "inter_node_latency_us": 50}
    fast = simulate(scenario_from_dict(big_scenario(pp=2))).summary
    slow = simulate(scenario_from_dict(sc)).summary
    assert slow["tpot_p50_s"] > fast["tpot_p50_s"]


# --- the virtual engines --------------------------------------------------------------------------------------


def test_two_requests_run_side_by_side_in_the_two_virtual_engines() -> None:
    # constant costs: prefill 0.1 s; a decode step 0.01 s + 0.01 s per sequence
    latency = LatencyModel(
        model="t", gpu="t", tp=1, source="test", prefill_base_s=0.1, prefill_per_token_s=0.0,
        prefill_per_token_sq_s=0.0, decode_base_s=0.01, decode_per_seq_s=0.01, decode_per_context_token_s=0.0,
    )  # fmt: skip
    env = simpy.Environment()
    done: dict[int, float] = {}
    engine = EngineLimits(enable_prefix_caching=False, scheduler="prefill-first")
    replica = PipelineReplica(
        env, 0, "r0", "m", 0.05, lambda req, now, status, reason: done.__setitem__(req.row, now),
        2, engine, latency, 10_000, 16,
    )  # fmt: skip
    for row in (0, 1):
        replica.submit(SimRequest(row, 0.0, 100, 5, 0, 2, 0, -1, None))
    assert [e.in_flight for e in replica.engines] == [1, 1]  # the fewest unfinished requests: one each
    assert replica.running() == 2 and replica.in_flight == 2
    assert [e.total_blocks for e in replica.engines] == [5_000 // 16] * 2  # the KV blocks split between engines
    env.run()
    # each engine: prefill 0.1, then 4 steps of a batch of one (0.02 s); together one engine would take 0.03 a step
    assert done == {0: pytest.approx(0.18), 1: pytest.approx(0.18)}
    assert replica.in_flight == 0 and replica.busy_time() == pytest.approx(0.18)  # (0.18 + 0.18) / 2 stages
