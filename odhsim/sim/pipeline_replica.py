"""A pipeline-parallel LLM replica: `pp` stages of `tp` GPUs, each stage on its own node.

Simplification, after vLLM V0's pipeline parallelism: the replica runs `pp` virtual engines, each a full
continuous-batching scheduler (an `LlmReplica`) with 1/pp of the KV blocks, and a new request goes to the engine
with the fewest unfinished requests. An engine's iteration passes every stage in turn, so it takes the pipeline's
latency (`odhsim.profiles.latency.pipeline_model`: the stage times add up to the whole model on one tp group, plus
pp - 1 inter-node sends). Up to pp engines' batches are in flight at once, one per stage at any moment: that is the
micro-batching that keeps the stages busy. Each engine occupies a stage for at most 1/pp of its iteration, so pp
engines never ask more of a stage than it has and they can run independently; what is left out is the waiting of
one micro-batch behind another at a stage when their phases collide. One busy engine alone keeps every stage busy
1/pp of the time, which is what `busy_time` reports (the sum over engines / pp).

The gateway and the router see one endpoint: metrics are the sums over the engines (KV usage: blocks used over
blocks in all engines), scraped as of the latest tick like any replica's.
"""

from __future__ import annotations

import simpy

from odhsim.profiles.latency import LatencyModel
from odhsim.scenario.deployment import EngineLimits
from odhsim.sim.llm_replica import LlmReplica
from odhsim.sim.replica_base import FinishCallback, ReplicaBase
from odhsim.sim.request import SimRequest


class PipelineReplica(ReplicaBase):
    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        name: str,
        model_name: str,
        scrape_interval_s: float,
        on_finish: FinishCallback,
        pp: int,
        engine: EngineLimits,
        latency: LatencyModel,
        kv_capacity_tokens: int,
        prefix_block_tokens: int,
        max_model_len: int | None = None,
        kv_bytes_per_token: int = 0,
    ) -> None:
        super().__init__(env, index, name, model_name, scrape_interval_s, on_finish)
        if pp < 2:
            raise ValueError(f"a pipeline replica needs pp >= 2, got {pp}")
        self.pp = pp
        self.engines: list[LlmReplica] = []
        for _ in range(pp):
            e = LlmReplica(
                env, index, name, model_name, scrape_interval_s, self._engine_finished,
                engine=engine,
                latency=latency,
                kv_capacity_tokens=kv_capacity_tokens // pp,
                prefix_block_tokens=prefix_block_tokens,
                max_model_len=max_model_len,
                kv_bytes_per_token=kv_bytes_per_token,
            )  # fmt: skip
            e.parent = self
            self.engines.append(e)

    # -- metrics: sums over the virtual engines ------------------------------------------------------------
    def waiting(self) -> int:
        return sum(e.waiting() for e in self.engines)

    def running(self) -> int:
        return sum(e.running() for e in self.engines)

    def kv_usage(self) -> float:
        total = sum(e.total_blocks for e in self.engines)
        return sum(e.used_blocks for e in self.engines) / total if total else 1.0

    @property
    def preemptions(self) -> int:
        return sum(e.preemptions for e in self.engines)

    def busy_time(self) -> float:
        """Stage utilisation in seconds: one engine computing keeps each stage busy 1/pp of the time."""
        return sum(e.busy_time() for e in self.engines) / self.pp

    # -- requests -------------------------------------------------------------------------------------------
    def submit(self, req: SimRequest) -> None:
        self._before_change()
        self.in_flight += 1
        req.replica = self.index
        engine = min(self.engines, key=lambda e: e.in_flight)  # vLLM V0: fewest unfinished requests
        engine.submit(req)

    def _engine_finished(self, req: SimRequest, now: float, status: str, reason: str) -> None:
        self.in_flight -= 1
        self.on_finish(req, now, status, reason)

    def abort_all(self) -> list[SimRequest]:
        held = [req for e in self.engines for req in e.abort_all()]
        self.in_flight = 0
        return held
