"""llm-d's prefix-cache scorer: matched blocks / blocks of this prompt, from the approximate prefix index."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
from pydantic import Field

from policies.registry import PolicyParams
from policies.routing._base import Plugin
from policies.routing.prefix_index import DEFAULT_LRU_CAPACITY, PrefixIndex, chain_hashes, root_hash
from policies.routing.types import EndpointState, RouteRequest

_PENDING_CAP = 4096  # requests picked but not yet dispatched whose hashes are kept


class PrefixCacheParams(PolicyParams):
    lru_capacity_per_endpoint: Annotated[int, Field(ge=1)] = DEFAULT_LRU_CAPACITY
    max_prefix_blocks_to_match: Annotated[int, Field(ge=1)] = 256
    salt: str = ""


class PrefixCacheScorer(Plugin):
    """Matched blocks / blocks of this prompt (longest run from the start) per endpoint, from the index.

    The chained hashes are computed once per request and kept from `score` to `on_dispatch`, where the chosen
    endpoint's index is updated. A request without blocks scores 0 everywhere.
    """

    TYPE = "prefix-cache-scorer"
    Params = PrefixCacheParams
    __slots__ = ("_last", "_max_blocks", "_pending", "_roots", "index", "salt")

    def __init__(
        self,
        lru_capacity_per_endpoint: int = DEFAULT_LRU_CAPACITY,
        max_prefix_blocks_to_match: int = 256,
        salt: str = "",
    ) -> None:
        super().__init__()
        self.index = PrefixIndex(lru_capacity_per_endpoint)
        self.salt = salt
        self._max_blocks = max_prefix_blocks_to_match
        self._roots: dict[str, int] = {}
        self._pending: dict[int, tuple[RouteRequest, list[int]]] = {}
        self._last: tuple[object, object, list[int]] = (None, None, [])

    @classmethod
    def from_params(cls, params: PrefixCacheParams, rng: np.random.Generator) -> PrefixCacheScorer:
        return cls(params.lru_capacity_per_endpoint, params.max_prefix_blocks_to_match, params.salt)

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
            hashes = chain_hashes(root, ids, self._max_blocks)
        if len(self._pending) >= _PENDING_CAP:  # picked but never dispatched: forget the oldest
            del self._pending[next(iter(self._pending))]
        self._pending[request.request_id] = (request, hashes)
        return hashes

    def match_lengths(self, request: RouteRequest, endpoints: Sequence[EndpointState]) -> list[int]:
        """Matched blocks per candidate; cached for the (request, candidate list) of the current pick."""
        last_req, last_eps, last = self._last
        if last_req is request and last_eps is endpoints:
            return last
        hashes = self.hashes(request)
        match = self.index.match_length
        out = [match(e.name, hashes) for e in endpoints] if hashes else [0] * len(endpoints)
        self._last = (request, endpoints, out)
        return out

    def matched_blocks(self, request: RouteRequest, endpoint: str) -> int:
        return self.index.match_length(endpoint, self.hashes(request))

    def score(self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]) -> list[float]:
        total = len(self.hashes(request))
        if total == 0:
            return [0.0] * len(endpoints)
        inv = 1.0 / total
        return [m * inv for m in self.match_lengths(request, endpoints)]

    def on_dispatch(self, now: float, request: RouteRequest, endpoint: str) -> None:
        hashes = self.hashes(request)
        del self._pending[request.request_id]
        self._last = (None, None, [])
        if hashes:
            self.index.add(endpoint, hashes)
