"""Snapshot and decision types the routing pipeline works on; both engines build these from their own world."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

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


# Fast constructors for the two snapshots the engines build on their hot paths. Both classes are frozen, slotted
# dataclasses with no __post_init__, whose __init__ sets every field through object.__setattr__ (~2.4 us for
# EndpointState). Setting each slot through its descriptor gives the same object, field by field, at about a third
# of the cost. They live here, beside the classes, and refuse to import if a field is added or reordered.
_new = object.__new__


def _setters(cls: type, names: tuple[str, ...]) -> tuple:
    if tuple(f.name for f in fields(cls)) != names:
        raise RuntimeError(f"{cls.__name__}'s fields changed: update its fast constructor in policies/routing/types.py")
    return tuple(getattr(cls, n).__set__ for n in names)


(_S_NAME, _S_MODEL, _S_WAITING, _S_RUNNING, _S_KV, _S_SCRAPED_AT, _S_HEALTHY, _S_ACTIVE, _S_WAITING_AD, _S_MAX_AD,
 _S_BLOCKS, _S_BLOCK_SIZE) = _setters(EndpointState, (
    "name", "model", "waiting", "running", "kv_usage", "scraped_at", "healthy", "active_adapters",
    "waiting_adapters", "max_adapters", "cache_num_blocks", "cache_block_size",
))  # fmt: skip
(_S_ID, _S_RMODEL, _S_PROMPT, _S_BLOCK_IDS, _S_BLOCK_TOKENS, _S_SESSION, _S_PRIORITY, _S_TENANT,
 _S_ADAPTER) = _setters(RouteRequest, (
    "request_id", "model", "prompt_tokens", "block_ids", "block_tokens", "session", "priority", "tenant", "adapter",
))  # fmt: skip


def new_endpoint_state(
    name: str,
    model: str,
    waiting: int,
    running: int,
    kv_usage: float,
    scraped_at: float,
    healthy: bool,
    active_adapters: frozenset[str],
    waiting_adapters: frozenset[str],
    max_adapters: int,
    cache_num_blocks: int,
    cache_block_size: int,
) -> EndpointState:
    """`EndpointState(...)` with every field given, built without the frozen __init__ (see above)."""
    s = _new(EndpointState)
    _S_NAME(s, name)
    _S_MODEL(s, model)
    _S_WAITING(s, waiting)
    _S_RUNNING(s, running)
    _S_KV(s, kv_usage)
    _S_SCRAPED_AT(s, scraped_at)
    _S_HEALTHY(s, healthy)
    _S_ACTIVE(s, active_adapters)
    _S_WAITING_AD(s, waiting_adapters)
    _S_MAX_AD(s, max_adapters)
    _S_BLOCKS(s, cache_num_blocks)
    _S_BLOCK_SIZE(s, cache_block_size)
    return s


def new_route_request(
    request_id: int,
    model: str,
    prompt_tokens: int,
    block_ids: np.ndarray,
    block_tokens: int,
    session: int,
    priority: int,
    tenant: str,
    adapter: str | None,
) -> RouteRequest:
    """`RouteRequest(...)` with every field given, built without the frozen __init__ (see above)."""
    r = _new(RouteRequest)
    _S_ID(r, request_id)
    _S_RMODEL(r, model)
    _S_PROMPT(r, prompt_tokens)
    _S_BLOCK_IDS(r, block_ids)
    _S_BLOCK_TOKENS(r, block_tokens)
    _S_SESSION(r, session)
    _S_PRIORITY(r, priority)
    _S_TENANT(r, tenant)
    _S_ADAPTER(r, adapter)
    return r
