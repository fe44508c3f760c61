"""The simulator's side of CPU sharing: replicas of calibrated models whose profile has a `cpu` section run on one
machine, and each step they start takes `CpuShare.factor(demand)` times its calibrated time, demand counting the
replicas computing at that moment (the one starting the step included), one core each, plus the cores their token
streams keep busy in the gateway and the client (batch x stream_cpu_per_token_s / step time, each replica's as
of its last step start; 0 when the profile measured none, which leaves the demand the busy count), plus the
gateway's and the client's CPU for the requests that arrived at these replicas over the last WINDOW_S
(arrivals x request_cpu_s / WINDOW_S).

The factor is read when a step or a decode span starts and holds for it (a span already running keeps its
length, as the simulator plans spans in closed form); only the small context-growth term of a decode span is not
scaled. Replicas are read duck-typed (`_busy_since` is NaN while idle: odhsim.sim.replica_base) so this module
stays in the base layer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from odhsim.calibrate.profile_file import CpuShare
from odhsim.profiles.coefficients import LatencyModel

WINDOW_S = 1.0
"""Arrivals over this past window set the request rate whose gateway and client CPU the machine carries."""


class CpuMachine:
    """The replicas sharing one machine's cores, and what that costs (CpuShare)."""

    def __init__(self, share: CpuShare) -> None:
        self.share = share
        self.seats: list[CpuSeat] = []
        self.arrivals: deque[float] = deque()
        self._per_arrival = share.request_cpu_s / WINDOW_S

    def arrival(self, now: float) -> None:
        if self._per_arrival:
            self.arrivals.append(now)

    def factor(self, me: CpuSeat) -> float:
        demand = 0.0
        for seat in self.seats:
            r = seat.replica
            if seat is me or r._busy_since == r._busy_since:  # not NaN: computing
                demand += 1.0 + seat.stream_cores
        if self.arrivals:
            arrivals, since = self.arrivals, me.replica.env.now - WINDOW_S
            while arrivals and arrivals[0] <= since:
                arrivals.popleft()
            demand += len(arrivals) * self._per_arrival
        return self.share.factor(demand)


class CpuSeat:
    """One replica's place on the machine (set once the replica exists) and the cores its token stream keeps
    busy outside it (as of its last step start)."""

    def __init__(self, machine: CpuMachine) -> None:
        self.machine = machine
        self.replica: Any = None
        self.stream_cores = 0.0
        self.per_token_s = machine.share.stream_cpu_per_token_s

    def take(self, replica: Any) -> None:
        self.replica = replica
        self.machine.seats.append(self)
        if hasattr(replica, "cpu_seat"):  # an LLM replica reports its arrivals (their gateway and client CPU)
            replica.cpu_seat = self

    def arrival(self, now: float) -> None:
        self.machine.arrival(now)

    def factor(self) -> float:
        return self.machine.factor(self)


@dataclass(frozen=True)
class SharedCpuLatency(LatencyModel):
    """A calibrated LatencyModel whose steps stretch while more replicas compute than the machine has cores.
    A dataclass, so a slow-replica fault's `replace` keeps the seat."""

    seat: CpuSeat | None = None

    def prefill_s(self, tokens: int, sum_sq_tokens: int | None = None) -> float:
        t = LatencyModel.prefill_s(self, tokens, sum_sq_tokens)
        if self.seat is None:
            return t
        self.seat.stream_cores = 0.0  # a prompt streams one token
        return t * self.seat.factor()

    def decode_step_s(self, batch: int, context_tokens: int) -> float:
        t = LatencyModel.decode_step_s(self, batch, context_tokens)
        seat = self.seat
        if seat is None:
            return t
        if seat.per_token_s and t > 0.0:
            seat.stream_cores = batch * seat.per_token_s / t
        return t * seat.factor()


def shared_latency(latency: LatencyModel, seat: CpuSeat) -> SharedCpuLatency:
    """`latency` on a shared machine."""
    return SharedCpuLatency(**{f.name: getattr(latency, f.name) for f in fields(latency) if f.init}, seat=seat)


def shared_service(service_s: Callable[[int], float], seat: CpuSeat) -> Callable[[int], float]:
    """A batch's service time, stretched as steps are."""
    return lambda n: service_s(n) * seat.factor()
