"""Shared builders for the routing-policy tests (endpoints, requests, seeded generators, a fixed-score plugin)."""

from __future__ import annotations

import numpy as np

from policies.routing.types import NO_SESSION, EndpointState, RouteRequest


def eps(*waiting: int, running: tuple[int, ...] = (), kv: tuple[float, ...] = ()) -> list[EndpointState]:
    return [
        EndpointState(
            name=f"e{i}",
            model="m",
            waiting=w,
            running=running[i] if running else 0,
            kv_usage=kv[i] if kv else 0.0,
        )
        for i, w in enumerate(waiting)
    ]


def req(
    rid: int = 1,
    blocks: list[int] | None = None,
    prompt: int = 100,
    session: int = NO_SESSION,
    adapter: str | None = None,
) -> RouteRequest:
    ids = np.asarray(blocks if blocks is not None else [], dtype=np.int64)
    return RouteRequest(
        request_id=rid, model="m", prompt_tokens=prompt, block_ids=ids, session=session, adapter=adapter
    )


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


class Fixed:
    """A scorer returning fixed raw scores (possibly out of range) and counting dispatches."""

    def __init__(self, scores: list[float], name: str = "fixed") -> None:
        self.scores, self.name, self.dispatched = scores, name, 0

    def score(self, now: float, request: RouteRequest, endpoints: list[EndpointState]) -> list[float]:
        return self.scores[: len(endpoints)]

    def filter(self, now: float, request: RouteRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        return endpoints

    def on_dispatch(self, now: float, request: RouteRequest, endpoint: str) -> None:
        self.dispatched += 1


def test_builders_make_aligned_named_endpoints() -> None:
    endpoints = eps(3, 0, running=(1, 2), kv=(0.5, 0.25))
    assert [(e.name, e.waiting, e.running, e.kv_usage) for e in endpoints] == [("e0", 3, 1, 0.5), ("e1", 0, 2, 0.25)]
    r = req(7, blocks=[1, 2], adapter="a")
    assert r.block_ids.tolist() == [1, 2] and r.adapter == "a" and req().adapter is None
    assert EndpointState("x", "m").active_adapters == frozenset() and EndpointState("x", "m").max_adapters == 0
