"""The gateway's view of one replica: its address and the metrics scraped from its /metrics. The router only ever
sees these (possibly stale) scraped numbers, as llm-d's endpoint picker does; the requests outstanding there are
counted by the gateway core (its EndpointSlot).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Container
from dataclasses import dataclass

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from policies.routing.types import EndpointState

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_USAGE = "vllm:kv_cache_usage_perc"
_WANTED = (WAITING, RUNNING, KV_USAGE)


@dataclass(frozen=True, slots=True)
class ScrapedMetrics:
    """One scrape of a replica (vLLM's gauge names); `scraped_at` on the gateway's clock."""

    waiting: int
    running: int
    kv_usage: float
    scraped_at: float


def parse_vllm_metrics(text: str, model: str) -> tuple[int, int, float]:
    """(waiting, running, kv_usage) from Prometheus text; samples labelled with another model_name are ignored.

    Missing gauges count as 0; a malformed exposition raises ValueError.
    """
    found = dict.fromkeys(_WANTED, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in found and sample.labels.get("model_name", model) == model:
                value = float(sample.value)
                if math.isfinite(value):
                    found[sample.name] += value
    kv = min(1.0, max(0.0, found[KV_USAGE]))
    return max(0, round(found[WAITING])), max(0, round(found[RUNNING])), kv


class LinkFault:
    """A `network` fault on the link from the gateway to one replica (runtime.faults sets it, the forwarder and the
    scraper read it): each way of an attempt waits `latency_s` plus a uniform draw in [0, `jitter_s`) from the
    fault's own stream; a `partition` lets no connection through: an attempt fails as a connect failure after the
    connect timeout (a SYN that is never answered), a scrape is lost."""

    __slots__ = ("jitter_s", "label", "latency_s", "partition", "rng")

    def __init__(self, label: str, latency_s: float, jitter_s: float, partition: bool, rng: np.random.Generator):
        self.label = label
        self.latency_s = latency_s
        self.jitter_s = jitter_s
        self.partition = partition
        self.rng = rng

    def delay_s(self) -> float:
        """One way's added delay."""
        return self.latency_s + (float(self.rng.uniform(0.0, self.jitter_s)) if self.jitter_s > 0.0 else 0.0)


def next_tick(due: float, now: float, interval_s: float) -> float:
    """The scrape tick after `due` on its grid of `interval_s`: the next one, or, when the scrape that started at
    `due` overran it, the first tick not yet past (ticks are dropped, never run back to back)."""
    due += interval_s
    late = now - due
    if late > 0.0:
        due += math.ceil(late / interval_s) * interval_s
    return due


class Upstream:
    """One replica of one model behind the gateway."""

    __slots__ = (
        "base_url",
        "link",
        "metrics",
        "model",
        "name",
        "scrape_errors",
        "scrapes",
        "task",
    )

    def __init__(self, model: str, name: str, base_url: str, added_at: float) -> None:
        self.model = model
        self.name = name
        self.base_url = base_url.rstrip("/")
        # A replica that just passed its readiness test is idle: fresh zeros until the first scrape lands.
        self.metrics = ScrapedMetrics(0, 0, 0.0, added_at)
        self.scrape_errors = 0
        self.scrapes = 0
        self.task: asyncio.Task[None] | None = None
        self.link: LinkFault | None = None  # a network fault between the gateway and this replica

    def scraped_state(self) -> EndpointState:
        """What the router sees (the core marks outlier-ejected replicas unhealthy itself)."""
        m = self.metrics
        return EndpointState(
            name=self.name,
            model=self.model,
            waiting=m.waiting,
            running=m.running,
            kv_usage=m.kv_usage,
            scraped_at=m.scraped_at,
        )

    async def scrape(self, client: httpx.AsyncClient, clock: Callable[[], float]) -> bool:
        """One GET /metrics; True when the metrics were refreshed (a failure keeps the old, aging ones)."""
        link = self.link
        if link is not None:  # a network fault: delayed each way, or lost behind a partition
            if link.partition:
                self.scrape_errors += 1
                return False
            await asyncio.sleep(link.delay_s())
        try:
            resp = await client.get(f"{self.base_url}/metrics")
            resp.raise_for_status()
            waiting, running, kv = parse_vllm_metrics(resp.text, self.model)
        except (httpx.HTTPError, ValueError):
            self.scrape_errors += 1
            return False
        self.scrapes += 1
        self.metrics = ScrapedMetrics(waiting, running, kv, clock())
        return True

    async def scrape_forever(
        self,
        client: httpx.AsyncClient,
        interval_s: float,
        clock: Callable[[], float],
        on_scraped: Callable[[Upstream], None],
        stale: Container[str] = (),
    ) -> None:
        """Scrape on a fixed grid of `interval_s` (event-loop time) until cancelled, as llm-d's ticker does and as
        the simulator's view ages: a scrape's round trip does not stretch the period, and one that overran its tick
        is followed by the next tick on the grid, not at once. `on_scraped` runs after each refresh (the dispatch
        gate may open when the numbers change). While the model is in `stale` (a stale_metrics fault) the scrapes
        are lost: the router keeps seeing the last numbers, aging."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            if self.model in stale:
                self.scrape_errors += 1
            elif await self.scrape(client, clock):
                on_scraped(self)
            due = next_tick(due, loop.time(), interval_s)
            await asyncio.sleep(due - loop.time())

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def connect_timeout_s(request_timeout_s: float) -> float:
    """How long an attempt waits to connect to a replica."""
    return min(request_timeout_s, 5.0)


def forward_client(request_timeout_s: float, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """The client for requests to replicas: pooled keep-alive connections, per-attempt timeouts; `headers` (the
    run's replica secret) go with every request."""
    return httpx.AsyncClient(
        headers=headers,
        timeout=httpx.Timeout(request_timeout_s, connect=connect_timeout_s(request_timeout_s)),
        limits=httpx.Limits(max_connections=1024, max_keepalive_connections=128, keepalive_expiry=30.0),
        follow_redirects=False,
    )


def scrape_client(interval_s: float, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """The client for /metrics: short timeouts, so a stuck replica only ages its own metrics."""
    timeout = max(1.0, 10.0 * interval_s)
    return httpx.AsyncClient(
        headers=headers,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 1.0)),
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
    )
