"""The gateway's behaviour with the policies library: the same policy objects as the simulator, the controller's
interface, retries / outlier ejection / breaker and fallback against failing fake replicas, priority under
overload with strict-priority flow control, the response cache, the activator, and draining."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import numpy as np
import pytest

from odhsim.rng import RngStreams
from policies.caching.response_cache import NullResponseCache, TieredResponseCache
from policies.controlplane.metrics import MetricsAccumulator
from policies.flowcontrol.config import FlowControl
from policies.flowcontrol.queues import StrictPriorityQueue
from policies.gateway.types import DONE
from policies.resilience.breaker import CircuitBreaker
from policies.resilience.outlier import OutlierDetector
from policies.resilience.retry import EnvoyRetry, LadderRetry
from policies.routing.config import build_router
from policies.routing.framework import Router, SchedulerProfile
from policies.routing.types import EndpointState, RouteRequest
from runtime.gateway.core import build_gateway
from runtime.gateway.route import GatewayError
from runtime.gateway.upstream import ScrapedMetrics, parse_vllm_metrics
from tests.runtime.gateway_fakes import (
    KEY_ALL,
    KEY_LOW,
    FakeReplica,
    ResetServer,
    auth,
    fake_replicas,
    make_keys,
    scenario,
    serve_gateway,
)

FAST_RETRY = {"base_interval_s": 0.001}


def _complete(url: str, body: dict[str, Any], key: str = KEY_ALL, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, headers={**auth(key), **headers}, timeout=15.0)


def _count(gateway: Any, name: str, **labels: Any) -> float:
    return gateway.metrics.value(name, labels)


# -- construction ------------------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_gateway_builds_the_policies_library_objects_from_the_scenario() -> None:
    sc = scenario(
        {
            "router": {"profile": "random"},
            "max_in_flight_per_replica": 3,
            "flow_control": {"queue": "strict-priority", "ttl_s": {"low": 5}},
            "resilience": {
                "breaker": {"type": "consecutive-failures", "params": {"failure_threshold": 7}},
                "outlier_detection": {"type": "envoy", "params": {"consecutive_5xx": 4}},
                "retry": {"type": "ladder", "params": {"fallback_after": 2}},
            },
            "response_cache": {"type": "tiered", "params": {"shared": False}},
        }
    )
    gw = build_gateway(sc, keys=make_keys())
    route = gw.routes["chat"]
    assert isinstance(route.router, Router) and isinstance(route.router, SchedulerProfile)
    assert isinstance(route.flow, FlowControl) and isinstance(route.flow.queue, StrictPriorityQueue)
    assert route.flow.ttl_for_class("low") == 5 and route.flow.ttl_for_class("critical") == float("inf")
    assert isinstance(route.breaker, CircuitBreaker) and route.breaker.failure_threshold == 7
    assert isinstance(route.outlier, OutlierDetector) and route.outlier.params.consecutive_5xx == 4
    assert isinstance(route.retry, LadderRetry) and route.retry.ladder.fallback_after == 2
    assert isinstance(gw.cache, TieredResponseCache) and gw.cache.shared is None
    assert route.limit == 3 and route.fallback is gw.routes["backup"]
    assert gw.routes["chat"].breaker is not gw.routes["backup"].breaker  # one breaker per model, as simulated

    # The same named stream as the simulator (`router.<model>` from RngStreams(seed)): the same random picks.
    twin = build_router(sc.gateway.router, RngStreams(sc.seed).get("router.chat"))
    eps = [EndpointState(f"r{i}", "chat") for i in range(5)]
    rr = RouteRequest(request_id=1, model="chat", prompt_tokens=4)
    assert [route.router.pick(0.0, rr, eps).endpoint for _ in range(30)] == [
        twin.pick(0.0, rr, eps).endpoint for _ in range(30)
    ]

    bare = build_gateway(scenario({"resilience": {"retry": {"type": "envoy-budget"}}}), keys=make_keys())
    r = bare.routes["chat"]
    assert r.flow is None and r.breaker is None and r.outlier is None and isinstance(r.retry, EnvoyRetry)
    assert isinstance(bare.cache, NullResponseCache)


@pytest.mark.timeout(30)
def test_controller_interface_and_scaling_metrics() -> None:
    now = [100.0]
    gw = build_gateway(scenario({"max_in_flight_per_replica": 4}), keys=make_keys(), clock=lambda: now[0])
    assert not gw.ready()  # backup and digits have no replica yet
    gw.add_replica("chat", "a", "http://127.0.0.1:1")
    gw.add_replica("chat", "b", "http://127.0.0.1:2/")
    gw.add_replica("backup", "k", "http://127.0.0.1:3")
    gw.add_replica("digits", "d", "http://127.0.0.1:4")
    assert gw.ready()  # "cold" scales from zero: the activator holds its requests
    route = gw.routes["chat"]
    assert route.upstreams["b"].base_url == "http://127.0.0.1:2"
    route.upstreams["a"].metrics = ScrapedMetrics(waiting=3, running=2, kv_usage=0.5, scraped_at=100.0)
    route.upstreams["b"].metrics = ScrapedMetrics(waiting=1, running=4, kv_usage=0.3, scraped_at=100.0)
    route.core.slots["a"].in_flight = route.core.slots["b"].in_flight = 4  # both full: arrivals queue
    for t in (101.0, 103.0, 104.0):
        now[0] = t
        gw.new_job("r", "chat", "normal", "acme", 5, np.zeros(0, np.int64))
    m = gw.scaling_metrics("chat", 110.0, ready=2, pending=1)
    assert (m.ready_replicas, m.pending_replicas) == (2, 1)
    assert m.arrivals_per_s == pytest.approx(3 / 10.0)
    assert m.in_flight == 8 + 3 and m.queue_len == 3 + 4  # held + queued; queued + the replicas' waiting
    assert m.kv_usage == pytest.approx(0.4) and m.waiting_per_replica == pytest.approx(2.0)
    assert m.seconds_since_last_request == pytest.approx(6.0)
    m2 = gw.scaling_metrics("chat", 115.0, ready=2, pending=0)
    assert m2.arrivals_per_s == 0.0 and m2.seconds_since_last_request == pytest.approx(11.0)
    assert gw.scaling_metrics("cold", 115.0, 0, 0).seconds_since_last_request == float("inf")

    assert gw.in_flight("chat", "a") == 4 and gw.in_flight("chat", "zzz") == 0
    gw.drain_replica("chat", "a")
    assert [u.name for u in route.ready] == ["b"] and gw.replicas("chat") == ["a", "b"]
    m3 = gw.scaling_metrics("chat", 116.0, ready=1, pending=0)
    assert m3.waiting_per_replica == 1.0 and m3.in_flight == 11  # the draining replica's requests still count
    gw.remove_replica("chat", "a")
    assert gw.replicas("chat") == ["b"]
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        gw.scaling_metrics("nope", 1.0, 0, 0)


@pytest.mark.timeout(30)
def test_load_snapshot_integrates_in_flight_over_time_for_an_autoscaled_model() -> None:
    """Knative's KPA averages concurrency over its tick: the live snapshot carries the in-flight integral
    (arrival to final answer, whatever the answer), as the simulator's does."""
    now = [100.0]
    gw = build_gateway(scenario({"max_in_flight_per_replica": 2}), keys=make_keys(), clock=lambda: now[0])
    gw.add_replica("cold", "c", "http://127.0.0.1:1")
    gw.add_replica("chat", "a", "http://127.0.0.1:2")
    acc = MetricsAccumulator(100.0)
    first = gw.load_snapshot("cold", 100.0, ready=1, pending=0)
    assert first.in_flight_s == 0.0
    acc.observe(first)
    a, b = (gw.new_job(f"r{i}", "cold", "normal", "acme", 5, np.zeros(0, np.int64)) for i in range(2))
    assert gw.in_flight("cold", "c") == 2
    now[0] = 101.0
    gw._run(gw.core.attempt_done(101.0, a.ticket, DONE))  # answered
    gw.end_job(b)  # dispatched, then the client went away (499)
    now[0] = 102.0
    snap = gw.load_snapshot("cold", 102.0, ready=1, pending=0)
    assert snap.in_flight_s == pytest.approx(2.0)  # 2 requests for 1 s, none for the next second
    assert acc.observe(snap).avg_concurrency == pytest.approx(1.0)
    assert snap.in_flight == 0.0  # a point sample at the tick sees nothing

    # Queued behind a full replica, then gone: counted while it waited; nothing leaks after the answers.
    c, d, e = (gw.new_job(f"q{i}", "cold", "normal", "acme", 5, np.zeros(0, np.int64)) for i in range(3))
    assert gw.queued("cold") == 1 and not e.inbox
    now[0] = 102.5
    gw.end_job(e)
    now[0] = 103.0
    gw._run(gw.core.attempt_done(103.0, c.ticket, DONE))
    gw._run(gw.core.attempt_done(103.0, d.ticket, DONE))
    now[0] = 104.0
    snap = gw.load_snapshot("cold", 104.0, ready=1, pending=0)
    assert snap.in_flight_s == pytest.approx(2.0 + 2 * 1.0 + 0.5)
    assert acc.observe(snap).avg_concurrency == pytest.approx(2.5 / 2)
    assert gw.routes["cold"].concurrency.level == 0 and not gw.jobs  # type: ignore[union-attr]
    assert gw.load_snapshot("chat", 104.0, 1, 0).in_flight_s is None  # no autoscaler reads chat's


