"""Diagnostics that explain a routing A/B from the tidy `requests` table of its runs.

A comparison table says *that* a router changed TTFT or the prefix-cache hit rate; these functions say *why*:
where the time to first token went (waiting for admission vs admission to first token), how much of each prompt
came from the prefix cache, whether a router piled load onto one replica (over time, and within bursts of requests
that arrive at the same instant), and how much prefix reuse a trace offers at all. They are pure functions over
pandas objects (no simulation, no plotting) so that notebooks and tests share one definition of each number.

Inputs are `RunResult.requests` frames (columns request_id, model, priority, tenant, arrival_s, start_s,
first_token_s, finish_s, prompt_tokens, output_tokens, status, reason, replica, retries, cache_hit, fallback,
cached_tokens), optionally concatenated over runs with a `variant` column added.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd


def replica_label(replica: object) -> str:
    """The short name of a replica, its index ('kimi-chat-3' -> '3'), so per-replica tables and axes stay narrow."""
    return str(replica).rsplit("-", 1)[-1]


# -- where the time to first token goes ---------------------------------------------------------------------------


def latency_parts(requests: pd.DataFrame) -> pd.DataFrame:
    """The completed requests with TTFT split into its two parts, plus how much of each prompt was cached.

    TTFT = wait_s (arrival to the replica admitting the request to a prefill step: routing, gateway and replica
    queues) + prefill_s (admission to first token: the prefill of the uncached tokens, in engine steps shared with
    every other request on the replica). A prefix cache hit can only shorten the second part; a router that piles
    requests onto one replica lengthens the first. Only status 'ok' requests have all three timestamps.
    """
    r = requests[requests["status"] == "ok"].copy()
    r["ttft_s"] = r["first_token_s"] - r["arrival_s"]
    r["wait_s"] = r["start_s"] - r["arrival_s"]
    r["prefill_s"] = r["first_token_s"] - r["start_s"]
    r["uncached_tokens"] = r["prompt_tokens"] - r["cached_tokens"]
    r["cached_share"] = r["cached_tokens"] / r["prompt_tokens"]
    return r


def time_parts(parts: pd.DataFrame, by: str = "variant") -> pd.DataFrame:
    """Per group (a variant by default), the mean and median TTFT, wait and admission-to-first-token, and uncached
    prompt tokens, from `latency_parts` output.

    The means are reported because they add up (mean TTFT = mean wait + mean prefill), which lets a change in TTFT
    be attributed to its parts; medians do not add up and are there for the typical request.
    """
    return parts.groupby(by, observed=True).agg(
        ttft_mean_s=("ttft_s", "mean"),
        wait_mean_s=("wait_s", "mean"),
        prefill_mean_s=("prefill_s", "mean"),
        ttft_p50_s=("ttft_s", "median"),
        wait_p50_s=("wait_s", "median"),
        prefill_p50_s=("prefill_s", "median"),
        uncached_tokens_p50=("uncached_tokens", "median"),
        uncached_tokens_mean=("uncached_tokens", "mean"),
    )


def ttft_change(parts: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per group of `time_parts` output, the change of mean TTFT against `baseline` and the two parts it splits
    into, plus the relative change in mean uncached prompt tokens (the prefill work the prefix cache did not save).

    d_ttft_mean_s = d_wait_mean_s + d_prefill_mean_s, so whichever part is larger says whether a router won or lost
    through queueing or through prefill; uncached_tokens_change (-0.2: 20% fewer) says how much prefill work its
    cache hits removed. The baseline's own row is all zeros.
    """
    b = parts.loc[baseline]
    return pd.DataFrame(
        {
            "d_ttft_mean_s": parts["ttft_mean_s"] - b["ttft_mean_s"],
            "d_wait_mean_s": parts["wait_mean_s"] - b["wait_mean_s"],
            "d_prefill_mean_s": parts["prefill_mean_s"] - b["prefill_mean_s"],
            "uncached_tokens_change": parts["uncached_tokens_mean"] / b["uncached_tokens_mean"] - 1,
        }
    )


# -- same-instant bursts ------------------------------------------------------------------------------------------


def same_instant_bursts(requests: pd.DataFrame) -> pd.DataFrame:
    """Per arrival instant shared by at least two routed requests: `size` (requests arriving then) and `top`
    (requests of them sent to the replica that got the most), indexed by arrival_s.

    Requests that arrive together are routed on the same scraped metrics, so a router whose scores do not change
    between them (stale load terms, a prefix index updated at dispatch) can send the whole burst to one replica.
    Requests never routed (no replica) are left out.
    """
    groups = requests.dropna(subset=["replica"]).groupby("arrival_s")["replica"]
    sizes = groups.size()
    top = groups.agg(lambda s: s.value_counts().iloc[0])
    shared = sizes >= 2
    return pd.DataFrame({"size": sizes[shared], "top": top[shared]})


def burst_shares(requests: pd.DataFrame) -> pd.Series:
    """Per same-instant burst, the share of it on its most-used replica: 1.0 when the whole burst went to one
    replica, about 1 / replicas when it was dealt out evenly (round robin's floor)."""
    bursts = same_instant_bursts(requests)
    return bursts["top"] / bursts["size"]


def burst_concentration(requests: pd.DataFrame) -> float:
    """The mean over same-instant bursts of the share on the most-used replica (each burst counts once, whatever
    its size); NaN when no two requests share an arrival instant."""
    shares = burst_shares(requests)
    return float(shares.mean()) if len(shares) else float("nan")


