"""The gateway's scrape loops: one task per replica GETting its /metrics every `scrape_interval_s`, one shared
client, each refresh reported to the gateway (which feeds it to the core as `scraped`: the dispatch gate may open
when the numbers change). A stuck replica only ages its own numbers (runtime.gateway.upstream)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import httpx

from runtime.gateway.upstream import LinkFault, Upstream, scrape_client


class Scrapers:
    """Starts and stops the scrape task of each replica; tasks run only between `start` and `aclose`."""

    def __init__(self, interval_s: float, clock: Callable[[], float], on_scraped: Callable[[Upstream], None]) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._on_scraped = on_scraped
        self._client: httpx.AsyncClient | None = None
        self.stale: set[str] = set()
        """Models whose scrapes are lost (stale_metrics faults, runtime.faults)."""
        self.links: dict[tuple[str, str], LinkFault] = {}
        """Network faults by (model, replica name): given to the replica's Upstream whenever it is (re)added."""

    def start(self, headers: dict[str, str], upstreams: Iterable[Upstream]) -> None:
        """Open the client (`headers`: the run's replica secret) and scrape each of `upstreams` (inside the loop)."""
        self._client = scrape_client(self.interval_s, headers)
        for u in upstreams:
            self.watch(u)

    def watch(self, u: Upstream) -> None:
        """Scrape `u` until it is forgotten (nothing before `start`: `start` picks it up)."""
        u.link = self.links.get((u.model, u.name))
        if self._client is None:
            return
        u.task = asyncio.get_running_loop().create_task(
            u.scrape_forever(self._client, self.interval_s, self._clock, self._on_scraped, self.stale),
            name=f"scrape-{u.model}-{u.name}",
        )

    @staticmethod
    def forget(u: Upstream) -> None:
        """Stop scraping `u` (replaced or removed); a scrape in progress is cancelled."""
        if u.task is not None:
            u.task.cancel()
            u.task = None

    async def aclose(self, upstreams: Iterable[Upstream]) -> None:
        """Stop the scrape tasks of `upstreams`, waiting for each to end, and close the client."""
        for u in upstreams:
            await u.stop()
        if self._client is not None:
            await self._client.aclose()
        self._client = None
