"""The replica's KV block pool (vLLM V1 block_pool.py @ c59cb79): refcounted named blocks, a free queue whose
head is taken first, hashed blocks freed to its tail (last block first), evictions spilling to a host tier."""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from odhsim.scenario.deployment import EngineLimits
from odhsim.sim.llm_replica import LlmReplica
from odhsim.sim.prefix_cache import BlockPool, block_keys
from odhsim.sim.request import SimRequest
from tests.test_llm_replica import flat_latency


def ids(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int64)


def test_block_keys_name_each_full_block_by_unit_and_offset() -> None:
    assert block_keys(ids(7, 8), 16, 16, 32) == [7 * 17 + 16, 8 * 17 + 16]
    assert block_keys(ids(7, 8), 16, 16, 31) == [7 * 17 + 16]  # the partial block has no key
    # 512-token units, 16-token blocks: 32 keys per unit, offsets 16..512
    keys = block_keys(ids(3), 512, 16, 512)
    assert keys == [3 * 513 + 16 * (j + 1) for j in range(32)]
    # 16-token units, 32-token blocks: a block is named by the unit holding its last token
    assert block_keys(ids(1, 2, 3, 4), 16, 32, 64) == [2 * 17 + 16, 4 * 17 + 16]
    assert block_keys(ids(), 16, 16, 64) == []


def test_take_uses_fresh_blocks_first_then_evicts_from_the_head() -> None:
    pool = BlockPool(6, caching=True)
    pool.take(3)
    named = pool.register([10, 11, 12])
    assert named == [10, 11, 12]
    pool.release(named, anonymous=0, unhashed=0)  # freed last first: 12, 11, 10 join the tail
    assert list(pool.idle) == [12, 11, 10] and pool.free == 6 and pool.used == 0
    pool.take(4)  # 3 fresh, then 12 is evicted
    assert list(pool.ref) == [10, 11] and pool.free == 2
    assert pool.lookup([10, 11, 12], limit=3) == ([10, 11], 2)


def test_touch_takes_idle_blocks_out_of_the_queue_and_shares_held_ones() -> None:
    pool = BlockPool(4, caching=True)
    pool.take(2)
    mine = pool.register([1, 2])
    pool.touch([1, 2])  # a second request shares both
    assert pool.ref == {1: 2, 2: 2} and pool.used == 2
    pool.release(mine, 0, 0)
    assert pool.used == 2 and not pool.idle  # still held by the other
    pool.release(mine, 0, 0)
    assert pool.used == 0 and list(pool.idle) == [2, 1]
    pool.touch([1])
    assert pool.used == 1 and list(pool.idle) == [2] and pool.idle_among([1, 2]) == 1


def test_anonymous_runs_keep_their_place_in_the_queue() -> None:
    pool = BlockPool(10, caching=True)
    pool.take(10)
    named = pool.register([5])
    pool.release(named, anonymous=6, unhashed=3)  # 3 fresh at the head, then the run of 6, then 5
    pool.take(3)
    assert 5 in pool.ref and pool.idle_blocks == 7
    pool.take(6)
    assert 5 in pool.ref and pool.idle_blocks == 1
    pool.take(1)
    assert 5 not in pool.ref and pool.free == 0


def test_take_more_than_free_is_refused() -> None:
    pool = BlockPool(2, caching=False)
    with pytest.raises(RuntimeError, match="3 blocks asked, 2 free"):
        pool.take(3)


def test_evicted_blocks_spill_to_a_bounded_host_tier_and_come_back() -> None:
    pool = BlockPool(2, caching=True, host_blocks=1)
    pool.take(2)
    pool.release(pool.register([1, 2]), 0, 0)
    pool.take(2)  # evicts 2 then 1: the host tier keeps the last one only
    assert list(pool.host) == [1]
    assert pool.lookup([1, 2], limit=2) == ([], 1)
    pool.release([], 0, 2)
    pool.take(1)
    assert pool.register([1]) == [1] and list(pool.host) == [1]  # back on the GPU; the host copy stays


def test_host_hits_pay_the_copy_back_before_prefill() -> None:
    env = simpy.Environment()
    done: dict[int, SimRequest] = {}
    engine = EngineLimits(kv_offload_gb=1.0, kv_offload_bandwidth_gb_s=1.0)
    replica = LlmReplica(
        env, 0, "r", "m", 0.05, lambda r, now, s, why: done.__setitem__(r.row, r), engine=engine,
        latency=flat_latency(prefill_per_token=1e-4), kv_capacity_tokens=96, prefix_block_tokens=16,
        kv_bytes_per_token=1_000_000,
    )  # fmt: skip
    # 6 blocks of 16 tokens: the second 4-block prompt takes the 2 fresh blocks, then evicts the first prompt's
    # blocks 4 and 3 (its tail first) to host memory; blocks 1 and 2 stay on the GPU
    replica.submit(SimRequest(0, 0.0, 64, 1, 0, 2, 0, -1, ids(1, 2, 3, 4)))
    env.run()
    replica.submit(SimRequest(1, env.now, 64, 1, 0, 2, 0, -1, ids(5, 6, 7, 8)))
    env.run()
    t0 = env.now
    replica.submit(SimRequest(2, t0, 64, 1, 0, 2, 0, -1, ids(1, 2, 3, 4)))
    env.run()
    req = done[2]
    assert req.cached_tokens == 48  # 3 full blocks: never the last token's block
    # block 3 (16 tokens) is copied back at 1 MB/token over 1 GB/s = 16 ms; 16 tokens are computed
    assert req.first_token_s - t0 == pytest.approx(0.1 + 16 * 1e-4 + 16 * 1e-3)
