"""`odhsim bench-live`, section 4: priority under overload on the real runtime.

A second `odhsim serve` (`priority_scenario`: one replica, the gateway holding the
queue in strict-priority bands behind llm-d's saturation gate and legacy admitter `shed-sheddable`) with two
API keys, one tenant at priority critical and one at low. Its capacity is measured first (a closed loop keeping
every slot busy), then an open loop of streaming completions (48-token prompts, 48 tokens out with
`ignore_eos`, greedy, unique prompts) runs PHASES: a baseline at half the capacity, then 2.5 x capacity with
critical's own share under capacity (0.6 x), then 2.5 x capacity half critical (critical alone 1.25 x). Reported
per phase and class: answered, shed (429), timed out, failed (with the gateway's reason), TTFT and end-to-end
percentiles, and the share of critical TTFTs within its target (CRITICAL_TTFT_SLO_S). Bounded: at most
MAX_PRIORITY_REQUESTS requests, each with a client timeout, ~40 s in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import pandas as pd
import yaml
from rich.table import Table

from runtime.bench_serve import BenchError, ServeProcess, bench_scenario, percentile
from runtime.replay import refusal_status

# section 4: priority under overload
PRIORITY_KEYS = {"critical": "bench-critical", "low": "bench-low"}
"""The two tenants' keys (tenant = the class name) in the priority serve's $ODHSIM_API_KEYS."""
PRIORITY_REPLICAS = 1
PRIORITY_PROMPT_TOKENS, PRIORITY_OUTPUT_TOKENS = 48, 48
CRITICAL_TTFT_SLO_S = 0.5
"""The priority scenario's critical TTFT target (its `slos.critical.ttft_s`; the default 1 s is loose here)."""
TTL_S = {"critical": 10.0, "low": 4.0}
"""Flow-control queue TTL per class: a request still queued after it ends 503 queue_ttl."""
CAPACITY_S, CAPACITY_WARMUP_S = 6.0, 1.0
CAPACITY_WORKERS_PER_SLOT = 2
"""The capacity probe keeps twice the slots busy, so a queue always waits at the gateway and a freed slot is
refilled at once (with one client per slot, each slot idles for a client round trip and capacity reads ~20% low)."""
MAX_PRIORITY_REQUESTS = 10_000
"""At 2.5 x a capacity of ~200 requests/s on this machine the two overload phases offer ~8,000 requests (most of
them low ones shed at once); above the cap every rate is scaled down alike (the figures say by how much)."""
PRIORITY_CLIENT_TIMEOUT_S = 15.0


# -- 4. priority under overload ------------------------------------------------------------------------------------
def priority_scenario(replicas: int = PRIORITY_REPLICAS) -> dict[str, Any]:
    """The chat model with fixed replicas behind strict-priority flow control that sheds low requests at the door.

    - `max_in_flight_per_replica` = the replica's `max_num_seqs`: a replica gets no more than it runs at once, so
      requests wait in the gateway's priority bands, never in the replica's FCFS queue behind low ones.
    - saturation `concurrency` with `max_concurrency` = `max_num_seqs`: the gateway's own in-flight count (never
      stale) over the slots, so saturation is 1.0 exactly when every slot is busy; the dispatch gate then agrees
      with the in-flight limit, and `shed-sheddable` turns low requests away (429) while the slots are full.
      The `utilization` detector is blind here: it reads the replicas' waiting queues, which the in-flight limit
      keeps near 0, so it sheds almost nothing and every low request waits out its TTL in the gateway (measured:
      61 of 3,432 shed, 2,373 ended 503 queue_ttl after 4 s; the ~1,400 requests held at once cost the gateway
      event-loop stalls up to 0.25 s and put critical's TTFT p99 at 0.38 s instead of ~0.16 s).
    - TTL: critical 10 s, low 4 s; critical's TTFT target 0.5 s (`slos.critical.ttft_s`)."""
    doc = bench_scenario()
    chat = doc["models"][0]
    chat["replicas"] = replicas
    slots = int(chat["live"]["max_num_seqs"])
    doc["name"] = "bench-live-priority"
    doc["gateway"] = {
        **doc["gateway"],
        "max_in_flight_per_replica": slots,
        "flow_control": {
            "queue": "strict-priority",
            "saturation": {"type": "concurrency", "params": {"max_concurrency": slots}},
            "admission": "shed-sheddable",
            "gate_dispatch_on_saturation": True,
            "ttl_s": dict(TTL_S),
        },
    }
    doc["slos"] = {"critical": {"ttft_s": CRITICAL_TTFT_SLO_S}, "low": {}}
    return doc


