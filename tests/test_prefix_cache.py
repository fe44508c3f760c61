"""The replica's KV block pool (vLLM V1 block_pool.py @ c59cb79): refcounted named blocks, a free queue whose
head is taken first, hashed blocks freed to its tail (last block first), evictions spilling to a host tier."""

from __future__ import annotations

from collections import OrderedDict

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


def named(pool: BlockPool, *keys: int) -> np.ndarray:
    idx, unique = pool.name(list(keys))
    assert unique
    return idx


def test_take_uses_fresh_blocks_first_then_evicts_from_the_head() -> None:
    pool = BlockPool(6, caching=True)
    pool.take(3)
    blocks = named(pool, 10, 11, 12)
    mine = pool.register(blocks)
    assert pool.keys(mine) == [10, 11, 12]
    pool.release(mine, anonymous=0, unhashed=0)  # freed last first: 12, 11, 10 join the tail
    assert list(pool.idle) == [12, 11, 10] and pool.free == 6 and pool.used == 0
    pool.take(4)  # 3 fresh, then 12 is evicted
    assert list(pool.ref) == [10, 11] and pool.free == 2
    on_gpu, hit = pool.lookup(blocks, limit=3)
    assert (pool.keys(on_gpu), hit) == ([10, 11], 2)


def test_touch_takes_idle_blocks_out_of_the_queue_and_shares_held_ones() -> None:
    pool = BlockPool(4, caching=True)
    pool.take(2)
    both = named(pool, 1, 2)
    mine = pool.register(both)
    pool.touch(both)  # a second request shares both
    assert pool.ref == {1: 2, 2: 2} and pool.used == 2
    pool.release(mine, 0, 0)
    assert pool.used == 2 and not pool.idle  # still held by the other
    pool.release(mine, 0, 0)
    assert pool.used == 0 and list(pool.idle) == [2, 1]
    pool.touch(named(pool, 1))
    assert pool.used == 1 and list(pool.idle) == [2] and pool.idle_among(both) == 1


def test_anonymous_runs_keep_their_place_in_the_queue() -> None:
    pool = BlockPool(10, caching=True)
    pool.take(10)
    mine = pool.register(named(pool, 5))
    pool.release(mine, anonymous=6, unhashed=3)  # 3 fresh at the head, then the run of 6, then 5
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
    both = named(pool, 1, 2)
    pool.release(pool.register(both), 0, 0)
    pool.take(2)  # evicts 2 then 1: the host tier keeps the last one only
    assert list(pool.host) == [1]
    on_gpu, hit = pool.lookup(both, limit=2)
    assert len(on_gpu) == 0 and hit == 1
    pool.release(on_gpu, 0, 2)
    pool.take(1)
    assert pool.keys(pool.register(named(pool, 1))) == [1] and list(pool.host) == [1]  # the host copy stays


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


# -- the index-array pool against the per-key pool it replaced (ed89ac5) ---------------------------------------
@pytest.mark.parametrize(
    ("unit", "bs", "ids_"),
    [
        (512, 16, [3, 7, 9, 182789]),  # Mooncake: 32 blocks per unit
        (20, 16, [1, 2, 3, 4, 5, 6]),  # units not a multiple of the block: offsets vary by unit position
        (16, 32, [1, 2, 3, 4]),  # blocks longer than units: every other unit names no block
        (512, 16, [2**62, -5, 9]),  # keys wrap around 2**64: named key by key
    ],
)
def test_prompt_naming_matches_the_keys(unit: int, bs: int, ids_: list[int]) -> None:
    pool = BlockPool(100, caching=True, block_size=bs, unit_tokens=unit)
    arr = np.array(ids_, dtype=np.int64)
    for tokens in (len(ids_) * unit, len(ids_) * unit - 1, bs * 3 + 1, bs - 1):
        idx, unique = pool.name_prompt(arr, tokens)
        keys = block_keys(arr, unit, bs, tokens)
        assert pool.keys(idx) == keys and unique
        assert pool.name(keys)[0].tolist() == idx.tolist()


def test_a_repeated_id_is_flagged() -> None:
    pool = BlockPool(100, caching=True, block_size=16, unit_tokens=32)
    idx, unique = pool.name_prompt(ids(4, 4, 5), 96)
    assert not unique and idx[:2].tolist() == idx[2:4].tolist()


