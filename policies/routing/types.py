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
# dataclasses with no __post_init__, whose __init__ sets every field through object.__setattr__ (~2.3 us for
# EndpointState). Each has a mutable twin with the very same slots: an object filled as the twin (plain slot stores)
# and then given the frozen class is the object `cls(...)` builds (same slots, same values), at about a sixth of the
# cost (a third through the slot descriptors' __set__). They refuse to import if a field is added or reordered.
_new = object.__new__


def _twin(cls: type) -> type:
    """A mutable class with `cls`'s slot layout (CPython lets an object switch between such classes)."""
    names = tuple(f.name for f in fields(cls))
    if getattr(cls, "__slots__", None) != names:
        raise RuntimeError(f"{cls.__name__}'s fields changed: update its fast constructor in policies/routing/types.py")
    return type(f"_{cls.__name__}Builder", (), {"__slots__": names})


_EndpointStateBuilder = _twin(EndpointState)
_RouteRequestBuilder = _twin(RouteRequest)


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
    s = _new(_EndpointStateBuilder)
    s.name = name
    s.model = model
    s.waiting = waiting
    s.running = running
    s.kv_usage = kv_usage
    s.scraped_at = scraped_at
    s.healthy = healthy
    s.active_adapters = active_adapters
    s.waiting_adapters = waiting_adapters
    s.max_adapters = max_adapters
    s.cache_num_blocks = cache_num_blocks
    s.cache_block_size = cache_block_size
    s.__class__ = EndpointState
    return s  # type: ignore[no-any-return]


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
    r = _new(_RouteRequestBuilder)
    r.request_id = request_id
    r.model = model
    r.prompt_tokens = prompt_tokens
    r.block_ids = block_ids
    r.block_tokens = block_tokens
    r.session = session
    r.priority = priority
    r.tenant = tenant
    r.adapter = adapter
    r.__class__ = RouteRequest
    return r  # type: ignore[no-any-return]
