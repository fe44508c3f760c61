"""Admitters: accept or reject a request at the door, given its priority and the pool's saturation.

llm-d (pkg/epp/requestcontrol/admission.go): with flow control enabled the queue itself is the admission control
(`always` here, plus the queue's capacity); without it the legacy admitter rejects sheddable requests (priority
< 0) while saturation >= 1.0 (`shed-sheddable`). The probabilistic admitter (llm-d-router docs/plugins/
probabilistic-admitter.md) rejects sheddable requests with probability min(sat^power * k, 1), power 5, k 300.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import AliasChoices, Field

from policies.flowcontrol.types import AdmissionDecision
from policies.registry import NoParams, PolicyParams

_ADMIT = AdmissionDecision(True)


class AlwaysAdmit:
    """Admit everything (llm-d with flow control enabled: shedding happens in the queue)."""

    TYPE = "always"
    Params = NoParams
    __slots__ = ()

    @classmethod
    def from_params(cls, params: NoParams, rng: np.random.Generator) -> AlwaysAdmit:
        return cls()

    def admit(self, now: float, priority: int, saturation: float) -> AdmissionDecision:
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

    def admit(self, now: float, priority: int, saturation: float) -> AdmissionDecision:
        if priority < 0 and saturation >= self.threshold:
            return AdmissionDecision(
                False, f"shed: saturation {saturation:.2f} >= {self.threshold:g}, priority {priority}"
            )
        return _ADMIT


class ProbabilisticParams(PolicyParams):
    """llm-d's defaults power 5, k 300 (`scale` here; `k` is accepted too)."""

    power: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 5.0
    scale: Annotated[float, Field(gt=0.0, allow_inf_nan=False, validation_alias=AliasChoices("scale", "k"))] = 300.0


class ProbabilisticAdmitter:
    """Reject priority < 0 with probability min(saturation^power * scale, 1); priority >= 0 always admitted.

    One uniform draw per sheddable request, whatever the saturation, so two runs that differ only in load keep
    their random streams aligned (common random numbers).
    """

    TYPE = "probabilistic"
    Params = ProbabilisticParams
    __slots__ = ("_rng", "power", "scale")

    def __init__(self, rng: np.random.Generator, power: float = 5.0, scale: float = 300.0) -> None:
        p = ProbabilisticParams(power=power, scale=scale)
        self.power = p.power
        self.scale = p.scale
        self._rng = rng

    @classmethod
    def from_params(cls, params: ProbabilisticParams, rng: np.random.Generator) -> ProbabilisticAdmitter:
        return cls(rng, params.power, params.scale)

    def reject_probability(self, saturation: float) -> float:
        if saturation <= 0.0:
            return 0.0
        p = saturation**self.power * self.scale
        return 1.0 if p >= 1.0 else p

    def admit(self, now: float, priority: int, saturation: float) -> AdmissionDecision:
        if priority >= 0:
            return _ADMIT
        p = self.reject_probability(saturation)
        if self._rng.random() < p:
            return AdmissionDecision(
                False, f"shed: saturation {saturation:.2f}, reject probability {p:.3g}, priority {priority}"
            )
        return _ADMIT
