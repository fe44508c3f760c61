"""The live capacity a fidelity run's loads are fractions of: a burst for a first estimate, then an open-loop
overload whose steady answer rate is the capacity."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from odhsim.fidelity.compare import FidelityError
from odhsim.fidelity.live import LiveServer, run_live
from odhsim.fidelity.settings import FidelitySettings, Hooks, fidelity_scenario
from odhsim.fidelity.workloads import Requests, at_rate, repeated
from odhsim.scenario.model import Scenario

PAUSE_BETWEEN_LOADS_S = 2.0


def probe_size(scenario: Scenario, settings: FidelitySettings) -> int:
    if settings.probe_requests is not None:
        return settings.probe_requests
    seqs = sum(
        m.replicas * (m.live.max_num_seqs if m.kind == "llm" else m.live.max_batch_size)
        for m in scenario.models
        if m.live is not None
    )
    return int(min(400, max(48, 4 * seqs)))


def burst_throughput(requests: pd.DataFrame) -> float:
    """ok answers per second from the first arrival to the last answer of a burst: a first, rough capacity (a
    burst keeps every batch full, which open-loop arrivals do not; the drain's tail pulls it down a little)."""
    ok = requests[requests["status"].astype(str) == "ok"]
    if len(ok) < 10:
        return math.nan
    span = float(ok["finish_s"].max() - requests["arrival_s"].min())
    return len(ok) / span if span > 0 else math.nan


def sustained_throughput(requests: pd.DataFrame, start_s: float, end_s: float) -> float:
    """ok answers per second finishing within [start_s, end_s) of an open-loop overload: the queue never empties
    there, so this is the rate the system keeps up with."""
    finish = requests.loc[requests["status"].astype(str) == "ok", "finish_s"].to_numpy(dtype=float)
    inside = int(((finish >= start_s) & (finish < end_s)).sum())
    return inside / (end_s - start_s) if end_s > start_s else math.nan


SUSTAIN_S, SUSTAIN_WARMUP_S, OVERLOAD = 10.0, 3.0, 1.3


def measure_capacity(
    scenario: Scenario, base: Requests, server: LiveServer, folder: Path, settings: FidelitySettings, hooks: Hooks
) -> float:
    """Live capacity in req/s, what open-loop arrivals can be served at: a burst gives a first estimate c0; then
    Poisson-like arrivals of the workload at 1.3 x c0 for 10 s, and the ok answers per second between 3 s and 10 s
    (the queue full all along) are the capacity. Both probes and their figures are kept in `folder`."""
    n = min(probe_size(scenario, settings), len(base))
    burst = Requests(np.linspace(0.0, 1.0, n), base.prompt_tokens[:n], base.output_tokens[:n], base.source)
    probe = fidelity_scenario(scenario, burst, folder / "burst", settings).model_copy(update={"duration_s": 2.0})
    hooks.stage(f"capacity: {n} requests at once")
    tables, _ = run_live(probe, server, folder / "burst" / "live", settings, hooks)
    rough = burst_throughput(tables.requests)
    if not rough > 0:
        raise FidelityError(f"capacity probe: too few requests answered ok (see {folder / 'burst' / 'live'})")
    time.sleep(PAUSE_BETWEEN_LOADS_S)
    offered = OVERLOAD * rough
    over = at_rate(repeated(base, offered, SUSTAIN_S), offered, SUSTAIN_S)
    probe = fidelity_scenario(scenario, over, folder / "sustained", settings).model_copy(
        update={"duration_s": SUSTAIN_S}
    )
    hooks.stage(f"capacity: {len(over)} requests at {offered:.3g} req/s (1.3 x the burst's {rough:.3g})")
    tables, _ = run_live(probe, server, folder / "sustained" / "live", settings, hooks)
    cap = sustained_throughput(tables.requests, SUSTAIN_WARMUP_S, SUSTAIN_S)
    if not cap > 0:
        raise FidelityError(f"capacity probe: no answers while overloaded (see {folder / 'sustained' / 'live'})")
    doc = {"capacity_rps": cap, "burst_rps": rough, "burst_requests": n, "offered_rps": over.rate_rps,
           "sustained_requests": len(over), "window_s": [SUSTAIN_WARMUP_S, SUSTAIN_S]}  # fmt: skip
    (folder / "capacity.json").write_text(json.dumps(doc) + "\n")
    return cap
