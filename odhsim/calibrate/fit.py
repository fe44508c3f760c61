"""Fit the simulator's own latency family to timed engine steps, and check it on held-out grid points.

A step row says what one engine step computed (prompt tokens prefilled, their sum of squares, decode batch and its
total context) and how long it took. The simulator charges a step prefill_s(tokens, sum_sq) + decode_step_s(batch,
context) (odhsim/sim/llm_chunked.py), which is linear in six coefficients once a step's parts are known, so the fit
is one non-negative least squares on relative error (the acceptance metric is a percentage). The held-out points
are whole grid values (prompt lengths, batch sizes) the fit never saw, so the error measures interpolation, not
noise. Fixed models keep the measured service time by batch size (the simulator interpolates between them).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from odhsim.calibrate.profile_file import HeldOut, StepCoefficients
from odhsim.profiles.coefficients import COEFFICIENT_FIELDS

STEP_COLUMNS = ("prefill_tokens", "prefill_sum_sq", "decode_batch", "decode_context", "duration_s")
COEFS = COEFFICIENT_FIELDS[:6]
"""The linear step coefficients a fit solves for (the latency family's first six; no prefill knee)."""


class FitError(ValueError):
    """Too few or unusable measurements to fit."""


def design(steps: pd.DataFrame) -> np.ndarray:
    """The step cost's regressors: [has prefill, tokens, sum of squares, has decode, batch, context]."""
    tokens = steps["prefill_tokens"].to_numpy(float)
    batch = steps["decode_batch"].to_numpy(float)
    return np.column_stack(
        [
            (tokens > 0).astype(float),
            tokens,
            steps["prefill_sum_sq"].to_numpy(float),
            (batch > 0).astype(float),
            batch,
            steps["decode_context"].to_numpy(float),
        ]
    )


def nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative c minimising sum(((x @ c - y) / y)**2); columns scaled for conditioning."""
    if len(y) < x.shape[1]:
        raise FitError(f"{len(y)} measurements cannot fit {x.shape[1]} coefficients")
    if not np.all(y > 0):
        raise FitError("every measured duration must be > 0")
    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls((x / scale) / y[:, None], np.ones_like(y))
    return coef / scale


def fit_steps(steps: pd.DataFrame) -> StepCoefficients:
    """LatencyModel coefficients from step rows (STEP_COLUMNS); terms with no variation in the data stay 0."""
    missing = [c for c in STEP_COLUMNS if c not in steps.columns]
    if missing:
        raise FitError(f"step rows lack column(s) {', '.join(missing)}")
    if not (steps["decode_batch"] > 0).any():
        raise FitError("no decode steps to fit")
    coef = nnls_relative(design(steps), steps["duration_s"].to_numpy(float))
    values = {name: float(f"{c:.6g}") for name, c in zip(COEFS, coef, strict=True)}
    if values["decode_base_s"] + values["decode_per_seq_s"] <= 0.0:  # keep a decode step's cost positive
        values["decode_base_s"] = float(steps.loc[steps["decode_batch"] > 0, "duration_s"].min())
    return StepCoefficients(**values)


def predict_steps(coef: StepCoefficients, steps: pd.DataFrame) -> np.ndarray:
    c = np.array([getattr(coef, name) for name in COEFS])
    return design(steps) @ c


def ape(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Absolute percentage error."""
    return np.abs(pred - y) / y * 100.0


def held_out(errors_pct: Iterable[float]) -> HeldOut:
    e = np.asarray(list(errors_pct), dtype=float)
    if len(e) == 0:
        raise FitError("no held-out points: the grid is too small to hold any out")
    median, p90 = float(np.median(e)), float(np.percentile(e, 90))
    return HeldOut(median_pct=round(median, 3), p90_pct=round(p90, 3), points=len(e))


def is_held_out(steps: pd.DataFrame, prompts: Iterable[int], batches: Iterable[int]) -> pd.Series:
    """Rows at a held-out prompt length (prefill) or batch size (decode)."""
    pre = (steps["prefill_tokens"] > 0) & steps["prefill_tokens"].isin(list(prompts))
    dec = (steps["decode_batch"] > 0) & steps["decode_batch"].isin(list(batches))
    return pre | dec


def fit_with_holdout(
    steps: pd.DataFrame, holdout_prompts: Iterable[int], holdout_batches: Iterable[int]
) -> tuple[StepCoefficients, HeldOut]:
    """Held-out error of a fit without the held-out rows, then the coefficients fitted on every row."""
    test = is_held_out(steps, holdout_prompts, holdout_batches)
    partial = fit_steps(steps[~test])
    errors = ape(predict_steps(partial, steps[test]), steps.loc[test, "duration_s"].to_numpy(float))
    return fit_steps(steps), held_out(errors)


def fit_batches(batches: pd.DataFrame, holdout: Iterable[int]) -> tuple[dict[int, float], HeldOut]:
    """Service time by batch size (median of repeats) and the error of interpolating the held-out sizes from the
    others (linear between neighbours, as the simulator does)."""
    med = batches.groupby("batch")["duration_s"].median()
    table = {int(b): float(f"{t:.6g}") for b, t in med.items()}
    held = sorted(set(holdout) & set(table))
    kept = {b: t for b, t in table.items() if b not in held}
    if len(kept) < 2:
        raise FitError("fewer than two batch sizes left to interpolate the held-out ones from")
    xs = sorted(kept)
    pred = np.interp(held, xs, [kept[b] for b in xs])
    return table, held_out(ape(pred, np.array([table[b] for b in held])))
