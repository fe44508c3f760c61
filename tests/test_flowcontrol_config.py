"""Flow control: the priority class mapping, policy registration and the flow_control configuration bundle."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from policies.errors import PolicyConfigError
from policies.flowcontrol.admission import ShedSheddable
from policies.flowcontrol.config import FlowControlConfig, build_flow_control
from policies.flowcontrol.priority import (
    DEFAULT_SHARES,
    LATENCY_TARGETS_S,
    PRIORITY_CLASSES,
    class_to_priority,
    is_sheddable,
    priority_to_class,
)
from policies.flowcontrol.queues import StrictPriorityQueue
from policies.flowcontrol.registration import register
from policies.flowcontrol.saturation import UtilizationDetector
from policies.flowcontrol.types import FlowQueue
from policies.flowcontrol.wfq import WfqClassQueue
from policies.registry import Registry
from tests.test_flowcontrol_helpers import INF, QUEUE_TYPES, drain, item, registry

# -- priority mapping ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "priority"),
    [("critical", 2), ("high", 1), ("normal", 0), ("low", -1), (0, 2), (1, 1), (2, 0), (3, -1), (np.int8(3), -1)],
)
def test_class_to_priority(given, priority) -> None:
    assert class_to_priority(given) == priority


@pytest.mark.parametrize(
    ("priority", "cls"),
    [(7, "critical"), (2, "critical"), (1, "high"), (0, "normal"), (-1, "low"), (-5, "low")],
)
def test_priority_to_class(priority, cls) -> None:
    assert priority_to_class(priority) == cls
    assert is_sheddable(priority) is (priority < 0)


def test_mapping_round_trips_and_matches_odhsim() -> None:
    from odhsim.workload.schema import PRIORITY_CLASSES as ODHSIM_CLASSES

    assert PRIORITY_CLASSES == ODHSIM_CLASSES == ("critical", "high", "normal", "low")
    for i, cls in enumerate(PRIORITY_CLASSES):
        assert priority_to_class(class_to_priority(cls)) == cls
        assert class_to_priority(i) == class_to_priority(cls)
    assert dict(DEFAULT_SHARES) == {"critical": 80, "high": 15, "normal": 4, "low": 1}
    assert dict(LATENCY_TARGETS_S) == {"critical": 1.0, "high": 3.0, "normal": 10.0, "low": INF}
    assert [is_sheddable(class_to_priority(c)) for c in PRIORITY_CLASSES] == [False, False, False, True]


@pytest.mark.parametrize("bad", ["urgent", 4, -1])
def test_class_to_priority_rejects_unknown(bad) -> None:
    with pytest.raises(ValueError, match=r"unknown priority class|out of range"):
        class_to_priority(bad)


def test_register_adds_every_policy_once() -> None:
    reg = registry()
    assert reg.names("queue") == sorted(QUEUE_TYPES)
    assert reg.names("saturation-detector") == ["concurrency", "utilization"]
    assert reg.names("admission") == ["always", "probabilistic", "shed-sheddable"]
    with pytest.raises(PolicyConfigError, match="duplicate"):
        register(reg)


# -- configuration ---------------------------------------------------------------------------------------------

EXAMPLE = """
flow_control:
  queue: {type: wfq-class, params: {shares: {critical: 80, high: 15, normal: 4, low: 1}}}
  saturation: {type: utilization, params: {queue_depth_threshold: 5, kv_cache_threshold: 0.8, staleness_s: 0.2}}
  admission: {type: shed-sheddable}
  gate_dispatch_on_saturation: true
  ttl_s: {low: 60}
  deadline: slo
