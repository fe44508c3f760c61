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

`PRIORITY_CLASSES` has the same order as odhsim's (`odhsim.workload.schema.PRIORITY_CLASSES`, index 0 = most
important), so a request's class index in the request table converts with `class_to_priority(index)`.
"""

from __future__ import annotations

import math
import operator
from types import MappingProxyType

PRIORITY_CLASSES: tuple[str, ...] = ("critical", "high", "normal", "low")
"""Priority classes, most important first (the same tuple and order as odhsim's)."""

CLASS_PRIORITY: MappingProxyType[str, int] = MappingProxyType({"critical": 2, "high": 1, "normal": 0, "low": -1})
"""Class name -> llm-d integer priority."""

_PRIORITY_BY_INDEX: tuple[int, ...] = tuple(CLASS_PRIORITY[c] for c in PRIORITY_CLASSES)

DEFAULT_SHARES: MappingProxyType[str, float] = MappingProxyType(
    {"critical": 80.0, "high": 15.0, "normal": 4.0, "low": 1.0}
)
"""Resource shares in percent per class (seed document, quoted in POLICY_REFERENCE.md section 2)."""

LATENCY_TARGETS_S: MappingProxyType[str, float] = MappingProxyType(
    {"critical": 1.0, "high": 3.0, "normal": 10.0, "low": math.inf}
)
"""Latency targets per class in seconds: < 1 s, < 3 s, < 10 s, best effort (math.inf). Same source."""


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
