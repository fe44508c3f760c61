"""Fit LatencyModel coefficients to Splitwise's measured latencies (perf_model.csv) and check them on held-out rows.

The table is the repository's copy, traces/splitwise/perf_model.csv (MIT, see traces/README.md), read at fit time
only: the simulator loads the fitted coefficients (odhsim/data/latency_coefficients.json), never the table.
Fits minimise RELATIVE error (non-negative least squares on rows weighted by 1/y) because the acceptance metric is
the median absolute percentage error.
The prefill knee is picked from KNEE_GRID: for a fixed knee the model is linear, so each candidate is one NNLS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import nnls

import odhsim
from odhsim.errors import OdhsimError
from odhsim.profiles.coefficients import COEFFICIENT_FIELDS, LatencyModel
from odhsim.profiles.latency import COEFFICIENTS_PATH, profile_key

REPO_ROOT = Path(odhsim.__file__).resolve().parents[1]
DEFAULT_PERF_CSV = REPO_ROOT / "traces" / "splitwise" / "perf_model.csv"
HARDWARE_NAMES = {"a100-80gb": "A100-80GB", "h100-80gb": "H100-80GB", "h100-80gb-pcap": "H100-80GB-PCAP"}
HOLDOUT_PROMPTS = frozenset({256, 1024, 4096})
HOLDOUT_BATCHES = frozenset({2, 8, 32})
GROUP = ["model", "gpu", "tp"]
SIG_DIGITS = 6
KNEE_GRID = (0, 512, 1024, 1536, 2048, 3072, 4096, 6144)


def load_measurements(csv_path: Path | str = DEFAULT_PERF_CSV) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Medians over repeated runs: (prefill rows, decode rows), times in seconds.

    prefill: one row per (group, prompt, batch, output tokens), with tokens = prompt*batch and sum_sq = batch*prompt**2.
    decode: one row per (group, prompt, batch, output tokens), with context = batch*(prompt + output/2), the mean
    total context over the run. A (prompt, batch) whose prefill is faster than at a smaller batch of the same
    prompt is dropped from both (Splitwise's TP2 batch-64 rows: a bigger batch cannot be faster, so these runs
    were evidently truncated).
    """
    path = Path(csv_path)
    if not path.exists():
        raise OdhsimError(f"profile data not found: {path} (the repository's copy is traces/splitwise/perf_model.csv)")
    raw = pd.read_csv(path)
    raw = raw.assign(gpu=raw["hardware"].map(lambda h: HARDWARE_NAMES.get(h, h.upper())), tp=raw["tensor_parallel"])
    keys = [*GROUP, "prompt_size", "batch_size"]
    by_batch = raw.groupby(keys, as_index=False)["prompt_time"].median().sort_values(keys, ignore_index=True)
    best_smaller = by_batch.groupby([*GROUP, "prompt_size"])["prompt_time"].transform(lambda s: s.cummax().shift())
    bad = by_batch.loc[by_batch["prompt_time"] < best_smaller.fillna(0.0), keys]
    raw = raw.merge(bad, on=keys, how="left", indicator=True)
    raw = raw[raw.pop("_merge") == "left_only"]
    # one prefill row per CSV configuration, so 512 x 1 (run with 7 output lengths) counts 7 times
    pre = raw.groupby([*keys, "token_size"], as_index=False)["prompt_time"].median()
    pre = pre.assign(
        y=pre["prompt_time"] / 1e3,
        tokens=pre["prompt_size"] * pre["batch_size"],
        sum_sq=pre["batch_size"] * pre["prompt_size"] ** 2,
    )
    dec = raw.groupby([*keys, "token_size"], as_index=False)["token_time"].median()
    dec = dec.assign(
        y=dec["token_time"] / 1e3,
        batch=dec["batch_size"],
        context=dec["batch_size"] * (dec["prompt_size"] + dec["token_size"] / 2.0),
    )
    return pre, dec