"""


def test_config_example_builds_the_bundle() -> None:
    cfg = FlowControlConfig.model_validate(yaml.safe_load(EXAMPLE)["flow_control"])
    fc = build_flow_control(cfg, np.random.default_rng(0), registry())
    assert isinstance(fc.queue, WfqClassQueue) and isinstance(fc.queue, FlowQueue)
    assert isinstance(fc.saturation, UtilizationDetector) and isinstance(fc.admission, ShedSheddable)
    assert fc.gate_dispatch_on_saturation and fc.deadline == "slo" and fc.ttl_s == {"low": 60.0}
    assert fc.ttl_for_class("low") == 60.0 and fc.ttl_for_class("critical") == INF
    assert cfg.ttl_for_class("low") == 60.0 and cfg.ttl_for_class("high") == INF
    assert fc.may_dispatch(0.99) and not fc.may_dispatch(1.0)
    assert fc.deadline_for(10.0, "critical", ttft_target_s=1.0) == 11.0
    assert fc.deadline_for(10.0, "low", ttft_target_s=None) == INF
    x = fc.make_item(7, 3, "acme", now=10.0, ttft_target_s=None, size=12)
    got = (x.priority, x.priority_class, x.tenant, x.expires_at, x.deadline, x.size)
    assert got == (-1, "low", "acme", 70.0, INF, 12)


def test_config_defaults_are_llm_d_flow_control() -> None:
    cfg = FlowControlConfig()
    assert (cfg.queue.type, cfg.saturation.type, cfg.admission.type) == ("strict-priority", "utilization", "always")
    assert cfg.gate_dispatch_on_saturation and cfg.deadline == "ttl"
    assert cfg.ttl_s == {}  # llm-d's DefaultRequestTTL is 0: no TTL
    fc = build_flow_control(None, np.random.default_rng(0))
    assert isinstance(fc.queue, StrictPriorityQueue)
    assert fc.ttl_s == {} and fc.expires_at(1.0, "high") == INF
    fc = build_flow_control({"ttl_s": {"high": 60}}, np.random.default_rng(0))
    assert fc.deadline_for(1.0, "high", ttft_target_s=3.0) == 61.0  # ttl mode ignores the TTFT target
    assert build_flow_control({"queue": "edf", "ttl_s": {}}, np.random.default_rng(0)).ttl_s == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"queue": "lifo"}, "unknown queue 'lifo'; known queues: edf, fcfs, strict-priority, wfq-class, wfq-tenant"),
        ({"saturation": {"type": "magic"}}, "known saturation-detectors: concurrency, utilization"),
        ({"admission": "maybe"}, "known admissions: always, probabilistic, shed-sheddable"),
        ({"queue": {"type": "fcfs", "params": {"capacity": {"urgent": 3}}}}, "unknown priority class 'urgent'"),
        ({"queue": {"type": "fcfs", "params": {"fifo": True}}}, "fifo"),
        ({"ttl_s": {"urgent": 3}}, "unknown priority class 'urgent'"),
        ({"ttl_s": {"low": -1}}, "greater than 0"),
        ({"deadline": "soon"}, "'ttl' or 'slo'"),
        ({"gate": True}, "Extra inputs are not permitted"),
    ],
)
def test_config_errors(raw, message) -> None:
    with pytest.raises(ValueError, match=message):
        FlowControlConfig.model_validate(raw)


def test_build_with_a_registry_missing_the_type_lists_known_ones() -> None:
    reg = Registry()
    with pytest.raises(PolicyConfigError, match=r"flow_control: unknown queue 'fcfs'; known queues: \(none\)"):
        build_flow_control({"queue": "fcfs"}, np.random.default_rng(0), reg)


def test_same_inputs_same_outputs() -> None:
    def run(seed: int) -> list:
        fc = build_flow_control({"queue": "wfq-tenant", "admission": "probabilistic"}, np.random.default_rng(seed))
        rng = np.random.default_rng(99)
        out = []
        for rid in range(500):
            cls = PRIORITY_CLASSES[int(rng.integers(4))]
            if fc.admission.admit(0.0, class_to_priority(cls), 0.25).admitted:
                fc.queue.push(0.0, item(rid, cls, tenant=str(rng.integers(3))))
        out += drain(fc.queue)
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)