@pytest.mark.timeout(10)
def test_parse_vllm_metrics() -> None:
    text = (
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{model_name="chat"} 3\n'
        'vllm:num_requests_waiting{model_name="other"} 50\n'
        'vllm:num_requests_running{model_name="chat"} 2.0\n'
        'vllm:kv_cache_usage_perc{model_name="chat"} 1.7\n'
        'vllm:prompt_tokens_total{model_name="chat"} 99\n'
    )
    assert parse_vllm_metrics(text, "chat") == (3, 2, 1.0)
    assert parse_vllm_metrics("", "chat") == (0, 0, 0.0)
    with pytest.raises(ValueError):
        parse_vllm_metrics("vllm:num_requests_waiting{ 3\n", "chat")


@pytest.mark.timeout(30)
def test_model_without_replicas_or_autoscaler_fails_fast() -> None:
    sc = scenario()
    models = [m.model_copy(update={"replicas": 0}) if m.name == "digits" else m for m in sc.models]
    gw = build_gateway(sc.model_copy(update={"models": models}), keys=make_keys())

    async def main() -> GatewayError:
        gw.start()
        try:
            job = gw.new_job("r", "digits", "normal", "t", 1, np.zeros(0, np.int64))
            with pytest.raises(GatewayError) as info:
                await gw.acquire(job)
            return info.value
        finally:
            await gw.aclose()

    err = asyncio.run(main())
    assert (err.status, err.reason) == (503, "no_replica")