@dataclass(frozen=True, slots=True)
class Phase:
    """A stretch of the open loop: each class's offered load as a multiple of the measured capacity."""

    name: str
    duration_s: float
    critical_x: float
    low_x: float

    @property
    def load_x(self) -> float:
        return self.critical_x + self.low_x

    @property
    def critical_share(self) -> float:
        return self.critical_x / self.load_x if self.load_x > 0 else 0.0


PHASES = (
    Phase("baseline", 5.0, 0.25, 0.25),
    Phase("overload", 10.0, 0.6, 1.9),
    Phase("gap", 4.0, 0.0, 0.0),
    Phase("overload_50_50", 6.0, 1.25, 1.25),
)
"""Baseline at half the capacity; then 2.5 x capacity twice. In `overload` critical's own load fits (0.6 x) and low
brings the rest (1.9 x): the case where strict priority can keep critical's target. In `overload_50_50` half the
requests are critical, so critical alone offers 1.25 x what the replicas serve: no ordering can keep its target
then, and the figures show how far it drifts. The gap lets the first overload's queue drain."""
REPORTED = ("baseline", "overload", "overload_50_50")


@dataclass(frozen=True, slots=True)
class Planned:
    """One request of the open loop: when it is sent (seconds from the start), in which phase, of which class."""

    at_s: float
    phase: str
    priority: str


def open_loop_plan(
    phases: Sequence[Phase], capacity_rps: float, seed: int = 0, max_requests: int = MAX_PRIORITY_REQUESTS
) -> list[Planned]:
    """Poisson arrivals at each phase's `load_x * capacity_rps`, phase after phase, at most `max_requests` in all
    (every rate is scaled down alike when the expected total is over it).

    The classes are interleaved deterministically within a phase: its request i is critical when
    floor((i + 1) * share) > floor(i * share), so a share of 0.5 alternates low, critical, low, ... and every
    stretch of the phase has its share."""
    expected = sum(p.load_x * capacity_rps * p.duration_s for p in phases)
    scale = min(1.0, 0.95 * max_requests / expected) if expected > 0 else 1.0
    rng = np.random.default_rng(seed)
    plan: list[Planned] = []
    start = 0.0
    for phase in phases:
        rate, share = phase.load_x * capacity_rps * scale, phase.critical_share
        t, i = start, 0
        while rate > 0 and len(plan) < max_requests:
            t += float(rng.exponential(1.0 / rate))
            if t >= start + phase.duration_s:
                break
            critical = math.floor((i + 1) * share) > math.floor(i * share)
            plan.append(Planned(t, phase.name, "critical" if critical else "low"))
            i += 1
        start += phase.duration_s
    return plan


@dataclass(frozen=True, slots=True)
class Answer:
    """How one request ended: status ok | shed | timeout | failed, why when not ok (`429 admission`: the HTTP status
    and the gateway's reason; or the client's), TTFT and the time to the end of the answer (refusals included)
    from its scheduled send time (NaN when there is none), how late the client sent it, and when it was due."""

    phase: str
    priority: str
    status: str
    reason: str
    ttft_s: float
    e2e_s: float
    lag_s: float = 0.0
    at_s: float = 0.0


