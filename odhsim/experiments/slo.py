"""The SLO verdict on a simulated request table: each request against its own priority class's targets, pooled."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from odhsim.results.summary import latency_columns
from odhsim.scenario.model import Slo

SLO_PERCENTILE = 99.0


def slo_ratios(requests: pd.DataFrame, slos: Mapping[str, Slo]) -> np.ndarray:
    """Per request whose priority class has a target: its latency over its class's target, the worse of TTFT and
    end-to-end (<= 1: the request met its SLO); a request that did not finish ok is infinitely late."""
    lat = latency_columns(requests)
    prio = requests["priority"].astype(str).to_numpy()
    never = np.inf
    ttft_target = np.array([(slos[c].ttft_s if c in slos else None) or never for c in prio], dtype=float)
    e2e_target = np.array([(slos[c].e2e_s if c in slos else None) or never for c in prio], dtype=float)
    judged = np.isfinite(ttft_target) | np.isfinite(e2e_target)
    ttft = np.nan_to_num(lat["ttft_s"].to_numpy(), nan=np.inf)
    e2e = np.nan_to_num(lat["e2e_s"].to_numpy(), nan=np.inf)
    with np.errstate(invalid="ignore"):  # inf / inf for a failed request in a class without one of the targets
        ratios = np.fmax(np.nan_to_num(ttft / ttft_target, nan=0.0), np.nan_to_num(e2e / e2e_target, nan=0.0))
    ok = (requests["status"] == "ok").to_numpy()
    return np.where(ok, ratios, np.inf)[judged]


def meets_slos(requests: pd.DataFrame, slos: Mapping[str, Slo], percentile: float = SLO_PERCENTILE) -> bool:
    """Whether the `percentile` (p99) TTFT and end-to-end latency meet the SLOs, each request measured against its
    own priority class's targets (`slo_ratios`), pooled over the classes: at most 1% of the requests may miss.
    Pooled, because a class with a tenth of the requests would otherwise have its p99 decided by its worst one or
    two requests, and the answer would jump from one sample of the mix to the next."""
    ratios = slo_ratios(requests, slos)
    return not len(ratios) or float(np.percentile(ratios, percentile, method="higher")) <= 1.0
