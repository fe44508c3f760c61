"""Turns a validated `WorkloadConfig` into a `Workload`: a re-iterable, seeded stream of `RequestBatch` chunks.

Why a plan and not a list of requests: the simulator may replay a workload twice (e.g. A/B runs) and traces can
be huge, so `Workload.batches()` rebuilds every source iterator, with fresh generators from the named RNG streams,
on each call. Each source draws from its own streams ("workload.<name or sourceN>.arrivals", ".prompt",
".output", ".sample", ".model", ".priority", ".tenant", ".session"), so adding a source or changing one never
changes another's numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from odhsim.errors import ScenarioError, TraceError
from odhsim.rng import RngStreams
from odhsim.workload import transforms as tf
from odhsim.workload.config import (
    DiurnalSource,
    FixedDist,
    GammaSource,
    LogNormalDist,
    PoissonSource,
    ResampleDist,
    SpikeSource,
    TraceSource,
    WorkloadConfig,
)
from odhsim.workload.generators import (
    AttributeAssigner,
    AttributeSpec,
    EmpiricalLength,
    FixedLength,
    LengthSampler,
    LogNormalLength,
    block_hash,
    diurnal_arrivals,
    gamma_arrivals,
    poisson_arrivals,
    spike_arrivals,
    synthetic_batches,
)
from odhsim.workload.loaders import DEFAULT_CHUNK_ROWS, TraceReader, open_trace
from odhsim.workload.schema import PRIORITY_CLASSES, RequestBatch

SYNTHETIC_BLOCK_TOKENS = 16


@dataclass(frozen=True, eq=False)
class Workload:
    """A deterministic, re-iterable workload: `batches()` yields merged, time-sorted chunks."""

    source_names: tuple[str, ...]
    model_names: tuple[str, ...]
    tenant_names: tuple[str, ...]
    block_tokens: int
    readers: tuple[TraceReader, ...]
    """The trace sources' readers; their `.stats` (skipped, clamped) describe the latest pass."""
    chunk_rows: int
    max_requests: int | None
    _plans: tuple[Callable[[], Iterator[RequestBatch]], ...]

    def batches(self) -> Iterator[RequestBatch]:
        merged = tf.merge([plan() for plan in self._plans], self.chunk_rows)
        return tf.limit(merged, self.max_requests)


def resolve_trace_path(path: str, base_dir: Path, where: str) -> Path:
    """A trace path from the scenario, relative to the scenario's folder; TraceError names both when absent."""
    p = Path(path).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if not p.is_file():
        raise TraceError(f"{p}: trace file not found ({where})")
    return p


def trace_refs(cfg: WorkloadConfig) -> list[tuple[tuple[int | str, ...], TraceSource | ResampleDist]]:
    """Every trace file the workload reads, with the path of its `path` field (for errors that name the line)."""
    refs: list[tuple[tuple[int | str, ...], TraceSource | ResampleDist]] = []
    for i, src in enumerate(cfg.sources):
        if isinstance(src, TraceSource):
            refs.append((("workload", "sources", i, "path"), src))
            continue
        for column in ("prompt_tokens", "output_tokens"):
            dist = getattr(src, column)
            if isinstance(dist, ResampleDist):
                refs.append((("workload", "sources", i, column, "path"), dist))
    return refs


def _weights(weights: Mapping[str, float] | None, names: Sequence[str], where: str) -> np.ndarray | None:
    """Weights by name -> an array over `names` (0 for names not listed); None when not configured."""
    if weights is None:
        return None
    unknown = [k for k in weights if k not in names]
    if unknown:
        raise ScenarioError(f"{where}: unknown name(s) {unknown}; known: {list(names)}")
    return np.array([weights.get(n, 0.0) for n in names])


def _pick(src: Any, cfg: WorkloadConfig, field: str, names: Sequence[str], where: str) -> np.ndarray | None:
    """The source's own weights for `field` if it has them, else the workload-wide ones."""
    own = getattr(src, field)
    return _weights(own or getattr(cfg, field), names, f"{where}.{field}" if own else f"workload.{field}")


