"""Shared builders for the flow-control tests: queued items, a registry with every flow-control policy, drains."""

from __future__ import annotations

import math

import numpy as np

from policies.flowcontrol.priority import CLASS_PRIORITY, PRIORITY_CLASSES
from policies.flowcontrol.registration import register
from policies.flowcontrol.types import FlowQueue, QueuedRequest
from policies.registry import Registry

INF = math.inf
BIG = dict.fromkeys(PRIORITY_CLASSES, 10**6)
QUEUE_TYPES = ("fcfs", "strict-priority", "wfq-class", "wfq-tenant", "edf")


def item(rid, cls="normal", *, prio=None, tenant="t", t=0.0, deadline=INF, expires=INF, size=1) -> QueuedRequest:
    return QueuedRequest(
        request_id=rid,
        priority=CLASS_PRIORITY[cls] if prio is None else prio,
        priority_class=cls,
        tenant=tenant,
        enqueued_at=t,
        deadline=deadline,
        expires_at=expires,
        size=size,
    )


def registry() -> Registry:
    reg = Registry()
    register(reg)
    return reg


def make_queue(name: str, **params) -> FlowQueue:
    return registry().build("queue", name, params, np.random.default_rng(0))  # type: ignore[return-value]


def drain(q: FlowQueue, now: float = 0.0) -> list[int]:
    out = []
    while (x := q.pop(now)) is not None:
        out.append(x.request_id)
    return out
