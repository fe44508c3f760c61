"""bench-live's priority section, its pure parts: the open-loop plan, the per-class figures, the error mapping, the
scenario it serves, the table, and its HTTP/1.1 client against an in-process asyncio server."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from odhsim.scenario.load import load_scenario
from runtime.bench_priority import (
    PHASES,
    PRIORITY_KEYS,
    Answer,
    Phase,
    StreamClient,
    class_figures,
    error_outcome,
    open_loop_plan,
    phase_figures,
    priority_scenario,
    priority_tables,
)
from runtime.gateway.auth import KeyStore


# -- the plan ----------------------------------------------------------------------------------------------------
def test_plan_phases_rates_and_shares() -> None:
    phases = [Phase("a", 10.0, 0.5, 0.5), Phase("gap", 2.0, 0.0, 0.0), Phase("b", 10.0, 0.5, 1.5)]
    plan = open_loop_plan(phases, capacity_rps=100.0, seed=1)
    a = [p for p in plan if p.phase == "a"]
    b = [p for p in plan if p.phase == "b"]
    assert not [p for p in plan if p.phase == "gap"]
    assert all(0 <= p.at_s < 10 for p in a) and all(12 <= p.at_s < 22 for p in b)
    assert [p.at_s for p in plan] == sorted(p.at_s for p in plan)
    assert len(a) == pytest.approx(1000, rel=0.1) and len(b) == pytest.approx(2000, rel=0.1)
    # 50/50 alternates low, critical, ...; a share of 1/4 puts one critical in every 4 requests
    assert [p.priority for p in a[:4]] == ["low", "critical", "low", "critical"]
    assert sum(p.priority == "critical" for p in b) == len(b) // 4
    assert all(sum(p.priority == "critical" for p in b[i : i + 4]) == 1 for i in range(0, len(b) - 3, 4))


def test_plan_is_capped_and_scaled_alike() -> None:
    phases = [Phase("a", 10.0, 1.0, 1.0), Phase("b", 10.0, 1.0, 1.0)]
    plan = open_loop_plan(phases, capacity_rps=100.0, seed=2, max_requests=1000)  # 4,000 expected
    assert len(plan) <= 1000
    a = sum(p.phase == "a" for p in plan)
    assert a == pytest.approx(len(plan) - a, rel=0.15)  # both phases scaled, not the second one cut off


def test_plan_is_deterministic() -> None:
    assert open_loop_plan(PHASES, 50.0, seed=3) == open_loop_plan(PHASES, 50.0, seed=3)
    assert open_loop_plan(PHASES, 50.0, seed=3) != open_loop_plan(PHASES, 50.0, seed=4)


# -- figures -----------------------------------------------------------------------------------------------------
def _answer(priority: str, status: str, ttft: float, e2e: float, reason: str = "", at: float = 0.0) -> Answer:
    return Answer("overload", priority, status, reason, ttft, e2e, 0.0, at)


def test_class_figures_counts_reasons_and_percentiles() -> None:
    answers = [_answer("critical", "ok", t / 100, t / 100 + 0.5) for t in range(1, 101)]
    answers += [
        _answer("critical", "shed", math.nan, 0.01, "429 admission"),
        _answer("critical", "shed", math.nan, 0.01, "429 admission"),
        _answer("critical", "timeout", math.nan, 4.0, "503 queue_ttl"),
        _answer("critical", "failed", math.nan, 0.1, "502 upstream_failed"),
    ]
    f = class_figures(answers, ttft_slo_s=0.5)
    assert (f["requests"], f["ok"], f["shed"], f["timeout"], f["failed"]) == (104, 100, 2, 1, 1)
    assert f["reasons"] == {"429 admission": 2, "503 queue_ttl": 1, "502 upstream_failed": 1}
    assert next(iter(f["reasons"])) == "429 admission"  # most common first
    assert f["ttft_p50_s"] == pytest.approx(0.505)
    assert f["e2e_p99_s"] == pytest.approx(1.4901)
    assert f["ttft_within_slo"] == pytest.approx(0.5)
    json.dumps(f)  # the figures dict goes to JSON as is


def test_class_figures_of_nothing_answered() -> None:
    f = class_figures([_answer("low", "shed", math.nan, 0.0, "429 admission")])
    assert f["ok"] == 0 and math.isnan(f["ttft_p50_s"]) and "ttft_within_slo" not in f


def test_phase_figures_count_answers_inside_the_phase() -> None:
    answers = [
        _answer("critical", "ok", 0.1, 0.5, at=10.0),  # ends at 10.5: inside [10, 20)
        _answer("low", "ok", 0.1, 12.0, at=11.0),  # ends at 23: after the phase
        _answer("low", "shed", math.nan, 0.01, "429 admission", at=12.0),
        _answer("critical", "ok", 0.1, 1.0, at=18.0),
    ]
    f = phase_figures(answers, start_s=10.0, duration_s=10.0, capacity_rps=2.0)
    assert f["offered_x"] == pytest.approx(4 / 10 / 2)
    assert f["critical_x"] == pytest.approx(2 / 10 / 2)
    assert f["served_rps"] == pytest.approx(0.2)
    assert f["critical"]["ok"] == 2 and f["low"]["shed"] == 1


@pytest.mark.parametrize(
    ("code", "body", "header", "want"),
    [
        (429, {"error": {"code": "admission", "message": "shed"}}, "admission", ("shed", "429 admission")),
        (503, {"error": {"code": "queue_ttl", "message": "queued"}}, None, ("timeout", "503 queue_ttl")),
        (503, {"error": {"code": "request_timeout"}}, None, ("timeout", "503 request_timeout")),
        (502, {"error": {"code": "upstream_failed"}}, None, ("failed", "502 upstream_failed")),
        (500, "not json", "internal", ("failed", "500 internal")),
        (504, {"unexpected": 1}, None, ("timeout", "504")),
    ],
)
def test_error_outcome(code: int, body: Any, header: str | None, want: tuple[str, str]) -> None:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    assert error_outcome(code, raw, header) == want


# -- the scenario ------------------------------------------------------------------------------------------------
def test_priority_scenario_loads_with_strict_priority_and_shedding(tmp_path: Path) -> None:
    doc = priority_scenario()
    path = tmp_path / "priority.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    sc = load_scenario(path)
    (chat,) = sc.models
    slots = chat.live.max_num_seqs
    assert chat.replicas == 1 and chat.autoscaling is None
    gw = sc.gateway
    assert gw.max_in_flight_per_replica == slots
    fc = gw.flow_control
    assert fc.queue.type == "strict-priority" and fc.admission.type == "shed-sheddable"
    assert fc.saturation.type == "concurrency" and fc.saturation.params == {"max_concurrency": slots}
    assert fc.gate_dispatch_on_saturation
    assert fc.ttl_for_class("low") < fc.ttl_for_class("critical")
    assert sc.slo_for("critical").ttft_s == 0.5
    keys = KeyStore.from_env(",".join(f"{k}:{c}:{c}" for c, k in PRIORITY_KEYS.items()))
    assert {c: keys.lookup(k).priority for c, k in PRIORITY_KEYS.items()} == {"critical": "critical", "low": "low"}


# -- the table ---------------------------------------------------------------------------------------------------
def test_priority_table_renders_every_phase_and_class() -> None:
    answers = [_answer("critical", "ok", 0.05, 0.1, at=1.0), _answer("low", "shed", math.nan, 0.01, "429 admission")]
    figs = phase_figures(answers, 0.0, 5.0, 10.0)
    p = {"replicas": 1, "slots_per_replica": 16, "capacity_rps": 10.0, "critical_ttft_slo_s": 0.5, "requests": 2,
         "baseline": figs, "overload": figs}  # fmt: skip
    tables = priority_tables(p)
    assert len(tables) == 2
    console = Console(record=True, width=80)
    for table in tables:
        console.print(table)
    text = console.export_text()
    assert "baseline" in text and "overload" in text and "overload_50_50" not in text
    assert "429 admission: 1" in text and "TTFT within SLO" in text


# -- the client --------------------------------------------------------------------------------------------------
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
ERROR_HEAD = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
    b"x-odhsim-reason: %s\r\ncontent-length: %d\r\n\r\n"
)
SSE = [b'data: {"choices": [{"text": "a"}]}\n\n', b'data: {"choices": [{"text": "b"}]}\n\n', b"data: [DONE]\n\n"]


class FakeGateway:
    """An asyncio server answering POSTs as the gateway does: a chunked SSE stream, or a sized JSON error; it can
    close a connection after one answer to check the client's retry on a stale kept-alive connection."""

    def __init__(self, answers: list[str], close_after_each: bool = False) -> None:
        self.answers = answers
        self.close_after_each = close_after_each
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-l")))
                self.requests.append(head + await reader.readexactly(length))
                kind = self.answers.pop(0)
                if kind == "stream":
                    writer.write(STREAM_HEAD)
                    for chunk in SSE:
                        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        await writer.drain()
                    writer.write(b"0\r\n\r\n")
                elif kind == "truncated":
                    writer.write(STREAM_HEAD)
                    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(SSE[0]), SSE[0]))
                else:
                    body = json.dumps({"error": {"message": "shed", "type": "rate_limit_error", "code": kind}}).encode()
                    writer.write(ERROR_HEAD % (kind.encode(), len(body)) + body)
                await writer.drain()
                if self.close_after_each:
                    break
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()


