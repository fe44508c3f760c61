"""How much continuous batching buys: generated tokens/s with `concurrency` requests in flight vs one at a time.

In-process (no HTTP), greedy, `ignore_eos` so every request generates exactly `max_tokens` tokens.
Run: `python -m runtime.bench_batching [d_model n_layers]`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from odhsim.scenario.live import TinyLmSpec
from runtime.models.continuous_batching import ContinuousBatchingEngine, SamplingParams
from runtime.models.tiny_lm import TinyLm
from runtime.tokenizer import encode


def _prompts(n: int) -> list[list[int]]:
    return [encode(f"request {i}: " + "lorem ipsum " * (i % 4)) for i in range(n)]


async def _run(
    model: TinyLm, concurrency: int, requests: int, max_tokens: int, threads: int | None
) -> tuple[float, float]:
    engine = ContinuousBatchingEngine(model, max_num_seqs=concurrency, threads=threads)
    await engine.start()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    prompts = _prompts(requests)
    try:
        t0 = time.perf_counter()
        for p in prompts:
            await engine.generate(p, params)
        sequential_s = time.perf_counter() - t0

        gate = asyncio.Semaphore(concurrency)

        async def one(p: list[int]) -> None:
            async with gate:
                await engine.generate(p, params)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(p) for p in prompts))
        concurrent_s = time.perf_counter() - t0
    finally:
        await engine.close()
    return sequential_s, concurrent_s


def measure_batching(
    spec: TinyLmSpec,
    concurrency: int = 16,
    requests: int = 32,
    max_tokens: int = 32,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Tokens/s sequential (one request at a time) and at `concurrency`, and their ratio (> 1: batching helps)."""
    longest = max(len(p) for p in _prompts(requests))
    if longest + max_tokens > spec.max_seq_len:
        raise ValueError(f"max_tokens {max_tokens} + prompts of {longest} tokens exceed max_seq_len {spec.max_seq_len}")
    model = TinyLm.build(spec)
    sequential_s, concurrent_s = asyncio.run(_run(model, concurrency, requests, max_tokens, threads))
    tokens = requests * max_tokens
    seq_tps, conc_tps = tokens / sequential_s, tokens / concurrent_s
    return {
        "concurrency": concurrency,
        "requests": requests,
        "max_tokens": max_tokens,
        "threads": threads,
        "sequential_tokens_per_s": seq_tps,
        "concurrent_tokens_per_s": conc_tps,
        "ratio": conc_tps / seq_tps,
    }


if __name__ == "__main__":
    d_model, n_layers = (int(a) for a in (sys.argv[1:3] if len(sys.argv) >= 3 else ("128", "2")))
    result = measure_batching(TinyLmSpec(d_model=d_model, n_layers=n_layers, n_heads=4, max_seq_len=512, seed=0))
    print(
        f"d_model {d_model}, {n_layers} layers, {result['threads']} thread(s): "
        f"sequential {result['sequential_tokens_per_s']:.0f} tok/s, concurrency {result['concurrency']} "
        f"{result['concurrent_tokens_per_s']:.0f} tok/s, ratio {result['ratio']:.1f}x"
    )
