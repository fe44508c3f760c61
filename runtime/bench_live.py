"""`odhsim bench-live`: what the live runtime costs and delivers on this machine, bounded to a couple of minutes.

1. Gateway overhead: the same small request (a 1-token completion, unique prompt: no cache hit) sent through the
   gateway and straight to a replica, interleaved one by one in the same run, so both see the same machine load.
2. Continuous batching: `runtime.bench_batching.measure_batching` on the scenario's LM (tokens/s at 16 in flight
   vs one at a time, in-process).
3. A replay of 2,000 requests shaped like the Azure LLM conversation trace (the first 2,000 rows of
   the repository's copy in traces/, else a generated workload of the same shape) with prompt and output token
   counts divided by 8 and time compressed so it lasts about a minute: what a 2-core CPU can serve. Zero errors
   are expected; TTFT and end-to-end percentiles are reported.
4. Priority under overload: `runtime.bench_priority` (its own `odhsim serve`, see that module).

Sections 1-3 run the real `odhsim serve` (a subprocess: gateway + replica processes) on scenarios/live.yaml's chat
model with two replicas and no autoscaling (a fixed capacity, so the figures compare from run to run).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import yaml
from rich.table import Table

from odhsim.errors import CatalogError
from runtime.bench_priority import priority_overload, priority_tables
from runtime.bench_serve import BENCH_KEY, MAX_OUTPUT, MAX_PROMPT, BenchError, ServeProcess, bench_scenario, percentile
from runtime.replica_secret import headers_of_process

TOKEN_SCALE = 8
REPLAY_SECONDS = 60.0
OVERHEAD_PAIRS = 300


def azure_shaped(requests: int, seed: int = 0) -> tuple[pd.DataFrame, str]:
    """(arrival_s, prompt_tokens, output_tokens) of `requests` Azure-conversation-shaped requests, tokens / 8."""
    from odhsim.workload.catalog import get_entry, local_copy

    try:
        trace: Path | None = local_copy(get_entry("azure-2023-conv"))  # the committed copy
    except CatalogError:
        trace = None
    if trace is not None:
        from odhsim.workload.loaders import open_trace

        b = next(open_trace(trace, chunk_rows=max(requests, 1024)).batches())
        arrival, prompt, output = b.arrival_s[:requests], b.prompt_tokens[:requests], b.output_tokens[:requests]
        source = f"{trace.name} (first {len(arrival):,} rows)"
    else:  # the trace's shape: ~4.7 requests/s, lognormal prompts (median 1,020) and outputs (median 240)
        rng = np.random.default_rng(seed)
        arrival = np.cumsum(rng.exponential(1 / 4.7, requests)) - 0.2
        prompt = np.round(rng.lognormal(np.log(1020), 0.8, requests)).astype(np.int64)
        output = np.round(rng.lognormal(np.log(240), 0.7, requests)).astype(np.int64)
        source = f"generated, Azure-conversation-shaped ({requests:,} requests)"
    frame = pd.DataFrame(
        {
            "arrival_s": arrival - arrival[0],
            "prompt_tokens": np.clip(prompt // TOKEN_SCALE, 2, MAX_PROMPT),
            "output_tokens": np.clip(output // TOKEN_SCALE, 1, MAX_OUTPUT),
        }
    )
    return frame, source


def gateway_overhead(
    gateway_url: str, replica_url: str, pairs: int = OVERHEAD_PAIRS, replica_headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """p50/p99 of a 1-token completion through the gateway and directly, interleaved (order alternating);
    `replica_headers` carry the run's replica secret (a replica answers nothing without it)."""
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    times: dict[str, list[float]] = {"gateway": [], "direct": []}
    with (
        httpx.Client(base_url=gateway_url, headers=headers, timeout=30) as gw,
        httpx.Client(base_url=replica_url, headers=replica_headers, timeout=30) as direct,
    ):
        clients = {"gateway": gw, "direct": direct}
        for i in range(pairs + 20):
            order = ("gateway", "direct") if i % 2 == 0 else ("direct", "gateway")
            for path in order:
                body = {"model": "chat", "prompt": f"overhead probe {i} {path}", "max_tokens": 1, "temperature": 0.0}
                t0 = time.perf_counter()
                resp = clients[path].post("/v1/completions", json=body)
                dt = time.perf_counter() - t0
                if resp.status_code != 200:
                    raise BenchError(f"{path} request answered {resp.status_code}: {resp.text[:200]}")
                if i >= 20:  # the first 20 pairs warm connections and caches up
                    times[path].append(dt * 1000)
    out: dict[str, Any] = {"pairs": pairs}
    for path, ms in times.items():
        out[f"{path}_p50_ms"], out[f"{path}_p99_ms"] = percentile(ms, 50), percentile(ms, 99)
    diffs = [g - d for g, d in zip(times["gateway"], times["direct"], strict=True)]
    out["overhead_p50_ms"] = statistics.median(diffs)
    out["overhead_p99_ms"] = percentile([g for g in times["gateway"]], 99) - percentile(times["direct"], 99)
    return out