def _nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising sum(((x @ c - y) / y)**2); columns scaled for conditioning."""
    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls((x / scale) / y[:, None], np.ones_like(y))
    return coef / scale


def _design_prefill(df: pd.DataFrame, knee: int) -> np.ndarray:
    tokens = df["tokens"].to_numpy(float)
    return np.column_stack([np.ones(len(df)), tokens, df["sum_sq"], np.maximum(0.0, tokens - knee)]).astype(float)


def _design_decode(df: pd.DataFrame) -> np.ndarray:
    return np.column_stack([np.ones(len(df)), df["batch"], df["context"]]).astype(float)


def _fit_prefill(df: pd.DataFrame) -> dict[str, float]:
    """Prefill coefficients at the knee in KNEE_GRID with the least squared relative error."""
    y = df["y"].to_numpy(float)
    best: tuple[float, int, np.ndarray] | None = None
    for knee in KNEE_GRID:
        x = _design_prefill(df, knee)
        coef = _nnls_relative(x, y)
        loss = float(np.sum(((x @ coef - y) / y) ** 2))
        if best is None or loss < best[0] - 1e-12:
            best = (loss, knee, coef)
    assert best is not None
    _, knee, (base, per_token, per_sq, above) = best
    knee = knee if above > 0.0 else 0
    return {
        "prefill_base_s": base,
        "prefill_per_token_s": per_token,
        "prefill_per_token_sq_s": per_sq,
        "prefill_knee_tokens": knee,
        "prefill_per_token_above_knee_s": above,
    }


def _fit_group(pre: pd.DataFrame, dec: pd.DataFrame) -> dict[str, float]:
    base, per_seq, per_ctx = _nnls_relative(_design_decode(dec), dec["y"].to_numpy(float))
    decode = {"decode_base_s": base, "decode_per_seq_s": per_seq, "decode_per_context_token_s": per_ctx}
    return {**_fit_prefill(pre), **decode}


def _groups(pre: pd.DataFrame, dec: pd.DataFrame) -> list[tuple[tuple[str, str, int], pd.DataFrame, pd.DataFrame]]:
    dec_by = dict(iter(dec.groupby(GROUP)))
    return [((m, g, int(t)), p, dec_by[(m, g, t)]) for (m, g, t), p in pre.groupby(GROUP)]


def fit_profiles(csv_path: Path | str = DEFAULT_PERF_CSV) -> dict[str, dict[str, Any]]:
    """Fit every (model, hardware, TP) group on all its rows; keyed like latency_coefficients.json."""
    pre, dec = load_measurements(csv_path)
    out: dict[str, dict[str, Any]] = {}
    for (m, g, t), p, d in _groups(pre, dec):
        coeffs = {k: v if k == "prefill_knee_tokens" else _round(v) for k, v in _fit_group(p, d).items()}
        out[profile_key(m, g, t)] = {"model": m, "gpu": g, "tp": t, **coeffs}
    return out


def predict_prefill(lm: LatencyModel, df: pd.DataFrame) -> np.ndarray:
    """Model prefill times (s) for load_measurements() prefill rows."""
    pairs = zip(df["tokens"], df["sum_sq"], strict=True)
    return np.array([lm.prefill_s(int(t), int(s)) for t, s in pairs], dtype=float)


def predict_decode(lm: LatencyModel, df: pd.DataFrame) -> np.ndarray:
    """Model decode step times (s) for load_measurements() decode rows."""
    pairs = zip(df["batch"], df["context"], strict=True)
    return np.array([lm.decode_step_s(int(b), float(c)) for b, c in pairs], dtype=float)


def _ape(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.abs(pred - y) / y * 100.0


def _is_test(df: pd.DataFrame) -> pd.Series:
    return df["prompt_size"].isin(HOLDOUT_PROMPTS) | df["batch_size"].isin(HOLDOUT_BATCHES)


def evaluate_holdout(csv_path: Path | str = DEFAULT_PERF_CSV) -> pd.DataFrame:
    """Held-out MdAPE (%) per group and overall: fit on the other prompt/batch sizes, test on these.

    Test rows are those whose prompt size is in HOLDOUT_PROMPTS or whose batch size is in HOLDOUT_BATCHES.
    """
    pre, dec = load_measurements(csv_path)
    rows: list[dict[str, Any]] = []
    all_pre: list[np.ndarray] = []
    all_dec: list[np.ndarray] = []
    for (m, g, t), p, d in _groups(pre, dec):
        p_test, d_test = _is_test(p), _is_test(d)
        lm = LatencyModel(model=m, gpu=g, tp=t, source="fitted", **_fit_group(p[~p_test], d[~d_test]))
        e_pre = _ape(predict_prefill(lm, p[p_test]), p[p_test]["y"].to_numpy())
        e_dec = _ape(predict_decode(lm, d[d_test]), d[d_test]["y"].to_numpy())
        all_pre.append(e_pre)
        all_dec.append(e_dec)
        rows.append(_err_row(m, g, t, e_pre, e_dec))
    rows.append(_err_row("ALL", "ALL", 0, np.concatenate(all_pre), np.concatenate(all_dec)))
    return pd.DataFrame(rows)


def _err_row(m: str, g: str, t: int, e_pre: np.ndarray, e_dec: np.ndarray) -> dict[str, Any]:
    return {
        "model": m,
        "gpu": g,
        "tp": t,
        "prefill_mdape_pct": float(np.median(e_pre)),
        "decode_mdape_pct": float(np.median(e_dec)),
        "prefill_max_ape_pct": float(np.max(e_pre)),
        "decode_max_ape_pct": float(np.max(e_dec)),
        "n_test_prefill": len(e_pre),
        "n_test_decode": len(e_dec),
    }


def coefficient_table(profiles: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Fitted coefficients as a table, one row per group (seconds)."""
    return pd.DataFrame([{k: p[k] for k in ["model", "gpu", "tp", *COEFFICIENT_FIELDS]} for p in profiles.values()])


