"""Makes simulated replicas of a scenario's models: at start-up and whenever the controller scales up."""

from __future__ import annotations

import simpy

from odhsim import catalog
from odhsim.profiles.latency import latency_model
from odhsim.scenario.model import Scenario
from odhsim.sim.fixed_replica import FixedReplica
from odhsim.sim.llm_replica import LlmReplica
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
        self._made = [0] * len(scenario.models)

    def make(self, model_index: int) -> ReplicaBase:
        m = self.scenario.models[model_index]
        index, n = len(self.replicas), self._made[model_index]
        self._made[model_index] += 1
        name = f"{m.name}-{m.version}-{n}"
        interval = self.scenario.gateway.scrape_interval_s
        replica: ReplicaBase
        if m.kind == "llm":
            assert m.profile is not None
            spec = catalog.model(m.profile)
            replica = LlmReplica(
                self.env, index, name, m.name, interval, self.on_finish,
                engine=m.engine,
                latency=latency_model(m.profile, m.gpu, m.tp),
                kv_capacity_tokens=catalog.kv_cache_capacity_tokens(
                    m.profile, m.gpu, m.tp, gpu_memory_utilization=m.engine.gpu_memory_utilization
                ),
                prefix_block_tokens=self.block_tokens,
                max_model_len=m.engine.max_model_len or spec.max_context,
                kv_bytes_per_token=spec.kv_bytes_per_token,
            )  # fmt: skip
        else:
            replica = FixedReplica(self.env, index, name, m.name, interval, self.on_finish, concurrency=m.concurrency)
        replica.model_index = model_index
        self.replicas.append(replica)
        return replica
