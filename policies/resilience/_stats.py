"""Small numeric helpers shared by the resilience policies."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_and_pstdev(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (divide by n, as Envoy's success-rate threshold does)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    variance = math.fsum((v - mean) ** 2 for v in values) / n
    return mean, math.sqrt(variance)