def _tenants(cfg: WorkloadConfig, given: Sequence[str] | None) -> list[str]:
    mentioned = [t for w in (cfg.tenants, *(s.tenants for s in cfg.sources)) for t in (w or {})]
    if given is not None:
        unknown = sorted(set(mentioned) - set(given))
        if unknown:
            raise ScenarioError(f"workload.tenants: unknown tenant(s) {unknown}; known: {list(given)}")
        return list(given)
    return list(dict.fromkeys(mentioned)) or ["default"]


class _Lengths:
    """Builds length samplers; resampled traces are read once per (file, filter) and shared."""

    def __init__(self, base_dir: Path, chunk_rows: int) -> None:
        self.base_dir, self.chunk_rows = base_dir, chunk_rows
        self.cache: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, d: FixedDist | LogNormalDist | ResampleDist, where: str) -> LengthSampler:
        if isinstance(d, FixedDist):
            return FixedLength(d.value)
        if isinstance(d, LogNormalDist):
            if d.median is not None and d.sigma is not None:
                return LogNormalLength.from_median(d.median, d.sigma, d.min, d.max)
            return LogNormalLength.from_mean_cv(d.mean or 1.0, d.cv or 0.0, d.min, d.max)
        path = resolve_trace_path(d.path, self.base_dir, where)
        key = (path, d.format, d.trace_filter)
        if key not in self.cache:
            reader = open_trace(path, d.format, chunk_rows=self.chunk_rows, trace_filter=d.trace_filter)
            self.cache[key] = reader.token_columns()
        prompt, output = self.cache[key]
        return EmpiricalLength(prompt if d.column == "prompt" else output)


