"""Makes simulated replicas of a scenario's models: at start-up and whenever the controller scales up."""

from __future__ import annotations

from collections.abc import Callable

import simpy

from odhsim import catalog
from odhsim.profiles.latency import latency_model
from odhsim.scenario.deployment import ModelDeployment
from odhsim.scenario.model import Scenario
from odhsim.sim.fixed_replica import FixedReplica
from odhsim.sim.llm_replica import LlmReplica
from odhsim.sim.pipeline_replica import PipelineReplica
from odhsim.sim.replica_base import FinishCallback, ReplicaBase


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
        if m.kind == "llm":
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
        replica.model_index = model_index
        replica.revision = revision
        replica.gpu, replica.gpus = m.gpu, m.gpus_per_replica
        self.replicas.append(replica)
        return replica