def _run(fake: FakeGateway, calls: int) -> list[tuple[str, str, float, float]]:
    async def main() -> list[tuple[str, str, float, float]]:
        server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        out = []
        async with server, StreamClient(f"http://127.0.0.1:{port}") as client:
            for row in range(calls):
                out.append(await client.stream(PRIORITY_KEYS["critical"], row, loop.time))
                await asyncio.sleep(0.01)  # lets a server-side close land before the next call
        return out

    return asyncio.run(main())


def test_client_streams_and_keeps_the_connection_alive() -> None:
    fake = FakeGateway(["stream", "admission", "stream"])
    results = _run(fake, 3)
    assert [r[:2] for r in results] == [("ok", ""), ("shed", "429 admission"), ("ok", "")]
    assert results[0][2] <= results[0][3] and math.isnan(results[1][2])
    assert fake.connections == 1
    head, body = fake.requests[0].split(b"\r\n\r\n", 1)
    assert b"Authorization: Bearer bench-critical" in head
    sent = json.loads(body)
    assert sent["stream"] and sent["ignore_eos"] and sent["temperature"] == 0.0 and sent["max_tokens"] == 48
    assert json.loads(fake.requests[1].split(b"\r\n\r\n", 1)[1])["prompt"] != sent["prompt"]


def test_client_replaces_a_connection_the_server_closed() -> None:
    fake = FakeGateway(["stream", "stream"], close_after_each=True)
    assert [r[0] for r in _run(fake, 2)] == ["ok", "ok"]
    assert fake.connections == 2


def test_client_reports_a_stream_without_done() -> None:
    assert _run(FakeGateway(["truncated"]), 1)[0][:2] == ("failed", "stream ended without [DONE]")
