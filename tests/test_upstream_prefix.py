"""The prefix-cache scorer's index, sized and matched as llm-d's approximate prefix producer.

Sources, llm-d/llm-d-inference-scheduler (llm-d-router) at 520af478,
pkg/epp/framework/plugins/requestcontrol/dataproducer/approximateprefix/:
- types.go: defaultBlockSizeTokens 16, defaultMaxPrefixBlocks 256, defaultLRUCapacityPerServer 31,250 (500K
  tokens), autoTune true; MaxPrefixTokensToMatch takes precedence over MaxPrefixBlocksToMatch;
- plugin.go: `makeserver` sizes a server's LRU from its CacheNumBlocks with autoTune; `matchLongestPrefix` walks
  the hashes while any server holds one, crediting every holder (plugin_test.go TestMaxPrefixTokensToMatch);
- indexer.go / indexer_test.go: the server-given size takes precedence; eviction and RemovePod clean hashToPods.
"""

from __future__ import annotations

import numpy as np
import pytest

from policies.routing.prefix_index import PrefixIndex
from policies.routing.prefix_scorer import PrefixCacheScorer
from policies.routing.types import EndpointState, RouteRequest


def _req(rid: int, blocks: list[int], block_tokens: int) -> RouteRequest:
    return RouteRequest(rid, "m", len(blocks) * block_tokens, block_ids=np.array(blocks), block_tokens=block_tokens)


# (block tokens of the workload, scorer params, endpoint's cache (num_gpu_blocks, block_size), index entries)
CAPACITY_CASES = [
    (16, {}, (0, 0), 31_250),  # upstream's own unit: 31,250 blocks of 16 tokens
    (512, {}, (0, 0), 976),  # Mooncake blocks: the same 500,000 tokens
    (512, {}, (1000, 16), 31),  # autoTune: the server's 16,000 tokens of KV cache
    (16, {}, (1000, 16), 1000),  # TestPrefixPluginAutoTune: CacheNumBlocks 1000 of 16 tokens
    (512, {"auto_tune": False}, (1000, 16), 976),
    (512, {"lru_capacity_per_endpoint": 100}, (0, 0), 3),
    (512, {"lru_capacity_per_endpoint": 1}, (0, 0), 1),  # never below one entry
]


@pytest.mark.parametrize(("block_tokens", "params", "cache", "entries"), CAPACITY_CASES)
def test_index_capacity_in_tokens_or_from_the_server(
    block_tokens: int, params: dict, cache: tuple[int, int], entries: int
) -> None:
    s = PrefixCacheScorer(**params)
    r = _req(1, [1, 2], block_tokens)
    endpoint = EndpointState("e0", "m", cache_num_blocks=cache[0], cache_block_size=cache[1])
    s.score(0.0, r, [endpoint])
    s.on_dispatch(0.0, r, "e0")
    assert s.index.capacity_of("e0") == entries


# (block tokens, params, prompt blocks, hashed blocks): 256 blocks of 16 tokens = 4,096 tokens matched at most
MAX_MATCH_CASES = [
    (16, {}, 300, 256),
    (512, {}, 300, 8),  # 4,096 tokens = 8 Mooncake blocks
    (16, {"max_prefix_tokens_to_match": 32}, 10, 2),  # TestMaxPrefixTokensToMatch: 32 / 16 = 2
    (16, {"max_prefix_blocks_to_match": 3}, 10, 3),  # falls back to the blocks cap when the tokens cap is 0
    (512, {"max_prefix_tokens_to_match": 100}, 10, 1),
]


@pytest.mark.parametrize(("block_tokens", "params", "prompt_blocks", "hashed"), MAX_MATCH_CASES)
def test_match_limit_in_tokens(block_tokens: int, params: dict, prompt_blocks: int, hashed: int) -> None:
    s = PrefixCacheScorer(**params)
    assert len(s.hashes(_req(1, list(range(prompt_blocks)), block_tokens))) == hashed


def test_match_longest_prefix_credits_every_holder() -> None:
    # e1 held blocks 1..4 but its LRU (2 entries) kept only h3, h4; e0 holds all four.
    s = PrefixCacheScorer(lru_capacity_per_endpoint=1_000)
    full = _req(1, [1, 2, 3, 4], 16)
    s.on_dispatch(0.0, full, "e0")
    s.index.add("e1", s.hashes(_req(2, [1, 2, 3, 4], 16)), capacity=2)
    assert s.index.size("e1") == 2 and s.index.capacity_of("e1") == 2
    eps = [EndpointState("e0", "m"), EndpointState("e1", "m"), EndpointState("e2", "m")]
    probe = _req(3, [1, 2, 3, 4, 5], 16)
    # upstream: h1, h2 held by e0 only; h3, h4 by both; h5 by no one -> stop. e1 is credited 2 of 5.
    assert s.match_lengths(probe, eps) == [4, 2, 0]
    assert s.score(0.0, probe, eps) == pytest.approx([0.8, 0.4, 0.0])


def test_walk_stops_at_the_first_hash_no_server_holds() -> None:
    s = PrefixCacheScorer()
    s.on_dispatch(0.0, _req(1, [1, 2], 16), "e0")
    eps = [EndpointState("e0", "m")]
    assert s.match_lengths(_req(2, [1, 9, 2], 16), eps) == [1]  # chained: h(1, 9, 2) is not h(1, 2)


def test_server_size_takes_precedence_and_eviction_cleans_the_reverse_map() -> None:
    # indexer_test.go TestIndexer_AddAndGet / TestIndexer_RemovePodAndEviction
    idx = PrefixIndex(3)
    idx.add("s1", [1], capacity=2)
    idx.add("s1", [2])
    idx.add("s1", [3])
    assert idx.size("s1") == 2 and not idx.contains("s1", 1)
    idx = PrefixIndex(10)
    for h in range(10):
        idx.add("s1", [h])
        idx.add("s2", [h])
    idx.add("s1", [10])  # evicts 0 from s1
    assert idx.longest_prefix_counts([0]) == {"s2": 1}
    idx.forget("s2")
    assert idx.longest_prefix_counts([0]) == {}
    assert idx.longest_prefix_counts(list(range(1, 11))) == {"s1": 10}
