"""Time the live engine's steps in-process, over a grid: the same runtime/models classes a replica serves.

LLM: a `ContinuousBatchingEngine` over a `TinyLm` of the model's `live.lm` spec; each grid point calls the
engine's own step (`_step`: cache moves, one decode pass over the running rows, each new prompt's prefill,
sampling) on its single worker thread through the event loop, exactly as its scheduler does, so the thread hop
is in the time. Prefill points prefill one prompt of the given length; decode points decode `batch` sequences of
`context` cached tokens each. Fixed models: `predict` (what the `DynamicBatcher` runs) on `batch` rows.
Each point is timed `repeats` times after a warm-up; the median is kept. The live runtime is imported inside the
functions (this module sits in the CLI layer: tests/test_layering.py).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from odhsim.scenario.live import LiveModelSpec

Tick = Callable[[], None]


@dataclass(frozen=True)
class LlmGrid:
    prompts: tuple[int, ...]
    batches: tuple[int, ...]
    contexts: tuple[int, ...]
    holdout_prompts: tuple[int, ...]
    holdout_batches: tuple[int, ...]
    repeats: int


@dataclass(frozen=True)
class FixedGrid:
    batches: tuple[int, ...]
    holdout_batches: tuple[int, ...]
    repeats: int


def llm_grid(max_len: int, max_seqs: int, quick: bool) -> LlmGrid:
    """Prompt lengths, batch sizes and per-sequence contexts within the engine's limits; whole values held out."""
    if quick:
        prompts, batches, contexts = (8, 32, 64, 128, 256, 384), (1, 2, 4, 8, 16), (32, 128, 384)
        hp, hb, reps = (64,), (4,), 3
    else:
        prompts = (8, 16, 32, 48, 64, 96, 128, 192, 256, 320, 384, 448)
        batches, contexts = (1, 2, 3, 4, 6, 8, 10, 12, 16, 24, 32), (16, 64, 128, 256, 384, 480)
        hp, hb, reps = (48, 192, 320), (3, 10), 15
    prompts = tuple(p for p in prompts if p < max_len)
    batches = tuple(b for b in batches if b <= max_seqs)
    contexts = tuple(c for c in contexts if c < max_len)
    held_p, held_b = tuple(p for p in hp if p in prompts), tuple(b for b in hb if b in batches)
    return LlmGrid(prompts, batches, contexts, held_p, held_b, reps)


def fixed_grid(max_batch: int, quick: bool) -> FixedGrid:
    sizes = (1, 2, 4, 8, 16) if quick else (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
    held = (4,) if quick else (3, 6, 12, 24, 48)
    batches = tuple(b for b in sizes if b <= max_batch)
    if max_batch not in batches:
        batches = (*batches, max_batch)
    return FixedGrid(batches, tuple(b for b in held if b in batches and b != max_batch), 5 if quick else 31)


def _median_times(
    fns: list[Callable[[], Any]], repeats: int, run: Callable[[Callable[[], Any]], float], tick: Tick | None
) -> list[float]:
    """Median time of each fn over `repeats` rounds; each round visits every point, so a burst of load elsewhere
    on the machine spreads over the grid instead of skewing the points timed while it lasted."""
    for fn in fns:
        run(fn)  # warm-up (allocations, kernel choice)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            times[i].append(run(fn))
        if tick:
            tick()
    return [statistics.median(t) for t in times]


class _Worker:
    """One worker thread behind an event loop, as the engine and the batcher run their passes."""

    def __init__(self, threads: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import torch

        self.loop = asyncio.new_event_loop()
        self.pool = ThreadPoolExecutor(1, initializer=lambda: torch.set_num_threads(threads))

    def time(self, fn: Callable[[], Any]) -> float:
        async def once() -> float:
            t0 = time.perf_counter()
            await self.loop.run_in_executor(self.pool, fn)
            return time.perf_counter() - t0

        return self.loop.run_until_complete(once())

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.loop.close()


def time_llm_steps(
    spec: LiveModelSpec,
    *,
    max_model_len: int,
    grid: LlmGrid,
    device: str,
    threads: int,
    base_dir: str = ".",
    tick: Tick | None = None,
) -> pd.DataFrame:
    """One row per grid point: prefill_tokens, prefill_sum_sq, decode_batch, decode_context, duration_s (median)."""
    import torch

    from runtime.models.continuous_batching import ContinuousBatchingEngine, SamplingParams
    from runtime.models.sampling import request_generator
    from runtime.models.tiny_lm import TinyLm

    assert spec.lm is not None
    model = TinyLm.build(spec.lm, base_dir=base_dir, device=device)
    max_seqs = max(grid.batches)
    engine = ContinuousBatchingEngine(model, max_num_seqs=max_seqs, max_model_len=max_model_len)
    engine._cache = model.new_cache(max_seqs, max_model_len)
    sampled = (SamplingParams(max_tokens=1, temperature=1.0), request_generator(0))  # as `odhsim replay` asks
    worker = _Worker(threads)
    rows: list[dict[str, Any]] = []
    fns: list[Callable[[], Any]] = []
    for p in grid.prompts:
        ids = [i % 256 for i in range(p)]
        fns.append(lambda ids=ids: engine._step([], ([], []), [(0, ids)], [sampled]))
        rows.append({"prefill_tokens": p, "prefill_sum_sq": p * p, "decode_batch": 0, "decode_context": 0})
    for b in grid.batches:
        for c in grid.contexts:
            inputs = ([65] * b, [c] * b)
            fns.append(lambda inputs=inputs, b=b: engine._step([], inputs, [], [sampled] * b))
            rows.append({"prefill_tokens": 0, "prefill_sum_sq": 0, "decode_batch": b, "decode_context": b * c})
    try:
        for row, dt in zip(rows, _median_times(fns, grid.repeats, worker.time, tick), strict=True):
            row["duration_s"] = dt
    finally:
        worker.close()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return pd.DataFrame(rows)


def time_fixed_batches(
    spec: LiveModelSpec, *, grid: FixedGrid, device: str, threads: int, base_dir: str = ".", tick: Tick | None = None
) -> pd.DataFrame:
    """One row per batch size: batch, duration_s (median of repeats) of one `predict` pass."""
    import torch

    from runtime.models.classifiers import build_classifier, predict

    arch = spec.mlp if spec.mlp is not None else spec.cnn
    assert arch is not None
    model = build_classifier(arch, base_dir=base_dir, device=device)
    gen = torch.Generator().manual_seed(0)
    worker = _Worker(threads)
    xs = [torch.rand((b, *model.input_shape), generator=gen) for b in grid.batches]
    try:
        fns: list[Callable[[], Any]] = [lambda x=x: predict(model, x) for x in xs]
        times = _median_times(fns, grid.repeats, worker.time, tick)
        rows = [{"batch": b, "duration_s": t} for b, t in zip(grid.batches, times, strict=True)]
    finally:
        worker.close()
    return pd.DataFrame(rows)


def grid_points(grid: LlmGrid | FixedGrid) -> int:
    """Progress ticks of timing this grid: one per round."""
    return grid.repeats


def grid_doc(grid: LlmGrid | FixedGrid) -> dict[str, Sequence[int] | int]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in grid.__dict__.items()}
