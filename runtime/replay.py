"""Open-loop trace replay against a live endpoint, written as the simulator writes its results.

Each request is sent at its own (1/speed-scaled) arrival time whatever happened to the earlier ones (open loop:
no coordinated omission), so latencies include any queueing at the client too: `arrival_s` is the scheduled time.
LM requests stream `/v1/completions` (TTFT = the first SSE chunk) with a prompt synthesized to the trace's prompt
token count (byte tokenizer: n tokens = BOS + n-1 bytes) and `max_tokens` = its output tokens with `ignore_eos`;
fixed models get a v2 infer of a tensor shaped as their metadata says. Every request sent ends in the table as ok,
shed, failed or timeout with its reason, or unfinished when stragglers are cut off; none is dropped. Each request
carries its row's id (requests.parquet's request_id) as `x-request-id`: odhsim's gateway adopts it, so the decisions
of a live run join this table as a simulated run's do.

The source (`runtime.replay_plan`) is a trace file (odhsim's loaders) or a scenario (its workload built as the
simulator builds it, same seed, same streams), so `odhsim run X.yaml` and `odhsim replay X.yaml --target ...` see
the same requests and their results compare with the same tools (requests.parquet through `RequestLog`,
summary.json through `summarize`, tagged through `RunResult`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from odhsim.results.record import RequestRecord
from odhsim.results.request_log import RequestLog
from odhsim.results.run_result import RunResult
from odhsim.results.status import STATUS_FAILED, STATUS_OK, STATUS_SHED, STATUS_TIMEOUT, STATUS_UNFINISHED
from odhsim.results.summary import summarize
from odhsim.scenario.model import Slo, default_slos
from odhsim.workload.schema import PRIORITY_CLASSES
from runtime.replay_plan import (
    DEFAULT_LIMIT,
    DEFAULT_MAX_DURATION_S,
    ReplayError,
    ReplayOptions,
    ReplayPlan,
    load_plan,
    synth_prompt,
)

TIMESERIES_COLUMNS = ["time_s", "model", "arrivals", "gpu_hours", "cost_usd", "energy_kwh"]
ProgressFn = Callable[[int, int, int], None]
"""progress(sent, finished, total)."""


# -- keys ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KeyEntry:
    key: str
    tenant: str
    models: frozenset[str] | None


def parse_key_env(value: str) -> list[KeyEntry]:
    """$ODHSIM_API_KEYS (`key:tenant:priority[:m1|m2],...`) as plain entries: the client side picks per tenant."""
    entries = []
    for item in value.split(","):
        parts = [p.strip() for p in item.strip().split(":")]
        if len(parts) in (3, 4) and parts[0]:
            models = frozenset(m.strip() for m in parts[3].split("|")) if len(parts) == 4 else None
            entries.append(KeyEntry(parts[0], parts[1], models))
    return entries


class KeyChooser:
    """The key each (tenant, model) request carries: the tenant's key in `api_keys`; else `api_key` for every
    request; else the tenant's own key in $ODHSIM_API_KEYS, or any key there that may use the model; else none."""

    def __init__(self, api_key: str | None, api_keys: Mapping[str, str] | None, env: Mapping[str, str]) -> None:
        self.default = api_key
        self.by_tenant = dict(api_keys or {})
        self.entries = parse_key_env(env.get("ODHSIM_API_KEYS", ""))

    def key(self, tenant: str, model: str) -> str | None:
        if tenant in self.by_tenant:
            return self.by_tenant[tenant]
        if self.default is not None:
            return self.default
        allowed = [e for e in self.entries if e.models is None or model in e.models]
        own = [e for e in allowed if e.tenant == tenant]
        return (own or allowed)[0].key if allowed else None


# -- one request ---------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    status: str
    reason: str = ""
    first_token_s: float = math.nan
    finish_s: float = math.nan
    replica: str | None = None
    retries: int = 0
    attempts: int = 0
    cache_hit: bool = False
    fallback: bool = False
    cached_tokens: int = 0
    served: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None


TIMEOUT_REASONS = frozenset({"queue_ttl", "request_timeout"})
"""The gateway's reason slugs for a request that waited too long (the simulator's `timeout` status)."""


def _error_outcome(status_code: int, body: bytes, headers: httpx.Headers, model: str = "") -> Outcome:
    """A non-200 answer: its status class and reason (the gateway's reason slug and message), the retries and
    attempts it took, and whether it ended on the fallback model (`x-odhsim-model`, sent once a replica was
    tried)."""
    slug = headers.get("x-odhsim-reason", "")
    message = body.decode("utf-8", "replace")[:300]
    try:
        doc = json.loads(body)
        err = doc.get("error", doc) if isinstance(doc, dict) else doc
        if isinstance(err, dict):
            slug = slug or str(err.get("code") or "")
            message = str(err.get("message", ""))
        else:
            message = str(err)
    except ValueError:
        pass
    reason = f"HTTP {status_code} {slug + ': ' if slug else ''}{message}"
    status = refusal_status(status_code, slug)
    out = Outcome(status, reason.strip()[:300], retries=_retries(headers), attempts=_attempts(headers))
    held = headers.get("x-odhsim-model")
    out.fallback = bool(model) and held is not None and held != model
    return out


