"""Fit LatencyModel to step times composed from Vidur's operator profiles, check it on held-out shapes, store it.

The shapes are the ones Vidur profiled the attention kernel at (odhsim.profiles.vidur): decode steps of batch
1..128 x 13 per-sequence KV lengths, prefill chunks of 64..4096 tokens after 0..3968 cached ones. Held out: every
HOLDOUT_EVERY-th batch size, KV length and chunk size (sorted), and every shape that uses one; the fit sees the rest.
The GPU coefficients are fitted on GPU time only; the engine's CPU work per step is fitted apart (a line in batch
size through Vidur's vLLM CPU-overhead profile) and stored as cpu_step_s / cpu_per_seq_s.

Splitwise's end-to-end measurements (odhsim.profiles.fit) stay the stored profile where both exist (llama2-70b on
A100/H100 at TP 2/4/8): they measured the whole engine step on real hardware, while the Vidur composition for 70B
uses a scaled attention kernel. The table still reports the Vidur fit for those groups, marked "splitwise kept".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from odhsim.profiles.coefficients import COEFFICIENT_FIELDS, LatencyModel
from odhsim.profiles.fit import _ape, _fit_group, _round, predict_decode, predict_prefill
from odhsim.profiles.latency import COEFFICIENTS_PATH, latency_model, profile_key
from odhsim.profiles.roofline import roofline_model
from odhsim.profiles.vidur import (
    Group,
    VidurComposer,
    VidurData,
    cpu_overhead_ms,
    cpu_profile,
    load_vidur,
    round_kv,
    vidur_groups,
)

HOLDOUT_EVERY = 5
EXAMPLE = ("llama2-7b", "A100-80GB", 1, 128, 900)  # the side-by-side: decode at batch 128, 900 tokens each
VIDUR_PREDICTOR_EXAMPLE_MS = 46.0  # Vidur's own predictor on that step, as quoted in issue 11


def composed_steps(composer: VidurComposer) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(prefill rows, decode rows) at the profiled shapes, GPU time `y` in seconds, in fit.py's column names."""
    att = composer._attention
    chunk, kv_pre = att.prefill_points[:, 0].astype(int), att.prefill_points[:, 1].astype(int)
    pre = pd.DataFrame({"chunk": chunk, "kv": kv_pre})
    pre["tokens"], pre["sum_sq"] = pre["chunk"], pre["chunk"] * (pre["kv"] + pre["chunk"])
    pre["y"] = np.asarray(composer.prefill_ms(chunk, kv_pre)) / 1e3
    batch, kv_dec = att.decode_points[:, 0].astype(int), att.decode_points[:, 1].astype(int)
    dec = pd.DataFrame({"batch": batch, "kv": kv_dec, "context": batch * kv_dec})
    dec["y"] = np.asarray(composer.decode_ms(batch, kv_dec)) / 1e3
    return pre, dec


def _held(values: pd.Series) -> pd.Series:
    """True where the value is every HOLDOUT_EVERY-th of the sorted distinct values (the 5th, 10th, ...)."""
    distinct = np.sort(values.unique())
    return values.isin(set(distinct[HOLDOUT_EVERY - 1 :: HOLDOUT_EVERY]))