@pytest.mark.timeout(30)
def test_rejected_model_fails_with_the_reason_or_uses_its_fallback() -> None:
    gw = build_gateway(scenario(), keys=make_keys())
    gw.add_replica("backup", "k", "http://127.0.0.1:9")
    gw.reject_model("chat", "model rejected: needs tp 2")

    async def main() -> tuple[GatewayError, str]:
        gw.start()
        try:
            job = gw.new_job("r", "digits", "normal", "t", 1, np.zeros(0, np.int64))
            gw.reject_model("digits", "model rejected: no live section")
            with pytest.raises(GatewayError) as info:
                await gw.acquire(job)
            chat = gw.new_job("r2", "chat", "normal", "t", 1, np.zeros(0, np.int64))
            upstream = await gw.acquire(chat)  # chat has no replica and never will: its fallback serves it
            return info.value, upstream.name
        finally:
            await gw.aclose()

    err, name = asyncio.run(main())
    assert (err.status, err.reason, err.message) == (503, "model_rejected", "model rejected: no live section")
    assert name == "k"
    assert not gw.routes["chat"].will_have_replicas
    assert gw.ready()  # rejected models never get a replica, so they do not hold readiness back


# -- failures, retries, outlier detection, breaker, fallback ----------------------------------------------------
@pytest.mark.timeout(60)
def test_failing_replica_is_retried_on_the_other_and_ejected() -> None:
    good, bad = FakeReplica("chat", "good"), FakeReplica("chat", "bad", fail="500")
    resilience = {
        "outlier_detection": {"type": "envoy", "params": {"consecutive_5xx": 2, "max_ejection_percent": 50}},
        "retry": {"type": "envoy-budget", "params": {"max_retries": 2, **FAST_RETRY}},
    }
    sc = scenario({"router": {"profile": "round-robin"}, "resilience": resilience})
    failures: list[tuple[str, str, str]] = []
    with (
        fake_replicas(good, bad) as (sg, sb),
        serve_gateway(sc, {"chat": [("good", sg.url), ("bad", sb.url)]}) as (gw, srv),
    ):
        gw.on_replica_failure = lambda m, n, why: failures.append((m, n, why))
        answers = [_complete(srv.url, {"model": "chat", "prompt": f"p{i}", "max_tokens": 3}) for i in range(8)]
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert [r.status_code for r in answers] == [200] * 8
        assert {r.headers["x-odhsim-replica"] for r in answers} == {"good"}
        assert good.hits == 8  # each request answered exactly once, by the healthy replica
        assert bad.hits == 2  # two consecutive 5xx eject it; it is never picked again
        assert gw.routes["chat"].outlier.is_ejected(0.0, "bad")
        assert 'odhsim_gateway_replicas_ejected{model="chat"} 1.0' in metrics
        assert _count(gw, "odhsim_gateway_retries_total", model="chat") == 2
        assert _count(gw, "odhsim_gateway_upstream_failures_total", model="chat", kind="5xx") == 2
        assert _count(gw, "odhsim_gateway_requests_total", model="chat", status=200, reason="ok") == 8
        assert [f[:2] for f in failures] == [("chat", "bad")] * 2 and failures[0][2].startswith("5xx")
        assert gw.in_flight("chat", "good") == 0 and gw.in_flight("chat", "bad") == 0


