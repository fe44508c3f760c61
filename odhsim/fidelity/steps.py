"""What the two engines' step logs say, side by side: where a latency gap comes from.

Both engines write steps.parquet with the same columns (odhsim/results/steps.py). Compared at matched shapes
(decode-only steps by batch size; prefill cost per prompt token), they tell whether the engine itself runs at the
simulated speed; the busy fraction and the time-averaged batch tell whether it does the same amount of work. When
the steps agree and the latencies do not, the gap is outside the engine (HTTP, gateway, client, the CPU they share).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

DECODE_BINS: tuple[tuple[str, int, int], ...] = (("b1", 1, 1), ("b2_4", 2, 4), ("b5_16", 5, 16), ("b17_up", 17, 10**9))
MIN_PREFILL_TOKENS = 32
"""Prefill cost per token is read on steps computing at least this many prompt tokens (fixed costs dominate below)."""


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else math.nan


def step_metrics(steps: pd.DataFrame, span_s: float) -> dict[str, float]:
    """Step figures of one engine's LLM steps over `span_s` seconds of run."""
    llm = steps[steps["kind"].astype(str) == "llm"] if "kind" in steps.columns else steps
    dur = llm["duration_s"].to_numpy(float)
    prefill = llm["prefill_tokens"].to_numpy(float)
    decode = llm["decode_seqs"].to_numpy(float)
    out: dict[str, float] = {}
    decode_only = prefill == 0
    for label, lo, hi in DECODE_BINS:
        sel = decode_only & (decode >= lo) & (decode <= hi)
        out[f"step_decode_{label}_s"] = _median(dur[sel])
    big = prefill >= MIN_PREFILL_TOKENS
    out["step_prefill_per_token_s"] = _median(dur[big] / prefill[big])
    busy = float(dur.sum())
    out["engine_busy_fraction"] = busy / span_s if span_s > 0 else math.nan
    out["mean_decode_batch"] = float((decode * dur).sum() / busy) if busy > 0 else math.nan
    out["steps"] = float(len(llm))
    return out