class PerKeyPool:
    """The per-key BlockPool as it was (ed89ac5): the specification the index-array pool must match."""

    def __init__(self, num_blocks: int, host_blocks: int) -> None:
        self.free = num_blocks
        self.ref: dict[int, int] = {}
        self.idle: OrderedDict[object, int] = OrderedDict()
        self.idle_blocks = 0
        self.host: OrderedDict[int, None] = OrderedDict()
        self.host_blocks = host_blocks
        self.runs = 0

    def lookup(self, keys: list[int], limit: int) -> tuple[list[int], int]:
        on_gpu, n = [], 0
        for key in keys[: max(0, limit)]:
            if key in self.ref:
                on_gpu.append(key)
            elif key in self.host:
                self.host.move_to_end(key)
            else:
                break
            n += 1
        return on_gpu, n

    def idle_among(self, keys: list[int]) -> int:
        return sum(1 for k in keys if self.ref[k] == 0)

    def touch(self, keys: list[int]) -> None:
        for key in keys:
            r = self.ref[key]
            if r == 0:
                del self.idle[key]
                self.idle_blocks -= 1
                self.free -= 1
            self.ref[key] = r + 1

    def take(self, n: int) -> None:
        evict = n - (self.free - self.idle_blocks)
        self.free -= n
        if evict <= 0:
            return
        self.idle_blocks -= evict
        evicted = []
        while evict > 0:
            key, count = self.idle.popitem(last=False)
            if count > evict:
                self.idle[key] = count - evict
                self.idle.move_to_end(key, last=False)
                break
            evict -= count
            if count == 1 and key in self.ref:
                del self.ref[key]
                evicted.append(key)
        if evicted and self.host_blocks:
            self.host.update(dict.fromkeys(evicted))
            for _ in range(len(self.host) - self.host_blocks):
                self.host.popitem(last=False)

    def register(self, keys: list[int]) -> list[int]:
        mine = [key for key in keys if key not in self.ref]
        self.ref.update(dict.fromkeys(mine, 1))
        return mine

    def release(self, named: list[int], anonymous: int, unhashed: int) -> None:
        self.free += unhashed
        if anonymous > 0:
            self.runs += 1
            self.idle[(self.runs,)] = anonymous
            self.idle_blocks += anonymous
            self.free += anonymous
        for key in reversed(named):
            r = self.ref[key] - 1
            self.ref[key] = r
            if r == 0:
                self.idle[key] = 1
                self.idle_blocks += 1
                self.free += 1


@pytest.mark.parametrize(("seed", "repeats"), [(1, False), (2, False), (3, True), (4, True)])
def test_index_array_pool_matches_the_per_key_pool(seed: int, repeats: bool) -> None:
    """Random requests (shared prefixes, partial last units, host hits, evictions, some never named) driven
    through both pools as the replica drives them: same hits, free counts, queue and host order throughout."""
    rng = np.random.default_rng(seed)
    unit, bs = 64, 16
    new, old = BlockPool(120, True, 40, bs, unit), PerKeyPool(120, 40)
    held: list[tuple[np.ndarray, list[int], int, bool]] = []
    seen = {"repeats": 0, "host hits": 0, "host drops": 0}
    for _ in range(400):
        if held and (rng.random() < 0.45 or new.free < 30):
            mine, mine_keys, blocks, unique = held.pop(int(rng.integers(len(held))))
            full = blocks - int(rng.integers(0, 2))
            new.release(mine, full - len(mine), blocks - full, unique)
            old.release(mine_keys, full - len(mine_keys), blocks - full)
        else:
            doc = int(rng.integers(6))
            n_units = int(rng.integers(1, 5))
            unit_ids = [doc * 100 + u for u in range(n_units)] + [int(rng.integers(10**6))] * int(rng.random() < 0.3)
            if repeats and rng.random() < 0.5:
                unit_ids.insert(1, unit_ids[0])
            arr = np.array(unit_ids, dtype=np.int64)
            tokens = int(rng.integers(1, len(unit_ids) * unit + 20))
            idx, unique = new.name_prompt(arr, tokens)
            keys = block_keys(arr, unit, bs, tokens)
            assert not unique or len(set(keys)) == len(keys)
            seen["repeats"] += not unique
            limit = (tokens - 1) // bs
            on_gpu, hit = new.lookup(idx, limit, unique)
            on_gpu_keys, hit_old = old.lookup(keys, limit)
            assert (new.keys(on_gpu), hit) == (on_gpu_keys, hit_old)
            seen["host hits"] += hit > len(on_gpu)
            blocks = -(-tokens // bs)
            need = blocks - len(on_gpu)
            assert new.idle_among(on_gpu) == old.idle_among(on_gpu_keys)
            if need + new.idle_among(on_gpu) > new.free:
                continue
            new.touch(on_gpu, unique)
            old.touch(on_gpu_keys)
            new.take(need)
            old.take(need)
            full = tokens // bs
            mine = np.concatenate([on_gpu, new.register(idx[:full])])
            mine_keys = on_gpu_keys + old.register(keys[:full])
            assert new.keys(mine) == mine_keys
            held.append((mine, mine_keys, blocks, unique))
        assert (new.free, new.idle_blocks) == (old.free, old.idle_blocks)
        assert new.ref == dict(sorted(old.ref.items(), key=lambda kv: new.name([kv[0]])[0][0]))
        assert [k for k in new.idle if not isinstance(k, tuple)] == [k for k in old.idle if not isinstance(k, tuple)]
        assert list(new.idle.values()) == list(old.idle.values())
        assert list(new.host) == list(old.host)
        seen["host drops"] += new.host_count == 40
    assert seen["host hits"] > 3 and seen["host drops"] > 10 and (seen["repeats"] > 10) == repeats, seen
