"""odhsim.analysis.diagnostics on small hand-built requests tables whose answers can be worked out by hand."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from odhsim.analysis.diagnostics import (
    burst_concentration,
    burst_share_on_one_replica,
    burst_shares,
    busiest_over_mean,
    in_flight,
    latency_parts,
    per_replica_counts,
    replica_label,
    reuse_ceiling,
    reuse_distances,
    same_instant_bursts,
    share_within_reach,
    shared_instant_share,
    time_parts,
    ttft_change,
)

REPLICAS = ["chat-a", "chat-b", "chat-c"]
DEFAULTS: dict[str, Any] = {
    "model": "chat",
    "priority": "normal",
    "tenant": "t",
    "arrival_s": 0.0,
    "start_s": 0.0,
    "first_token_s": 0.0,
    "finish_s": 1.0,
    "prompt_tokens": 100,
    "output_tokens": 10,
    "status": "ok",
    "reason": "",
    "replica": "chat-a",
    "retries": 0,
    "cache_hit": False,
    "fallback": False,
    "cached_tokens": 0,
}


def requests(*rows: dict[str, Any]) -> pd.DataFrame:
    """A requests table shaped like RunResult.requests: one row per dict, unnamed columns at their defaults, the
    replica categorical over REPLICAS (None: never routed)."""
    df = pd.DataFrame([{"request_id": i, **DEFAULTS, **row} for i, row in enumerate(rows)])
    df["replica"] = pd.Categorical(df["replica"], categories=REPLICAS)
    df["status"] = pd.Categorical(df["status"], categories=["ok", "shed", "failed", "timeout"])
    return df


def burst(*placements: tuple[float, str | None]) -> pd.DataFrame:
    return requests(*({"arrival_s": t, "replica": r} for t, r in placements))


@pytest.mark.parametrize(("replica", "label"), [("kimi-chat-3", "3"), ("chat-a", "a"), ("solo", "solo"), (7, "7")])
def test_replica_label(replica, label) -> None:
    assert replica_label(replica) == label


# -- TTFT parts ---------------------------------------------------------------------------------------------------


def test_latency_parts_splits_ttft_and_keeps_only_completed_requests() -> None:
    r = requests(
        {"arrival_s": 1.0, "start_s": 1.5, "first_token_s": 2.0, "prompt_tokens": 100, "cached_tokens": 60},
        {"arrival_s": 2.0, "start_s": 4.0, "first_token_s": 4.25, "prompt_tokens": 8, "cached_tokens": 0},
        {"arrival_s": 3.0, "start_s": np.nan, "first_token_s": np.nan, "status": "shed"},
    )
    out = latency_parts(r)
    assert list(out["request_id"]) == [0, 1]
    cols = ["ttft_s", "wait_s", "prefill_s", "uncached_tokens", "cached_share"]
    assert out[cols].to_numpy().tolist() == [[1.0, 0.5, 0.5, 40, 0.6], [2.25, 2.0, 0.25, 8, 0.0]]
    assert len(r) == 3 and "ttft_s" not in r  # the input is not modified


def parts_frame(rows: dict[str, list[tuple[float, float, float, int]]]) -> pd.DataFrame:
    """latency_parts-shaped rows per variant: (ttft_s, wait_s, prefill_s, uncached_tokens)."""
    out = [
        {"variant": v, "ttft_s": t, "wait_s": w, "prefill_s": p, "uncached_tokens": u}
        for v, rs in rows.items()
        for t, w, p, u in rs
    ]
    df = pd.DataFrame(out)
    df["variant"] = pd.Categorical(df["variant"], categories=[*rows, "unused"])
    return df


TIME_PARTS_CASES = {
    "one request each": (
        {"rr": [(1.0, 0.25, 0.75, 100)], "llmd": [(0.5, 0.25, 0.25, 20)]},
        {
            "rr": (1.0, 0.25, 0.75, 1.0, 0.25, 0.75, 100.0, 100.0),
            "llmd": (0.5, 0.25, 0.25, 0.5, 0.25, 0.25, 20.0, 20.0),
        },
    ),
    "means add up, medians need not": (
        {"rr": [(1.0, 0.0, 1.0, 10), (2.0, 2.0, 0.0, 30), (9.0, 1.0, 8.0, 50)]},
        {"rr": (4.0, 1.0, 3.0, 2.0, 1.0, 1.0, 30.0, 30.0)},
    ),
}
TIME_PARTS_COLUMNS = [
    "ttft_mean_s",
    "wait_mean_s",
    "prefill_mean_s",
    "ttft_p50_s",
    "wait_p50_s",
    "prefill_p50_s",
    "uncached_tokens_p50",
    "uncached_tokens_mean",
]


@pytest.mark.parametrize("case", list(TIME_PARTS_CASES))
def test_time_parts(case) -> None:
    rows, expected = TIME_PARTS_CASES[case]
    out = time_parts(parts_frame(rows))
    assert list(out.columns) == TIME_PARTS_COLUMNS
    assert list(out.index) == list(rows)  # unobserved categories are left out
    for variant, values in expected.items():
        assert tuple(out.loc[variant]) == pytest.approx(values)
    assert (out["ttft_mean_s"] - out["wait_mean_s"] - out["prefill_mean_s"]).abs().max() < 1e-12


def test_time_parts_by_another_column() -> None:
    df = parts_frame({"rr": [(1.0, 0.5, 0.5, 10), (3.0, 1.0, 2.0, 30)]}).assign(model=["a", "b"])
    assert time_parts(df, by="model")["ttft_mean_s"].to_dict() == {"a": 1.0, "b": 3.0}


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("rr", (0.0, 0.0, 0.0, 0.0)),
        ("llmd", (-0.5, 0.25, -0.75, -0.75)),  # more waiting, much less prefill: TTFT won through prefill
        ("lr", (0.25, 0.25, 0.0, 0.0)),
    ],
)
def test_ttft_change(variant, expected) -> None:
    parts = pd.DataFrame(
        {
            "ttft_mean_s": [1.0, 0.5, 1.25],
            "wait_mean_s": [0.25, 0.5, 0.5],
            "prefill_mean_s": [0.75, 0.0, 0.75],
            "uncached_tokens_mean": [400.0, 100.0, 400.0],
        },
        index=["rr", "llmd", "lr"],
    )
    out = ttft_change(parts, "rr")
    assert list(out.columns) == ["d_ttft_mean_s", "d_wait_mean_s", "d_prefill_mean_s", "uncached_tokens_change"]
    assert tuple(out.loc[variant]) == pytest.approx(expected)


# -- same-instant bursts ------------------------------------------------------------------------------------------

# Each case: (arrival instant, replica) per request; expected (size, top) per burst, burst_shares, mean over bursts
# (burst_concentration), share of all burst requests (burst_share_on_one_replica).
BURST_CASES = {
    "4 at once, 3 on a and 1 on b": (
        [(0.0, "chat-a"), (0.0, "chat-a"), (0.0, "chat-b"), (0.0, "chat-a")],
        {0.0: (4, 3)},
        0.75,
        0.75,
    ),
    "a whole burst on one replica": ([(5.0, "chat-c")] * 3, {5.0: (3, 3)}, 1.0, 1.0),
    "dealt out in turn (round robin's floor)": (
        [(1.0, r) for r in ["chat-a", "chat-b", "chat-c"] * 2],
        {1.0: (6, 2)},
        1 / 3,
        1 / 3,
    ),
    "two bursts and a lone arrival: mean over bursts vs weighted by size": (
        [(0.0, "chat-a")] * 3 + [(0.0, "chat-b"), (1.0, "chat-a"), (1.0, "chat-b"), (2.0, "chat-c")],
        {0.0: (4, 3), 1.0: (2, 1)},
        (0.75 + 0.5) / 2,
        4 / 6,
    ),
    "no instant shared": ([(0.0, "chat-a"), (0.5, "chat-a"), (1.0, "chat-b")], {}, math.nan, math.nan),
    "requests never routed do not count": ([(0.0, "chat-a"), (0.0, None), (1.0, None)], {}, math.nan, math.nan),
}


@pytest.mark.parametrize("case", list(BURST_CASES))
def test_bursts(case) -> None:
    placements, expected, mean_share, pooled_share = BURST_CASES[case]
    r = burst(*placements)
    bursts = same_instant_bursts(r)
    assert {t: (int(row["size"]), int(row["top"])) for t, row in bursts.iterrows()} == expected
    shares = burst_shares(r)
    assert shares.to_dict() == pytest.approx({t: top / size for t, (size, top) in expected.items()})
    assert burst_concentration(r) == pytest.approx(mean_share, nan_ok=True)
    assert burst_share_on_one_replica(r) == pytest.approx(pooled_share, nan_ok=True)


@pytest.mark.parametrize(
    ("arrivals", "share"),
    [
        ([0.0, 0.0, 1.0, 2.0, 2.0, 2.0], 5 / 6),
        ([0.0, 1.0, 2.0], 0.0),
        ([3.0, 3.0], 1.0),
        ([], math.nan),
    ],
)
def test_shared_instant_share(arrivals, share) -> None:
    assert shared_instant_share(arrivals) == pytest.approx(share, nan_ok=True)
    assert shared_instant_share(pd.Series(arrivals, dtype=float)) == pytest.approx(share, nan_ok=True)


# -- load per replica ---------------------------------------------------------------------------------------------


def test_per_replica_counts_averages_over_seeds_in_variant_order() -> None:
    served = {("rr", "chat-a"): 4, ("rr", "chat-b"): 4, ("llmd", "chat-a"): 7, ("llmd", "chat-c"): 1}
    r = requests(*({"variant": v, "replica": rep} for (v, rep), n in served.items() for _ in range(n)))
    out = per_replica_counts(r, ["rr", "llmd"], n_seeds=2)
    assert list(out.columns) == ["rr", "llmd"]
    assert list(out.index) == ["a", "b", "c"]
    expected = pd.DataFrame({"rr": [2.0, 2.0, math.nan], "llmd": [3.5, math.nan, 0.5]}, index=["a", "b", "c"])
    pd.testing.assert_frame_equal(out, expected, check_names=False)  # NaN: the variant never used that replica


def test_in_flight_counts_arrival_until_finish() -> None:
    r = requests(
        {"replica": "chat-a", "arrival_s": 0.0, "finish_s": 2.0},
        {"replica": "chat-a", "arrival_s": 1.0, "finish_s": 3.0},
        {"replica": "chat-b", "arrival_s": 1.5, "finish_s": 1.8},
    )
    grid = np.array([0.0, 1.0, 1.5, 2.0, 3.0])
    out = in_flight(r, grid)
    assert list(out.index) == list(grid)
    assert out.to_dict(orient="list") == {"a": [1, 2, 2, 1, 0], "b": [0, 0, 1, 0, 0]}  # c served nothing


@pytest.mark.parametrize(
    ("counts", "ratio"),
    [
        ([[1, 1]], 1.0),  # even
        ([[2, 0]], 2.0),  # all on one of two
        ([[4, 0, 0, 0]], 4.0),  # all on one of four: the replica count
        ([[0, 0], [3, 1]], 1.5),  # idle instants are left out
        ([[1, 0], [2, 1]], (2.0 + 2 / 1.5) / 2),
    ],
)
def test_busiest_over_mean(counts, ratio) -> None:
    assert busiest_over_mean(pd.DataFrame(counts, columns=list("abcd")[: len(counts[0])])) == pytest.approx(ratio)


# -- prefix reuse a trace offers ------------------------------------------------------------------------------------

# Each case: prompts' block hashes, prompt tokens, block size; expected reuse ceiling and reuse distances.
REUSE_CASES = {
    "histories grow, a system block is shared": (
        [[1, 2], [1, 2, 3], [1, 9], [1, 2, 3, 4]],
        [1000, 1500, 600, 1000],
        512,
        (0 + 1024 + 512 + 999) / 4100,  # the last prompt reuses 3 blocks but at most all but its last token
        [0, 2],  # [1, 2, 3] right after [1, 2]; [1, 2, 3, 4] with [1, 9] (2 blocks) between
    ),
    "only a leading run of seen blocks counts": ([[1, 2], [3, 2]], [100, 100], 16, 0.0, []),
    "a one-block run is a hit but no history reuse": ([[1], [1]], [32, 32], 16, 16 / 64, []),
    "an empty prompt counts one token and never hits": ([[1], [1]], [0, 0], 16, 0.0, []),
    "prompts without blocks": ([[], []], [10, 10], 16, 0.0, []),
    "no prompts": ([], [], 16, math.nan, []),
}


@pytest.mark.parametrize("case", list(REUSE_CASES))
def test_reuse(case) -> None:
    blocks, tokens, block_tokens, ceiling, distances = REUSE_CASES[case]
    assert reuse_ceiling(blocks, tokens, block_tokens) == pytest.approx(ceiling, nan_ok=True)
    assert reuse_distances(blocks).tolist() == distances


def test_reuse_ceiling_needs_a_length_per_prompt() -> None:
    with pytest.raises(ValueError):
        reuse_ceiling([[1], [1]], [10], 16)


@pytest.mark.parametrize(("capacity", "share"), [(0, 0.25), (2, 0.75), (2.5, 0.75), (3, 1.0), (100, 1.0)])
def test_share_within_reach(capacity, share) -> None:
    # 6 replicas: per replica the distances are 0, 1, 2 and 3 blocks
    assert share_within_reach(pd.Series([0, 6, 12, 18]), 6, capacity) == pytest.approx(share)