def _round(x: float) -> float:
    return float(f"{x:.{SIG_DIGITS}g}")


def write_coefficients(path: Path | str = COEFFICIENTS_PATH, csv_path: Path | str = DEFAULT_PERF_CSV) -> dict:
    """Fit on ALL rows and write the commit-ready JSON (sorted keys, 6 significant digits)."""
    doc = {
        "source": f"{Path(csv_path).name} from Mutinifni/splitwise-sim data/ (MIT; Patel et al., ISCA 2024)",
        "note": (
            "Medians over repeated runs, fitted per (model, gpu, tp) by non-negative least squares on relative "
            "error; times in seconds. Regenerate with `odhsim profiles fit --write`. The measurements themselves "
            "are not part of this repository. H100-80GB-PCAP is Splitwise's power-capped H100 (fitted only)."
        ),
        "holdout": {"prompt_sizes": sorted(HOLDOUT_PROMPTS), "batch_sizes": sorted(HOLDOUT_BATCHES)},
        "profiles": fit_profiles(csv_path),
    }
    # the Vidur fits (`profiles fit --vidur --write`) live in the same file: keep them where Splitwise has no group
    old = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    for key, entry in old.get("profiles", {}).items():
        if entry.get("source") == "vidur":
            doc["profiles"].setdefault(key, entry)
    if "vidur" in old:
        doc["vidur"] = old["vidur"]
    Path(path).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


def run_fit(csv_path: Path | str = DEFAULT_PERF_CSV, write: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What `odhsim profiles fit` runs: (held-out error table, coefficient table); optionally rewrite the JSON."""
    errors = evaluate_holdout(csv_path)
    profiles = write_coefficients(COEFFICIENTS_PATH, csv_path)["profiles"] if write else fit_profiles(csv_path)
    profiles = {k: p for k, p in profiles.items() if p.get("source") != "vidur"}  # the Splitwise fits only
    return errors, coefficient_table(profiles)
