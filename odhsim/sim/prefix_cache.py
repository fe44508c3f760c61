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

Speed: a Mooncake prompt names ~750 blocks, so the pool never loops over blocks in Python. Each key gets a dense
index (`name`, `name_prompt`): key k splits into q, m = divmod(k, unit_tokens + 1); blocks sharing q and
m mod block_size (one trace unit) share a slot of consecutive indices, so a prompt is named with one dict lookup
per unit. Per-block state lives in numpy arrays indexed that way, and the free queue and the host tier are
queues of batches (`_StampedQueue`: an entry is live while its block carries its batch's stamp), so every
operation is a few array operations over a prompt's blocks, and anonymous runs cost no array work at all.
Operations on index arrays that repeat a block (a trace repeating an id in one prompt) take an element-by-element
path with the same meaning (`unique=False`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

_EMPTY = np.zeros(0, dtype=np.int64)


def block_key_array(ids: np.ndarray, unit_tokens: int, block_size: int, prompt_tokens: int) -> np.ndarray:
    """Keys (int64) of a prompt's full KV blocks that the trace's prefix ids name (leading blocks only).

    Block j ends at token e = (j + 1) * block_size; it belongs to unit u = (e - 1) // unit_tokens, and its key
    mixes ids[u] with e's offset in that unit (modular arithmetic; trace ids are already hashes or small ints)."""
    full = min(prompt_tokens // block_size, (len(ids) * unit_tokens) // block_size)
    if full <= 0:
        return _EMPTY
    ends = np.arange(1, full + 1, dtype=np.int64) * block_size
    unit = (ends - 1) // unit_tokens
    offset = (ends - unit * unit_tokens).astype(np.uint64)
    with np.errstate(over="ignore"):
        keys = ids[unit].astype(np.uint64) * np.uint64(unit_tokens + 1) + offset
    return keys.view(np.int64)


def block_keys(ids: np.ndarray, unit_tokens: int, block_size: int, prompt_tokens: int) -> list[int]:
    """`block_key_array` as a list of ints."""
    return block_key_array(ids, unit_tokens, block_size, prompt_tokens).tolist()


class _StampedQueue:
    """A FIFO of blocks in batches (a block index array, or an anonymous run: a count). A block's entry is live
    while `stamp[block]` holds its batch number, so taking a block out elsewhere, or queueing it again at the
    tail, is one store; stale entries are skipped when the head reaches them and dropped when they pile up."""

    def __init__(self, bound: int) -> None:
        self.batches: deque[list] = deque()  # [number, indices or None, start offset or run count]
        self.number = 0
        self.entries = 0  # index entries queued, stale ones included
        self.bound = bound  # most live blocks the queue can hold (a compaction threshold)

    def push(self, stamp: np.ndarray, idx: np.ndarray) -> None:
        self.number += 1
        stamp[idx] = self.number
        self.batches.append([self.number, idx, 0])
        self.entries += len(idx)
        if self.entries > 2 * self.bound + 4096:
            self._compact(stamp)

    def push_run(self, count: int) -> None:
        self.number += 1
        self.batches.append([self.number, None, count])

    def pop(self, stamp: np.ndarray, n: int) -> np.ndarray:
        """Take n live blocks from the head (a run's blocks count); the indexed ones, in order, unstamped."""
        out: list[np.ndarray] = []
        batches = self.batches
        while n > 0:
            if not batches:
                raise RuntimeError(f"KV block queue: {n} more blocks asked than it holds")
            b = batches[0]
            number, idx, start = b
            if idx is None:  # an anonymous run
                if start > n:
                    b[2] = start - n
                    break
                n -= start
                batches.popleft()
                continue
            rest = idx[start:]
            live = np.flatnonzero(stamp[rest] == number)
            if len(live) <= n:
                taken = rest[live]
                batches.popleft()
                self.entries -= len(rest)
            else:
                taken = rest[live[:n]]
                cut = int(live[n - 1]) + 1
                b[2] = start + cut
                self.entries -= cut
            out.append(taken)
            n -= len(taken)
        if not out:
            return _EMPTY
        taken = out[0] if len(out) == 1 else np.concatenate(out)
        stamp[taken] = -1
        return taken

    def _compact(self, stamp: np.ndarray) -> None:
        kept: deque[list] = deque()
        entries = 0
        for number, idx, start in self.batches:
            if idx is not None:
                rest = idx[start:]
                idx = rest[stamp[rest] == number]
                start = 0
                if len(idx) == 0:
                    continue
                entries += len(idx)
            kept.append([number, idx, start])
        self.batches, self.entries = kept, entries

    def items(self, stamp: np.ndarray) -> Iterator[tuple[int, int, int]]:
        """(block index or -1, count, batch number) of the live entries from the head."""
        for number, idx, start in self.batches:
            if idx is None:
                yield -1, start, number
            else:
                for i in idx[start:].tolist():
                    if stamp[i] == number:
                        yield i, 1, number


class BlockPool:
    """The KV blocks of one replica (or one pipeline engine): free count, hashed blocks, the free queue.

    `free` counts every block no request holds, cached idle ones included (vLLM's get_num_free_blocks). The free
    queue is modelled as `free - idle_blocks` fresh (unhashed) blocks at its head, then `idle_blocks` in queue
    order: named blocks and anonymous runs of hashed blocks (a count each).

    Blocks are passed as index arrays from `name` / `name_prompt`; `ref`, `idle` and `host` show the state by key.
    `unit_tokens` and `block_size` are the trace's unit and the KV block size (they shape the index slots only:
    any keys work with any values)."""

    def __init__(
        self, num_blocks: int, caching: bool, host_blocks: int = 0, block_size: int = 1, unit_tokens: int = 0
    ) -> None:
        self.num_blocks = num_blocks
        self.free = num_blocks
        self.caching = caching
        self.idle_blocks = 0
        self.host_blocks = max(0, host_blocks)
        self.host_count = 0
        # naming: key -> (slot key q * c + m % bs, index in slot m // bs) with q, m = divmod(key, P)
        self._bs = block_size
        self._ut = unit_tokens
        self._p = unit_tokens + 1
        self._c = min(block_size, self._p)
        self._width = -(-self._p // block_size)
        self._max_id = ((1 << 64) - 1 - unit_tokens) // self._p  # ids up to this make keys without wrapping
        self._slots: dict[int, int] = {}
        self._slot_keys: list[int] = []
        self._tables = 0  # blocks covered by the prompt-naming tables below
        self._run_of = self._in_slot = self._run_unit = self._run_rem = _EMPTY
        # per-block state, by index: on the GPU (named), holders, stamp in the free queue / host tier (-1: none)
        self._cap = 0
        self._gpu = np.zeros(0, dtype=bool)
        self._ref = np.zeros(0, dtype=np.int32)
        self._qpos = np.zeros(0, dtype=np.int64)
        self._hpos = np.zeros(0, dtype=np.int64)
        self._queue = _StampedQueue(num_blocks)  # the free queue's hashed part, head first
        self._host = _StampedQueue(self.host_blocks)  # the host tier, least recently offloaded or used first

    @property
    def used(self) -> int:
        return self.num_blocks - self.free

    # -- naming ---------------------------------------------------------------------------------------------
    def _slot_array(self, slot_keys: list[int]) -> np.ndarray:
        get, slots = self._slots.get, self._slots
        found = [get(k) for k in slot_keys]
        if None in found:
            for i, (k, s) in enumerate(zip(slot_keys, found, strict=True)):
                if s is None:
                    s = slots.get(k)
                    if s is None:
                        s = slots[k] = len(self._slot_keys)
                        self._slot_keys.append(k)
                    found[i] = s
            self._grow(len(self._slot_keys) * self._width)
        return np.array(found, dtype=np.int64)

    def name(self, keys: Iterable[int] | np.ndarray) -> tuple[np.ndarray, bool]:
        """Indices of these block keys, and whether they are all distinct."""
        k = np.asarray(keys if isinstance(keys, np.ndarray) else list(keys), dtype=np.int64).view(np.uint64)
        if len(k) == 0:
            return _EMPTY, True
        q, m = np.divmod(k, np.uint64(self._p))
        slot_keys = (q * np.uint64(self._c) + m % np.uint64(self._bs)).tolist()
        idx = self._slot_array(slot_keys) * self._width + (m // np.uint64(self._bs)).astype(np.int64)
        return idx, len(np.unique(idx)) == len(idx)

    def name_prompt(self, ids: np.ndarray, prompt_tokens: int) -> tuple[np.ndarray, bool]:
        """Indices of a prompt's named full blocks (those of `block_key_array`), with one slot lookup per unit,
        and whether they are all distinct (a repeated id makes repeated blocks)."""
        ut, bs = self._ut, self._bs
        full = min(prompt_tokens // bs, (len(ids) * ut) // bs)
        if full <= 0:
            return _EMPTY, True
        if ids.dtype.kind not in "iu":
            return self.name(block_key_array(ids, ut, bs, prompt_tokens))
        if full > self._tables:
            self._build_tables(full)
        runs = int(self._run_of[full - 1]) + 1
        unit_ids = ids[self._run_unit[:runs]].tolist()
        if min(unit_ids) < 0 or max(unit_ids) > self._max_id:  # keys wrap around 2**64: name them one by one
            return self.name(block_key_array(ids, ut, bs, prompt_tokens))
        c = self._c
        slot_keys = [u * c + r for u, r in zip(unit_ids, self._run_rem[:runs].tolist(), strict=True)]
        slots = self._slot_array(slot_keys)
        idx = (slots * self._width)[self._run_of[:full]] + self._in_slot[:full]
        return idx, len(set(slot_keys)) == runs

    def _build_tables(self, blocks: int) -> None:
        """Per block position j of a prompt: its unit run, its index within the slot; per run: unit, m mod bs."""
        n = max(blocks, 2 * self._tables, 1024)
        ut, bs = self._ut, self._bs
        ends = np.arange(1, n + 1, dtype=np.int64) * bs
        unit = (ends - 1) // ut
        offset = ends - unit * ut
        starts = np.flatnonzero(np.diff(unit, prepend=-1))
        self._run_of = np.cumsum(np.diff(unit, prepend=-1) != 0) - 1
        self._in_slot = offset // bs
        self._run_unit = unit[starts]
        self._run_rem = offset[starts] % bs
        self._tables = n

    def _grow(self, size: int) -> None:
        if size <= self._cap:
            return
        cap = max(size, 2 * self._cap, 1024)
        extra = cap - self._cap
        self._gpu = np.concatenate([self._gpu, np.zeros(extra, dtype=bool)])
        self._ref = np.concatenate([self._ref, np.zeros(extra, dtype=np.int32)])
        self._qpos = np.concatenate([self._qpos, np.full(extra, -1, dtype=np.int64)])
        self._hpos = np.concatenate([self._hpos, np.full(extra, -1, dtype=np.int64)])
        self._cap = cap

    def _key(self, index: int) -> int:
        slot, j = divmod(index, self._width)
        sk = self._slot_keys[slot]
        key = (sk // self._c) * self._p + j * self._bs + sk % self._c
        return key - (1 << 64) if key >= 1 << 63 else key

    def keys(self, idx: np.ndarray) -> list[int]:
        """The keys of these block indices."""
        return [self._key(i) for i in idx.tolist()]

    # -- views by key (tests, diagnostics) ------------------------------------------------------------------
    @property
    def ref(self) -> dict[int, int]:
        """Named blocks on the GPU -> holders (0: idle, in the free queue), in index order."""
        on = np.flatnonzero(self._gpu)
        return dict(zip(self.keys(on), self._ref[on].tolist(), strict=True))

    @property
    def idle(self) -> dict[object, int]:
        """The free queue's hashed blocks from its head: key -> 1, or (run number,) -> count for anonymous runs."""
        out: dict[object, int] = {}
        for i, count, number in self._queue.items(self._qpos):
            out[self._key(i) if i >= 0 else (number,)] = count
        return out

    @property
    def host(self) -> dict[int, None]:
        """Keys in the host tier, least recently offloaded or used first."""
        return dict.fromkeys(self._key(i) for i, _, _ in self._host.items(self._hpos))

    # -- the operations -------------------------------------------------------------------------------------
    def lookup(self, idx: np.ndarray, limit: int, unique: bool = True) -> tuple[np.ndarray, int]:
        """The longest run of leading blocks cached on the GPU or in host memory, at most `limit` blocks:
        (the GPU-resident ones among them, how many blocks the run has). Host hits become most recently used."""
        a = idx[: max(0, limit)]
        if len(a) == 0:
            return _EMPTY, 0
        gpu = self._gpu[a]
        if self.host_count:
            in_host = self._hpos[a] >= 0
            miss = np.flatnonzero(~(gpu | in_host))
        else:
            in_host = None
            miss = np.flatnonzero(~gpu)
        n = int(miss[0]) if len(miss) else len(a)
        gpu = gpu[:n]
        on_gpu = a[:n][gpu]
        if in_host is not None and len(on_gpu) < n:
            bump = a[:n][~gpu]
            if unique:
                self._host.push(self._hpos, bump)
            else:
                for i in bump.tolist():  # a repeated block moves twice: its later place wins
                    self._host.push(self._hpos, np.array([i], dtype=np.int64))
        return on_gpu, n

    def idle_among(self, idx: np.ndarray) -> int:
        """How many of these cached blocks sit in the free queue (a hit on them takes free blocks)."""
        return int(np.count_nonzero(self._ref[idx] == 0)) if len(idx) else 0

    def touch(self, idx: np.ndarray, unique: bool = True) -> None:
        """A request now holds these cached blocks (vLLM BlockPool.touch)."""
        if len(idx) == 0:
            return
        ref = self._ref
        if unique:
            was_idle = idx[ref[idx] == 0]
            self._qpos[was_idle] = -1
            self.idle_blocks -= len(was_idle)
            self.free -= len(was_idle)
            ref[idx] += 1
            return
        for i in idx.tolist():
            r = int(ref[i])
            if r == 0:
                self._qpos[i] = -1
                self.idle_blocks -= 1
                self.free -= 1
            ref[i] = r + 1

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
        self.idle_blocks -= evict
        evicted = self._queue.pop(self._qpos, evict)
        if len(evicted):
            self._gpu[evicted] = False
            if self.host_blocks:  # most recently offloaded last (a block already there keeps its place)
                new = evicted[self._hpos[evicted] < 0]
                if len(new):
                    self._host.push(self._hpos, new)
                    self.host_count += len(new)
                    if self.host_count > self.host_blocks:
                        self._host.pop(self._hpos, self.host_count - self.host_blocks)
                        self.host_count = self.host_blocks

    def register(self, idx: np.ndarray) -> np.ndarray:
        """Hash newly allocated full blocks (held by one request): the blocks registered, in order. A block
        already cached elsewhere is not registered again: it stays an anonymous copy (vLLM keeps duplicates,
        and a lookup finds the first). A host-memory copy stays where it is (offloading writes through)."""
        if len(idx) == 0:
            return _EMPTY
        mine = idx[~self._gpu[idx]]
        self._gpu[mine] = True
        self._ref[mine] = 1
        return mine

    def release(self, named: np.ndarray, anonymous: int, unhashed: int, unique: bool = True) -> None:
        """A request lets go of its blocks, last first (vLLM frees in reverse so tails are evicted first):
        unhashed ones go to the head of the free queue, hashed ones to its tail."""
        self.free += unhashed
        if anonymous > 0:
            self._queue.push_run(anonymous)
            self.idle_blocks += anonymous
            self.free += anonymous
        if len(named) == 0:
            return
        ref = self._ref
        last_first = named[::-1]
        if unique:
            ref[last_first] -= 1
            freed = last_first[ref[last_first] == 0]
        else:
            out = []
            for i in last_first.tolist():
                r = int(ref[i]) - 1
                ref[i] = r
                if r == 0:
                    out.append(i)
            freed = np.array(out, dtype=np.int64)
        if len(freed):
            self._queue.push(self._qpos, freed)
            self.idle_blocks += len(freed)
            self.free += len(freed)
