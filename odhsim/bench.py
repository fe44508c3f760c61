"""`odhsim bench`: simulator speed and memory on real traces and on a 1 M-request M/M/c, against bare SimPy.

Each case runs in a fresh child process so its peak RSS is its own (ru_maxrss of that process).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import queue as queue_mod
import resource
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from odhsim.errors import OdhsimError

REPO_ROOT = Path(__file__).resolve().parents[1]
AZURE_CONV = REPO_ROOT / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"  # committed (CC-BY-4.0)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _scenario_dict(name: str, trace: Path, replicas: int, time_scale: float) -> dict[str, Any]:
    return {
        "name": name,
        "seed": 1,
        "gpu_pool": [{"gpu": "H100-80GB", "count": 8 * replicas}],
        "models": [{"name": "llama2-70b", "profile": "llama2-70b", "gpu": "H100-80GB", "tp": 8, "replicas": replicas}],
        "gateway": {"router": {"profile": "llm-d-default"}},
        "workload": {"sources": [{"kind": "trace", "path": str(trace), "time_scale": time_scale}]},
        "outputs": {"timeseries_bucket_s": 60.0},
    }


def _run_trace_case(name: str, replicas: int, time_scale: float) -> dict[str, Any]:
    from odhsim.scenario.load import scenario_from_dict
    from odhsim.sim.run import simulate

    sc = scenario_from_dict(_scenario_dict(name, AZURE_CONV, replicas, time_scale))
    c0, t0 = time.process_time(), time.perf_counter()
    res = simulate(sc)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    s = res.summary
    busy = float(res.timeseries["gpu_busy"].mean())
    return {
        "name": name,
        "requests": s["requests"],
        "completed": s["completed"],
        "failed": s["failed"],  # llama2-70b's context is 4,096 tokens: longer prompts are refused with a reason
        "wall_s": wall,
        "sim_requests_per_wall_s": s["requests"] / wall,
        "cpu_s": cpu,  # the process's CPU time: on a shared machine, steadier than wall time
        "peak_rss_mb": _peak_rss_mb(),
        "replicas": replicas,
        "gpu_busy_mean": busy,
        "ttft_p50_s": s["ttft_p50_s"],
        "e2e_p50_s": s["e2e_p50_s"],
    }


MMC_SERVERS = 10
MMC_UTIL = 0.8
MMC_MEAN_S = 1.0
MMC_ROUTER = "round-robin"  # with one slot per server, any free server is an M/M/c dispatch


def _run_mmc_odhsim(n: int) -> dict[str, Any]:
    from odhsim.scenario.load import scenario_from_dict
    from odhsim.sim.run import simulate

    rate = MMC_UTIL * MMC_SERVERS / MMC_MEAN_S
    sc = scenario_from_dict(
        {
            "name": "mmc-1m",
            "seed": 7,
            "gpu_pool": [{"gpu": "T4", "count": MMC_SERVERS}],
            "models": [
                {
                    "name": "classifier",
                    "kind": "fixed",
                    "gpu": "T4",
                    "replicas": MMC_SERVERS,
                    "concurrency": 1,
                    "service_time": {"dist": "exponential", "mean_s": MMC_MEAN_S},
                }
            ],
            "gateway": {"max_in_flight_per_replica": 1, "router": {"profile": MMC_ROUTER}},
            "workload": {
                "sources": [
                    {
                        "kind": "poisson",
                        "rate": rate,
                        "requests": n,
                        "prompt_tokens": {"dist": "fixed", "value": 1},
                        "output_tokens": {"dist": "fixed", "value": 1},
                    }
                ]
            },
            "outputs": {"timeseries_bucket_s": 3600.0},
        }
    )
    c0, t0 = time.process_time(), time.perf_counter()
    res = simulate(sc)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "name": "mmc_odhsim",
        "requests": res.summary["requests"],
        "wall_s": wall,
        "cpu_s": cpu,
        "sim_requests_per_wall_s": res.summary["requests"] / wall,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _run_mmc_bare_simpy(n: int) -> dict[str, Any]:
    """The textbook SimPy M/M/c: a source process, one process per customer, a Resource with c servers."""
    import simpy

    rng = np.random.default_rng(7)
    rate = MMC_UTIL * MMC_SERVERS / MMC_MEAN_S
    gaps = rng.exponential(1.0 / rate, n).tolist()
    services = rng.exponential(MMC_MEAN_S, n).tolist()
    waits = np.zeros(n)
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=MMC_SERVERS)

    def customer(i: int):  # type: ignore[no-untyped-def]
        arrived = env.now
        with server.request() as slot:
            yield slot
            waits[i] = env.now - arrived
            yield env.timeout(services[i])

    def source():  # type: ignore[no-untyped-def]
        for i in range(n):
            yield env.timeout(gaps[i])
            env.process(customer(i))

    c0, t0 = time.process_time(), time.perf_counter()
    env.process(source())
    env.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "name": "mmc_bare_simpy",
        "requests": n,
        "wall_s": wall,
        "cpu_s": cpu,
        "sim_requests_per_wall_s": n / wall,
        "peak_rss_mb": _peak_rss_mb(),
        "mean_wait_s": float(waits.mean()),
    }


def _child(fn: Callable[..., dict[str, Any]], args: tuple, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    """Send ("ok", result) or ("error", the child's traceback): the parent must never wait for a result that a
    failed case will not send."""
    try:
        queue.put(("ok", fn(*args)))
    except BaseException:
        queue.put(("error", traceback.format_exc()))


def run_isolated_value(fn: Callable[..., Any], *args: Any) -> Any:
    return run_isolated(lambda *a: {"value": fn(*a)}, *args)["value"]


def run_isolated(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    while True:
        try:
            kind, payload = queue.get(timeout=0.5)
            break
        except queue_mod.Empty as empty:
            if not proc.is_alive():  # died without a word (killed, out of memory): say so instead of hanging
                proc.join()
                raise OdhsimError(
                    f"benchmark case {getattr(fn, '__name__', fn)!s} died (exit code {proc.exitcode})"
                ) from empty
    proc.join()
    if kind == "error":
        raise OdhsimError(f"benchmark case {getattr(fn, '__name__', fn)!s} failed:\n{payload}")
    return payload


def _capacity_rps_per_replica() -> float:
    """Saturation throughput of one llama2-70b H100 TP-8 replica on the trace's request mix: replay the whole
    trace 100x compressed (a standing queue throughout) and count completions per simulated second."""
    from odhsim.scenario.load import scenario_from_dict
    from odhsim.sim.run import simulate

    res = simulate(scenario_from_dict(_scenario_dict("capacity", AZURE_CONV, 1, 0.01)))
    return res.summary["completed"] / res.summary["sim_end_s"]


def trace_rate_rps() -> float:
    from odhsim.workload.loaders import trace_info

    return float(trace_info(AZURE_CONV)["rate_rps"])


def run_bench(mmc_requests: int = 1_000_000, rounds: int = 3, target_load: float = 0.7) -> list[dict[str, Any]]:
    """The three benchmark cases of the simulator core, each run in its own process.

    The trace cluster is sized for `target_load`: replicas = ceil(trace rate / (target_load x one replica's
    saturation throughput)). The M/M/c pair alternates odhsim and bare SimPy for `rounds` rounds and reports
    the median of each and the median of the per-round ratios, so machine noise hits both alike.
    """
    cases: list[dict[str, Any]] = []
    if AZURE_CONV.exists():
        capacity = run_isolated_value(_capacity_rps_per_replica)
        rate = trace_rate_rps()
        replicas = max(1, math.ceil(rate / (target_load * capacity)))
        for name, n_rep, scale in (
            ("azure_conv_70b_h100_tp8", replicas, 1.0),
            ("azure_conv_10x_compressed", replicas * 10, 0.1),
        ):
            case = run_isolated(_run_trace_case, name, n_rep, scale)
            case["offered_load"] = rate / scale / (n_rep * capacity)
            cases.append(case)
    ours_runs, bare_runs = [], []
    for _ in range(rounds):
        ours_runs.append(run_isolated(_run_mmc_odhsim, mmc_requests))
        bare_runs.append(run_isolated(_run_mmc_bare_simpy, mmc_requests))
    ours, bare = _median_case(ours_runs), _median_case(bare_runs)
    ratios = [
        o["sim_requests_per_wall_s"] / b["sim_requests_per_wall_s"] for o, b in zip(ours_runs, bare_runs, strict=True)
    ]
    ours["ratio_vs_simpy"] = statistics.median(ratios)
    ours["ratio_vs_simpy_rounds"] = [round(r, 3) for r in ratios]
    # the same ratio on CPU time: what a busy machine's wall time blurs
    ours["ratio_vs_simpy_cpu"] = statistics.median(
        (o["requests"] / o["cpu_s"]) / (b["requests"] / b["cpu_s"]) for o, b in zip(ours_runs, bare_runs, strict=True)
    )
    cases += [ours, bare]
    return cases


def _median_case(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate, tagged with the number of rounds."""
    ordered = sorted(runs, key=lambda c: c["sim_requests_per_wall_s"])
    case = dict(ordered[len(ordered) // 2])
    case["rounds"] = len(runs)
    return case


def write_bench(cases: list[dict[str, Any]], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(cases, indent=2) + "\n", encoding="utf-8")
