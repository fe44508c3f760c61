"""The pure gateway core (policies/gateway): decisions from scripted events, no engine involved."""

from __future__ import annotations

import numpy as np
import pytest

from policies.gateway import Activate, Dispatch, GatewayCore, Respond, RouteState, Ticket, WakeAt
from policies.gateway.core import NO_REPLICAS
from policies.gateway.types import REQUEST_FAULT
from policies.resilience.breaker import CircuitBreaker
from policies.resilience.retry import EnvoyRetry, RetryBudget, RetryPolicy
from policies.routing.types import EndpointState, RouteRequest, RoutingDecision


class Replica:
    def __init__(self, name: str) -> None:
        self.name = name

    def scraped_state(self) -> EndpointState:
        return EndpointState(self.name, "m")


class FirstRouter:
    """Picks the first healthy candidate; remembers the hooks it got."""

    def __init__(self) -> None:
        self.seen: list[RouteRequest] = []
        self.completed: list[tuple[str, float, bool]] = []

    def pick(self, now: float, rr: RouteRequest, states: list[EndpointState]) -> RoutingDecision:
        self.seen.append(rr)
        healthy = [s for s in states if s.healthy]
        return RoutingDecision(healthy[0].name if healthy else None, "none healthy")

    def on_dispatch(self, now: float, rr: RouteRequest, endpoint: str) -> None:
        pass

    def on_complete(self, now: float, rr: RouteRequest, endpoint: str, latency_s: float, ok: bool) -> None:
        self.completed.append((endpoint, latency_s, ok))


def core(*names: str, scales: bool = True, **parts: object) -> tuple[GatewayCore, RouteState, FirstRouter]:
    router = FirstRouter()
    route = RouteState(0, "m", "v1", router)  # type: ignore[arg-type]
    route.scales = scales
    for key, value in parts.items():
        setattr(route, key, value)
    for n in names:
        route.add(n, Replica(n))
    return GatewayCore([route], scrape_interval_s=0.05, block_tokens=16), route, router


def ticket(i: int, now: float = 0.0, session: int = -1) -> Ticket:
    return Ticket(i, 0, 2, "acme", now, 100, np.zeros(0, np.int64), session=session)


def only(actions: list[object], cls: type) -> list:
    return [a for a in actions if isinstance(a, cls)]


def test_dispatch_then_success_feeds_the_attempt_latency_and_the_session() -> None:
    gw, route, router = core("r0", "r1")
    t = ticket(1, now=0.0, session=7)
    [d] = gw.arrive(2.0, t)  # arrived at 0 (e.g. a cache lookup before), dispatched at 2
    assert (d.endpoint, d.attempt, d.model, d.fallback) == ("r0", 1, "m", False)
    assert router.seen[0].session == 7 and router.seen[0].tenant == "acme"
    [r] = gw.attempt_done(5.0, t, "ok")
    assert (r.status, r.reason) == ("ok", "")
    assert router.completed == [("r0", 3.0, True)]  # dispatch -> finish, not arrival -> finish
    assert route.slots["r0"].in_flight == 0


def test_request_fault_is_answered_and_not_counted_against_the_replica() -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    gw, _, router = core("r0", breaker=breaker)
    t = ticket(1)
    gw.arrive(0.0, t)
    [r] = gw.attempt_done(1.0, t, REQUEST_FAULT, "prompt too long")
    assert (r.status, r.reason, r.detail) == ("failed", "request_fault", "prompt too long")
    assert breaker.state(1.0) == "closed"
    assert router.completed == [("r0", 1.0, True)]


