"""Admission, priority and flow control at the gateway (POLICY_REFERENCE.md section 2; llm-d-router flowcontrol).

- `priority`: the four classes and llm-d's integer priorities (the one mapping).
- queues (kind "queue"): fcfs, strict-priority, wfq-class, wfq-tenant, edf; capacity, eviction and TTL shared.
- saturation detectors (kind "saturation-detector"): utilization, concurrency.
- admitters (kind "admission"): always, shed-sheddable, probabilistic.
- `config.FlowControlConfig` / `build_flow_control`: the scenario's `gateway.flow_control` section.
"""

from policies.flowcontrol.priority import (
    CLASS_PRIORITY,
    DEFAULT_SHARES,
    LATENCY_TARGETS_S,
    PRIORITY_CLASSES,
    class_to_priority,
    is_sheddable,
    priority_to_class,
)
from policies.flowcontrol.types import (
    AdmissionDecision,
    Admitter,
    FlowQueue,
    PushResult,
    QueuedRequest,
    SaturationDetector,
)

__all__ = [
    "CLASS_PRIORITY",
    "DEFAULT_SHARES",
    "LATENCY_TARGETS_S",
    "PRIORITY_CLASSES",
    "AdmissionDecision",
    "Admitter",
    "FlowQueue",
    "PushResult",
    "QueuedRequest",
    "SaturationDetector",
    "class_to_priority",
    "is_sheddable",
    "priority_to_class",
]
