"""Registers every flow-control policy: kinds "queue", "saturation-detector" and "admission".

`policies.builtin` calls `register(reg)` once; tests may call it on their own `Registry()`.
"""

from __future__ import annotations

from policies.flowcontrol.admission import AlwaysAdmit, ProbabilisticAdmitter, ShedSheddable
from policies.flowcontrol.queues import EdfQueue, FcfsQueue, StrictPriorityQueue
from policies.flowcontrol.saturation import ConcurrencyDetector, UtilizationDetector
from policies.flowcontrol.wfq import WfqClassQueue, WfqTenantQueue
from policies.registry import Registry

QUEUE_KIND = "queue"
SATURATION_KIND = "saturation-detector"
ADMISSION_KIND = "admission"

QUEUES = (FcfsQueue, StrictPriorityQueue, WfqClassQueue, WfqTenantQueue, EdfQueue)
DETECTORS = (UtilizationDetector, ConcurrencyDetector)
ADMITTERS = (AlwaysAdmit, ShedSheddable, ProbabilisticAdmitter)


def register(reg: Registry) -> None:
    """Add the built-in queues, saturation detectors and admitters to `reg` (a duplicate name is an error)."""
    for kind, classes in ((QUEUE_KIND, QUEUES), (SATURATION_KIND, DETECTORS), (ADMISSION_KIND, ADMITTERS)):
        for cls in classes:
            reg.register(kind, cls.TYPE, cls.from_params, cls.Params)
