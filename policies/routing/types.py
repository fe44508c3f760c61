"""Snapshot and decision types the routing pipeline works on; both engines build these from their own world."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NO_SESSION = -1


@dataclass(frozen=True, slots=True)
class EndpointState:
    """One model-server endpoint as the router sees it: scraped metrics (vLLM names), possibly stale.

    waiting    vllm:num_requests_waiting
    running    vllm:num_requests_running
    kv_usage   vllm:kv_cache_usage_perc, in [0, 1]
    scraped_at the time the metrics were taken (router staleness = now - scraped_at)
    active_adapters, waiting_adapters, max_adapters
               vllm:lora_requests_info: running_lora_adapters, waiting_lora_adapters, max_lora
               (no LoRA on the server: empty sets and 0 slots)
    cache_num_blocks, cache_block_size
               vllm:cache_config_info: num_gpu_blocks, block_size (0: not reported); the prefix-cache scorer's
               auto_tune sizes its index from them, as llm-d's does
    """

    name: str
    model: str
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    scraped_at: float = 0.0
    healthy: bool = True
    active_adapters: frozenset[str] = frozenset()
    waiting_adapters: frozenset[str] = frozenset()
    max_adapters: int = 0
    cache_num_blocks: int = 0
    cache_block_size: int = 0


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What the router knows about a request.

    block_ids: the prompt's prefix blocks (Mooncake hash ids, or hashes of prompt blocks); empty when unknown.
    block_tokens: how many prompt tokens one block id covers (512 for Mooncake, 16 for llm-d's own hashing).
    adapter: the LoRA adapter the request targets; None for the base model.
    """

    request_id: int
    model: str
    prompt_tokens: int
    block_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    block_tokens: int = 16
    session: int = NO_SESSION
    priority: int = 0
    tenant: str = ""
    adapter: str | None = None


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """The endpoint picked (None when no endpoint passed the filters) and why."""

    endpoint: str | None
    reason: str = ""