def refusal_status(status_code: int, slug: str) -> str:
    """The simulator's status for a request the gateway did not answer with 200: 429 is shed; the gateway's
    timeout reasons (and 408 / 504) are timeout; anything else failed."""
    if status_code == 429:
        return STATUS_SHED
    if slug in TIMEOUT_REASONS or status_code in (408, 504):
        return STATUS_TIMEOUT
    return STATUS_FAILED


def _retries(headers: httpx.Headers) -> int:
    """The gateway's `x-odhsim-retries`: the request's attempts beyond the first (0 when absent)."""
    value = headers.get("x-odhsim-retries", "").strip()
    return int(value) if value.isdigit() else 0


def _attempts(headers: httpx.Headers) -> int:
    """Replicas tried, as the simulator's `attempts` column counts them: the gateway sends `x-odhsim-retries` on
    every answer whose request reached a replica (retries + 1 attempts), and none on a cache hit or a request
    shed or failed before dispatch (0 attempts)."""
    value = headers.get("x-odhsim-retries", "").strip()
    return int(value) + 1 if value.isdigit() else 0


def _headers_into(out: Outcome, headers: httpx.Headers, model: str) -> None:
    """What the gateway says about the answer: the replica, a response-cache hit, the model that served it, and
    the retries it took."""
    out.replica = headers.get("x-odhsim-replica") or out.replica
    out.cache_hit = headers.get("x-odhsim-cache", "").lower() == "hit"
    served = headers.get("x-odhsim-model")
    out.served = served or model
    out.fallback = served is not None and served != model
    out.retries = _retries(headers)
    out.attempts = _attempts(headers)


