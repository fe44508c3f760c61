"""Periodic per-model samples for the timeseries table (one row per time bucket and model)."""

from __future__ import annotations

from collections.abc import Callable

import simpy

from odhsim import catalog
from odhsim.scenario.model import Scenario
from odhsim.sim.gateway import Gateway


class TimeseriesSampler:
    """Every `bucket_s`, records arrivals, queue length, running, ready replicas, KV usage, busy time and cost.

    queue_len counts requests waiting anywhere (gateway queue plus the replicas' own waiting queues); gpu_busy is
    the fraction of the bucket the model's replicas spent computing; cost accrues for every replica holding GPUs.
    """

    def __init__(self, env: simpy.Environment, scenario: Scenario, gateway: Gateway, done: Callable[[], bool]) -> None:
        self.env = env
        self.scenario = scenario
        self.gateway = gateway
        self.done = done
        self.bucket_s = scenario.outputs.timeseries_bucket_s
        self.rows: dict[str, list] = {
            k: []
            for k in (
                "time_s", "model", "arrivals", "queue_len", "running", "ready_replicas", "kv_usage",
                "gpu_busy", "gpus", "gpu_hours", "cost_usd", "energy_kwh",
            )
        }  # fmt: skip
        self._last_arrivals = [0] * len(scenario.models)
        self._last_busy = [0.0] * len(gateway.replicas)
        self._last_t = 0.0
        self.stopped = False
        self._prices = [catalog.gpu(m.gpu).price_per_gpu_hour for m in scenario.models]
        # busy GPUs draw the decode power (decode dominates an LLM replica's busy time), idle ones the idle power
        self._power = [(catalog.gpu(m.gpu).idle_w, catalog.gpu(m.gpu).decode_w) for m in scenario.models]

    def process(self):  # type: ignore[no-untyped-def]
        while True:
            yield self.env.timeout(self.bucket_s)
            self.sample()
            if self.done():
                self.stopped = True
                return

    def sample(self) -> None:
        now = self.env.now
        dt = now - self._last_t
        if dt <= 0:
            return
        rows = self.rows
        busy_by_model = [0.0] * len(self.scenario.models)
        last = self._last_busy
        for r in self.gateway.replicas:  # every replica ever made: draining ones still compute
            b = r.busy_time()
            if r.index >= len(last):
                last.extend([0.0] * (r.index + 1 - len(last)))
            busy_by_model[r.model_index] += b - last[r.index]
            last[r.index] = b
        for mi, (m, route) in enumerate(zip(self.scenario.models, self.gateway.routes, strict=True)):
            reps = route.replicas
            held = route.controller.gpus_held() if route.controller is not None else len(reps) * m.tp
            gpus = held
            gpu_hours = gpus * dt / 3600.0  # every GPU held (starting, ready, draining) costs money
            busy_frac = busy_by_model[mi] / (held / m.tp * dt) if held else 0.0
            idle_w, busy_w = self._power[mi]
            rows["time_s"].append(now)
            rows["model"].append(m.name)
            rows["arrivals"].append(self.gateway.arrivals[mi] - self._last_arrivals[mi])
            rows["queue_len"].append(route.queued() + sum(r.waiting() for r in reps))
            rows["running"].append(sum(r.running() for r in reps))
            rows["ready_replicas"].append(len(reps))
            rows["kv_usage"].append(sum(r.kv_usage() for r in reps) / len(reps) if reps else 0.0)
            rows["gpu_busy"].append(busy_frac)
            rows["gpus"].append(gpus)
            rows["gpu_hours"].append(gpu_hours)
            rows["cost_usd"].append(gpu_hours * self._prices[mi])
            rows["energy_kwh"].append(gpu_hours * (idle_w + busy_frac * (busy_w - idle_w)) / 1000.0)
            self._last_arrivals[mi] = self.gateway.arrivals[mi]
        self._last_t = now
