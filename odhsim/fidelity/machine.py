"""How busy the machine was with other work while a live run was served: the CPU every process used beyond what
the run's own processes (this one, the replay; serve, its gateway and replicas) used, in cores.

On a shared machine the live engine's cost per token follows the other tenants' load, which no simulator sees;
this number goes next to each run's errors (`others_cpu_cores` in fidelity.csv), so a reader can tell a run the
machine disturbed from one it did not. Read from /proc through psutil (the whole machine's busy time, including
time the hypervisor stole, and the run's process tree), so it costs two readings per run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class CpuReading:
    wall_s: float
    machine_busy_s: float
    ours_s: float


def _tree(pids: list[int]) -> list[psutil.Process]:
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs += [p, *p.children(recursive=True)]
        except psutil.Error:
            continue
    return procs


def _cpu_s(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except psutil.Error:  # gone meanwhile: its time is lost from "ours", so it counts as others' (small)
        return 0.0


def _busy_s() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


class CpuMeter:
    """`start()` before the run, `others_cores()` after: the mean number of cores the rest of the machine used
    (`ours_cores()`: the measured processes' own)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self._procs: list[psutil.Process] = []
        self._start: CpuReading | None = None
        self._ours0: dict[int, float] = {}

    def start(self) -> None:
        self._procs = _tree(self.pids)
        self._ours0 = {p.pid: _cpu_s(p) for p in self._procs}
        self._start = CpuReading(time.monotonic(), _busy_s(), sum(self._ours0.values()))

    def read(self) -> tuple[float, float]:
        """(others' cores, ours) since `start()`; NaN before it."""
        if self._start is None:
            return math.nan, math.nan
        wall = time.monotonic() - self._start.wall_s
        busy = _busy_s() - self._start.machine_busy_s
        ours = sum(_cpu_s(p) - self._ours0.get(p.pid, 0.0) for p in self._procs)
        ours += sum(_cpu_s(p) for p in _tree(self.pids) if p.pid not in self._ours0)  # processes started meanwhile
        if not wall > 0:
            return math.nan, math.nan
        return max(0.0, (busy - ours) / wall), ours / wall

    def others_cores(self) -> float:
        return self.read()[0]