class Sender:
    """Sends one planned request and turns the answer into an `Outcome`; times are `clock()` seconds."""

    def __init__(self, client: httpx.AsyncClient, clock: Callable[[], float], opts: ReplayOptions) -> None:
        self.client = client
        self.clock = clock
        self.opts = opts
        self.metadata: dict[str, dict[str, Any]] = {}

    async def completion(self, headers: dict[str, str], body: dict[str, Any]) -> Outcome:
        out = Outcome(STATUS_FAILED, "stream ended without [DONE]")
        async with self.client.stream("POST", "/v1/completions", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                err = _error_outcome(resp.status_code, await resp.aread(), resp.headers, body["model"])
                err.finish_s = self.clock()
                return err
            _headers_into(out, resp.headers, body["model"])
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    out.status, out.reason = STATUS_OK, ""
                    break
                if out.first_token_s != out.first_token_s:
                    out.first_token_s = self.clock()
                chunk = json.loads(data)
                if "error" in chunk:
                    e = chunk["error"]
                    msg = e.get("message", e) if isinstance(e, dict) else e
                    out.status, out.reason = STATUS_FAILED, f"stream error: {msg}"[:300]
                    break
                usage = chunk.get("usage")
                if usage:
                    out.prompt_tokens = usage.get("prompt_tokens", out.prompt_tokens)
                    out.output_tokens = usage.get("completion_tokens", out.output_tokens)
                    details = usage.get("prompt_tokens_details") or {}
                    out.cached_tokens = int(details.get("cached_tokens") or 0)
        out.finish_s = self.clock()
        return out

    async def model_metadata(self, model: str, headers: dict[str, str]) -> dict[str, Any]:
        if model not in self.metadata:
            resp = await self.client.get(f"/v2/models/{model}", headers=headers)
            if resp.status_code != 200:
                raise ReplayError(f"GET /v2/models/{model} answered {resp.status_code}: {resp.text[:200]}")
            self.metadata[model] = resp.json()
        return self.metadata[model]

    async def infer(self, headers: dict[str, str], model: str, row: int) -> Outcome:
        spec = (await self.model_metadata(model, headers))["inputs"][0]
        shape = [1 if int(d) < 0 else int(d) for d in spec["shape"]]
        data = np.random.default_rng(row).random(math.prod(shape), dtype=np.float32).round(4).tolist()
        body = {"id": str(row), "inputs": [{"name": spec["name"], "datatype": spec["datatype"], "shape": shape,
                                             "data": data}]}  # fmt: skip
        resp = await self.client.post(f"/v2/models/{model}/infer", json=body, headers=headers)
        now = self.clock()
        if resp.status_code != 200:
            err = _error_outcome(resp.status_code, resp.content, resp.headers, model)
            err.finish_s = now
            return err
        out = Outcome(STATUS_OK, first_token_s=now, finish_s=now)
        _headers_into(out, resp.headers, model)
        return out


# -- the run -------------------------------------------------------------------------------------------------
async def _resolve_models(client: httpx.AsyncClient, plan: ReplayPlan, key: str | None) -> list[str]:
    """A trace file names no model: use the target's first one."""
    if all(plan.model_names):
        return plan.model_names
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = await client.get("/v1/models", headers=headers)
    if resp.status_code != 200:
        raise ReplayError(f"GET /v1/models answered {resp.status_code}: {resp.text[:200]} (pass --model)")
    data = resp.json().get("data") or []
    if not data:
        raise ReplayError("the target serves no model")
    return [str(data[0]["id"])]


async def _kinds(sender: Sender, models: list[str], known: dict[str, str], keys: KeyChooser) -> dict[str, str]:
    """llm or fixed per model: from the scenario, else from the metadata (an LM's input is BYTES text)."""
    kinds = dict(known)
    for m in models:
        if m not in kinds:
            key = keys.key("default", m)
            meta = await sender.model_metadata(m, {"Authorization": f"Bearer {key}"} if key else {})
            kinds[m] = "llm" if any(i.get("datatype") == "BYTES" for i in meta.get("inputs", [])) else "fixed"
    return kinds


async def run_replay(
    plan: ReplayPlan,
    target_url: str,
    opts: ReplayOptions,
    keys: KeyChooser,
    progress: ProgressFn | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    on_clock_zero: Callable[[float], None] | None = None,
) -> tuple[pd.DataFrame, float, float, dict[str, Any]]:
    """Send every planned request on time; returns (requests frame, end_s, wall_s, extra summary fields).
    `on_clock_zero` gets the replay clock's zero as a time.monotonic() reading (to put a server's records in the
    same process on this clock)."""
    b = plan.requests
    n = len(b)
    log = RequestLog(capacity=max(16, n))
    log.append_batch(b)
    limits = httpx.Limits(max_connections=opts.concurrency, max_keepalive_connections=opts.concurrency)
    timeout = httpx.Timeout(opts.request_timeout_s, connect=min(10.0, opts.request_timeout_s))
    loop = asyncio.get_running_loop()
    wall0 = time.perf_counter()
    t0 = loop.time() + 0.2
    clock = lambda: loop.time() - t0  # noqa: E731
    if on_clock_zero is not None:  # the loop's clock may be uvloop's (cached per iteration): convert at one moment
        on_clock_zero(t0 + (time.monotonic() - loop.time()))
    replica_names: list[str] = []
    replica_index: dict[str, int] = {}
    sem = asyncio.Semaphore(opts.concurrency)
    counts = {"sent": 0, "done": 0}
    client = httpx.AsyncClient(base_url=target_url.rstrip("/"), limits=limits, timeout=timeout, transport=transport)
    async with client:
        sender = Sender(client, clock, opts)
        try:
            await client.get("/v2/health/live")  # any answer will do: is anything listening there?
            models = await _resolve_models(client, plan, keys.key("default", plan.model_names[0]))
            kinds = await _kinds(sender, models, plan.kinds, keys)
        except httpx.HTTPError as err:
            raise ReplayError(f"cannot reach {target_url}: {type(err).__name__}: {err}") from None

        async def one(i: int) -> None:
            req = RequestRecord(i)
            model, tenant = models[int(b.model[i])], plan.tenant_names[int(b.tenant[i])]
            prompt_tokens, output_tokens = int(b.prompt_tokens[i]), int(b.output_tokens[i])
            key = keys.key(tenant, model)
            # x-request-id: the row's own id (requests.parquet's request_id), which the gateway adopts, so a live
            # run's decisions.parquet joins this table by request_id
            headers = {"x-odhsim-priority": PRIORITY_CLASSES[int(b.priority[i])], "x-request-id": str(i)}
            if key:
                headers["Authorization"] = f"Bearer {key}"
            try:
                async with sem:
                    req.start_s = clock()
                    if kinds.get(model) == "llm":
                        body = {
                            "model": model,
                            "prompt": synth_prompt(i, prompt_tokens, opts.prompt_tag),
                            "max_tokens": output_tokens,
                            "stream": True,
                            "ignore_eos": True,
                            "temperature": opts.temperature,
                            "seed": plan.seed * 1_000_003 + i,
                        }
                        out = await sender.completion(headers, body)
                    else:
                        out = await sender.infer(headers, model, i)
            except httpx.TimeoutException as err:
                out = Outcome(STATUS_TIMEOUT, f"client timeout ({type(err).__name__}, {opts.request_timeout_s:g} s)")
            except Exception as err:  # whatever went wrong, the request ends in the table with the reason
                out = Outcome(STATUS_FAILED, f"client error: {type(err).__name__}: {err}"[:300])
            except asyncio.CancelledError:
                req.first_token_s = math.nan
                log.finish(req, math.nan, STATUS_UNFINISHED, "still in flight when the replay stopped")
                raise
            if out.replica is not None:
                if out.replica not in replica_index:
                    replica_index[out.replica] = len(replica_names)
                    replica_names.append(out.replica)
                req.replica = replica_index[out.replica]
            req.first_token_s = out.first_token_s
            req.retries, req.cache_hit, req.fallback = out.retries, out.cache_hit, out.fallback
            req.attempts = out.attempts
            req.cached_tokens = out.cached_tokens
            finish_s = out.finish_s if out.finish_s == out.finish_s else clock()
            label = plan.versions.get(out.served or "")
            if label is not None and hasattr(log, "version_code"):  # the model version that answered
                log.finish(req, finish_s, out.status, out.reason, version=log.version_code(label))
            else:
                log.finish(req, finish_s, out.status, out.reason)
            counts["done"] += 1
            if progress is not None:
                progress(counts["sent"], counts["done"], n)

        tasks: list[asyncio.Task[None]] = []
        for i in range(n):
            delay = float(b.arrival_s[i]) - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
            counts["sent"] += 1
            if progress is not None and i % 16 == 0:
                progress(counts["sent"], counts["done"], n)
        last_send = clock()
        _, pending = await asyncio.wait(tasks, timeout=opts.straggler_timeout_s) if tasks else (set(), set())
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    end_s = clock()
    frame = log.to_frame(plan.model_names if all(plan.model_names) else models, plan.tenant_names, replica_names)
    extra = {
        "source_kind": "scenario" if plan.scenario is not None else "trace",
        "target": target_url,
        "speed": opts.speed,
        "last_send_s": last_send,
        "stragglers_cut": len(pending),
        "clipped_prompts": plan.clipped_prompts,
        "clipped_outputs": plan.clipped_outputs,
        "max_prompt_tokens": plan.max_prompt_tokens,
        "max_output_tokens": plan.max_output_tokens,
    }
    return frame, end_s, time.perf_counter() - wall0, extra


class _SloView:
    """What `summarize` reads from a scenario, for a bare trace replay: its name and the default SLOs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.slos: dict[str, Slo] = default_slos()

    def slo_for(self, priority_class: str) -> Slo:
        return self.slos.get(priority_class, Slo())


def replay(source: str | Path, target_url: str, **kw: Any) -> RunResult:
    """Replay `source` against `target_url`: `replay_async` in its own event loop (see there for the options)."""
    return asyncio.run(replay_async(source, target_url, **kw))


async def replay_async(
    source: str | Path,
    target_url: str,
    *,
    speed: float = 1.0,
    limit: int | None = DEFAULT_LIMIT,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
    api_key: str | None = None,
    api_keys: Mapping[str, str] | None = None,
    out_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    env: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    on_clock_zero: Callable[[float], None] | None = None,
    **options: Any,
) -> RunResult:
    """Replay `source` against `target_url` (see the module docstring); writes the results to `out_dir` if given.

    `options` are the other `ReplayOptions` fields (max_prompt_tokens, max_output_tokens, concurrency,
    request_timeout_s, straggler_timeout_s, model, temperature); `on_clock_zero`: see `run_replay`."""
    if not target_url.startswith(("http://", "https://")):
        raise ReplayError(f"--target must be an http(s) URL, got {target_url!r}")
    opts = ReplayOptions(speed=speed, limit=limit, max_duration_s=max_duration_s, **options)
    plan = load_plan(source, opts)
    keys = KeyChooser(api_key, api_keys, os.environ if env is None else env)
    requests, end_s, wall_s, extra = await run_replay(plan, target_url, opts, keys, progress, transport, on_clock_zero)
    timeseries = pd.DataFrame({c: pd.Series(dtype="float64") for c in TIMESERIES_COLUMNS})
    view: Any = plan.scenario if plan.scenario is not None else _SloView(plan.name)
    run_id = f"{plan.name}-live-seed{plan.seed}"
    summary = summarize(
        requests, timeseries, view, end_s=end_s, wall_s=wall_s, extra={"seed": plan.seed, "run_id": run_id, **extra}
    )
    summary["engine"] = "live"
    result = RunResult.tag(
        scenario_name=plan.name,
        run_id=run_id,
        seed=plan.seed,
        requests=requests,
        replicas=pd.DataFrame({c: pd.Series(dtype="object") for c in ["time_s", "model", "replica", "state"]}),
        timeseries=timeseries,
        events=pd.DataFrame({c: pd.Series(dtype="object") for c in ["time_s", "kind", "model", "replica", "detail"]}),
        summary=summary,
    )
    if out_dir is not None:
        result.write(out_dir)
    return result
