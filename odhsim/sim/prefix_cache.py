"""A replica's KV blocks as vLLM V1's block pool holds them: the prefix cache lives in the blocks themselves.

Read from vllm-project/vllm vllm/v1/core/block_pool.py (c59cb79), kv_cache_utils.py (FreeKVCacheBlockQueue),
kv_cache_manager.py (ace980e) and single_type_kv_cache_manager.py:

- A full block gets its hash when it is *scheduled* (allocate_slots -> cache_blocks), so a prompt arriving while
  an identical one is being prefilled already hits it. Identical prefixes share one refcounted block.
- A block whose last holder lets go keeps its hash and joins the *tail* of the free queue; blocks without a hash
  (partial ones, or all of them when caching is off) join its head. New blocks come from the head, and a hashed
  block taken from there is evicted from the cache. So only free blocks hold idle cache, and what stays cached
  is what was freed last. A hit on an idle block takes it out of the free queue (touch).
- A request frees its blocks last-first, so a prefix's tail is evicted before its head.

odhsim's blocks are named by the trace's prefix ids (`block_keys`): a KV block is identified by the id of the trace
unit holding its last token and its end offset inside that unit (trace ids name the whole prefix up to their
unit, as vLLM's chained hashes do). Full blocks the trace does not name (no ids, or generated tokens) are hashed in
vLLM but no later prompt can name them, so they are kept as anonymous runs: they occupy their place in the free
queue, with no per-block cost. A host-memory tier (KV offloading) keeps blocks evicted from the GPU, oldest
offload dropped first; a block brought back keeps its host copy.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


def block_keys(ids: np.ndarray, unit_tokens: int, block_size: int, prompt_tokens: int) -> list[int]:
    """Keys of a prompt's full KV blocks that the trace's prefix ids name (leading blocks only).

    Block j ends at token e = (j + 1) * block_size; it belongs to unit u = (e - 1) // unit_tokens, and its key
    mixes ids[u] with e's offset in that unit (modular arithmetic; trace ids are already hashes or small ints)."""
    full = min(prompt_tokens // block_size, (len(ids) * unit_tokens) // block_size)
    if full <= 0:
        return []
    ends = np.arange(1, full + 1, dtype=np.int64) * block_size
    unit = (ends - 1) // unit_tokens
    offset = (ends - unit * unit_tokens).astype(np.uint64)
    with np.errstate(over="ignore"):
        keys = ids[unit].astype(np.uint64) * np.uint64(unit_tokens + 1) + offset
    return keys.view(np.int64).tolist()


class BlockPool:
    """The KV blocks of one replica (or one pipeline engine): free count, hashed blocks, the free queue.

    `free` counts every block no request holds, cached idle ones included (vLLM's get_num_free_blocks). The free
    queue is modelled as `free - idle_blocks` fresh (unhashed) blocks at its head, then `idle` in queue order:
    a named block (key -> 1) or an anonymous run of hashed blocks (tuple -> count)."""

    def __init__(self, num_blocks: int, caching: bool, host_blocks: int = 0) -> None:
        self.num_blocks = num_blocks
        self.free = num_blocks
        self.caching = caching
        self.ref: dict[int, int] = {}  # named block on the GPU -> holders (0: idle, in the free queue)
        self.idle: OrderedDict[object, int] = OrderedDict()
        self.idle_blocks = 0
        self.host: OrderedDict[int, None] = OrderedDict()
        self.host_blocks = max(0, host_blocks)
        self._runs = 0

    @property
    def used(self) -> int:
        return self.num_blocks - self.free

    def lookup(self, keys: list[int], limit: int) -> tuple[list[int], int]:
        """The longest run of leading blocks cached on the GPU or in host memory, at most `limit` blocks:
        (the GPU-resident keys among them, how many blocks the run has)."""
        ref, host = self.ref, self.host
        on_gpu: list[int] = []
        n = 0
        for key in keys[: max(0, limit)]:
            if key in ref:
                on_gpu.append(key)
            elif key in host:
                host.move_to_end(key)
            else:
                break
            n += 1
        return on_gpu, n

    def idle_among(self, keys: list[int]) -> int:
        """How many of these cached blocks sit in the free queue (a hit on them takes free blocks)."""
        ref = self.ref
        return sum(1 for k in keys if ref[k] == 0)

    def touch(self, keys: list[int]) -> None:
        """A request now holds these cached blocks (vLLM BlockPool.touch)."""
        ref, idle = self.ref, self.idle
        for key in keys:
            r = ref[key]
            if r == 0:
                del idle[key]
                self.idle_blocks -= 1
                self.free -= 1
            ref[key] = r + 1

    def take(self, n: int) -> None:
        """Allocate n new blocks from the head of the free queue, evicting the cached ones taken."""
        if n <= 0:
            return
        if n > self.free:
            raise RuntimeError(f"KV block pool: {n} blocks asked, {self.free} free")
        evict = n - (self.free - self.idle_blocks)
        self.free -= n
        if evict <= 0:
            return
        idle, ref = self.idle, self.ref
        self.idle_blocks -= evict
        evicted: list[int] = []
        while evict > 0:
            key, count = idle.popitem(last=False)
            if count > evict:  # part of an anonymous run
                idle[key] = count - evict
                idle.move_to_end(key, last=False)
                break
            evict -= count
            if count == 1 and key in ref:  # a named block (anonymous runs have tuple keys)
                del ref[key]
                evicted.append(key)  # type: ignore[arg-type]
        if evicted and self.host_blocks:  # most recently offloaded last (a block already there keeps its place)
            host = self.host
            host.update(dict.fromkeys(evicted))
            for _ in range(len(host) - self.host_blocks):
                host.popitem(last=False)

    def register(self, keys: list[int]) -> list[int]:
        """Hash newly allocated full blocks (held by one request): the keys registered, in order. A key already
        cached elsewhere is not registered again: that block stays an anonymous copy (vLLM keeps duplicates,
        and a lookup finds the first). A host-memory copy stays where it is (offloading writes through)."""
        ref = self.ref
        mine = [key for key in keys if key not in ref]
        ref.update(dict.fromkeys(mine, 1))
        return mine

    def release(self, named: list[int], anonymous: int, unhashed: int) -> None:
        """A request lets go of its blocks, last first (vLLM frees in reverse so tails are evicted first):
        unhashed ones go to the head of the free queue, hashed ones to its tail."""
        self.free += unhashed
        if anonymous > 0:
            self._runs += 1
            self.idle[(self._runs,)] = anonymous
            self.idle_blocks += anonymous
            self.free += anonymous
        ref, idle = self.ref, self.idle
        for key in reversed(named):
            r = ref[key] - 1
            ref[key] = r
            if r == 0:
                idle[key] = 1
                self.idle_blocks += 1
                self.free += 1
