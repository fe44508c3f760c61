"""Synthetic workloads: arrival processes, token-length distributions and request attributes, in numpy.

Every function takes an injected `numpy.random.Generator` (never global state). Draws use only primitives that
consume the bit stream value by value (random, standard_exponential/normal/gamma), and processes that need two
kinds of draw use `rng.spawn`, so the numbers a seed gives do not depend on the chunk size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from odhsim.workload.schema import NO_SESSION, RequestBatch

DEFAULT_CHUNK_ROWS = 65_536


# --- arrival processes ----------------------------------------------------------------------------------------
def _bounds(duration_s: float | None, requests: int | None) -> None:
    if duration_s is None and requests is None:
        raise ValueError("give duration_s or requests (or both: whichever ends first)")
    if (duration_s is not None and duration_s <= 0) or (requests is not None and requests < 1):
        raise ValueError("duration_s must be > 0 and requests >= 1")


def _renewal(
    gaps: Callable[[int], np.ndarray], start_s: float, duration_s: float | None, chunk: int
) -> Iterator[np.ndarray]:
    """Arrival times start_s + cumulative gaps, cut at start_s + duration_s (endless without one)."""
    end, t = (math.inf if duration_s is None else start_s + duration_s), float(start_s)
    while t < end:
        times = np.cumsum(np.concatenate(([t], gaps(chunk))))[1:]  # one sequential sum: chunk-size independent
        t = float(times[-1])
        yield times[times < end] if t >= end else times


def _limit(chunks: Iterable[np.ndarray], requests: int | None) -> Iterator[np.ndarray]:
    """The chunks, non-empty ones only, cut after `requests` rows."""
    left = math.inf if requests is None else requests
    for c in chunks:
        if len(c):
            yield c[: int(min(left, len(c)))]
            left -= len(c)
        if left <= 0:
            return


def poisson_arrivals(
    rng: np.random.Generator,
    rate: float,
    *,
    duration_s: float | None = None,
    requests: int | None = None,
    start_s: float = 0.0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Iterator[np.ndarray]:
    """Poisson process at `rate` req/s: exponential inter-arrival gaps (CV 1)."""
    _bounds(duration_s, requests)
    return _limit(_renewal(lambda n: rng.standard_exponential(n) / rate, start_s, duration_s, chunk_rows), requests)


def gamma_arrivals(
    rng: np.random.Generator,
    rate: float,
    cv: float,
    *,
    duration_s: float | None = None,
    requests: int | None = None,
    start_s: float = 0.0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Iterator[np.ndarray]:
    """Bursty renewal process: gamma gaps with shape 1/cv² and mean 1/rate (cv 1 is Poisson, >1 burstier)."""
    _bounds(duration_s, requests)
    if rate <= 0 or cv <= 0:
        raise ValueError("rate and cv must be > 0")
    k = 1.0 / cv**2
    gaps = lambda n: rng.standard_gamma(k, n) / (rate * k)  # noqa: E731
    return _limit(_renewal(gaps, start_s, duration_s, chunk_rows), requests)


def diurnal_arrivals(
    rng: np.random.Generator,
    rate: float,
    amplitude: float,
    period_s: float,
    *,
    phase_s: float = 0.0,
    duration_s: float | None = None,
    requests: int | None = None,
    start_s: float = 0.0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Iterator[np.ndarray]:
    """Poisson process with rate(t) = rate·(1 + amplitude·sin(2π(t − phase_s)/period_s)), t in absolute
    seconds (peak at phase_s + period_s/4), made by thinning a Poisson process at the peak rate."""
    _bounds(duration_s, requests)
    if not 0 <= amplitude <= 1 or period_s <= 0:
        raise ValueError("amplitude must be in [0, 1] and period_s > 0")
    peak, (cand_rng, keep_rng) = rate * (1 + amplitude), rng.spawn(2)
    cands = _renewal(lambda n: cand_rng.standard_exponential(n) / peak, start_s, duration_s, chunk_rows)
    kept = (
        c[keep_rng.random(len(c)) * peak < rate * (1 + amplitude * np.sin(2 * np.pi * (c - phase_s) / period_s))]
        for c in cands
    )
    return _limit(kept, requests)


def spike_arrivals(
    rng: np.random.Generator, requests: int, start_s: float, length_s: float, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[np.ndarray]:
    """Exactly `requests` arrivals uniform in [start_s, start_s + length_s) (drawn at once: 8 bytes each)."""
    if requests < 1 or length_s <= 0:
        raise ValueError("a spike needs requests >= 1 and length_s > 0")
    times = start_s + np.sort(rng.random(requests)) * length_s
    for i in range(0, requests, chunk_rows):
        yield times[i : i + chunk_rows]


# --- token lengths --------------------------------------------------------------------------------------------
class LengthSampler(Protocol):
    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray: ...


@dataclass(frozen=True)
class FixedLength:
    value: int

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value, np.int64)


@dataclass(frozen=True)
class LogNormalLength:
    """exp(N(mu, sigma²)) rounded and clipped to [lo, hi]; build with `from_median` or `from_mean_cv`."""

    mu: float
    sigma: float
    lo: int = 1
    hi: int | None = None

    @classmethod
    def from_median(cls, median: float, sigma: float, lo: int = 1, hi: int | None = None) -> LogNormalLength:
        return cls(math.log(median), sigma, lo, hi)

    @classmethod
    def from_mean_cv(cls, mean: float, cv: float, lo: int = 1, hi: int | None = None) -> LogNormalLength:
        s2 = math.log1p(cv**2)
        return cls(math.log(mean) - s2 / 2, math.sqrt(s2), lo, hi)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        x = np.exp(self.mu + self.sigma * rng.standard_normal(n))
        return np.clip(np.rint(x), max(self.lo, 1), self.hi or 10**9).astype(np.int64)


@dataclass(frozen=True, eq=False)
class EmpiricalLength:
    """Bootstrap: draws uniformly (with replacement) from observed lengths, e.g. a trace's output column."""

    values: np.ndarray

    def __post_init__(self) -> None:
        if len(self.values) == 0:
            raise ValueError("cannot resample from an empty set of lengths")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        idx = (rng.random(n) * len(self.values)).astype(np.int64)
        return np.maximum(np.asarray(self.values, np.int64)[idx], 1)


