"""Admitters: accept or reject a request at the door, given its priority and the pool's saturation.

llm-d (pkg/epp/requestcontrol/admission.go): with flow control enabled the queue itself is the admission control
(`always` here, plus the queue's capacity); without it the legacy admitter rejects sheddable requests (priority
< 0) while saturation >= 1.0 (`shed-sheddable`). The probabilistic admitter (llm-d-router 520af478,
requestcontrol/admitter/probabilisticadmitter/plugin.go) rejects sheddable requests with probability
min(sat^power * k, 1), power 5, k 300, where sat is its own mean over the pods of max(waiting / 5, kv / 0.8),
with no staleness check; with no pods it admits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
from pydantic import AliasChoices, Field

from policies.flowcontrol.types import AdmissionDecision
from policies.registry import NoParams, PolicyParams
from policies.routing.types import EndpointState

_ADMIT = AdmissionDecision(True)


class AlwaysAdmit:
    """Admit everything (llm-d with flow control enabled: shedding happens in the queue)."""

    TYPE = "always"
    Params = NoParams
    __slots__ = ()

    @classmethod
    def from_params(cls, params: NoParams, rng: np.random.Generator) -> AlwaysAdmit:
        return cls()

    def admit(
        self, now: float, priority: int, saturation: float, endpoints: Sequence[EndpointState] | None = None
    ) -> AdmissionDecision:
        return _ADMIT


class ShedSheddableParams(PolicyParams):
    threshold: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0


class ShedSheddable:
    """llm-d's legacy admitter: reject priority < 0 when saturation >= threshold (1.0)."""

    TYPE = "shed-sheddable"
    Params = ShedSheddableParams
    __slots__ = ("threshold",)

    def __init__(self, threshold: float = 1.0) -> None:
        self.threshold = ShedSheddableParams(threshold=threshold).threshold

    @classmethod
    def from_params(cls, params: ShedSheddableParams, rng: np.random.Generator) -> ShedSheddable:
        return cls(params.threshold)

    def admit(
        self, now: float, priority: int, saturation: float, endpoints: Sequence[EndpointState] | None = None
    ) -> AdmissionDecision:
        if priority < 0 and saturation >= self.threshold:
            return AdmissionDecision(
                False, f"shed: saturation {saturation:.2f} >= {self.threshold:g}, priority {priority}"
            )
        return _ADMIT


class ProbabilisticParams(PolicyParams):
    """llm-d's defaults power 5, k 300 (`scale` here; `k` is accepted too), queue depth 5, KV cache 0.8."""

    power: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 5.0
    scale: Annotated[float, Field(gt=0.0, allow_inf_nan=False, validation_alias=AliasChoices("scale", "k"))] = 300.0
    queue_depth_threshold: Annotated[
        int, Field(gt=0, validation_alias=AliasChoices("queue_depth_threshold", "queueDepthThreshold"))
    ] = 5
    kv_cache_threshold: Annotated[
        float,
        Field(gt=0.0, allow_inf_nan=False, validation_alias=AliasChoices("kv_cache_threshold", "kvCacheUtilThreshold")),
    ] = 0.8


class ProbabilisticAdmitter:
    """Reject priority < 0 with probability min(saturation^power * scale, 1); priority >= 0 always admitted.

    Given `endpoints`, saturation is computed here as llm-d's admitter does: mean over them of
    max(waiting / queue_depth_threshold, kv_usage / kv_cache_threshold), however old the metrics; no endpoints:
    admit (no draw). Without `endpoints` the engine's detector value is used. One uniform draw per sheddable
    request otherwise, whatever the saturation, so runs that differ only in load keep their streams aligned.
    """

    TYPE = "probabilistic"
    Params = ProbabilisticParams
    __slots__ = ("_rng", "kv_cache_threshold", "power", "queue_depth_threshold", "scale")

    def __init__(
        self,
        rng: np.random.Generator,
        power: float = 5.0,
        scale: float = 300.0,
        queue_depth_threshold: int = 5,
        kv_cache_threshold: float = 0.8,
    ) -> None:
        p = ProbabilisticParams(
            power=power, scale=scale, queue_depth_threshold=queue_depth_threshold, kv_cache_threshold=kv_cache_threshold
        )
        self.power = p.power
        self.scale = p.scale
        self.queue_depth_threshold = p.queue_depth_threshold
        self.kv_cache_threshold = p.kv_cache_threshold
        self._rng = rng

    @classmethod
    def from_params(cls, params: ProbabilisticParams, rng: np.random.Generator) -> ProbabilisticAdmitter:
        return cls(rng, params.power, params.scale, params.queue_depth_threshold, params.kv_cache_threshold)

    def pool_saturation(self, endpoints: Sequence[EndpointState]) -> float:
        """llm-d's computeSaturation: mean of max(waiting / qd, kv / kv_threshold); no staleness check."""
        q, kv = float(self.queue_depth_threshold), self.kv_cache_threshold
        return sum(max(e.waiting / q, e.kv_usage / kv) for e in endpoints) / len(endpoints)

    def reject_probability(self, saturation: float) -> float:
        if saturation <= 0.0:
            return 0.0
        p = saturation**self.power * self.scale
        return 1.0 if p >= 1.0 else p

    def admit(
        self, now: float, priority: int, saturation: float, endpoints: Sequence[EndpointState] | None = None
    ) -> AdmissionDecision:
        if priority >= 0:
            return _ADMIT
        if endpoints is not None:
            if not endpoints:
                return _ADMIT
            saturation = self.pool_saturation(endpoints)
        p = self.reject_probability(saturation)
        if self._rng.random() < p:
            return AdmissionDecision(
                False, f"shed: saturation {saturation:.2f}, reject probability {p:.3g}, priority {priority}"
            )
        return _ADMIT