def class_figures(answers: Sequence[Answer], ttft_slo_s: float | None = None) -> dict[str, Any]:
    """Counts by outcome, the reasons of those not answered, and TTFT / E2E percentiles of the answered ones."""
    ok = [a for a in answers if a.status == "ok"]
    ttft = [a.ttft_s for a in ok if a.ttft_s == a.ttft_s]
    e2e = [a.e2e_s for a in ok if a.e2e_s == a.e2e_s]
    reasons = Counter(a.reason or "unknown" for a in answers if a.status != "ok")
    out: dict[str, Any] = {
        "requests": len(answers),
        "ok": len(ok),
        "shed": sum(a.status == "shed" for a in answers),
        "timeout": sum(a.status == "timeout" for a in answers),
        "failed": sum(a.status == "failed" for a in answers),
        "reasons": dict(reasons.most_common()),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        "e2e_p50_s": percentile(e2e, 50),
        "e2e_p99_s": percentile(e2e, 99),
    }
    if ttft_slo_s is not None:
        within = sum(t <= ttft_slo_s for t in ttft)
        out["ttft_within_slo"] = within / len(ttft) if ttft else float("nan")
    return out


def _body(row: int) -> dict[str, Any]:
    from runtime.replay_plan import synth_prompt

    return {
        "model": "chat",
        "prompt": synth_prompt(row, PRIORITY_PROMPT_TOKENS),
        "max_tokens": PRIORITY_OUTPUT_TOKENS,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
    }


class StreamClient:
    """The load generator's client: aiohttp, one keep-alive connection pool, SSE bodies read as raw chunks.

    Not httpx, measured: on this 2-core machine every CPU millisecond the client spends is taken from the gateway
    and the replica (and shows up as client lag). httpx's pool does work quadratic in its open connections on
    every request start and end (httpcore 1.0 `_assign_requests_to_connections`), so holding the hundreds of
    streams an overload leaves open it took a whole core and sent requests seconds late, and it parses each SSE
    chunk through h11 (the capacity it measured was ~25% lower). Keep-alive matters too: with a new connection per
    request the gateway's accept queue held up to ~300 connections at ~600 requests/s, delaying every class alike
    before flow control saw a request."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") + "/v1/completions"
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> StreamClient:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)  # no cap: the open loop decides the load
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def stream(self, key: str, row: int, clock: Any) -> tuple[str, str, float, float]:
        """One streaming completion: (status, reason, first chunk time, end time)."""
        assert self._session is not None, "use `async with StreamClient(url)`"
        headers = {"Authorization": f"Bearer {key}"}
        async with self._session.post(self.url, json=_body(row), headers=headers) as resp:
            if resp.status != 200:
                status, reason = error_outcome(resp.status, await resp.read(), resp.headers.get("x-odhsim-reason"))
                return status, reason, math.nan, clock()
            if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                await resp.read()
                return "failed", "200 without a stream", math.nan, clock()
            first, tail, error = math.nan, b"", False
            async for chunk in resp.content.iter_any():
                if first != first:
                    first = clock()
                tail = tail[-64:] + chunk
                error = error or _STREAM_ERROR in tail
            end = clock()
        if error:
            return "failed", "stream error event", first, end
        if b"[DONE]" not in tail:
            return "failed", "stream ended without [DONE]", first, end
        return "ok", "", first, end


def error_outcome(status_code: int, body: bytes, header_reason: str | None) -> tuple[str, str]:
    """(status, reason) of a refused request, classified as `odhsim replay` does (`refusal_status`). The reason is
    `<code> <slug>`, the slug from the OpenAI error's `code` (else the gateway's `x-odhsim-reason` header)."""
    slug = header_reason or ""
    with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
        slug = str(json.loads(body)["error"]["code"] or slug)
    return refusal_status(status_code, slug), f"{status_code} {slug}".strip()


_STREAM_ERROR = b'data: {"error"'


async def _send(pool: StreamClient, clock: Any, p: Planned, row: int, timeout_s: float) -> Answer:
    """`p` sent now (`lag_s` after its scheduled time); TTFT and E2E count from the scheduled time."""
    lag = clock() - p.at_s
    try:
        status, reason, first, end = await asyncio.wait_for(pool.stream(PRIORITY_KEYS[p.priority], row, clock),
                                                            timeout_s)  # fmt: skip
    except TimeoutError:
        status, reason, first, end = "timeout", f"client timeout ({timeout_s:g} s)", math.nan, math.nan
    except Exception as err:  # the request still ends in the figures, with the reason
        status, reason, first, end = "failed", f"client error {type(err).__name__}", math.nan, math.nan
    ok = status == "ok"
    ttft = first - p.at_s if ok else math.nan
    e2e = end - p.at_s  # for the refused too: how long the answer took
    return Answer(p.phase, p.priority, status, reason, ttft, e2e, lag, p.at_s)


async def _capacity(url: str, workers: int, duration_s: float, timeout_s: float) -> float:
    """Closed loop: `workers` critical clients back to back (more than the slots, so a queue always waits at the
    gateway and a freed slot is refilled at once); capacity = requests answered after the warm-up / that time."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    clock = lambda: loop.time() - t0  # noqa: E731
    answers: list[tuple[float, Answer]] = []
    rows = iter(range(1_000_000, 2_000_000))
    async with StreamClient(url) as pool:

        async def worker() -> None:
            while clock() < duration_s:
                a = await _send(pool, clock, Planned(clock(), "capacity", "critical"), next(rows), timeout_s)
                answers.append((clock(), a))

        await asyncio.gather(*(worker() for _ in range(workers)))
    bad = [a for _, a in answers if a.status != "ok"]
    if bad:
        raise BenchError(f"capacity probe: {len(bad)} requests not answered, e.g. {bad[0].reason}")
    done = sum(CAPACITY_WARMUP_S <= end <= duration_s for end, _ in answers)
    return done / (duration_s - CAPACITY_WARMUP_S)


