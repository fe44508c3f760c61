"""Feeds a workload's requests to the gateway at their arrival times, chunk by chunk.

A request becomes a Python object only when it arrives. Arrivals are chained timeout callbacks rather than a
SimPy process: one event per distinct arrival time and no generator resumption, which is a measurable share of
the cost per request in the M/M/c benchmark.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import simpy

from odhsim.results.request_log import RequestLog
from odhsim.rng import RngStreams
from odhsim.scenario.model import Scenario
from odhsim.sim.cluster import draw_service_times
from odhsim.sim.gateway import Gateway
from odhsim.sim.request import SimRequest
from odhsim.sim.wakeup import wake
from odhsim.workload.schema import RequestBatch


class ArrivalFeeder:
    def __init__(
        self,
        env: simpy.Environment,
        batches: Iterable[RequestBatch],
        gateway: Gateway,
        log: RequestLog,
        scenario: Scenario,
        streams: RngStreams,
    ) -> None:
        self.env = env
        self.gateway = gateway
        self.log = log
        self.duration = scenario.duration_s
        self.fixed = [
            (i, m.service_time, streams.get(f"service.{m.name}"))
            for i, m in enumerate(scenario.models)
            if m.kind == "fixed"
        ]
        self.done = False
        self.arrived = 0
        self._chunks: Iterator[RequestBatch] = iter(batches)
        self._n = self._i = 0
        if self._next_chunk():
            self._schedule()
        else:
            self.done = True

    def _next_chunk(self) -> bool:
        """Load the next non-empty chunk (cut at the scenario's duration) into plain lists."""
        for batch in self._chunks:
            if self.duration is not None and len(batch) and batch.arrival_s[-1] >= self.duration:
                batch = batch.take(batch.arrival_s < self.duration)
                if len(batch) == 0:
                    return False
            if len(batch):
                self._load(batch)
                return True
        return False

    def _load(self, batch: RequestBatch) -> None:
        n = len(batch)
        self._base = self.log.append_batch(batch)
        service = np.zeros(n)
        for mi, st, rng in self.fixed:
            mask = batch.model == mi
            service[mask] = draw_service_times(st, rng, int(mask.sum()))
        self._arrival = batch.arrival_s.tolist()
        self._prompt, self._output = batch.prompt_tokens.tolist(), batch.output_tokens.tolist()
        self._model, self._prio = batch.model.tolist(), batch.priority.tolist()
        self._tenant, self._session = batch.tenant.tolist(), batch.session.tolist()
        self._service = service.tolist()
        self._offsets = batch.block_offsets.tolist() if batch.has_blocks else None
        self._ids = batch.block_ids
        self._n, self._i = n, 0

    def _schedule(self) -> None:
        delay = self._arrival[self._i] - self.env._now
        wake(self.env, delay if delay > 0 else 0.0, self._on_arrival)

    def _on_arrival(self, _event: simpy.Event) -> None:
        now = self.env._now  # (simpy's clock without the `now` property call)
        while True:
            i = self._i
            t = self._arrival[i]
            if t > now:
                self._schedule()
                return
            offsets = self._offsets
            blocks = self._ids[offsets[i] : offsets[i + 1]] if offsets is not None else None
            req = SimRequest(
                self._base + i, t, self._prompt[i], self._output[i], self._model[i], self._prio[i],
                self._tenant[i], self._session[i], blocks,
            )  # fmt: skip
            req.service_s = self._service[i]
            self.arrived += 1
            self._i = i + 1
            self.gateway.arrive(req)
            if self._i >= self._n and not self._next_chunk():
                self.done = True
                return