def build_workload(
    cfg: WorkloadConfig | Mapping[str, Any],
    *,
    model_names: Sequence[str],
    tenant_names: Sequence[str] | None = None,
    streams: RngStreams,
    base_dir: Path | str = ".",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Workload:
    """Validate names and files now (errors name the field or file), and plan each source for later passes.

    Tenants: `tenant_names` if given (weights must name only those), else the names the config mentions, in
    order (or ["default"]). Models and tenants without weights all get index 0; priorities default to normal.
    """
    cfg = cfg if isinstance(cfg, WorkloadConfig) else WorkloadConfig.model_validate(cfg)
    base_dir, models, tenants = Path(base_dir), list(model_names), _tenants(cfg, tenant_names)
    lengths = _Lengths(base_dir, chunk_rows)
    readers: dict[int, TraceReader] = {}
    for i, src in enumerate(cfg.sources):
        if isinstance(src, TraceSource):
            path = resolve_trace_path(src.path, base_dir, f"workload.sources[{i}].path")
            readers[i] = open_trace(
                path,
                src.format,
                chunk_rows=chunk_rows,
                on_error=src.on_error,
                trace_filter=src.trace_filter,
                model_names=models,
                tenant_names=tenants,
            )
    trace_bt = {r.block_tokens for r in readers.values() if r.block_tokens}
    prefix_bt = cfg.prefix.block_tokens if cfg.prefix else None
    if len(trace_bt) > 1 or (trace_bt and prefix_bt and prefix_bt not in trace_bt):
        raise ScenarioError(f"workload.prefix.block_tokens: {prefix_bt} conflicts with the traces' {trace_bt}")
    block_tokens = next(iter(trace_bt), None) or prefix_bt or SYNTHETIC_BLOCK_TOKENS
    remap_blocks = len(trace_bt) > 0 and sum("blocks" in r.provides for r in readers.values()) > 1

    plans, names = [], []
    for i, src in enumerate(cfg.sources):
        name, where = src.name or f"source{i}", f"workload.sources[{i}]"
        prefix = f"workload.{name}"

        spec = AttributeSpec(
            model_weights=_pick(src, cfg, "models", models, where),
            priority_weights=_pick(src, cfg, "priorities", PRIORITY_CLASSES, where),
            tenant_weights=_pick(src, cfg, "tenants", tenants, where),
            continue_prob=cfg.sessions.continue_prob,
            recent_sessions=cfg.sessions.recent,
            system_blocks=cfg.prefix.system_blocks if cfg.prefix else None,
            block_tokens=block_tokens,
            keep=readers[i].provides if i in readers else frozenset(),
        )
        if isinstance(src, TraceSource):
            base = _trace_plan(src, readers[i], streams, prefix)
        else:
            base = _synthetic_plan(src, streams, prefix, chunk_rows, lengths, where)
        plans.append(_labelled(base, spec, streams, prefix, i, remap_blocks and i in readers))
        names.append(name)
    return Workload(
        tuple(names),
        tuple(models),
        tuple(tenants),
        block_tokens,
        tuple(readers.values()),
        chunk_rows,
        cfg.max_requests,
        tuple(plans),
    )


def _trace_plan(
    src: TraceSource, reader: TraceReader, streams: RngStreams, prefix: str
) -> Callable[[], Iterator[RequestBatch]]:
    def plan() -> Iterator[RequestBatch]:
        it: Iterator[RequestBatch] = reader.batches()
        if src.window is not None:
            it = tf.window(it, src.window[0], src.window[1], rebase=src.rebase)
        if src.sample < 1:
            it = tf.sample(it, src.sample, streams.get(f"{prefix}.sample"))
        if src.jitter_s > 0:
            it = tf.jitter(it, src.jitter_s, streams.get(f"{prefix}.jitter"))
        if src.time_scale != 1 or src.rate_scale != 1:
            it = tf.time_scale(it, src.time_scale / src.rate_scale)
        return tf.shift(tf.limit(it, src.limit), src.start_s)

    return plan


def _synthetic_plan(
    src: PoissonSource | GammaSource | DiurnalSource | SpikeSource,
    streams: RngStreams,
    prefix: str,
    chunk_rows: int,
    lengths: _Lengths,
    where: str,
) -> Callable[[], Iterator[RequestBatch]]:
    prompt = lengths(src.prompt_tokens, f"{where}.prompt_tokens.path")
    output = lengths(src.output_tokens, f"{where}.output_tokens.path")

    def arrivals() -> Iterator[np.ndarray]:
        rng = streams.get(f"{prefix}.arrivals")
        if isinstance(src, SpikeSource):
            return spike_arrivals(rng, src.requests, src.start_s, src.length_s, chunk_rows=chunk_rows)
        span = {
            "duration_s": src.duration_s,
            "requests": src.requests,
            "start_s": src.start_s,
            "chunk_rows": chunk_rows,
        }
        if isinstance(src, PoissonSource):
            return poisson_arrivals(rng, src.rate, **span)
        if isinstance(src, GammaSource):
            return gamma_arrivals(rng, src.rate, src.cv, **span)
        return diurnal_arrivals(rng, src.rate, src.amplitude, src.period_s, phase_s=src.phase_s, **span)

    def plan() -> Iterator[RequestBatch]:
        rng_p, rng_o = streams.get(f"{prefix}.prompt"), streams.get(f"{prefix}.output")
        return synthetic_batches(arrivals(), prompt, output, rng_p, rng_o, source=prefix)

    return plan


def _labelled(
    base: Callable[[], Iterator[RequestBatch]],
    spec: AttributeSpec,
    streams: RngStreams,
    prefix: str,
    index: int,
    remap_blocks: bool,
) -> Callable[[], Iterator[RequestBatch]]:
    """The source's chunks with attributes; block ids salted by source when several traces carry blocks."""

    def plan() -> Iterator[RequestBatch]:
        label = AttributeAssigner(spec, lambda k: streams.get(f"{prefix}.{k}"), salt=index)
        for b in base():
            b = label(b)
            yield b.with_columns(block_ids=block_hash(4, index, b.block_ids)) if remap_blocks else b

    return plan
