"""Fit step coefficients from per-request phase times alone (arrival, first token, finish, token counts), for an
engine that cannot be instrumented: a production vLLM's request log, or `odhsim replay`'s requests.parquet.

The model (per replica; a log without a replica column is one engine):

- Decode: request r's (output - 1) later tokens come from (output - 1) engine steps between its first token
  (a = first_token_s) and its finish (b = finish_s), so its mean step time is (b - a) / (output - 1). During
  [a, b] the decode batch is every request q of the same replica between its own first token and finish: its
  mean size is the sum of the overlaps of [a_q, b_q] with [a, b] over (b - a), and its mean total context the
  same overlaps weighted by q's context at the overlap's midpoint (q's prompt plus the tokens it has generated,
  which grow linearly from 1 at a_q to its output at b_q). Steps that also prefilled are the distinct first-token
  times of other requests inside (a, b]; their prompts spread over r's steps. So the mean step is
    pb * steps_with_prefill/n + pt * prompt_tokens/n + psq * sum_sq/n + db + ds * batch + dc * context.
- Prefill: a request that arrived while its replica held no other request met an idle engine, so its time to
  first token is one prefill step over its prompt and those of requests whose first token came at the same
  instant (prefilled in the same step): pb + pt * tokens + psq * sum_sq. Requests that queued are not used here.

All rows together are one non-negative least squares on relative error (odhsim.calibrate.fit). Time outside the
engine (HTTP, the gateway) cannot be told apart from the engine here: in a client-side log it goes into the
prefill base (per request) and the decode base (per token).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from odhsim.calibrate.fit import COEFS, FitError, nnls_relative
from odhsim.calibrate.profile_file import Overheads, StepCoefficients
from odhsim.errors import OdhsimError

NEEDED = ("arrival_s", "first_token_s", "finish_s", "prompt_tokens", "output_tokens")
SAME_STEP_S = 1e-9


class RequestLogError(OdhsimError):
    """The request log cannot be read or lacks what the fit needs; the message names the file and column."""


def read_requests(path: str | Path, model: str | None) -> pd.DataFrame:
    """The log's finished requests (status ok when there is a status column) of `model` (when given)."""
    p = Path(path)
    if not p.exists():
        raise RequestLogError(f"{p}: no such file")
    try:
        df = pd.read_parquet(p)
    except Exception as err:
        raise RequestLogError(f"{p}: not a Parquet table ({err})") from None
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise RequestLogError(f"{p}: missing column(s) {', '.join(missing)} (needs {', '.join(NEEDED)})")
    if model is not None:
        if "model" not in df.columns:
            raise RequestLogError(f"{p}: --model {model!r} given but the table has no `model` column")
        known = sorted(map(str, pd.unique(df["model"].astype(str))))
        if model not in known:
            raise RequestLogError(f"{p}: no requests of model {model!r}; it has {', '.join(known)}")
        df = df[df["model"].astype(str) == model]
    elif "model" in df.columns and df["model"].astype(str).nunique() > 1:
        names = ", ".join(sorted(map(str, pd.unique(df["model"].astype(str)))))
        raise RequestLogError(f"{p}: requests of several models ({names}); say which with --model")
    if "status" in df.columns:
        df = df[df["status"].astype(str) == "ok"]
    ok = df[list(NEEDED)].notna().all(axis=1) & (df["output_tokens"] >= 1) & (df["prompt_tokens"] >= 1)
    return df[ok].reset_index(drop=True)


def _replica_rows(g: pd.DataFrame) -> tuple[list[list[float]], list[float]]:
    arrival = g["arrival_s"].to_numpy(float)
    first = g["first_token_s"].to_numpy(float)
    finish = g["finish_s"].to_numpy(float)
    prompt = g["prompt_tokens"].to_numpy(float)
    out = g["output_tokens"].to_numpy(float)
    x: list[list[float]] = []
    y: list[float] = []
    order = np.argsort(first)
    first_sorted = first[order]
    for r in range(len(g)):
        a, b, n = first[r], finish[r], out[r] - 1
        if n >= 1 and b > a:
            lo, hi = np.maximum(first, a), np.minimum(finish, b)
            overlap = np.clip(hi - lo, 0.0, None)
            mid = (lo + hi) / 2.0
            span = np.where(finish > first, finish - first, 1.0)
            ctx = prompt + 1.0 + (out - 1.0) * np.clip((mid - first) / span, 0.0, 1.0)
            batch = overlap.sum() / (b - a)
            context = (overlap * ctx).sum() / (b - a)
            inside = (first > a + SAME_STEP_S) & (first <= b + SAME_STEP_S)
            steps = len(np.unique(np.round(first[inside], 9)))
            tokens = prompt[inside].sum()
            sq = (prompt[inside] ** 2).sum()
            x.append([steps / n, tokens / n, sq / n, 1.0, batch, context])
            y.append((b - a) / n)
        # prefill: met an idle engine (no other request of this replica between its arrival and its finish)
        busy = (arrival < arrival[r]) & (finish > arrival[r])
        if not busy.any():
            lo_i = np.searchsorted(first_sorted, first[r] - SAME_STEP_S)
            hi_i = np.searchsorted(first_sorted, first[r] + SAME_STEP_S, side="right")
            same = order[lo_i:hi_i]
            if (arrival[same] <= arrival[r] + 1e-12).all() or len(same) == 1:
                ttft = first[r] - arrival[r]
                if ttft > 0:
                    x.append([1.0, prompt[same].sum(), (prompt[same] ** 2).sum(), 0.0, 0.0, 0.0])
                    y.append(ttft)
    return x, y


