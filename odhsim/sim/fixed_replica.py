"""A replica of a traditional ML model: `concurrency` slots and a local FIFO queue; the service time comes with
the request (drawn at arrival from the model's own stream, so every policy variant sees the same draws). A canary
whose service time differs draws its own at submission (`draw_service`, from the canary's stream)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import simpy

from odhsim.sim.replica_base import FinishCallback, ReplicaBase
from odhsim.sim.request import STATUS_OK, SimRequest


class FixedReplica(ReplicaBase):
    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        name: str,
        model_name: str,
        scrape_interval_s: float,
        on_finish: FinishCallback,
        concurrency: int,
    ) -> None:
        super().__init__(env, index, name, model_name, scrape_interval_s, on_finish)
        self.concurrency = concurrency
        self.busy_slots = 0
        self.queue: deque[SimRequest] = deque()
        self.serving: dict[int, SimRequest] = {}  # row -> request in a slot
        self.draw_service: Callable[[], float] | None = None

    def waiting(self) -> int:
        return len(self.queue)

    def running(self) -> int:
        return self.busy_slots

    def submit(self, req: SimRequest) -> None:
        if self.parent is not None or int(self.env._now / self.scrape_interval_s) != self._published_tick:
            self._before_change()  # the first change of this scrape tick (the check inlined: hot in M/M/c)
        self.in_flight += 1
        req.replica = self.index
        if self.draw_service is not None:
            req.service_s = self.draw_service()
        if self.busy_slots < self.concurrency:
            self._start(req)
        else:
            self.queue.append(req)

    def _start(self, req: SimRequest) -> None:
        if self.busy_slots == 0:
            self._mark_busy()
        self.busy_slots += 1
        req.start_s = self.env._now
        self.serving[req.row] = req
        done = self.env.timeout(req.service_s, req)
        done.callbacks.append(self._done)

    def _done(self, event: simpy.Event) -> None:
        req: SimRequest = event.value
        if self.serving.pop(req.row, None) is None:
            return  # aborted when the replica's drain timed out
        now = self.env._now
        if self.parent is not None or int(now / self.scrape_interval_s) != self._published_tick:
            self._before_change()
        self.busy_slots -= 1
        self.in_flight -= 1
        req.first_token_s = now
        req.generated = req.output_tokens
        if self.queue:
            self._start(self.queue.popleft())
        elif self.busy_slots == 0:
            self._mark_idle()
        self.on_finish(req, now, STATUS_OK, "")

    def abort_all(self) -> list[SimRequest]:
        """Drop every request this replica holds (its drain timed out) and return them."""
        held = [*self.serving.values(), *self.queue]
        self.serving.clear()
        self.queue.clear()
        self.busy_slots = 0
        self.in_flight = 0
        self._mark_idle()
        return held
