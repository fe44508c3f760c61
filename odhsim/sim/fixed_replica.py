"""A replica of a traditional ML model: `concurrency` slots and a local FIFO queue; the service time comes with
the request (drawn at arrival from the model's own stream, so every policy variant sees the same draws). A canary
whose service time differs draws its own at submission (`draw_service`, from the canary's stream)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from math import floor
from typing import Any

import simpy

from odhsim.results.steps import StepLog
from odhsim.sim import steps_hook
from odhsim.sim.replica_base import FinishCallback, ReplicaBase
from odhsim.sim.request import STATUS_OK, SimRequest


class FixedReplica(ReplicaBase):
    step_log: StepLog | None = None  # outputs.steps: a row per forward pass (odhsim.sim.steps_hook); None: off
    step_src = 0

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
        self.slowdown = 1.0  # a slow_replica fault's factor on the service times that start (odhsim.sim.faults)

    def waiting(self) -> int:
        return len(self.queue)

    def running(self) -> int:
        return self.busy_slots

    def submit(self, req: SimRequest) -> None:
        if self.parent is not None or floor(self.env._now / self.scrape_interval_s) != self._published_tick:
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
        done = self.env.timeout(req.service_s * self.slowdown, req)
        done.callbacks.append(self._done)
        if self.step_log is not None:
            steps_hook.fixed_batch(self, req.service_s * self.slowdown, 1)

    def _done(self, event: simpy.Event) -> None:
        req: SimRequest = event.value
        if self.serving.pop(req.row, None) is None:
            return  # aborted when the replica's drain timed out
        now = self.env._now
        if self.parent is not None or floor(now / self.scrape_interval_s) != self._published_tick:
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


class BatchingReplica(FixedReplica):
    """A fixed model behind a dynamic batcher, as the live replica runs it (runtime/models/dynamic_batching.py):
    one forward pass at a time; once a request waits and the batcher is free, the batch closes when it holds
    `max_batch_size` requests or `max_delay_s` later, and takes `service_s(batch)` (the calibrated profile's
    service time by batch size). A request's own drawn service time is not used. Its own class, so replicas
    without a batcher pay nothing for it."""

    def __init__(self, *args: Any, service_s: Callable[[int], float], max_batch_size: int, max_delay_s: float) -> None:
        super().__init__(*args, concurrency=1)
        self.service_for = service_s
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._batch: list[SimRequest] = []
        self._timer: simpy.Event | None = None  # the open batch's delay, while one is waiting for requests

    def running(self) -> int:
        return len(self._batch)

    def submit(self, req: SimRequest) -> None:
        self._before_change()
        self.in_flight += 1
        req.replica = self.index
        self.queue.append(req)
        if self._batch:
            return  # computing: the batcher looks again when the pass ends
        if len(self.queue) >= self.max_batch_size:
            self._run_batch()
        elif self._timer is None:
            self._open()

    def _open(self) -> None:
        timer = self._timer = self.env.timeout(self.max_delay_s)
        timer.callbacks.append(self._on_delay)

    def _on_delay(self, event: simpy.Event) -> None:
        if event is self._timer and not self._batch and self.queue:
            self._run_batch()

    def _run_batch(self) -> None:
        self._timer = None
        self._before_change()
        n = min(self.max_batch_size, len(self.queue))
        self._batch = [self.queue.popleft() for _ in range(n)]
        self._mark_busy()
        now = self.env._now
        for req in self._batch:
            req.start_s = now
            self.serving[req.row] = req
        duration = self.service_for(n) * self.slowdown
        if self.step_log is not None:
            steps_hook.fixed_batch(self, duration, n)
        done = self.env.timeout(duration, self._batch)
        done.callbacks.append(self._batch_done)

    def _batch_done(self, event: simpy.Event) -> None:
        if event.value is not self._batch:
            return  # aborted when the replica's drain timed out
        now = self.env._now
        self._before_change()
        batch, self._batch = self._batch, []
        self._mark_idle()
        for req in batch:
            del self.serving[req.row]
            self.in_flight -= 1
            req.first_token_s = now
            req.generated = req.output_tokens
        if len(self.queue) >= self.max_batch_size:
            self._run_batch()
        elif self.queue:
            self._open()
        for req in batch:
            self.on_finish(req, now, STATUS_OK, "")

    def abort_all(self) -> list[SimRequest]:
        self._batch = []
        self._timer = None
        return super().abort_all()
