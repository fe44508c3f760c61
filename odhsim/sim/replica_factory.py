"""Makes simulated replicas of a scenario's models: at start-up and whenever the controller scales up."""

from __future__ import annotations

from collections.abc import Callable

import simpy

from odhsim import catalog
from odhsim.calibrate.cpu_model import CpuMachine, CpuSeat, shared_latency, shared_service
from odhsim.calibrate.profile_file import CalibratedProfile
from odhsim.profiles.latency import latency_model
from odhsim.results.steps import StepLog
from odhsim.scenario.deployment import ModelDeployment
from odhsim.scenario.model import Scenario
from odhsim.sim.fixed_replica import BatchingReplica, FixedReplica
from odhsim.sim.llm_replica import LlmReplica
from odhsim.sim.pipeline_replica import PipelineReplica
from odhsim.sim.replica_base import FinishCallback, ReplicaBase
from odhsim.sim.request import STATUS_OK, SimRequest


def attach(replica: ReplicaBase, log: StepLog) -> None:
    """Give a new replica the run's step log (its model, name and KV geometry registered once)."""
    if isinstance(replica, LlmReplica):
        replica.step_src = log.source(replica.model_name, replica.name, "llm", replica.total_blocks, replica.bs)
    elif isinstance(replica, FixedReplica):
        replica.step_src = log.source(replica.model_name, replica.name, "fixed")
    else:
        return
    replica.step_log = log


class ReplicaFactory:
    """Every replica ever made, by global index (the results' `replica` column), named `<model>-<version>-<n>`."""

    def __init__(
        self, env: simpy.Environment, scenario: Scenario, on_finish: FinishCallback, block_tokens: int
    ) -> None:
        self.env = env
        self.scenario = scenario
        self.on_finish = on_finish
        self.block_tokens = block_tokens
        self.replicas: list[ReplicaBase] = []
        self._made: dict[tuple[int, str], int] = {}
        self._pools = {p.gpu: p for p in scenario.gpu_pool}
        self.service_draws: dict[tuple[int, int], Callable[[], float]] = {}  # (model, revision) -> own service times
        self.step_log = StepLog() if scenario.outputs.steps else None  # every replica's engine steps (steps.parquet)
        self._machine: CpuMachine | None = None  # the cores calibrated replicas share, if a profile measured them

    def make(self, model_index: int, deployment: ModelDeployment | None = None, revision: int = 0) -> ReplicaBase:
        """A replica of model `model_index`: of its own deployment, or of `deployment` (one of its replica groups,
        or its canary, revision 1), with that deployment's GPU, latency profile and KV cache."""
        m = deployment or self.scenario.models[model_index]
        index = len(self.replicas)
        n = self._made.get((model_index, m.version), 0)
        self._made[(model_index, m.version)] = n + 1
        name = f"{m.name}-{m.version}-{n}"
        interval = self.scenario.gateway.scrape_interval_s
        replica: ReplicaBase
        pf = m.profile_file
        on_finish = self.on_finish if pf is None or not pf.overheads.active else self._with_overheads(pf)
        seat = self._seat(pf) if pf is not None else None
        if pf is not None and pf.engine is not None:  # a calibrated LLM: the measured engine, on one device
            lm = pf.latency_model(m.gpu)
            replica = LlmReplica(
                self.env, index, name, m.name, interval, on_finish,
                engine=m.engine,
                latency=lm if seat is None else shared_latency(lm, seat),
                kv_capacity_tokens=pf.engine.kv_capacity_tokens,
                prefix_block_tokens=self.block_tokens,
                max_model_len=m.engine.max_model_len or pf.engine.max_context,
                kv_bytes_per_token=pf.engine.kv_bytes_per_token,
            )  # fmt: skip
        elif pf is not None and pf.batching is not None:  # a calibrated fixed model: its dynamic batcher
            b = pf.batching
            replica = BatchingReplica(
                self.env, index, name, m.name, interval, on_finish,
                service_s=b.service_s if seat is None else shared_service(b.service_s, seat),
                max_batch_size=b.max_batch_size, max_delay_s=b.max_batch_delay_ms / 1000.0,
            )  # fmt: skip
        elif m.kind == "llm":
            assert m.profile is not None
            spec = catalog.model(m.profile)
            pool = self._pools[m.gpu]
            latency = latency_model(
                m.profile, m.gpu, m.tp, m.pp, pool.inter_node_bytes_s, pool.inter_node_latency_us * 1e-6
            )
            kv_tokens = catalog.kv_cache_capacity_tokens(
                m.profile, m.gpu, m.tp, gpu_memory_utilization=m.engine.gpu_memory_utilization, pp=m.pp
            )
            max_len = m.engine.max_model_len or spec.max_context
            if m.pp > 1:
                replica = PipelineReplica(
                    self.env, index, name, m.name, interval, self.on_finish, m.pp, m.engine, latency, kv_tokens,
                    self.block_tokens, max_len, spec.kv_bytes_per_token,
                )  # fmt: skip
            else:
                replica = LlmReplica(
                    self.env, index, name, m.name, interval, self.on_finish,
                    engine=m.engine,
                    latency=latency,
                    kv_capacity_tokens=kv_tokens,
                    prefix_block_tokens=self.block_tokens,
                    max_model_len=max_len,
                    kv_bytes_per_token=spec.kv_bytes_per_token,
                )  # fmt: skip
        else:
            replica = FixedReplica(self.env, index, name, m.name, interval, self.on_finish, concurrency=m.concurrency)
            replica.draw_service = self.service_draws.get((model_index, revision))
        if seat is not None:
            seat.take(replica)
        replica.model_index = model_index
        replica.revision = revision
        replica.gpu, replica.gpus = m.gpu, m.gpus_per_replica
        if self.step_log is not None:
            attach(replica, self.step_log)
        self.replicas.append(replica)
        return replica

    def _seat(self, pf: CalibratedProfile) -> CpuSeat | None:
        """A place on the one machine calibrated replicas share, when the profile measured its CPU sharing."""
        if pf.cpu is None:
            return None
        if self._machine is None:
            self._machine = CpuMachine(pf.cpu)
        return CpuSeat(self._machine)

    def _with_overheads(self, pf: CalibratedProfile) -> FinishCallback:
        """on_finish, with the time a calibrated profile measured outside the engine: a served request's first
        token comes `request_s` later, its end `request_s + per_token_s x (tokens after the first)` later; the
        gateway holds it until then (the replica is free at once, as the live one is)."""
        env, on_finish = self.env, self.on_finish
        request_s, per_token_s = pf.overheads.request_s, pf.overheads.per_token_s

        def finish(req: SimRequest, now: float, status: str, reason: str) -> None:
            if status != STATUS_OK:
                on_finish(req, now, status, reason)
                return
            delay = request_s + per_token_s * max(0, req.generated - 1)
            req.first_token_s += request_s
            done = env.timeout(delay)
            done.callbacks.append(lambda _e: on_finish(req, now + delay, status, reason))

        return finish