@pytest.mark.timeout(60)
def test_reset_and_stopped_replicas_are_retried() -> None:
    good, gone = FakeReplica("chat", "good"), FakeReplica("chat", "gone")
    sc = scenario(
        {
            "router": {"profile": "round-robin"},
            "resilience": {"retry": {"type": "envoy-budget", "params": {"max_retries": 3, **FAST_RETRY}}},
        }
    )
    failures: list[tuple[str, str, str]] = []
    with ResetServer() as reset, fake_replicas(good, gone) as (sg, sgone):
        sgone.stop()  # a replica whose process has stopped: connection refused
        ups = {"chat": [("good", sg.url), ("reset", reset.url), ("gone", sgone.url)]}
        with serve_gateway(sc, ups) as (gw, srv):
            gw.on_replica_failure = lambda m, n, why: failures.append((m, n, why))
            answers = [_complete(srv.url, {"model": "chat", "prompt": f"q{i}", "max_tokens": 2}) for i in range(6)]
            assert [r.status_code for r in answers] == [200] * 6
            assert good.hits == 6 and gone.hits == 0 and reset.resets >= 1
            kinds = {(name, why.split(":")[0]) for _, name, why in failures}
            assert ("reset", "reset") in kinds and ("gone", "connect-failure") in kinds
            assert _count(gw, "odhsim_gateway_retries_total", model="chat") == len(failures)


@pytest.mark.timeout(60)
def test_breaker_opens_and_requests_go_to_the_fallback_model() -> None:
    a, b = FakeReplica("chat", "a", fail="500"), FakeReplica("chat", "b", fail="500")
    backup = FakeReplica("backup", "bk")
    breaker = {"type": "consecutive-failures", "params": {"failure_threshold": 2, "cooldown_s": 60}}
    sc = scenario({"resilience": {"breaker": breaker}})
    with fake_replicas(a, b, backup) as (sa, sb, sk):
        ups = {"chat": [("a", sa.url), ("b", sb.url)], "backup": [("bk", sk.url)]}
        with serve_gateway(sc, ups) as (gw, srv):
            body = {"model": "chat", "prompt": "hello", "max_tokens": 2}
            first = [_complete(srv.url, body) for _ in range(2)]
            assert [r.status_code for r in first] == [502, 502]  # no retry policy: the failure is the answer
            assert first[0].json()["error"]["code"] == "upstream_failed"
            assert 'odhsim_gateway_breaker_open{model="chat"} 1.0' in httpx.get(f"{srv.url}/metrics").text
            moved = _complete(srv.url, body)
            assert moved.status_code == 200, moved.text
            assert moved.headers["x-odhsim-model"] == "backup" and moved.headers["x-odhsim-replica"] == "bk"
            assert backup.bodies[-1]["model"] == "backup" and a.hits + b.hits == 2

            backup.fail = "500"  # now the fallback fails too: its breaker opens, and nothing is left
            direct = {"model": "backup", "prompt": "x", "max_tokens": 2}
            assert [_complete(srv.url, direct).status_code for _ in range(2)] == [502, 502]
            for req in (direct, body):
                shut = _complete(srv.url, req)
                assert shut.status_code == 503 and shut.json()["error"]["code"] == "breaker_open"
            assert _count(gw, "odhsim_gateway_requests_total", model="chat", status=503, reason="breaker_open") == 1


