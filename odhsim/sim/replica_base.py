"""What every simulated replica shares: identity, busy-time accounting and metrics as the router scrapes them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields

import simpy

from odhsim.sim.request import SimRequest
from policies.routing.types import EndpointState

FinishCallback = Callable[[SimRequest, float, str, str], None]
"""on_finish(request, now, status, reason): the replica is done with a request (ok or failed)."""

_NO_ADAPTERS: frozenset[str] = frozenset()

# EndpointState is a frozen, slotted dataclass: its __init__ sets each of its 12 fields through object.__setattr__
# (~2.4 us). Scrapes build one per replica per tick, so they set the slots through their descriptors instead
# (~0.7 us); the object is the same (no __post_init__, equal field by field to the __init__-built one).
_new_state = object.__new__
_STATE_FIELDS = (
    "name",
    "model",
    "waiting",
    "running",
    "kv_usage",
    "scraped_at",
    "healthy",
    "active_adapters",
    "waiting_adapters",
    "max_adapters",
    "cache_num_blocks",
    "cache_block_size",
)
if tuple(f.name for f in fields(EndpointState)) != _STATE_FIELDS:  # a new field would be left unset below
    raise RuntimeError("EndpointState's fields changed: update scraped_state's field setters in replica_base.py")
_SET_NAME = EndpointState.name.__set__  # type: ignore[attr-defined]
_SET_MODEL = EndpointState.model.__set__  # type: ignore[attr-defined]
_SET_WAITING = EndpointState.waiting.__set__  # type: ignore[attr-defined]
_SET_RUNNING = EndpointState.running.__set__  # type: ignore[attr-defined]
_SET_KV = EndpointState.kv_usage.__set__  # type: ignore[attr-defined]
_SET_SCRAPED_AT = EndpointState.scraped_at.__set__  # type: ignore[attr-defined]
_SET_HEALTHY = EndpointState.healthy.__set__  # type: ignore[attr-defined]
_SET_ACTIVE = EndpointState.active_adapters.__set__  # type: ignore[attr-defined]
_SET_WAITING_AD = EndpointState.waiting_adapters.__set__  # type: ignore[attr-defined]
_SET_MAX_AD = EndpointState.max_adapters.__set__  # type: ignore[attr-defined]
_SET_BLOCKS = EndpointState.cache_num_blocks.__set__  # type: ignore[attr-defined]
_SET_BLOCK_SIZE = EndpointState.cache_block_size.__set__  # type: ignore[attr-defined]


class ReplicaBase:
    """Base of the LLM and fixed replicas.

    Scrape semantics (llm-d reads vLLM's metrics every `scrape_interval_s`): the router sees the metrics as they
    were at the latest scrape tick. Instead of a scraper process ticking every 50 ms for every replica, a replica
    keeps the state it had at the start of the current tick: before its first change in a tick it publishes its
    pre-change metrics, which are exactly what a scrape at that tick would have read. Exact and O(1) per change.
    """

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        name: str,
        model_name: str,
        scrape_interval_s: float,
        on_finish: FinishCallback,
    ) -> None:
        self.env = env
        self.index = index
        self.name = name
        self.model_name = model_name
        self.scrape_interval_s = scrape_interval_s
        self.on_finish = on_finish
        self.in_flight = 0
        self.model_index = 0
        self.revision = 0  # which of its model's revisions (0: the model's version, 1: its canary)
        self.gpu, self.gpus = "", 1  # its GPU type and GPUs held (a model may have replica groups on several types)
        self.parent: ReplicaBase | None = None  # the pipeline replica this is a virtual engine of, if any
        self.state = "ready"  # lifecycle state (the controller moves it; the gateway routes only to ready ones)
        self.busy_s = 0.0
        self._busy_since = math.nan
        self._published: EndpointState | None = None  # built lazily from _published_values when read
        self._published_values: tuple[int, int, float] = (0, 0, 0.0)
        self._published_tick = -1
        self._cache_config: tuple[int, int] | None = None  # fixed once the replica is built (read at first scrape)

    # -- metrics -------------------------------------------------------------------------------------------
    def waiting(self) -> int:
        raise NotImplementedError

    def running(self) -> int:
        raise NotImplementedError

    def kv_usage(self) -> float:
        return 0.0

    def _before_change(self) -> None:
        """Call before any change to waiting/running/kv: keeps the metrics of the current scrape tick."""
        if self.parent is not None:  # the pipeline replica publishes sums over its engines: it keeps them first
            self.parent._before_change()
        tick = int(self.env._now / self.scrape_interval_s)
        if tick != self._published_tick:
            self._published = None
            self._published_values = (self.waiting(), self.running(), self.kv_usage())
            self._published_tick = tick

    def scraped_state(self) -> EndpointState:
        """The metrics as of the latest scrape tick (what the router may see now).

        Hot: called once per candidate replica per dispatch. The state built for a tick is kept until the next
        change or tick, so most calls are one division and one comparison (env._now: simpy's clock without the
        property call)."""
        tick = int(self.env._now / self.scrape_interval_s)
        if tick == self._published_tick:
            state = self._published
            if state is not None:
                return state
            waiting, running, kv = self._published_values  # kept by _before_change at the tick's first change
        else:  # no change since the tick began: the current state is the scrape (kept below as _published, which
            # stays until the next tick: _published_values is read only when a new tick cleared _published)
            waiting, running, kv = self.waiting(), self.running(), self.kv_usage()
            self._published_tick = tick
        cache_config = self._cache_config
        if cache_config is None:  # vllm:cache_config_info (num_gpu_blocks, block_size) of LLM replicas, else 0
            cache_config = self._cache_config = (getattr(self, "total_blocks", 0), getattr(self, "bs", 0))
        # healthy, no adapters; every one of EndpointState's fields set (see _new_state above)
        state = self._published = _new_state(EndpointState)
        _SET_NAME(state, self.name)
        _SET_MODEL(state, self.model_name)
        _SET_WAITING(state, waiting)
        _SET_RUNNING(state, running)
        _SET_KV(state, kv)
        _SET_SCRAPED_AT(state, tick * self.scrape_interval_s)
        _SET_HEALTHY(state, True)
        _SET_ACTIVE(state, _NO_ADAPTERS)
        _SET_WAITING_AD(state, _NO_ADAPTERS)
        _SET_MAX_AD(state, 0)
        _SET_BLOCKS(state, cache_config[0])
        _SET_BLOCK_SIZE(state, cache_config[1])
        return state

    # -- busy-time accounting (for gpu_busy) ------------------------------------------------------------------
    def _mark_busy(self) -> None:
        if math.isnan(self._busy_since):
            self._busy_since = self.env.now

    def _mark_idle(self) -> None:
        if not math.isnan(self._busy_since):
            self.busy_s += self.env.now - self._busy_since
            self._busy_since = math.nan

    def busy_time(self) -> float:
        """Seconds spent computing so far (for the gpu_busy column)."""
        extra = 0.0 if math.isnan(self._busy_since) else self.env.now - self._busy_since
        return self.busy_s + extra

    def submit(self, req: SimRequest) -> None:
        raise NotImplementedError

    def abort_all(self) -> list[SimRequest]:
        raise NotImplementedError
