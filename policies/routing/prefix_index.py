"""The approximate prefix index of llm-d's prefix-cache scorer: chained block hashes, per-endpoint LRUs.

A block hash is chained, h_0 = hash(model [+ salt]), h_i = mix(block_i, h_{i-1}), so one hash names the whole
prefix up to its block and a lookup needs no tree. The router cannot see the servers' caches, so it records
what it sent where (at dispatch, not at completion, like llm-d) and forgets by LRU, sized like a KV cache.

Hashes are plain 64-bit integer arithmetic (a splitmix64 finalizer), never Python's salted `hash()`, so they
are the same in every process and run.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence

MASK64 = (1 << 64) - 1
DEFAULT_LRU_CAPACITY = 31_250  # llm-d: 500K tokens of HBM for an 8B model on an H100 / 16-token blocks
LLMD_BLOCK_TOKENS = 16  # llm-d's defaultBlockSizeTokens: the unit DEFAULT_LRU_CAPACITY counts in
_K_PREV = 0xC2B2AE3D27D4EB4F
_K_ADD = 0x165667B19E3779F9
_K_M1 = 0xBF58476D1CE4E5B9
_K_M2 = 0x94D049BB133111EB


def stable_str_hash(text: str) -> int:
    """A 64-bit string hash stable across processes (blake2b), unlike the salted built-in `hash`."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def mix64(block: int, prev: int) -> int:
    """Combine a block id with the previous chained hash into a 64-bit hash (order-sensitive)."""
    x = ((prev & MASK64) * _K_PREV + (block & MASK64) + _K_ADD) & MASK64
    x ^= x >> 30
    x = (x * _K_M1) & MASK64
    x ^= x >> 27
    x = (x * _K_M2) & MASK64
    return x ^ (x >> 31)


def root_hash(model: str, salt: str = "") -> int:
    """h_0: different models (or salts, e.g. tenants) never share a prefix."""
    return stable_str_hash(model if not salt else f"{model}\x00{salt}")


def chain_hashes(root: int, block_ids: Iterable[int], max_blocks: int | None = None) -> list[int]:
    """h_1..h_n for the given blocks, h_i = mix64(block_i, h_{i-1}) with h_0 = root; at most `max_blocks`.

    h_0 itself is not returned: the score is matched blocks / blocks of this prompt.
    """
    out: list[int] = []
    prev = root & MASK64
    m = MASK64
    for count, block in enumerate(block_ids):
        if max_blocks is not None and count >= max_blocks:
            break
        # mix64 inlined: this runs once per block of every request.
        x = (prev * _K_PREV + (block & m) + _K_ADD) & m
        x ^= x >> 30
        x = (x * _K_M1) & m
        x ^= x >> 27
        x = (x * _K_M2) & m
        prev = x ^ (x >> 31)
        out.append(prev)
    return out


class PrefixIndex:
    """Per-endpoint LRU sets of chained block hashes plus the reverse map hash -> endpoints holding it.

    `add` at dispatch, `longest_prefix_counts` at scoring. Lookups do not refresh recency (in llm-d only routing a
    request does). Adding a prompt's blocks touches them in prompt order, so the first block is the least recent
    of them, as in llm-d's indexer. An endpoint's LRU gets its capacity when it is created (its first `add`), as
    llm-d's does: the capacity passed then, else the index's default.
    """

    __slots__ = ("_capacity", "_holders", "_lrus")

    def __init__(self, capacity_per_endpoint: int = DEFAULT_LRU_CAPACITY) -> None:
        if capacity_per_endpoint < 1:
            raise ValueError(f"capacity_per_endpoint must be >= 1, got {capacity_per_endpoint}")
        self._capacity = capacity_per_endpoint
        self._lrus: dict[str, tuple[OrderedDict[int, None], int]] = {}
        self._holders: dict[int, set[str]] = {}

    @property
    def capacity(self) -> int:
        """The default capacity of an endpoint's LRU, in entries."""
        return self._capacity

    def capacity_of(self, endpoint: str) -> int:
        entry = self._lrus.get(endpoint)
        return self._capacity if entry is None else entry[1]

    def match_length(self, endpoint: str, hashes: Sequence[int]) -> int:
        """Longest run of this endpoint's consecutive hits from the first block: O(matched blocks)."""
        entry = self._lrus.get(endpoint)
        if entry is None:
            return 0
        lru = entry[0]
        n = 0
        for h in hashes:
            if h not in lru:
                break
            n += 1
        return n

    def longest_prefix_counts(self, hashes: Sequence[int]) -> dict[str, int]:
        """llm-d's matchLongestPrefix: walk the prompt's hashes while any endpoint holds the hash, crediting each
        holder one block per hash; an endpoint that lost an early block still counts the later ones it holds."""
        counts: dict[str, int] = {}
        holders = self._holders
        for h in hashes:
            who = holders.get(h)
            if not who:
                break
            for name in who:
                counts[name] = counts.get(name, 0) + 1
        return counts

    def add(self, endpoint: str, hashes: Sequence[int], capacity: int | None = None) -> None:
        """Record that `endpoint` now holds these blocks, evicting its least recently routed past capacity;
        `capacity` sizes the endpoint's LRU if this is its first add."""
        entry = self._lrus.get(endpoint)
        if entry is None:
            cap = capacity if capacity is not None and capacity >= 1 else self._capacity
            entry = self._lrus[endpoint] = (OrderedDict(), cap)
        lru, cap = entry
        holders = self._holders
        for h in hashes:
            if h in lru:
                lru.move_to_end(h)
                continue
            lru[h] = None
            who = holders.get(h)
            if who is None:
                holders[h] = {endpoint}
            else:
                who.add(endpoint)
            if len(lru) > cap:
                old, _ = lru.popitem(last=False)
                self._drop_holder(old, endpoint)

    def _drop_holder(self, block_hash: int, endpoint: str) -> None:
        who = self._holders.get(block_hash)
        if who is not None:
            who.discard(endpoint)
            if not who:
                del self._holders[block_hash]

    def contains(self, endpoint: str, block_hash: int) -> bool:
        entry = self._lrus.get(endpoint)
        return entry is not None and block_hash in entry[0]

    def size(self, endpoint: str) -> int:
        entry = self._lrus.get(endpoint)
        return 0 if entry is None else len(entry[0])

    def endpoints(self) -> list[str]:
        return sorted(self._lrus)

    def forget(self, endpoint: str) -> None:
        """Drop an endpoint's entries (a replica that went away lost its cache)."""
        entry = self._lrus.pop(endpoint, None)
        if entry is not None:
            for h in entry[0]:
                self._drop_holder(h, endpoint)
