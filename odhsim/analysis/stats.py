"""The statistics of a paired comparison: mean differences with t confidence intervals and paired t-tests.

Apart from `compare` (which runs the simulator) so that the plot and the report read them without importing
the runner.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


class PairedStats(NamedTuple):
    """A paired comparison over seeds: mean difference, its confidence interval, the p-value, the pairs used."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int


def finite(values: np.ndarray) -> np.ndarray:
    """The finite values (a percentile of no completed requests is NaN)."""
    return values[np.isfinite(values)]


def paired_stats(baseline: Sequence[float], other: Sequence[float], confidence: float = CONFIDENCE) -> PairedStats:
    """Mean paired difference (other - baseline), its t confidence interval and the paired t-test's p-value.

    Seeds where either side is NaN (e.g. a percentile of no completed requests) are dropped pairwise.
    n < 2: the interval and p-value are NaN (one difference says nothing about its spread).
    All differences equal: scipy returns NaN; we report the degenerate answer instead, CI = (d, d) and
    p = 1.0 when d == 0 (no difference at all) or p = 0.0 when d != 0 (the same nonzero shift on every seed).
    """
    b = np.asarray(baseline, dtype=float)
    o = np.asarray(other, dtype=float)
    if b.shape != o.shape:
        raise ValueError(f"paired samples differ in length: {b.shape} vs {o.shape}")
    keep = np.isfinite(b) & np.isfinite(o)
    d = o[keep] - b[keep]
    n = len(d)
    if n == 0:
        return PairedStats(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(d.mean())
    if n == 1:
        return PairedStats(mean, math.nan, math.nan, math.nan, 1)
    if np.all(d == d[0]):
        return PairedStats(mean, mean, mean, 1.0 if mean == 0 else 0.0, n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-constant differences: scipy warns, p stays usable
        p = float(stats.ttest_rel(o[keep], b[keep]).pvalue)
    return PairedStats(mean, mean - half, mean + half, p, n)


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(mean, t half-width of its confidence interval) over the finite values; half-width NaN below 2 values."""
    v = finite(np.asarray(values, dtype=float))
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) == 1:
        return float(v[0]), math.nan
    return float(v.mean()), float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
