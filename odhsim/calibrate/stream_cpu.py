"""The CPU the serving path outside the engine spends per request and per streamed token: the gateway (the
calibrating process, which runs the probe stack's gateway) and the client, measured from the probe client
during the probes.

The probe client reads its own CPU time and its parent's (the gateway's process) at the start and end of each
phase: the requests sent alone, then those sent together. Each phase's CPU, less the gateway's background rate
(metric scrapes, the controller; read over an idle half second first) times the phase's length, is
requests x request_cpu_s + tokens x stream_cpu_per_token_s; two phases with different tokens per request give
both (non-negative least squares). The simulator's CPU model uses the per-token figure: a batch streaming its
tokens keeps this much CPU busy beside the engine (odhsim.calibrate.cpu_model).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import psutil
from scipy.optimize import nnls


@dataclass(frozen=True)
class CpuPhase:
    requests: int
    tokens: int
    cpu_s: float
    wall_s: float


class PhaseMeter:
    """This process's CPU time plus its parent's (the gateway's), from the probe client process."""

    def __init__(self) -> None:
        self._parent = psutil.Process(os.getppid())

    def parent_cpu_s(self) -> float:
        t = self._parent.cpu_times()
        return t.user + t.system

    def cpu_s(self) -> float:
        return time.process_time() + self.parent_cpu_s()

    def start(self) -> tuple[float, float]:
        return self.cpu_s(), time.monotonic()

    def phase(self, started: tuple[float, float], requests: int, tokens: int) -> CpuPhase:
        return CpuPhase(requests, tokens, self.cpu_s() - started[0], time.monotonic() - started[1])


def stream_costs(phases: list[CpuPhase], background_cores: float) -> tuple[float, float] | None:
    """(request_cpu_s, stream_cpu_per_token_s) from the phases (module doc); None without two phases whose tokens
    per request differ."""
    rows = [p for p in phases if p.requests > 0]
    ratios = {round(p.tokens / p.requests, 6) for p in rows}
    if len(rows) < 2 or len(ratios) < 2:
        return None
    x = np.array([[p.requests, p.tokens] for p in rows], dtype=float)
    y = np.array([max(0.0, p.cpu_s - background_cores * p.wall_s) for p in rows])
    (per_request, per_token), _ = nnls(x, y)
    return float(per_request), float(per_token)
