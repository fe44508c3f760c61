"""The one place that maps the seed document's four priority classes onto llm-d's integer priorities.

llm-d (llm-d-router, InferenceObjective.spec.priority) gives every request an integer priority: unset means 0,
larger is more important, and priority < 0 means *sheddable* (the old Gateway API Inference Extension had three
criticalities: Critical, Standard, Sheddable). The seed document (its policy reference, section 2)
uses four classes: critical, high, normal, low. They map as follows:

    class      index  llm-d priority   meaning
    critical   0       2               most important
    high       1       1
    normal     2       0               unset / Standard
    low        3      -1               Sheddable (priority < 0)

`PRIORITY_CLASSES` is the one definition of the classes and their order (index 0 = most important): odhsim's
request table stores a class as its index here (`odhsim.workload.schema` re-exports the tuple), so an index
converts with `class_to_priority(index)`. The default SLO targets per class (`DEFAULT_SLOS`) are defined here too.
"""

from __future__ import annotations

import math
import operator
from types import MappingProxyType
from typing import NamedTuple

PRIORITY_CLASSES: tuple[str, ...] = ("critical", "high", "normal", "low")
"""Priority classes, most important first; a request's class index (odhsim's `priority` column) indexes this."""

CLASS_PRIORITY: MappingProxyType[str, int] = MappingProxyType({"critical": 2, "high": 1, "normal": 0, "low": -1})
"""Class name -> llm-d integer priority."""

_PRIORITY_BY_INDEX: tuple[int, ...] = tuple(CLASS_PRIORITY[c] for c in PRIORITY_CLASSES)

DEFAULT_SHARES: MappingProxyType[str, float] = MappingProxyType(
    {"critical": 80.0, "high": 15.0, "normal": 4.0, "low": 1.0}
)
"""Resource shares in percent per class (seed document, quoted in POLICY_REFERENCE.md section 2)."""


class SloTargets(NamedTuple):
    """A class's default targets in seconds; None: no target."""

    ttft_s: float | None
    e2e_s: float | None


DEFAULT_SLOS: MappingProxyType[str, SloTargets] = MappingProxyType(
    {
        "critical": SloTargets(1.0, 30.0),
        "high": SloTargets(3.0, 60.0),
        "normal": SloTargets(10.0, 120.0),
        "low": SloTargets(None, None),
    }
)
"""The one definition of the default SLOs per class: time to first token < 1 s, < 3 s, < 10 s, best effort (the
seed document's latency targets, same source as the shares) and odhsim's end-to-end targets 30 / 60 / 120 s. A
scenario's `slos` section overrides them class by class (odhsim.scenario.model)."""

LATENCY_TARGETS_S: MappingProxyType[str, float] = MappingProxyType(
    {c: math.inf if t.ttft_s is None else t.ttft_s for c, t in DEFAULT_SLOS.items()}
)
"""Default TTFT targets per class in seconds, best effort as math.inf (derived from DEFAULT_SLOS)."""


def class_to_priority(name_or_index: str | int) -> int:
    """llm-d integer priority of a class given by name ("high") or by index into PRIORITY_CLASSES (1)."""
    if isinstance(name_or_index, str):
        try:
            return CLASS_PRIORITY[name_or_index]
        except KeyError:
            known = ", ".join(PRIORITY_CLASSES)
            raise ValueError(f"unknown priority class {name_or_index!r}; known: {known}") from None
    index = operator.index(name_or_index)  # accepts numpy integers, refuses floats
    if not 0 <= index < len(_PRIORITY_BY_INDEX):
        raise ValueError(f"priority class index {index} out of range 0..{len(_PRIORITY_BY_INDEX) - 1}")
    return _PRIORITY_BY_INDEX[index]


def priority_to_class(priority: int) -> str:
    """Class of an llm-d integer priority: >= 2 critical, 1 high, 0 normal, < 0 low."""
    if priority >= 2:
        return "critical"
    if priority == 1:
        return "high"
    if priority == 0:
        return "normal"
    return "low"


def class_index(name: str) -> int:
    """Index of a class name in PRIORITY_CLASSES (0 = most important)."""
    try:
        return PRIORITY_CLASSES.index(name)
    except ValueError:
        known = ", ".join(PRIORITY_CLASSES)
        raise ValueError(f"unknown priority class {name!r}; known: {known}") from None


def is_sheddable(priority: int) -> bool:
    """llm-d's rule: a request with priority < 0 may be shed (rejected or evicted) under load."""
    return priority < 0
