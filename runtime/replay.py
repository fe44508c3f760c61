"""Open-loop trace replay against a live endpoint, written as the simulator writes its results.

Each request is sent at its own (1/speed-scaled) arrival time whatever happened to the earlier ones (open loop:
no coordinated omission), so latencies include any queueing at the client too: `arrival_s` is the scheduled time.
LM requests stream `/v1/completions` (TTFT = the first SSE chunk) with a prompt synthesized to the trace's prompt
token count (byte tokenizer: n tokens = BOS + n-1 bytes) and `max_tokens` = its output tokens with `ignore_eos`;
fixed models get a v2 infer of a tensor shaped as their metadata says. Every request sent ends in the table as ok,
shed, failed or timeout with its reason, or unfinished when stragglers are cut off; none is dropped.

The source is a trace file (odhsim's loaders) or a scenario (its workload built as the simulator builds it, same
seed, same streams), so `odhsim run X.yaml` and `odhsim replay X.yaml --target ...` see the same requests and
their results compare with the same tools (requests.parquet through `RequestLog`, summary.json through
`summarize`, tagged through `RunResult`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from odhsim.errors import OdhsimError
from odhsim.results.request_log import RequestLog
from odhsim.results.run_result import RunResult
from odhsim.results.summary import summarize
from odhsim.rng import RngStreams
from odhsim.scenario.model import Scenario, Slo
from odhsim.sim.request import STATUS_FAILED, STATUS_OK, STATUS_SHED, STATUS_TIMEOUT, STATUS_UNFINISHED, SimRequest
from odhsim.workload.build import build_workload
from odhsim.workload.loaders import open_trace
from odhsim.workload.schema import PRIORITY_CLASSES, RequestBatch, concat

SCENARIO_SUFFIXES = (".yaml", ".yml")
FILLER = "the quick brown fox jumps over the lazy dog while a small model serves its tokens one by one; "
TIMESERIES_COLUMNS = ["time_s", "model", "arrivals", "gpu_hours", "cost_usd", "energy_kwh"]
ProgressFn = Callable[[int, int, int], None]
"""progress(sent, finished, total)."""


class ReplayError(OdhsimError):
    """Bad replay input (source, target, options); the CLI prints it and exits 2."""


DEFAULT_LIMIT, DEFAULT_MAX_DURATION_S = 10_000, 900.0
TRACE_MAX_PROMPT_TOKENS, TRACE_MAX_OUTPUT_TOKENS = 256, 64
"""Token clips of a trace file's requests when none are given (what the tiny live LMs serve); a scenario's
requests are clipped to its own `live.limits` unless smaller clips are given."""
"""A replay is bounded unless its caller passes None: a whole public trace at its own pace can last for hours."""


@dataclass(frozen=True)
class ReplayOptions:
    """speed: arrivals at `speed` x the trace's rate; limit / max_duration_s: stop sending after that many requests
    or that many (replay) seconds; concurrency: most requests outstanding (and connections); request_timeout_s:
    per request; straggler_timeout_s: the most the replay waits after its last send; model: where a trace file's
    requests go (default: the target's first model)."""

    speed: float = 1.0
    limit: int | None = DEFAULT_LIMIT
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None
    concurrency: int = 256
    request_timeout_s: float = 120.0
    straggler_timeout_s: float = 60.0
    model: str | None = None
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ReplayError(f"--speed must be > 0, got {self.speed}")
        if self.limit is not None and self.limit < 1:
            raise ReplayError(f"--limit must be >= 1, got {self.limit}")
        if self.max_duration_s is not None and not self.max_duration_s > 0:
            raise ReplayError(f"--max-duration must be > 0, got {self.max_duration_s}")
        if (self.max_prompt_tokens is not None and self.max_prompt_tokens < 2) or (
            self.max_output_tokens is not None and self.max_output_tokens < 1
        ):
            raise ReplayError("--max-prompt-tokens must be >= 2 and --max-output-tokens >= 1")
        if self.concurrency < 1 or self.request_timeout_s <= 0 or self.straggler_timeout_s < 0:
            raise ReplayError("concurrency >= 1, request timeout > 0 and straggler timeout >= 0 are required")


@dataclass(frozen=True, eq=False)
class ReplayPlan:
    """The requests to send (arrival_s already scaled to replay seconds, tokens clipped) and their labels."""

    name: str
    seed: int
    requests: RequestBatch
    model_names: list[str]
    tenant_names: list[str]
    kinds: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    scenario: Scenario | None = None
    clipped_prompts: int = 0
    clipped_outputs: int = 0
    max_prompt_tokens: int = TRACE_MAX_PROMPT_TOKENS
    max_output_tokens: int = TRACE_MAX_OUTPUT_TOKENS


# -- the plan ------------------------------------------------------------------------------------------------
def _take(batches: Any, opts: ReplayOptions, duration_s: float | None) -> RequestBatch:
    """Time-sorted requests up to the limit and the duration (both in replay seconds)."""
    parts, n = [], 0
    horizon = opts.max_duration_s
    for b in batches:
        keep = np.ones(len(b), bool)
        if duration_s is not None:
            keep &= b.arrival_s < duration_s
        if horizon is not None:
            keep &= b.arrival_s / opts.speed < horizon
        b = b.take(keep)
        if opts.limit is not None:
            b = b.take(np.arange(min(len(b), opts.limit - n)))
        parts.append(b)
        n += len(b)
        if (opts.limit is not None and n >= opts.limit) or (len(keep) and not keep[-1]):
            break
    return concat(parts)


def load_plan(source: str | Path, opts: ReplayOptions) -> ReplayPlan:
    """Requests from a scenario's workload (built as the simulator builds it) or from a trace file."""
    path = Path(source)
    if not path.exists():
        raise ReplayError(f"{path}: no such file (give a trace file or a scenario YAML)")
    scenario: Scenario | None = None
    if path.suffix.lower() in SCENARIO_SUFFIXES:
        from odhsim.scenario.load import load_scenario

        scenario = load_scenario(path)
        models = [m.name for m in scenario.models]
        workload = build_workload(
            scenario.workload, model_names=models, streams=RngStreams(scenario.seed), base_dir=scenario.base_dir
        )
        batch = _take(workload.batches(), opts, scenario.duration_s)
        name, seed, tenants = scenario.name, scenario.seed, list(workload.tenant_names)
        kinds = {m.name: m.kind for m in scenario.models}
        versions = {m.name: m.version for m in scenario.models}
        limits = scenario.live.limits
        max_prompt = min(opts.max_prompt_tokens or limits.max_prompt_tokens, limits.max_prompt_tokens)
        max_output = min(opts.max_output_tokens or limits.max_tokens, limits.max_tokens)
    else:
        batch = _take(open_trace(path).batches(), opts, None)
        name, seed, tenants, kinds, versions = path.stem, 0, ["default"], {}, {}
        models = [opts.model or ""]  # resolved against the target when not given
        max_prompt = opts.max_prompt_tokens or TRACE_MAX_PROMPT_TOKENS
        max_output = opts.max_output_tokens or TRACE_MAX_OUTPUT_TOKENS
    if len(batch) == 0:
        raise ReplayError(f"{path}: no requests to replay (check --limit / --max-duration)")
    prompt = np.clip(batch.prompt_tokens, 2, max_prompt)
    output = np.clip(batch.output_tokens, 1, max_output)
    plan_batch = batch.with_columns(
        arrival_s=batch.arrival_s / opts.speed, prompt_tokens=prompt.astype(np.int64), output_tokens=output
    )
    return ReplayPlan(
        name=name,
        seed=seed,
        requests=plan_batch,
        model_names=models,
        tenant_names=tenants,
        kinds=kinds,
        versions=versions,
        scenario=scenario,
        clipped_prompts=int((batch.prompt_tokens > max_prompt).sum()),
        clipped_outputs=int((batch.output_tokens > max_output).sum()),
        max_prompt_tokens=int(max_prompt),
        max_output_tokens=int(max_output),
    )


def synth_prompt(row: int, tokens: int) -> str:
    """A deterministic ASCII prompt of exactly `tokens` tokens (BOS + tokens-1 bytes), unique per row."""
    n = max(1, tokens - 1)
    text = f"[{row}] " + FILLER * (n // len(FILLER) + 1)
    return text[:n]


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
    cache_hit: bool = False
    fallback: bool = False
    cached_tokens: int = 0
    served: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None


TIMEOUT_REASONS = frozenset({"queue_ttl", "request_timeout"})
"""The gateway's reason slugs for a request that waited too long (the simulator's `timeout` status)."""


def _error_outcome(status_code: int, body: bytes, headers: httpx.Headers) -> Outcome:
    """A non-200 answer: its status class and reason (the gateway's reason slug and message)."""
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
    return Outcome(refusal_status(status_code, slug), reason.strip()[:300], retries=_retries(headers))


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


def _headers_into(out: Outcome, headers: httpx.Headers, model: str) -> None:
    """What the gateway says about the answer: the replica, a response-cache hit, the model that served it, and
    the retries it took."""
    out.replica = headers.get("x-odhsim-replica") or out.replica
    out.cache_hit = headers.get("x-odhsim-cache", "").lower() == "hit"
    served = headers.get("x-odhsim-model")
    out.served = served or model
    out.fallback = served is not None and served != model
    out.retries = _retries(headers)


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
                err = _error_outcome(resp.status_code, await resp.aread(), resp.headers)
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
            err = _error_outcome(resp.status_code, resp.content, resp.headers)
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
) -> tuple[pd.DataFrame, float, float, dict[str, Any]]:
    """Send every planned request on time; returns (requests frame, end_s, wall_s, extra summary fields)."""
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
            req = SimRequest(i, float(b.arrival_s[i]), int(b.prompt_tokens[i]), int(b.output_tokens[i]),
                             int(b.model[i]), int(b.priority[i]), int(b.tenant[i]), -1, None)  # fmt: skip
            model, tenant = models[req.model], plan.tenant_names[req.tenant]
            key = keys.key(tenant, model)
            headers = {"x-odhsim-priority": PRIORITY_CLASSES[req.priority]}
            if key:
                headers["Authorization"] = f"Bearer {key}"
            try:
                async with sem:
                    req.start_s = clock()
                    if kinds.get(model) == "llm":
                        body = {
                            "model": model,
                            "prompt": synth_prompt(i, req.prompt_tokens),
                            "max_tokens": req.output_tokens,
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
        self.slos: dict[str, Slo] = Scenario.model_fields["slos"].default_factory()  # type: ignore[misc]

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
    **options: Any,
) -> RunResult:
    """Replay `source` against `target_url` (see the module docstring); writes the results to `out_dir` if given.

    `options` are the other `ReplayOptions` fields (max_prompt_tokens, max_output_tokens, concurrency,
    request_timeout_s, straggler_timeout_s, model, temperature)."""
    if not target_url.startswith(("http://", "https://")):
        raise ReplayError(f"--target must be an http(s) URL, got {target_url!r}")
    opts = ReplayOptions(speed=speed, limit=limit, max_duration_s=max_duration_s, **options)
    plan = load_plan(source, opts)
    keys = KeyChooser(api_key, api_keys, os.environ if env is None else env)
    requests, end_s, wall_s, extra = await run_replay(plan, target_url, opts, keys, progress, transport)
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
