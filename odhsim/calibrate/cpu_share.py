"""Measure what replica processes sharing this machine's cores cost each other.

k processes (k = 1 .. cores + 2, at most 4) each build the model's engine and run the same decode step (batch 8,
128 tokens of context each) in a loop for a few seconds, all started together; the mean step time (preempted
steps count with their wait) with k busy over the one with one busy is the slowdown. Beyond the core count each
extra busy process should add about one core's worth of waiting; the fitted `slowdown_per_extra_busy` is the
least-squares slope of (ratio - 1) over the busy processes beyond `cores`, through the origin. Processes are
spawned (not forked: torch threads) and import the live runtime inside the worker (CLI layer). Other work on the
machine shows up as slowdown too: measure on a quiet machine (`--cpu-share` is opt-in for that reason).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from typing import Any

from odhsim.calibrate.profile_file import CpuShare
from odhsim.scenario.live import LiveModelSpec


def _worker(spec_json: str, max_len: int, threads: int, seconds: float, barrier: Any, out: Any) -> None:
    import torch

    from runtime.models.continuous_batching import ContinuousBatchingEngine, SamplingParams
    from runtime.models.tiny_lm import TinyLm

    torch.set_num_threads(threads)
    spec = LiveModelSpec.model_validate_json(spec_json)
    assert spec.lm is not None
    model = TinyLm.build(spec.lm)
    engine = ContinuousBatchingEngine(model, max_num_seqs=8, max_model_len=max_len)
    engine._cache = model.new_cache(8, max_len)
    params = [(SamplingParams(max_tokens=1, temperature=0.0), None)] * 8
    inputs = ([65] * 8, [min(128, max_len - 2)] * 8)
    for _ in range(5):
        engine._step([], inputs, [], params)
    barrier.wait()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        engine._step([], inputs, [], params)
        times.append(time.perf_counter() - t0)
    out.put(sum(times) / len(times))  # the mean: a step the scheduler preempted counts with its wait


def _run(k: int, spec: LiveModelSpec, max_len: int, threads: int, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(k)
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(spec.model_dump_json(), max_len, threads, seconds, barrier, out))
             for _ in range(k)]  # fmt: skip
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=60 + seconds) for _ in range(k)]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return statistics.median(results)


def measure_cpu_share(spec: LiveModelSpec, *, max_len: int, threads: int, seconds: float = 3.0) -> CpuShare:
    """Slowdown by busy replica processes (module doc)."""
    cores = os.cpu_count() or 1
    most = min(4, cores + 2)
    step = {k: _run(k, spec, max_len, threads, seconds) for k in range(1, most + 1)}
    ratio = {k: round(step[k] / step[1], 4) for k in step}
    beyond = [(k - cores, ratio[k] - 1.0) for k in ratio if k > cores]
    slope = sum(x * y for x, y in beyond) / sum(x * x for x, _ in beyond) if beyond else 0.0
    return CpuShare(cores=cores, slowdown_per_extra_busy=round(max(0.0, slope), 4), measured=ratio)