@pytest.mark.timeout(60)
def test_ladder_retry_tries_the_same_model_then_the_fallback() -> None:
    a, b = FakeReplica("chat", "a", fail="500"), FakeReplica("chat", "b", fail="500")
    backup = FakeReplica("backup", "bk")
    retry = {"type": "ladder", "params": {"retry_same_after": 1, "fallback_after": 2, **FAST_RETRY}}
    sc = scenario({"resilience": {"retry": retry}})
    with fake_replicas(a, b, backup) as (sa, sb, sk):
        ups = {"chat": [("a", sa.url), ("b", sb.url)], "backup": [("bk", sk.url)]}
        with serve_gateway(sc, ups) as (gw, srv):
            resp = _complete(srv.url, {"model": "chat", "prompt": "hi", "max_tokens": 2})
            assert resp.status_code == 200 and resp.headers["x-odhsim-model"] == "backup"
            assert (a.hits, b.hits, backup.hits) == (1, 1, 1)  # the retry went to the other replica
            assert _count(gw, "odhsim_gateway_retries_total", model="chat") == 2


@pytest.mark.timeout(60)
def test_stream_that_fails_before_its_first_byte_is_retried_and_mid_stream_ends_with_an_error_event() -> None:
    broken, fine = FakeReplica("chat", "x", fail="500"), FakeReplica("chat", "y")
    dying = FakeReplica("backup", "m", fail="midstream", token_delay_s=0.01)
    sc = scenario(
        {
            "router": {"profile": "round-robin"},
            "resilience": {"retry": {"type": "envoy-budget", "params": {"max_retries": 1, **FAST_RETRY}}},
        }
    )
    with fake_replicas(broken, fine, dying) as (sx, sy, sm):
        ups = {"chat": [("x", sx.url), ("y", sy.url)], "backup": [("m", sm.url)]}
        with serve_gateway(sc, ups) as (gw, srv):
            for _ in range(2):
                body = {"model": "chat", "prompt": "s", "max_tokens": 4, "stream": True}
                with httpx.stream("POST", f"{srv.url}/v1/completions", json=body, headers=auth(), timeout=10) as r:
                    lines = [ln for ln in r.iter_lines() if ln]
                assert r.status_code == 200 and r.headers["x-odhsim-replica"] == "y"
                assert len(lines) == 5 and lines[-1] == "data: [DONE]"
            assert broken.hits >= 1 and fine.hits == 2

            body = {"model": "backup", "prompt": "s", "max_tokens": 6, "stream": True}
            with httpx.stream("POST", f"{srv.url}/v1/completions", json=body, headers=auth(), timeout=10) as r:
                lines = [ln for ln in r.iter_lines() if ln]
            assert r.status_code == 200  # headers were sent before the replica died
            assert len(lines) == 4 and '"code": "stream_aborted"' in lines[2] and lines[3] == "data: [DONE]"
            assert dying.hits == 1  # bytes already went out: never retried
            assert _count(gw, "odhsim_gateway_requests_total", model="backup", status=502, reason="stream_aborted") == 1
            assert gw.in_flight("backup", "m") == 0 and gw.in_flight("chat", "y") == 0