def held_out(pre: pd.DataFrame, dec: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Test masks: prefill rows with a held-out chunk or KV length, decode rows with a held-out batch or KV length."""
    return _held(pre["chunk"]) | _held(pre["kv"]), _held(dec["batch"]) | _held(dec["kv"])


def fit_cpu(data: VidurData, model: str, tp: int) -> dict[str, Any]:
    """cpu_step_s + cpu_per_seq_s * batch through Vidur's vLLM CPU overhead per step (non-negative least squares)."""
    prof = cpu_overhead_ms(data, model, tp)
    x = np.column_stack([np.ones(len(prof)), prof["batch"].to_numpy(float)])
    y = prof["ms"].to_numpy(float) / 1e3
    coef, _ = nnls(x, y)
    hf, cpu_tp, own = cpu_profile(model, tp)
    return {
        "cpu_step_s": _round(coef[0]),
        "cpu_per_seq_s": _round(coef[1]),
        "cpu_source": f"vidur cpu_overheads {hf} TP{cpu_tp}" + ("" if own else " (borrowed)"),
        "cpu_max_ape_pct": float(_ape(x @ coef, y).max()),
    }


def _model(group: Group, coeffs: dict[str, Any], cpu: dict[str, Any] | None = None) -> LatencyModel:
    cpu_terms = {k: cpu[k] for k in ("cpu_step_s", "cpu_per_seq_s")} if cpu else {}
    gpu = {k: coeffs[k] for k in COEFFICIENT_FIELDS}
    return LatencyModel(model=group.model, gpu=group.gpu, tp=group.tp, source="fitted-vidur", **gpu, **cpu_terms)


def fit_vidur_profiles(data: VidurData | None = None) -> dict[str, dict[str, Any]]:
    """Every covered group fitted on all its composed shapes; keyed like latency_coefficients.json."""
    data = data or load_vidur()
    out: dict[str, dict[str, Any]] = {}
    for group in vidur_groups(data):
        composer = VidurComposer(group, data)
        pre, dec = composed_steps(composer)
        coeffs = {k: v if k == "prefill_knee_tokens" else _round(v) for k, v in _fit_group(pre, dec).items()}
        cpu = fit_cpu(data, group.model, group.tp)
        out[profile_key(group.model, group.gpu, group.tp)] = {
            "model": group.model,
            "gpu": group.gpu,
            "tp": group.tp,
            "source": "vidur",
            "attention": composer.attention_source,
            **coeffs,
            **{k: cpu[k] for k in ("cpu_step_s", "cpu_per_seq_s", "cpu_source")},
        }
    return out


def _splitwise_keys(path: Path = COEFFICIENTS_PATH) -> set[str]:
    if not path.exists():
        return set()
    profiles = json.loads(path.read_text()).get("profiles", {})
    return {k for k, p in profiles.items() if p.get("source", "splitwise") == "splitwise"}


def evaluate_vidur_holdout(data: VidurData | None = None) -> pd.DataFrame:
    """Per group: held-out MdAPE / max APE (%) of the fitted GPU terms against the composed Vidur step times."""
    data = data or load_vidur()
    kept = _splitwise_keys()
    rows: list[dict[str, Any]] = []
    for group in vidur_groups(data):
        composer = VidurComposer(group, data)
        pre, dec = composed_steps(composer)
        p_test, d_test = held_out(pre, dec)
        lm = _model(group, _fit_group(pre[~p_test], dec[~d_test]))
        e_pre = _ape(predict_prefill(lm, pre[p_test]), pre[p_test]["y"].to_numpy())
        e_dec = _ape(predict_decode(lm, dec[d_test]), dec[d_test]["y"].to_numpy())
        cpu = fit_cpu(data, group.model, group.tp)
        key = profile_key(group.model, group.gpu, group.tp)
        rows.append(
            {
                "model": group.model,
                "gpu": group.gpu,
                "tp": group.tp,
                "prefill_mdape_pct": float(np.median(e_pre)),
                "prefill_max_ape_pct": float(e_pre.max()),
                "decode_mdape_pct": float(np.median(e_dec)),
                "decode_max_ape_pct": float(e_dec.max()),
                "n_test_prefill": len(e_pre),
                "n_test_decode": len(e_dec),
                "cpu_max_ape_pct": cpu["cpu_max_ape_pct"],
                "attention": composer.attention_source,
                "cpu_source": cpu["cpu_source"],
                "stored": "splitwise kept" if key in kept else "vidur",
            }
        )
    return pd.DataFrame(rows)


def splitwise_crosscheck(data: VidurData | None = None) -> pd.DataFrame:
    """Where Splitwise measured the same group (llama2-70b, A100/H100, TP 2/4/8): the Vidur composition (GPU + CPU
    term) over Splitwise's measured step times, median and range, for single-prompt prefills up to 4,096 tokens and
    decode steps up to batch 128. It tests the scaled attention and the CPU term against real end-to-end steps."""
    from odhsim.profiles.fit import load_measurements

    data = data or load_vidur()
    pre, dec = load_measurements()
    rows = []
    for group in vidur_groups(data):
        sel_p = (pre["model"] == group.model) & (pre["gpu"] == group.gpu) & (pre["tp"] == group.tp)
        sel_d = (dec["model"] == group.model) & (dec["gpu"] == group.gpu) & (dec["tp"] == group.tp)
        p = pre[sel_p & (pre["batch_size"] == 1) & (pre["prompt_size"] <= 4096)]
        d = dec[sel_d & (dec["batch_size"] <= 128)]
        kv = np.ceil((d["prompt_size"] + d["token_size"] / 2) / 64) * 64
        d, kv = d[kv <= 4096], kv[kv <= 4096]
        if p.empty or d.empty:
            continue
        composer, cpu = VidurComposer(group, data), fit_cpu(data, group.model, group.tp)
        cpu_pre = cpu["cpu_step_s"] + cpu["cpu_per_seq_s"]
        cpu_dec = cpu["cpu_step_s"] + cpu["cpu_per_seq_s"] * d["batch_size"].to_numpy(float)
        ratio_p = (np.asarray(composer.prefill_ms(p["prompt_size"].to_numpy(), 0)) / 1e3 + cpu_pre) / p["y"]
        ratio_d = (np.asarray(composer.decode_ms(d["batch_size"].to_numpy(), kv.to_numpy(int))) / 1e3 + cpu_dec) / d[
            "y"
        ]
        rows.append(
            {
                "model": group.model,
                "gpu": group.gpu,
                "tp": group.tp,
                "prefill_ratio_median": float(np.median(ratio_p)),
                "prefill_ratio_min": float(ratio_p.min()),
                "prefill_ratio_max": float(ratio_p.max()),
                "decode_ratio_median": float(np.median(ratio_d)),
                "decode_ratio_min": float(ratio_d.min()),
                "decode_ratio_max": float(ratio_d.max()),
                "n_prefill": len(p),
                "n_decode": len(d),
            }
        )
    return pd.DataFrame(rows)


def example_check(data: VidurData | None = None) -> dict[str, float]:
    """The issue's example (7B / A100 / TP1 decode, batch 128 x 900 tokens): Vidur's composition, the fitted and
    the stored profile (GPU and with CPU), and the roofline, in ms."""
    data = data or load_vidur()
    model, gpu, tp, batch, ctx = EXAMPLE
    composer = VidurComposer(Group(model, gpu, tp), data)
    pre, dec = composed_steps(composer)
    fitted = _model(composer.group, _fit_group(pre, dec), fit_cpu(data, model, tp))
    stored = latency_model(model, gpu, tp)
    cpu_ms = (fitted.cpu_step_s + fitted.cpu_per_seq_s * batch) * 1e3
    return {
        "batch": batch,
        "context_per_seq": ctx,
        "vidur_composed_gpu_ms": composer.decode_ms(batch, round_kv(ctx)),
        "vidur_predictor_gpu_ms_issue": VIDUR_PREDICTOR_EXAMPLE_MS,
        "fitted_gpu_ms": fitted.decode_step_s(batch, batch * ctx) * 1e3 - cpu_ms,
        "cpu_overhead_ms": cpu_ms,
        "fitted_step_ms": fitted.decode_step_s(batch, batch * ctx) * 1e3,
        "stored_step_ms": stored.decode_step_s(batch, batch * ctx) * 1e3,
        "stored_source": stored.source,  # type: ignore[dict-item]
        "roofline_ms": roofline_model(model, gpu, tp).decode_step_s(batch, batch * ctx) * 1e3,
    }


def write_vidur_coefficients(path: Path = COEFFICIENTS_PATH, data: VidurData | None = None) -> dict[str, Any]:
    """Merge the Vidur fits into the coefficients file: Splitwise entries stay and win on a shared key."""
    doc = json.loads(path.read_text()) if path.exists() else {"profiles": {}}
    profiles = {k: p for k, p in doc.get("profiles", {}).items() if p.get("source", "splitwise") != "vidur"}
    for key, entry in fit_vidur_profiles(data).items():
        profiles.setdefault(key, entry)
    doc["profiles"] = profiles
    doc["vidur"] = (
        "Entries with source 'vidur': fitted by `odhsim profiles fit --vidur --write` on step times composed from "
        "Vidur's operator profiles (traces/vidur/, MIT; Agrawal et al., MLSys 2024); GPU terms fitted on GPU time, "
        "cpu_step_s + cpu_per_seq_s * batch from Vidur's vLLM CPU-overhead profile. Splitwise entries win on a "
        "shared key."
    )
    Path(path).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


def coefficient_table(profiles: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Fitted coefficients (seconds), CPU terms and sources, one row per group."""
    cols = ["model", "gpu", "tp", *COEFFICIENT_FIELDS, "cpu_step_s", "cpu_per_seq_s", "attention", "cpu_source"]
    return pd.DataFrame([{k: p[k] for k in cols} for p in profiles.values()])


def run_vidur_fit(
    write: bool = False, csv_out: Path | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float], pd.DataFrame]:
    """What `odhsim profiles fit --vidur` runs: (held-out error table, coefficients, the issue's example, the
    cross-check against Splitwise's measurements)."""
    data = load_vidur()
    errors = evaluate_vidur_holdout(data)
    if csv_out is not None:
        Path(csv_out).parent.mkdir(parents=True, exist_ok=True)
        errors.to_csv(csv_out, index=False, float_format="%.4g")
    profiles = fit_vidur_profiles(data)
    if write:
        write_vidur_coefficients(COEFFICIENTS_PATH, data)
        from odhsim.profiles.latency import _committed

        _committed.cache_clear()
        latency_model.cache_clear()
    return errors, coefficient_table(profiles), example_check(data), splitwise_crosscheck(data)
