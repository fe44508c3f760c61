"""What every simulated replica shares: identity, busy-time accounting and metrics as the router scrapes them."""

from __future__ import annotations

import math
from collections.abc import Callable
from math import floor

import simpy

from odhsim.sim.request import SimRequest
from policies.routing.types import EndpointState, new_endpoint_state

FinishCallback = Callable[[SimRequest, float, str, str], None]
"""on_finish(request, now, status, reason): the replica is done with a request (ok or failed)."""

_NO_ADAPTERS: frozenset[str] = frozenset()


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
        tick = floor(self.env._now / self.scrape_interval_s)  # (int() for a clock >= 0, without a type call)
        if tick != self._published_tick:
            self._published = None
            self._published_values = (self.waiting(), self.running(), self.kv_usage())
            self._published_tick = tick

    def scraped_state(self) -> EndpointState:
        """The metrics as of the latest scrape tick (what the router may see now).

        Hot: called once per candidate replica per dispatch. The state built for a tick is kept until the next
        change or tick, so most calls are one division and one comparison (env._now: simpy's clock without the
        property call)."""
        tick = floor(self.env._now / self.scrape_interval_s)  # (int() for a clock >= 0, without a type call)
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
        # healthy, no adapters (policies.routing.types.new_endpoint_state: EndpointState without its frozen __init__)
        state = self._published = new_endpoint_state(
            self.name, self.model_name, waiting, running, kv, tick * self.scrape_interval_s, True,
            _NO_ADAPTERS, _NO_ADAPTERS, 0, cache_config[0], cache_config[1],
        )  # fmt: skip
        return state

    # -- busy-time accounting (for gpu_busy) ------------------------------------------------------------------
    def _mark_busy(self) -> None:
        if self._busy_since != self._busy_since:  # NaN: idle until now
            self._busy_since = self.env._now

    def _mark_idle(self) -> None:
        if self._busy_since == self._busy_since:  # not NaN: busy until now
            self.busy_s += self.env._now - self._busy_since
            self._busy_since = math.nan

    def busy_time(self) -> float:
        """Seconds spent computing so far (for the gpu_busy column)."""
        extra = 0.0 if math.isnan(self._busy_since) else self.env.now - self._busy_since
        return self.busy_s + extra

    def submit(self, req: SimRequest) -> None:
        raise NotImplementedError

    def abort_all(self) -> list[SimRequest]:
        raise NotImplementedError