# -- priority under overload ------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_critical_requests_stay_fast_while_low_ones_queue_or_are_shed() -> None:
    slow = FakeReplica("chat", "slow", delay_s=0.3)
    flow = {
        "queue": {"type": "strict-priority", "params": {"capacity": {"low": 4}}},
        "gate_dispatch_on_saturation": False,
        "ttl_s": {"low": 1.5},
    }
    sc = scenario({"max_in_flight_per_replica": 1, "flow_control": flow})

    async def send(client: httpx.AsyncClient, key: str, i: int) -> tuple[int, float, str]:
        t0 = time.perf_counter()
        # The low-priority key asks for critical: a header may lower the key's class, never raise it.
        headers = {**auth(key), "x-odhsim-priority": "critical"}
        r = await client.post(
            "/v1/completions", json={"model": "chat", "prompt": f"{i}", "max_tokens": 1}, headers=headers
        )
        return r.status_code, time.perf_counter() - t0, r.headers.get("x-odhsim-reason", "ok")

    async def main(url: str) -> tuple[list[tuple[int, float, str]], list[tuple[int, float, str]]]:
        async with httpx.AsyncClient(base_url=url, timeout=15.0) as client:
            lows = [asyncio.create_task(send(client, KEY_LOW, i)) for i in range(8)]
            await asyncio.sleep(0.1)
            crits = [asyncio.create_task(send(client, KEY_ALL, 100 + i)) for i in range(2)]
            return await asyncio.gather(*lows), await asyncio.gather(*crits)

    with fake_replicas(slow) as (s,), serve_gateway(sc, {"chat": [("slow", s.url)]}) as (gw, srv):
        lows, crits = asyncio.run(main(srv.url))
        assert gw.queued("chat") == 0
    assert [c[0] for c in crits] == [200, 200]
    worst_critical = max(c[1] for c in crits)
    assert worst_critical < 1.5  # behind the one request in service and the other critical one (0.3 s each)
    statuses = sorted(r[0] for r in lows)
    assert statuses.count(429) == 3 and {r[2] for r in lows if r[0] == 429} == {"queue_full"}
    timed_out = [r for r in lows if r[0] == 503]
    assert len(timed_out) >= 1 and {r[2] for r in timed_out} == {"queue_ttl"}
    served_late = sorted(r[1] for r in lows if r[0] == 200)[1:]  # all but the one dispatched at once
    assert served_late and min(served_late) > worst_critical


# -- response cache, activator, drain ---------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_exact_repeat_is_answered_from_the_response_cache() -> None:
    r = FakeReplica("chat", "a")
    sc = scenario({"response_cache": {"type": "tiered", "params": {"shared": False}}})
    with fake_replicas(r) as (s,), serve_gateway(sc, {"chat": [("a", s.url)]}) as (gw, srv):
        greedy = {"model": "chat", "prompt": "the same prompt " * 4, "max_tokens": 5, "temperature": 0}
        first = _complete(srv.url, greedy)
        again = _complete(srv.url, greedy)
        assert first.headers["x-odhsim-cache"] == "miss" and again.headers["x-odhsim-cache"] == "hit"
        fresh_id = {**again.json(), "id": first.json()["id"]}  # a hit is the same answer under a new id
        assert fresh_id == first.json() and again.json()["id"] != first.json()["id"] and r.hits == 1
        assert _count(gw, "odhsim_gateway_cache_hits_total", model="chat", tier="local") == 1
        assert _complete(srv.url, {**greedy, "max_tokens": 6}).headers["x-odhsim-cache"] == "miss"
        assert _complete(srv.url, {**greedy, "prompt": greedy["prompt"] + "!"}).headers["x-odhsim-cache"] == "miss"
        assert r.hits == 3
        sampled = {"model": "chat", "prompt": "p", "max_tokens": 2, "temperature": 0.8}
        assert "x-odhsim-cache" not in _complete(srv.url, sampled).headers  # not deterministic: never cached
        _complete(srv.url, sampled)
        assert r.hits == 5
        seeded = {**sampled, "seed": 3}
        assert [_complete(srv.url, seeded).headers["x-odhsim-cache"] for _ in range(2)] == ["miss", "hit"]
        with httpx.stream("POST", f"{srv.url}/v1/completions", json={**greedy, "stream": True}, headers=auth()) as s2:
            assert "x-odhsim-cache" not in s2.headers and s2.read()
        assert r.hits == 7


