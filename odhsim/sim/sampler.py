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
    the fraction of the bucket the model's replicas spent computing; `gpus` is what the model holds at the bucket's
    end. gpu_hours, cost and energy integrate over the bucket (the controllers' GPU-seconds from grant to release),
    so a replica that starts and stops inside one bucket is charged, and the column sums to the lifecycle's total.
    `preemptions` counts the model's recompute preemptions in the bucket (preemption storms are judged on it).
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
                "gpu_busy", "gpus", "gpu_hours", "cost_usd", "energy_kwh", "preemptions",
            )
        }  # fmt: skip
        self._last_arrivals = [0] * len(scenario.models)
        self._last_busy = [0.0] * len(gateway.replicas)
        self._last_preempted = [0] * len(gateway.replicas)  # per replica: recompute preemptions so far
        self._last_gpu_s: dict[tuple[int, int, str], float] = {}  # (model, revision, GPU) -> GPU-seconds so far
        self._last_t = 0.0
        self.stopped = False

    def process(self):  # type: ignore[no-untyped-def]
        while True:
            yield self.env.timeout(self.bucket_s)
            self.sample()
            if self.done():
                self.stopped = True
                return

    def sample(self) -> None:
        """One row per model; a model in a canary rollout sums its revisions, each costed at its own GPU's price
        and power."""
        now = self.env.now
        dt = now - self._last_t
        if dt <= 0:
            return
        rows = self.rows
        busy: dict[tuple[int, int, str], float] = {}  # (model, revision, GPU type) -> seconds computed in this bucket
        last = self._last_busy
        preempted = [0] * len(self.scenario.models)  # per model: preemptions in this bucket
        last_pre = self._last_preempted
        for r in self.gateway.replicas:  # every replica ever made: draining ones still compute
            b = r.busy_time()
            if r.index >= len(last):
                last.extend([0.0] * (r.index + 1 - len(last)))
                last_pre.extend([0] * (r.index + 1 - len(last_pre)))
            p = getattr(r, "preemptions", 0)
            preempted[r.model_index] += p - last_pre[r.index]
            last_pre[r.index] = p
            key = (r.model_index, r.revision, r.gpu)
            busy[key] = busy.get(key, 0.0) + (b - last[r.index])
            last[r.index] = b
        for mi, (m, model) in enumerate(zip(self.scenario.models, self.gateway.routes, strict=True)):
            reps = [r for rev in model.revisions for r in rev.replicas]
            gpus = 0
            gpu_hours = cost = energy_wh = busy_s = replica_s = 0.0
            for rev in model.revisions:
                ctl = rev.controller
                gpus += ctl.gpus_held()
                per_replica = {d.gpu: d.gpus_per_replica for d in ctl.model.groups()}  # one group per GPU type
                for gpu, total_gpu_s in ctl.gpu_seconds_by_gpu().items():  # each replica group at its GPU's price
                    g = catalog.gpu(gpu)
                    key = (mi, rev.revision, gpu)
                    gpu_s = total_gpu_s - self._last_gpu_s.get(key, 0.0)  # every GPU held (starting, ready, draining)
                    self._last_gpu_s[key] = total_gpu_s
                    hours = gpu_s / 3600.0
                    rev_busy = busy.get(key, 0.0)
                    busy_gpu_s = rev_busy * per_replica[gpu]  # a busy replica keeps all its GPUs busy
                    gpu_hours += hours
                    cost += hours * g.price_per_gpu_hour
                    # busy GPUs draw the decode power (decode dominates an LLM replica's busy time), idle ones idle
                    energy_wh += hours * g.idle_w + busy_gpu_s / 3600.0 * (g.decode_w - g.idle_w)
                    busy_s += rev_busy
                    replica_s += gpu_s / per_replica[gpu]
            rows["time_s"].append(now)
            rows["model"].append(m.name)
            rows["arrivals"].append(self.gateway.arrivals[mi] - self._last_arrivals[mi])
            rows["queue_len"].append(sum(rev.queued() for rev in model.revisions) + sum(r.waiting() for r in reps))
            rows["running"].append(sum(r.running() for r in reps))
            rows["ready_replicas"].append(len(reps))
            rows["kv_usage"].append(sum(r.kv_usage() for r in reps) / len(reps) if reps else 0.0)
            rows["gpu_busy"].append(busy_s / replica_s if replica_s > 0 else 0.0)
            rows["gpus"].append(gpus)
            rows["gpu_hours"].append(gpu_hours)
            rows["cost_usd"].append(cost)
            rows["energy_kwh"].append(energy_wh / 1000.0)
            rows["preemptions"].append(preempted[mi])
            self._last_arrivals[mi] = self.gateway.arrivals[mi]
        self._last_t = now