def test_5xx_is_retried_on_another_replica_then_gives_up() -> None:
    rng = np.random.default_rng(0)
    retry = EnvoyRetry(RetryPolicy(1, ("5xx",), rng=rng), RetryBudget())
    gw, route, _ = core("r0", "r1", retry=retry)
    t = ticket(1)
    gw.arrive(0.0, t)
    out = gw.attempt_done(1.0, t, "5xx", "HTTP 500")
    [wake] = only(out, WakeAt)  # Envoy's jittered back-off before the retry
    assert wake.kind == "backoff" and 0.0 <= wake.after_s < 0.025
    [d] = only(gw.timer(1.0 + wake.after_s, wake.kind, wake.target), Dispatch)
    assert (d.endpoint, d.attempt) == ("r1", 2)  # the replica that failed it is avoided
    assert route.retries_in_flight == 1
    [r] = only(gw.attempt_done(2.0, t, "5xx", "HTTP 500"), Respond)
    assert (r.status, r.reason) == ("failed", "upstream_failed")
    assert "retries exhausted" in r.detail
    assert route.retries_in_flight == 0


def test_connect_failure_not_in_retry_on_fails_at_once() -> None:
    retry = EnvoyRetry(RetryPolicy(3, ("gateway-error",), rng=np.random.default_rng(0)), RetryBudget())
    gw, _, _ = core("r0", retry=retry)
    t = ticket(1)
    gw.arrive(0.0, t)
    [r] = only(gw.attempt_done(1.0, t, "connect-failure"), Respond)
    assert r.reason == "upstream_failed" and "not in retry_on" in r.detail


def test_activator_holds_then_times_out() -> None:
    gw, route, _ = core()
    t = ticket(1)
    out = gw.arrive(0.0, t)
    assert [type(a) for a in out] == [Activate, WakeAt]
    assert out[1].after_s == 300.0 and route.queued() == 1
    [r] = gw.timer(300.0, out[1].kind, out[1].target)
    assert (r.status, r.reason) == ("failed", "activator_timeout")
    assert route.queued() == 0


def test_activator_hands_the_request_to_the_first_ready_replica() -> None:
    gw, route, _ = core()
    t = ticket(1)
    gw.arrive(0.0, t)
    [d] = gw.endpoint_added(10.0, route, "r0", Replica("r0"))
    assert d.endpoint == "r0"
    assert gw.timer(300.0, "activator", t) == []  # dispatched: the timeout does nothing


def test_no_replica_and_nothing_to_bring_one_fails_with_the_reason() -> None:
    gw, _, _ = core(scales=False)
    [r] = gw.arrive(0.0, ticket(1))
    assert (r.status, r.reason, r.detail) == ("failed", "no_replica", NO_REPLICAS)


def test_open_breaker_sends_to_the_fallback_model() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=30.0)
    gw, route, _ = core("r0", breaker=breaker)
    backup = RouteState(1, "small", "v1", FirstRouter())  # type: ignore[arg-type]
    backup.add("s0", Replica("s0"))
    gw.models.append(backup)
    route.fallback = backup
    t = ticket(1)
    gw.arrive(0.0, t)
    gw.attempt_done(1.0, t, "5xx")  # no retry policy: fails, and opens the breaker
    assert breaker.state(1.0) == "open"
    t2 = ticket(2, now=2.0)
    [d] = gw.arrive(2.0, t2)
    assert (d.endpoint, d.model, d.fallback) == ("s0", "small", True)
    assert t2.fallback


@pytest.mark.parametrize("limit, dispatched", [(None, 3), (1, 2), (2, 3)])
def test_max_in_flight_per_replica_holds_the_rest_in_the_fifo(limit: int | None, dispatched: int) -> None:
    gw, route, _ = core("r0", "r1", limit=limit)
    out = [a for i in range(3) for a in gw.arrive(0.0, ticket(i))]
    assert len(only(out, Dispatch)) == dispatched
    assert route.queued() == 3 - dispatched


def test_panic_routing_when_every_replica_is_ejected() -> None:
    class AllEjected:
        interval_s = 10.0

        def ejected(self, now: float) -> set[str]:
            return {"r0", "r1"}

        def set_hosts(self, hosts: list[str]) -> None:
            pass

    gw, _, _ = core("r0", "r1", outlier=AllEjected())
    [d] = gw.arrive(0.0, ticket(1))
    assert d.endpoint == "r0"  # every host ejected: balance over all rather than fail