async def _open_loop(url: str, plan: Sequence[Planned], timeout_s: float) -> list[Answer]:
    """Send every planned request at its time whatever happened to the others (open loop)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.1
    clock = lambda: loop.time() - t0  # noqa: E731
    async with StreamClient(url) as pool:
        tasks = []
        for row, p in enumerate(plan):
            delay = p.at_s - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_send(pool, clock, p, row, timeout_s)))
        return list(await asyncio.gather(*tasks))


def phase_figures(answers: Sequence[Answer], start_s: float, duration_s: float, capacity_rps: float) -> dict[str, Any]:
    """One phase: the load it offered (x capacity), what was answered within it per second, the client's own lag,
    and per class `class_figures` (critical's against CRITICAL_TTFT_SLO_S)."""
    ok_end = [a.at_s + a.e2e_s for a in answers if a.status == "ok"]
    out: dict[str, Any] = {
        "offered_x": len(answers) / duration_s / capacity_rps,
        "critical_x": sum(a.priority == "critical" for a in answers) / duration_s / capacity_rps,
        "served_rps": sum(start_s <= t < start_s + duration_s for t in ok_end) / duration_s,
        "client_lag_p99_s": percentile([a.lag_s for a in answers], 99),
    }
    for c in PRIORITY_KEYS:
        slo = CRITICAL_TTFT_SLO_S if c == "critical" else None
        out[c] = class_figures([a for a in answers if a.priority == c], slo)
    return out


async def _priority_run(url: str, slots: int) -> tuple[dict[str, Any], list[Answer]]:
    """Capacity first, then the open loop of PHASES at multiples of it; figures per reported phase and class."""
    workers = CAPACITY_WORKERS_PER_SLOT * slots * PRIORITY_REPLICAS
    rps = await _capacity(url, workers, CAPACITY_S, PRIORITY_CLIENT_TIMEOUT_S)
    if not rps > 0:
        raise BenchError("capacity probe: no request answered")
    plan = open_loop_plan(PHASES, rps)
    t0 = time.perf_counter()
    answers = await _open_loop(url, plan, PRIORITY_CLIENT_TIMEOUT_S)
    out: dict[str, Any] = {
        "replicas": PRIORITY_REPLICAS,
        "slots_per_replica": slots,
        "critical_ttft_slo_s": CRITICAL_TTFT_SLO_S,
        "capacity_rps": rps,
        "capacity_clients": workers,
        "requests": len(plan),
        "wall_s": time.perf_counter() - t0,
    }
    start = 0.0
    for phase in PHASES:
        mine = [a for a in answers if a.phase == phase.name]
        if phase.name in REPORTED and mine:
            out[phase.name] = phase_figures(mine, start, phase.duration_s, rps)
        start += phase.duration_s
    return out, answers


def gateway_counts(url: str) -> dict[str, int]:
    """The gateway's own request counters (`odhsim_gateway_requests_total` by status and reason) for the chat model."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("requests_total") and sample.labels.get("model") == "chat":
                key = f"{sample.labels.get('status')} {sample.labels.get('reason')}"
                out[key] = out.get(key, 0) + int(sample.value)
    return out


def priority_overload(root: Path, device: str) -> dict[str, Any]:
    """Section 4 on its own `odhsim serve` (its flow-control settings differ from sections 1-3's); every request's
    outcome lands in ROOT/priority-requests.csv, the gateway's own counters (capacity probe included) in the
    figures."""
    import uvloop

    scenario = priority_scenario()
    path = root / "bench-live-priority.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    keys = ",".join(f"{key}:{cls}:{cls}" for cls, key in PRIORITY_KEYS.items())
    serve = ServeProcess(path, root / "serve-priority", device, keys=keys)
    try:
        url = serve.wait_ready(PRIORITY_REPLICAS)["url"]
        figures, answers = uvloop.run(_priority_run(url, int(scenario["models"][0]["live"]["max_num_seqs"])))
        figures["gateway_counts"] = gateway_counts(url)
        pd.DataFrame(answers).to_csv(root / "priority-requests.csv", index=False)
    finally:
        serve.stop()
    return figures


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:,.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
    return str(value)


PRIORITY_ROWS = (
    ("requests", "requests"),
    ("ok", "ok"),
    ("shed (429)", "shed"),
    ("timed out", "timeout"),
    ("failed", "failed"),
    ("why not ok", "reasons"),
    ("TTFT p50 (s)", "ttft_p50_s"),
    ("TTFT p99 (s)", "ttft_p99_s"),
    ("E2E p50 (s)", "e2e_p50_s"),
    ("E2E p99 (s)", "e2e_p99_s"),
    ("TTFT within SLO", "ttft_within_slo"),
)


def priority_tables(p: dict[str, Any]) -> list[Table]:
    """Section 4: one narrow table per reported phase (critical | low), the phase's own figures in its title."""
    tables = []
    for phase in REPORTED:
        if phase not in p:
            continue
        f = p[phase]
        title = (
            f"priority under overload, {phase}: offered {f['offered_x']:.2f} x capacity (critical {f['critical_x']:.2f}"
            f" x), answered {f['served_rps']:,.0f} req/s in the phase, client send lag p99 {f['client_lag_p99_s']:.3f}"
            f" s [{p['replicas']} replica x {p['slots_per_replica']} slots, capacity {p['capacity_rps']:,.0f} req/s,"
            f" critical TTFT SLO {p['critical_ttft_slo_s']:g} s]"
        )
        table = Table(title=title, header_style="bold")
        table.add_column("figure")
        for c in PRIORITY_KEYS:
            table.add_column(c, justify="right")
        for label, key in PRIORITY_ROWS:
            table.add_row(label, *(_fmt(f[c].get(key, float("nan"))) for c in PRIORITY_KEYS))
        tables.append(table)
    return tables