def synthetic_batches(
    arrivals: Iterable[np.ndarray],
    prompt: LengthSampler,
    output: LengthSampler,
    prompt_rng: np.random.Generator,
    output_rng: np.random.Generator,
    *,
    source: str = "",
) -> Iterator[RequestBatch]:
    """Requests at the given arrival times with sampled prompt/output lengths (attributes left at defaults)."""
    for t in arrivals:
        n = len(t)
        yield RequestBatch.from_columns(t, prompt.sample(prompt_rng, n), output.sample(output_rng, n), source=source)


# --- attributes -----------------------------------------------------------------------------------------------
def block_hash(*parts: np.ndarray | int) -> np.ndarray:
    """A non-negative int64 id per element from integer parts (splitmix64 chain): equal parts, equal id."""
    h: np.ndarray = np.zeros(np.broadcast(*parts).shape, np.uint64)
    with np.errstate(over="ignore"):
        for p in parts:
            x = (h ^ np.asarray(p).astype(np.uint64)) + np.uint64(0x9E3779B97F4A7C15)
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = x ^ (x >> np.uint64(31))
    return (h >> np.uint64(1)).astype(np.int64)


def categorical(rng: np.random.Generator, weights: Sequence[float], n: int) -> np.ndarray:
    """n indices drawn with the given (positive, unnormalised) weights."""
    cum = np.cumsum(np.asarray(weights, np.float64))
    if len(cum) == 1:
        return np.zeros(n, np.int64)
    return np.minimum(np.searchsorted(cum / cum[-1], rng.random(n), side="right"), len(cum) - 1)