def design_from_requests(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Regressors (COEFS order) and mean step times, one row per usable request phase (module doc)."""
    groups = [g for _, g in df.groupby(df["replica"].astype(str), observed=True)] if "replica" in df.columns else [df]
    xs: list[list[float]] = []
    ys: list[float] = []
    for g in groups:
        x, y = _replica_rows(g.reset_index(drop=True))
        xs += x
        ys += y
    return np.array(xs, dtype=float).reshape(-1, len(COEFS)), np.array(ys, dtype=float)


def fit_from_requests(df: pd.DataFrame) -> tuple[StepCoefficients, dict[str, int]]:
    """Coefficients fitted on the request log, and how many decode and prefill rows it used."""
    x, y = design_from_requests(df)
    n_decode = int((x[:, 3] > 0).sum()) if len(x) else 0
    counts = {"requests": len(df), "decode_rows": n_decode, "prefill_rows": len(x) - n_decode}
    if n_decode < 3 or counts["prefill_rows"] < 3:
        raise FitError(
            f"too few usable requests: {n_decode} decode and {counts['prefill_rows']} idle-engine prefill "
            "observations (needs 3 of each: requests with >= 2 output tokens, and some arriving at an idle replica)"
        )
    coef = nnls_relative(x, y)
    values = {name: float(f"{c:.6g}") for name, c in zip(COEFS, coef, strict=True)}
    if values["decode_base_s"] + values["decode_per_seq_s"] <= 0.0:
        values["decode_base_s"] = float(y[x[:, 3] > 0].min())
    return StepCoefficients(**values), counts


REFERENCE_STEPS = (
    ("prefill 32 tokens", 32, 0, 0),
    ("prefill 128 tokens", 128, 0, 0),
    ("prefill 384 tokens", 384, 0, 0),
    ("decode batch 1, 128 context", 0, 1, 128),
    ("decode batch 4, 4 x 200 context", 0, 4, 800),
    ("decode batch 8, 8 x 200 context", 0, 8, 1600),
    ("decode batch 16, 16 x 300 context", 0, 16, 4800),
)
"""Steps at which two fits are compared (prefill tokens, decode batch, total context)."""


def step_s(c: StepCoefficients, tokens: int, batch: int, context: int) -> float:
    t = c.prefill_base_s + c.prefill_per_token_s * tokens + c.prefill_per_token_sq_s * tokens**2 if tokens else 0.0
    d = c.decode_base_s + c.decode_per_seq_s * batch + c.decode_per_context_token_s * context if batch else 0.0
    return t + d


def client_view(latency: StepCoefficients, overheads: Overheads) -> StepCoefficients:
    """An engine fit as a client-side request log sees it: the request overhead in every first token (the prefill
    base) and the per-step and per-token overheads in every later one (the decode base and per-sequence terms)."""
    return latency.model_copy(
        update={
            "prefill_base_s": latency.prefill_base_s + overheads.request_s + overheads.prefill_step_s,
            "decode_base_s": latency.decode_base_s + overheads.step_s + overheads.per_token_s,
            "decode_per_seq_s": latency.decode_per_seq_s + overheads.step_per_seq_s,
        }
    )


def compare_fits(a: StepCoefficients, b: StepCoefficients) -> pd.DataFrame:
    """Step times of fit `a` (from requests) and `b` (instrumented) at REFERENCE_STEPS, and a's error in %."""
    rows = []
    for label, tokens, batch, ctx in REFERENCE_STEPS:
        ta, tb = step_s(a, tokens, batch, ctx), step_s(b, tokens, batch, ctx)
        rows.append({"step": label, "from_requests_s": ta, "instrumented_s": tb, "diff_pct": (ta - tb) / tb * 100})
    return pd.DataFrame(rows)
