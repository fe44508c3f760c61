"""llm-d's prefix-cache scorer: matched blocks / blocks of this prompt, from the approximate prefix index.

Upstream (llm-d-router 520af478, requestcontrol/dataproducer/approximateprefix/) hashes prompts in blocks of the
server's KV block size (16 tokens by default) and counts its limits in those blocks: 31,250 index entries per
server (500,000 tokens) and 256 blocks matched (4,096 tokens). odhsim's prompts come as the workload's blocks
(Mooncake: 512 tokens each), so both limits are kept in tokens and turned into the request's blocks; with
`auto_tune` (upstream's default) an endpoint that reports its KV cache (vllm:cache_config_info) gets an index as
large as that cache, as upstream sizes it from CacheNumBlocks. Matching is upstream's matchLongestPrefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
from pydantic import Field

from policies.registry import PolicyParams
from policies.routing._base import Plugin
from policies.routing.prefix_index import (
    DEFAULT_LRU_CAPACITY,
    LLMD_BLOCK_TOKENS,
    PrefixIndex,
    chain_hashes,
    root_hash,
)
from policies.routing.types import EndpointState, RouteRequest

_PENDING_CAP = 4096  # requests picked but not yet dispatched whose hashes are kept
_NO_MATCH: tuple[object, object, list[int]] = (None, None, [])  # match_lengths' memo when it holds no pick
DEFAULT_MAX_PREFIX_BLOCKS = 256  # llm-d's defaultMaxPrefixBlocks, in 16-token blocks


class PrefixCacheParams(PolicyParams):
    """Limits in llm-d's units: `lru_capacity_per_endpoint` and `max_prefix_blocks_to_match` count 16-token
    blocks; `max_prefix_tokens_to_match` (> 0) takes precedence over the latter, as upstream's does."""

    lru_capacity_per_endpoint: Annotated[int, Field(ge=1)] = DEFAULT_LRU_CAPACITY
    max_prefix_blocks_to_match: Annotated[int, Field(ge=1)] = DEFAULT_MAX_PREFIX_BLOCKS
    max_prefix_tokens_to_match: Annotated[int, Field(ge=0)] = 0
    auto_tune: bool = True
    salt: str = ""


def _blocks(tokens: int, block_tokens: int) -> int:
    """How many blocks of `block_tokens` fit in `tokens` (at least 1)."""
    return max(1, tokens // max(1, block_tokens))


class PrefixCacheScorer(Plugin):
    """Matched blocks / blocks of this prompt per endpoint, from the index (0 for a request without blocks).

    The chained hashes are computed once per request and kept from `score` to `on_dispatch`, where the chosen
    endpoint's index is updated.
    """

    TYPE = "prefix-cache-scorer"
    Params = PrefixCacheParams
    __slots__ = (
        "_cache_tokens",
        "_capacity_tokens",
        "_last",
        "_max_tokens",
        "_pending",
        "_roots",
        "auto_tune",
        "index",
        "salt",
    )

    def __init__(
        self,
        lru_capacity_per_endpoint: int = DEFAULT_LRU_CAPACITY,
        max_prefix_blocks_to_match: int = DEFAULT_MAX_PREFIX_BLOCKS,
        salt: str = "",
        auto_tune: bool = True,
        max_prefix_tokens_to_match: int = 0,
    ) -> None:
        super().__init__()
        self.index = PrefixIndex(lru_capacity_per_endpoint)
        self.salt = salt
        self.auto_tune = auto_tune
        self._capacity_tokens = lru_capacity_per_endpoint * LLMD_BLOCK_TOKENS
        self._max_tokens = (
            max_prefix_tokens_to_match
            if max_prefix_tokens_to_match > 0
            else max_prefix_blocks_to_match * LLMD_BLOCK_TOKENS
        )
        self._cache_tokens: dict[str, int] = {}  # endpoint -> KV cache tokens it reported (auto_tune)
        self._roots: dict[str, int] = {}
        self._pending: dict[int, tuple[RouteRequest, list[int]]] = {}
        self._last: tuple[object, object, list[int]] = (None, None, [])

    @classmethod
    def from_params(cls, params: PrefixCacheParams, rng: np.random.Generator) -> PrefixCacheScorer:
        return cls(
            params.lru_capacity_per_endpoint,
            params.max_prefix_blocks_to_match,
            params.salt,
            params.auto_tune,
            params.max_prefix_tokens_to_match,
        )

    def max_blocks(self, block_tokens: int) -> int:
        """Blocks of `block_tokens` matched at most (the token limit in the request's blocks)."""
        return _blocks(self._max_tokens, block_tokens)

    def capacity_for(self, endpoint: str, block_tokens: int) -> int:
        """Index entries for `endpoint` in blocks of `block_tokens`: its reported KV cache with auto_tune, else
        lru_capacity_per_endpoint x 16 tokens."""
        tokens = self._cache_tokens.get(endpoint, 0) if self.auto_tune else 0
        return _blocks(tokens if tokens > 0 else self._capacity_tokens, block_tokens)

    def hashes(self, request: RouteRequest) -> list[int]:
        """The request's chained block hashes, computed once per request (cached until dispatch)."""
        entry = self._pending.get(request.request_id)
        if entry is not None and entry[0] is request:
            return entry[1]
        blocks = request.block_ids
        if len(blocks) == 0:
            hashes: list[int] = []
        else:
            root = self._roots.get(request.model)
            if root is None:
                root = self._roots[request.model] = root_hash(request.model, self.salt)
            ids = blocks.tolist() if hasattr(blocks, "tolist") else list(blocks)
            hashes = chain_hashes(root, ids, self.max_blocks(request.block_tokens))
        if len(self._pending) >= _PENDING_CAP:  # picked but never dispatched: forget the oldest
            del self._pending[next(iter(self._pending))]
        self._pending[request.request_id] = (request, hashes)
        return hashes

    def match_lengths(self, request: RouteRequest, endpoints: Sequence[EndpointState]) -> list[int]:
        """Matched blocks per candidate (matchLongestPrefix); cached for the (request, candidates) of a pick."""
        last_req, last_eps, last = self._last
        if last_req is request and last_eps is endpoints:
            return last
        if self.auto_tune:
            for e in endpoints:
                if e.cache_num_blocks > 0 and e.cache_block_size > 0:
                    self._cache_tokens[e.name] = e.cache_num_blocks * e.cache_block_size
        hashes = self.hashes(request)
        if hashes:
            counts = self.index.longest_prefix_counts(hashes)
            out = [counts.get(e.name, 0) for e in endpoints]
        else:
            out = [0] * len(endpoints)
        self._last = (request, endpoints, out)
        return out

    def matched_blocks(self, request: RouteRequest, endpoint: str) -> int:
        return self.index.longest_prefix_counts(self.hashes(request)).get(endpoint, 0)

    def score(self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]) -> list[float]:
        if not len(request.block_ids):  # no prompt blocks (a trace without hash ids): nothing to hash or match
            return [0.0] * len(endpoints)
        total = len(self.hashes(request))
        if total == 0:
            return [0.0] * len(endpoints)
        inv = 1.0 / total
        return [m * inv for m in self.match_lengths(request, endpoints)]

    def on_dispatch(self, now: float, request: RouteRequest, endpoint: str) -> None:
        if not len(request.block_ids) and request.request_id not in self._pending:  # nothing kept, nothing to add
            self._last = _NO_MATCH
            return
        hashes = self.hashes(request)
        del self._pending[request.request_id]
        self._last = _NO_MATCH
        if hashes:
            self.index.add(endpoint, hashes, self.capacity_for(endpoint, request.block_tokens))