@dataclass(frozen=True)
class AttributeSpec:
    """How to label requests. Weights are over indices; None leaves that column as the source set it.

    Sessions: with probability `continue_prob` a request continues one of its tenant's `recent_sessions` most
    recently opened sessions (uniformly), else it opens a new one, so sessions last ~1/(1-p) turns and a
    tenant has a bounded set of live conversations. Prefix blocks (when `system_blocks` is not None): a request
    lists ceil(prompt/block_tokens) blocks, like Mooncake's hash_ids: the first `system_blocks` are its tenant's
    shared system prompt, the rest belong to its session (block j of a session always has the same id, so later
    turns reuse earlier ones) or, without a session, are unique to the request.
    """

    model_weights: Sequence[float] | None = None
    priority_weights: Sequence[float] | None = None
    tenant_weights: Sequence[float] | None = None
    continue_prob: float = 0.0
    recent_sessions: int = 16
    system_blocks: int | None = None
    block_tokens: int = 16
    keep: frozenset[str] = field(default_factory=frozenset)
    """Columns the source already provides ("model", "tenant", "session", "blocks", ...): left alone."""


class AttributeAssigner:
    """Labels the chunks of one source in order; stateful (session pools), so make a new one for each pass."""

    def __init__(self, spec: AttributeSpec, rng: Callable[[str], np.random.Generator], *, salt: int = 0) -> None:
        self.spec, self.salt = spec, salt
        self.rngs = {k: rng(k) for k in ("model", "priority", "tenant")}
        self.new_rng, self.pick_rng = rng("session").spawn(2)
        self.pools: dict[int, np.ndarray] = {}
        self.next_session = salt << 40  # disjoint id ranges per source
        self.row = 0

    def __call__(self, batch: RequestBatch) -> RequestBatch:
        spec, n, cols = self.spec, len(batch), {}
        for name, w in (
            ("model", spec.model_weights),
            ("priority", spec.priority_weights),
            ("tenant", spec.tenant_weights),
        ):
            if w is not None and name not in spec.keep:
                cols[name] = categorical(self.rngs[name], w, n)
        if spec.continue_prob > 0 and "session" not in spec.keep:
            cols["session"] = self._sessions(cols.get("tenant", batch.tenant))
        batch = batch.with_columns(**{k: v.astype(getattr(batch, k).dtype) for k, v in cols.items()})
        if spec.system_blocks is not None and "blocks" not in spec.keep and not batch.has_blocks:
            batch = self._blocks(batch)
        self.row += n
        return batch

    def _sessions(self, tenant: np.ndarray) -> np.ndarray:
        n, recent = len(tenant), self.spec.recent_sessions
        is_new = self.new_rng.random(n) >= self.spec.continue_prob
        pick = self.pick_rng.random(n)
        order = np.argsort(tenant, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(tenant[order])) + 1) if n else []
        for rows in groups:  # a tenant's first request ever opens a session
            if int(tenant[rows[0]]) not in self.pools:
                is_new[rows[0]] = True
        ids = np.full(n, NO_SESSION, np.int64)
        ids[is_new] = self.next_session + np.arange(int(is_new.sum()))
        self.next_session += int(is_new.sum())
        for rows in groups:
            t = int(tenant[rows[0]])
            old = self.pools.get(t, np.zeros(0, np.int64))
            hist = np.concatenate([old, ids[rows][is_new[rows]]])
            known = len(old) + np.cumsum(is_new[rows])  # sessions opened up to and including each row
            cont = ~is_new[rows]
            back = (pick[rows][cont] * np.minimum(known[cont], recent)).astype(np.int64)  # 0 = newest
            ids[rows[cont]] = hist[known[cont] - 1 - back]
            self.pools[t] = hist[-recent:]
        return ids

    def _blocks(self, batch: RequestBatch) -> RequestBatch:
        k, bt = self.spec.system_blocks or 0, self.spec.block_tokens
        nb = -(-batch.prompt_tokens // bt)
        offsets = np.zeros(len(batch) + 1, np.int64)
        np.cumsum(nb, out=offsets[1:])
        owner = np.repeat(np.arange(len(batch)), nb)
        j = np.arange(offsets[-1]) - offsets[owner]
        session = batch.session[owner]
        request = (self.salt << 40) + self.row + owner
        ids = np.where(
            j < k,
            block_hash(1, batch.tenant[owner], j),
            np.where(session >= 0, block_hash(2, session, j), block_hash(3, request, j)),
        )
        return batch.with_columns(block_offsets=offsets, block_ids=ids)
