"""The scenario's `gateway.flow_control` section and `build_flow_control`, which makes the FlowControl bundle.

    flow_control:
      queue: {type: wfq-class, params: {shares: {critical: 80, high: 15, normal: 4, low: 1}}}
      saturation: {type: utilization, params: {queue_depth_threshold: 5, kv_cache_threshold: 0.8, staleness_s: 0.2}}
      admission: {type: shed-sheddable}
      gate_dispatch_on_saturation: true   # llm-d: nothing is dispatched while saturation >= 1.0
      ttl_s: {low: 60}                    # per class; a class left out never expires
      deadline: slo                       # EDF deadline: ttl (enqueue + TTL) | slo (enqueue + class TTFT target)

`queue: fcfs` is short for `queue: {type: fcfs}`. Defaults are llm-d's with flow control enabled: strict-priority
bands with FCFS inside, the utilization detector, no admission shedding, the dispatch gate on, no request cap and
no TTL (llm-d's DefaultRequestTTL is 0: a queued request waits until its client gives up). Types and params are
checked at load time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from policies.errors import PolicyConfigError
from policies.flowcontrol.priority import PRIORITY_CLASSES, class_to_priority, priority_to_class
from policies.flowcontrol.registration import ADMISSION_KIND, QUEUE_KIND, SATURATION_KIND
from policies.flowcontrol.types import Admitter, FlowQueue, QueuedRequest, SaturationDetector
from policies.registry import Registry

_KIND_OF_FIELD = {"queue": QUEUE_KIND, "saturation": SATURATION_KIND, "admission": ADMISSION_KIND}


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicySpec(_Frozen):
    type: Annotated[str, Field(min_length=1)]
    params: dict[str, Any] = Field(default_factory=dict)


def default_registry() -> Registry:
    """The one built-in registry (imported late: policies.builtin imports this package's registration)."""
    from policies.builtin import REGISTRY

    return REGISTRY


class FlowControlConfig(_Frozen):
    queue: PolicySpec = PolicySpec(type="strict-priority")
    saturation: PolicySpec = PolicySpec(type="utilization")
    admission: PolicySpec = PolicySpec(type="always")
    gate_dispatch_on_saturation: bool = True
    ttl_s: dict[str, Annotated[float, Field(gt=0.0)] | None] = Field(default_factory=dict)
    deadline: Literal["ttl", "slo"] = "ttl"

    @field_validator("queue", "saturation", "admission", mode="before")
    @classmethod
    def _type_shorthand(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @field_validator("queue", "saturation", "admission")
    @classmethod
    def _known_policy(cls, v: PolicySpec, info: ValidationInfo) -> PolicySpec:
        default_registry().validate(_KIND_OF_FIELD[info.field_name], v.type, v.params)
        return v

    @field_validator("ttl_s")
    @classmethod
    def _known_classes(cls, v: dict[str, float | None]) -> dict[str, float | None]:
        unknown = sorted(set(v) - set(PRIORITY_CLASSES))
        if unknown:
            raise ValueError(f"unknown priority class {unknown[0]!r}; known: {', '.join(PRIORITY_CLASSES)}")
        return v

    def ttl_for_class(self, priority_class: str) -> float:
        """Seconds a request of this class may wait in the queue; math.inf when it never expires."""
        return _ttl(self.ttl_s, priority_class)


def _ttl(ttl_s: Mapping[str, float | None], priority_class: str) -> float:
    if priority_class not in PRIORITY_CLASSES:
        raise ValueError(f"unknown priority class {priority_class!r}; known: {', '.join(PRIORITY_CLASSES)}")
    ttl = ttl_s.get(priority_class)
    return math.inf if ttl is None else ttl


@dataclass(frozen=True, slots=True, eq=False)
class FlowControl:
    """What the gateway needs: the queue, the saturation detector, the admitter, and the TTL / deadline rules."""

    queue: FlowQueue
    saturation: SaturationDetector
    admission: Admitter
    gate_dispatch_on_saturation: bool
    ttl_s: dict[str, float]  # class -> TTL seconds, only classes that expire
    deadline: str  # "ttl" | "slo"

    def ttl_for_class(self, priority_class: str) -> float:
        return _ttl(self.ttl_s, priority_class)

    def may_dispatch(self, saturation: float) -> bool:
        """llm-d's dispatch gate: nothing leaves the queue while saturation >= 1.0 (when the gate is on)."""
        return not self.gate_dispatch_on_saturation or saturation < 1.0

    def expires_at(self, now: float, priority_class: str) -> float:
        return now + self.ttl_for_class(priority_class)

    def deadline_for(self, now: float, priority_class: str, ttft_target_s: float | None = None) -> float:
        """EDF deadline: now + TTL ("ttl", llm-d's EDF), or now + the class's TTFT target ("slo", llm-d's SLO
        deadline ordering); no TTL / no target gives math.inf (sorts after every deadline-bound request)."""
        if self.deadline == "slo":
            return math.inf if ttft_target_s is None else now + ttft_target_s
        return now + self.ttl_for_class(priority_class)

    def make_item(
        self,
        request_id: int,
        priority_class: str | int,
        tenant: str,
        now: float,
        ttft_target_s: float | None = None,
        size: int = 1,
    ) -> QueuedRequest:
        """A QueuedRequest for a class given by name or odhsim index, with its priority, deadline and expiry."""
        priority = class_to_priority(priority_class)
        name = priority_class if isinstance(priority_class, str) else priority_to_class(priority)
        return QueuedRequest(
            request_id=request_id,
            priority=priority,
            priority_class=name,
            tenant=tenant,
            enqueued_at=now,
            deadline=self.deadline_for(now, name, ttft_target_s),
            expires_at=self.expires_at(now, name),
            size=size,
        )


def build_flow_control(
    config: FlowControlConfig | Mapping[str, Any] | None,
    rng: np.random.Generator,
    registry: Registry | None = None,
) -> FlowControl:
    """Build the bundle; each component gets its own child stream of `rng` (queue, saturation, admission)."""
    if config is None:
        config = FlowControlConfig()
    elif not isinstance(config, FlowControlConfig):
        config = FlowControlConfig.model_validate(dict(config))
    reg = registry if registry is not None else default_registry()
    rq, rs, ra = rng.spawn(3)
    try:
        queue = reg.build(QUEUE_KIND, config.queue.type, config.queue.params, rq)
        detector = reg.build(SATURATION_KIND, config.saturation.type, config.saturation.params, rs)
        admitter = reg.build(ADMISSION_KIND, config.admission.type, config.admission.params, ra)
    except PolicyConfigError as err:
        raise PolicyConfigError(f"flow_control: {err}") from None
    ttl = {c: v for c, v in config.ttl_s.items() if v is not None and v < math.inf}
    return FlowControl(
        queue=queue,  # type: ignore[arg-type]
        saturation=detector,  # type: ignore[arg-type]
        admission=admitter,  # type: ignore[arg-type]
        gate_dispatch_on_saturation=config.gate_dispatch_on_saturation,
        ttl_s=ttl,
        deadline=config.deadline,
    )