def batching(scenario: dict[str, Any]) -> dict[str, Any]:
    from odhsim.scenario.live import TinyLmSpec
    from runtime.bench_batching import measure_batching

    spec = TinyLmSpec.model_validate(scenario["models"][0]["live"]["lm"])
    return measure_batching(spec)


def replay_trace(url: str, trace: Path, span_s: float, out: Path | None) -> dict[str, Any]:
    from runtime.replay import replay

    speed = max(1.0, span_s / REPLAY_SECONDS)
    t0 = time.perf_counter()
    result = replay(
        trace, url, speed=speed, model="chat", api_key=BENCH_KEY, out_dir=out, max_prompt_tokens=MAX_PROMPT,
        max_output_tokens=MAX_OUTPUT, straggler_timeout_s=120.0,
    )  # fmt: skip
    s = result.summary
    return {
        "requests": s["requests"],
        "completed": s["completed"],
        "errors": s["requests"] - s["completed"],
        "speed": speed,
        "wall_s": time.perf_counter() - t0,
        "rate_rps": s["requests"] / max(s["last_send_s"], 1e-9),
        "ttft_p50_s": s["ttft_p50_s"],
        "ttft_p99_s": s["ttft_p99_s"],
        "e2e_p50_s": s["e2e_p50_s"],
        "e2e_p99_s": s["e2e_p99_s"],
        "output_tokens_per_s": s["output_tokens_per_s"],
    }


def run_bench_live(*, device: str = "auto", requests: int = 2000, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Batching in-process first (nothing else running), then serve + overhead + replay; every process stopped."""
    if requests < 1:
        raise BenchError("--requests must be >= 1")
    root = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="odhsim-bench-live-"))
    root.mkdir(parents=True, exist_ok=True)
    scenario = bench_scenario()
    scenario_path = root / "bench-live.yaml"
    scenario_path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    trace, source = azure_shaped(requests)
    trace_path = root / "azure-shaped.csv"
    trace.to_csv(trace_path, index=False)
    figures: dict[str, Any] = {"machine": f"{os.cpu_count()} CPU(s)", "device": device, "source": source}
    figures["batching"] = batching(scenario)
    serve = ServeProcess(scenario_path, root / "serve", device)
    try:
        status = serve.wait_ready(2)
        url = status["url"]
        replica = next(r for m in status["models"] for r in m["replicas"] if r["state"] == "ready")
        direct = headers_of_process(int(replica["pid"]))
        figures["overhead"] = gateway_overhead(url, replica["url"], replica_headers=direct)
        span = float(trace["arrival_s"].iloc[-1])
        figures["replay"] = replay_trace(url, trace_path, span, root / "replay" if out_dir is not None else None)
    finally:
        serve.stop()
    figures["priority"] = priority_overload(root, device)
    return figures


def _table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        table.add_row(key, f"{value:,.4g}" if isinstance(value, float) else str(value))
    return table


def bench_tables(figures: dict[str, Any]) -> list[Table]:
    where = f"{figures['machine']}, device {figures['device']}"
    tables = [
        _table(f"gateway overhead ({where}): 1-token completion, interleaved", figures["overhead"]),
        _table("continuous batching (in-process, tokens/s)", figures["batching"]),
        _table(f"replay: {figures['source']}, tokens / {TOKEN_SCALE}", figures["replay"]),
    ]
    if "priority" in figures:
        tables.extend(priority_tables(figures["priority"]))
    return tables