@pytest.mark.timeout(60)
def test_activator_holds_a_cold_request_until_a_replica_is_added() -> None:
    r = FakeReplica("cold", "c1")
    with fake_replicas(r) as (s,), serve_gateway(scenario(), {}) as (gw, srv):
        cold_calls: list[str] = []

        def on_cold(model: str) -> None:  # the controller: start a replica, add it when it is ready
            cold_calls.append(model)
            asyncio.get_running_loop().call_later(0.4, gw.add_replica, model, "c1", s.url)

        gw.on_cold_request = on_cold
        assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 503  # chat has no replica at all
        t0 = time.perf_counter()
        resp = _complete(srv.url, {"model": "cold", "prompt": "wake up", "max_tokens": 2})
        assert resp.status_code == 200 and resp.headers["x-odhsim-replica"] == "c1"
        assert time.perf_counter() - t0 >= 0.35 and cold_calls == ["cold"]
        assert srv.call(gw.scaling_metrics, "cold", time.monotonic(), 1, 0).seconds_since_last_request < 5


@pytest.mark.timeout(60)
def test_draining_replica_gets_no_new_requests_and_finishes_what_it_holds() -> None:
    a, b = FakeReplica("chat", "a", delay_s=0.5), FakeReplica("chat", "b")
    sc = scenario({"router": {"profile": "round-robin"}})
    with fake_replicas(a, b) as (sa, sb), serve_gateway(sc, {"chat": [("a", sa.url)]}) as (gw, srv):

        async def main() -> tuple[int, list[str]]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as c:
                held = asyncio.create_task(
                    c.post("/v1/completions", json={"model": "chat", "prompt": "x"}, headers=auth())
                )
                while srv.call(gw.in_flight, "chat", "a") == 0:
                    await asyncio.sleep(0.02)
                srv.call(gw.add_replica, "chat", "b", sb.url)
                srv.call(gw.drain_replica, "chat", "a")
                later = [
                    (await c.post("/v1/completions", json={"model": "chat", "prompt": "y"}, headers=auth()))
                    for _ in range(3)
                ]
                first = await held
                return first.status_code, [r.headers["x-odhsim-replica"] for r in later]

        status, where = asyncio.run(main())
        assert status == 200 and where == ["b", "b", "b"]
        assert srv.call(gw.in_flight, "chat", "a") == 0
        srv.call(gw.remove_replica, "chat", "a")
        assert srv.call(gw.replicas, "chat") == ["b"]


@pytest.mark.timeout(30)
def test_serve_refuses_a_canary_naming_the_field() -> None:
    from odhsim.scenario.checks import live_refusals
    from runtime.serve import ServeError, serve

    canary = scenario()
    models = [m.model_copy(update={"canary": None}) for m in canary.models]
    assert live_refusals(canary.model_copy(update={"models": models})) == []
    doc = canary.model_dump(mode="json", exclude_none=True)
    doc["models"][0]["canary"] = {"version": "v2", "traffic_percent": 10}
    with pytest.raises(ServeError, match=r"models\.0\.canary \(model 'chat', version v2\): canary: the live engine"):
        serve(type(canary).model_validate(doc))


@pytest.mark.timeout(60)
def test_session_affinity_live_sends_a_session_back_to_the_replica_that_answered_it() -> None:
    a, b = FakeReplica("chat", "a"), FakeReplica("chat", "b")
    router = {
        "plugins": [{"name": "s", "type": "session-affinity-scorer"}, {"name": "p", "type": "max-score-picker"}],
        "filters": [],
        "scorers": [{"plugin": "s", "weight": 1.0}],
        "picker": "p",
    }
    sc = scenario({"router": router})
    with fake_replicas(a, b) as (sa, sb), serve_gateway(sc, {"chat": [("a", sa.url), ("b", sb.url)]}) as (_, srv):
        body = {"model": "chat", "prompt": "hi", "max_tokens": 2}
        first = _complete(srv.url, body, **{"x-session-id": "conv-1"}).headers["x-odhsim-replica"]
        again = [_complete(srv.url, body, **{"x-session-id": "conv-1"}).headers["x-odhsim-replica"] for _ in range(8)]
        assert again == [first] * 8
        anonymous = {_complete(srv.url, body).headers["x-odhsim-replica"] for _ in range(12)}
        assert anonymous == {"a", "b"}  # without a session: a tie, broken at random
