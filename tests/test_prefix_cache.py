"""The replica's two-tier prefix cache: LRU in GPU memory, evictions spill to host memory, longest leading run."""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from odhsim.scenario.deployment import EngineLimits
from odhsim.sim.llm_replica import LlmReplica
from odhsim.sim.prefix_cache import PrefixCache
from odhsim.sim.request import SimRequest
from tests.test_llm_replica import flat_latency


def ids(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int64)


def test_longest_leading_run_across_tiers() -> None:
    cache = PrefixCache(gpu_blocks=2, cpu_blocks=2, block_tokens=16)
    cache.insert(ids(1, 2, 3))  # 1 spills to host memory (LRU), 2 and 3 stay on the GPU
    assert list(cache.cpu) == [1] and list(cache.gpu) == [2, 3]
    assert cache.lookup(ids(1, 2, 3, 4)) == (2, 1)
    assert cache.lookup(ids(2, 9, 3)) == (1, 0)  # the run stops at the first miss
    assert cache.lookup(ids(9, 2)) == (0, 0)


def test_host_tier_is_bounded_and_promotes_on_reuse() -> None:
    cache = PrefixCache(gpu_blocks=1, cpu_blocks=1, block_tokens=16)
    cache.insert(ids(1, 2, 3))
    assert list(cache.gpu) == [3] and list(cache.cpu) == [2]  # 1 fell off the end of both tiers
    cache.insert(ids(2))
    assert list(cache.gpu) == [2] and list(cache.cpu) == [3]


def test_host_hits_pay_the_copy_back_before_prefill() -> None:
    env = simpy.Environment()
    done: dict[int, SimRequest] = {}
    engine = EngineLimits(kv_offload_gb=1.0, kv_offload_bandwidth_gb_s=1.0)
    replica = LlmReplica(
        env, 0, "r", "m", 0.05, lambda r, now, s, why: done.__setitem__(r.row, r), engine=engine,
        latency=flat_latency(prefill_per_token=1e-4), kv_capacity_tokens=96, prefix_block_tokens=16,
        kv_bytes_per_token=1_000_000,
    )  # fmt: skip
    # 6 GPU blocks of 16 tokens: after two 4-block prompts, blocks 1 and 2 have spilled to host memory
    replica.submit(SimRequest(0, 0.0, 64, 1, 0, 2, 0, -1, ids(1, 2, 3, 4)))
    env.run()
    replica.submit(SimRequest(1, env.now, 64, 1, 0, 2, 0, -1, ids(5, 6, 7, 8)))
    env.run()
    t0 = env.now
    replica.submit(SimRequest(2, t0, 64, 1, 0, 2, 0, -1, ids(1, 2, 3, 4)))
    env.run()
    req = done[2]
    assert req.cached_tokens == 63  # all but the last token comes from the cache
    # blocks 3, 4 are on the GPU; 1, 2 (31 of the hit tokens) are copied back at 1 MB/token over 1 GB/s = 31 ms
    assert req.first_token_s - t0 == pytest.approx(0.1 + 1e-4 + 31 * 1e-3)