def burst_share_on_one_replica(requests: pd.DataFrame) -> float:
    """Among all requests that share their arrival instant with another, the share sent to their burst's
    most-used replica (bursts weighted by size, unlike `burst_concentration`); NaN when there are no bursts."""
    bursts = same_instant_bursts(requests)
    return float(bursts["top"].sum() / bursts["size"].sum()) if len(bursts) else float("nan")


def shared_instant_share(arrivals: Sequence[float] | pd.Series) -> float:
    """The share of arrivals that fall on the same instant as another arrival: how bursty a replay is. A trace
    with coarse (e.g. 3-second) timestamps replayed as is gives a high share; real arrivals almost never collide."""
    counts = pd.Series(arrivals).value_counts()
    return float(counts[counts > 1].sum() / len(arrivals)) if len(arrivals) else float("nan")


# -- load per replica ---------------------------------------------------------------------------------------------


def per_replica_counts(requests: pd.DataFrame, variants: Sequence[str], n_seeds: int) -> pd.DataFrame:
    """Requests each replica served per run (pooled frame of `n_seeds` runs per variant): rows are replicas by
    short name, columns the variants in the order given.

    Round robin evens out these counts by construction; a prefix-aware router need not, which is the first sign
    of affinity concentrating load (counts, not work: prompts and outputs differ in length).
    """
    out = requests.groupby(["variant", "replica"], observed=True).size().div(n_seeds).unstack("variant")
    out = out[list(variants)]
    out.index = [replica_label(x) for x in out.index]
    return out


def in_flight(requests: pd.DataFrame, grid: np.ndarray) -> pd.DataFrame:
    """Requests in flight on each replica (arrival_s <= t < finish_s) at each time t of `grid`: rows are the grid,
    columns the replicas by short name. Use the requests of one run.

    Counts from arrival, not admission, so queued requests count as load on the replica they were sent to (right
    when the gateway dispatches on arrival, as it does without a flow-control queue).
    """
    out = {}
    for rep, g in requests.groupby("replica", observed=True):
        a, f = np.sort(g["arrival_s"].to_numpy()), np.sort(g["finish_s"].to_numpy())
        started, finished = np.searchsorted(a, grid, "right"), np.searchsorted(f, grid, "right")
        out[replica_label(rep)] = started - finished
    return pd.DataFrame(out, index=grid)


def busiest_over_mean(in_flight: pd.DataFrame) -> float:
    """The busiest replica's in-flight count over the average replica's, averaged over the times when anything is
    in flight: 1.0 is perfectly even load, the replica count is all load on one replica."""
    mean = in_flight.mean(axis=1)
    return float((in_flight.max(axis=1)[mean > 0] / mean[mean > 0]).mean())


# -- prefix reuse a trace offers ------------------------------------------------------------------------------------


def _prefix_runs(blocks: Sequence[Sequence[int]]) -> Iterator[tuple[int, int | None]]:
    """Per request, in trace order: how many leading blocks of its prompt appeared in an earlier prompt (its
    reusable prefix run), and, when that run is longer than one block, the number of block references since the
    last block of the run was last seen (None otherwise)."""
    last_seen: dict[int, int] = {}  # block -> index of its latest reference in the trace's stream of blocks
    position = 0
    for prompt in blocks:
        run = 0
        for b in prompt:
            if b not in last_seen:
                break
            run += 1
        yield run, (position - last_seen[prompt[run - 1]] if run > 1 else None)
        for b in prompt:
            position += 1
            last_seen[b] = position


def reuse_ceiling(blocks: Sequence[Sequence[int]], prompt_tokens: Sequence[int], block_tokens: int) -> float:
    """The share of prompt tokens that could come from a prefix cache if every earlier prompt's blocks stayed
    cached forever in one cache shared by all replicas: the most any router and cache size could reach.

    `blocks` are the prompts' block hashes in arrival order (Mooncake's hash_ids), `block_tokens` the tokens per
    block. A prompt reuses its leading run of previously seen blocks, and at most all but its last token (the engine
    always computes one token to produce the first output); a prompt counts at least one token.
    """
    hit, total = 0, 0
    for (run, _), n in zip(_prefix_runs(blocks), prompt_tokens, strict=True):
        n = max(1, n)
        hit += min(run * block_tokens, n - 1)
        total += n
    return hit / total if total else float("nan")


def reuse_distances(blocks: Sequence[Sequence[int]]) -> pd.Series:
    """For every prompt that reuses more than the first block (a conversation's history, not only the system
    prompt every conversation shares), the number of block references in the trace between the last use of its
    history and this reuse.

    That is an upper bound on the LRU stack distance: a cache holding at least that many blocks would still hold
    the history. Divided by the replica count, it is what one replica would see in between under perfectly affine
    and even routing; compare with a replica's prefix-cache capacity in blocks (`share_within_reach`).
    """
    return pd.Series([d for _, d in _prefix_runs(blocks) if d is not None], dtype="int64", name="reuse_distance")


def share_within_reach(distances: pd.Series, replicas: int, capacity_blocks: float) -> float:
    """The share of reuses whose distance, spread evenly over `replicas`, fits in one replica's cache of
    `capacity_blocks`: how many history reuses perfectly affine routing could hit at that cache size."""
    return float(np.mean(distances / replicas <= capacity_blocks))
