"""Decompose the calibration probes on one clock: where a request's time goes between the client and the engine.

The probe stack's replicas log every engine step (runtime.replica.steps_spool) on the monotonic clock, and the
probe client times its requests on the same clock, so each request sent alone splits exactly into
- in: sent -> its prefill step starts (HTTP in, the gateway's auth, flow control and routing, tokenising);
- prefill: the prefill step as the serving replica ran it (against the in-process grid fit: what serving adds);
- out: prefill step end -> the first token reaches the client (SSE through the replica and the gateway);
- decode: the served decode steps and the gaps between them (the replica's loop between steps);
- tail: the last step's end -> the client has the whole answer (last chunk, usage, [DONE]).
Requests sent together (k at once) give the served decode step at batch k. `served_overheads` turns this into the
profile's `Overheads`, each charged where it happens: the prefill and decode steps' extra in the engine step (the
replica is busy for it), in + out on the first token, tail - out per later token. Pure pandas: no live runtime.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from odhsim.calibrate.profile_file import Overheads, StepCoefficients
from odhsim.profiles.coefficients import LatencyModel


@dataclass(frozen=True)
class ProbeTimes:
    """One probe request on the replicas' clock (seconds): sent, first token and finish as the client saw them."""

    prompt_tokens: int
    output_tokens: int
    sent_s: float
    first_token_s: float
    finish_s: float
    together: int = 0


@dataclass(frozen=True)
class Phases:
    """One request sent alone, split (module doc); the fit's times for the same steps alongside."""

    prompt_tokens: int
    in_s: float
    prefill_s: float
    prefill_fit_s: float
    out_s: float
    decode_steps: int
    decode_s: float
    decode_fit_s: float
    gaps_s: float
    tail_s: float


def _engine(coef: StepCoefficients) -> LatencyModel:
    return LatencyModel(model="probe", gpu="cpu", tp=1, source="calibrated", **coef.model_dump())


def _window(steps: pd.DataFrame, start: float, end: float) -> pd.DataFrame:
    s = steps[(steps["time_s"] >= start) & (steps["time_s"] < end)]
    return s.sort_values("time_s", kind="stable")


def phases(probe: ProbeTimes, steps: pd.DataFrame, coef: StepCoefficients) -> Phases | None:
    """A probe sent alone, split into its phases; None when its steps are not all in the log (a step ring
    overflowed, another request overlapped)."""
    lm = _engine(coef)
    mine = _window(steps, probe.sent_s, probe.finish_s)
    pre = mine[mine["prefill_seqs"] > 0]
    if len(pre) != 1 or int(pre["prefill_seqs"].iloc[0]) != 1:
        return None
    t = mine["time_s"].to_numpy(float)
    d = mine["duration_s"].to_numpy(float)
    i = int(np.flatnonzero(mine["prefill_seqs"].to_numpy() > 0)[0])
    decode = mine.iloc[i + 1 :]
    n = probe.output_tokens - 1
    if len(decode) != n or (decode["decode_seqs"] != 1).any():
        return None
    pre_end = t[i] + d[i]
    fit_decode = sum(lm.decode_step_s(1, int(c)) for c in decode["context_tokens"])
    return Phases(
        prompt_tokens=probe.prompt_tokens,
        in_s=t[i] - probe.sent_s,
        prefill_s=float(d[i]),
        prefill_fit_s=lm.prefill_s(int(pre["prefill_tokens"].iloc[0])),
        out_s=probe.first_token_s - pre_end,
        decode_steps=n,
        decode_s=float(d[i + 1 :].sum()),
        decode_fit_s=fit_decode,
        gaps_s=float((t[i + 1 :] - (t[i:-1] + d[i:-1])).sum()),
        tail_s=probe.finish_s - (t[-1] + d[-1]),
    )


def batch_step_extra(probes: list[ProbeTimes], steps: pd.DataFrame, coef: StepCoefficients) -> dict[int, list[float]]:
    """Per batch size k of the probes sent together: each served decode step at batch k (plus the gap to the next
    step) beyond the fit's decode step of the same shape."""
    lm = _engine(coef)
    out: dict[int, list[float]] = {}
    for k in sorted({p.together for p in probes if p.together}):
        mine = [p for p in probes if p.together == k]
        win = _window(steps, min(p.sent_s for p in mine), max(p.finish_s for p in mine))
        nxt = win["time_s"].shift(-1).to_numpy(float)
        t = win["time_s"].to_numpy(float)
        rows = (win["prefill_seqs"].to_numpy() == 0) & (win["decode_seqs"].to_numpy() == k) & ~np.isnan(nxt)
        ctx = win["context_tokens"].to_numpy()
        out[k] = [float(nxt[j] - t[j]) - lm.decode_step_s(k, int(ctx[j])) for j in np.flatnonzero(rows)]
    return {k: v for k, v in out.items() if v}


def served_overheads(probes: list[ProbeTimes], steps: pd.DataFrame, coef: StepCoefficients) -> Overheads | None:
    """The profile's overheads from the probes' served steps (module doc); None when no probe sent alone could be
    matched with its steps (the caller then falls back to the client-side estimate)."""
    split = [ph for p in probes if p.together == 0 and (ph := phases(p, steps, coef)) is not None]
    if not split:
        return None
    prefill_step_s = statistics.median(ph.prefill_s - ph.prefill_fit_s for ph in split)
    request_s = statistics.median(ph.in_s + ph.out_s for ph in split)
    extra = batch_step_extra(probes, steps, coef)
    with_decode = [ph for ph in split if ph.decode_steps > 0]
    alone = [(ph.decode_s + ph.gaps_s - ph.decode_fit_s) / ph.decode_steps for ph in with_decode]
    per_k = {k: statistics.median(v) for k, v in extra.items()}
    if alone:  # batch 1 from the requests sent alone too (their gaps include the one after the prefill step)
        per_k[1] = statistics.median([*alone, *extra.get(1, [])])
    step_s = per_seq_s = 0.0
    if len(per_k) >= 2:
        x = np.array([[1.0, k] for k in sorted(per_k)])
        (step_s, per_seq_s), _ = nnls(x, np.array([per_k[k] for k in sorted(per_k)]))
    elif per_k:
        step_s = max(0.0, next(iter(per_k.values())))
    later = [(ph.tail_s - ph.out_s) / ph.decode_steps for ph in with_decode]
    return Overheads(
        request_s=round(max(0.0, request_s), 6),
        per_token_s=round(max(0.0, statistics.median(later)), 7) if later else 0.0,
        step_s=round(float(step_s), 7),
        step_per_seq_s=round(float(per_seq_s), 7),
        prefill_step_s=round(max(0.0, prefill_step_s), 7),
    )


def decomposition(probes: list[ProbeTimes], steps: pd.DataFrame, coef: StepCoefficients) -> dict[str, float | None]:
    """Medians of each phase of the requests sent alone (seconds), and the served decode step beyond the fit per
    batch size, for the profile's provenance: where a client-side latency goes on this machine."""
    split = [ph for p in probes if p.together == 0 and (ph := phases(p, steps, coef)) is not None]
    doc: dict[str, float | None] = {"matched": float(len(split))}
    if split:
        n = [ph for ph in split if ph.decode_steps > 0]

        def med(values: list[float]) -> float | None:
            return round(statistics.median(values), 6) if values else None

        doc.update({
            "in_s": med([ph.in_s for ph in split]),
            "prefill_served_s": med([ph.prefill_s for ph in split]),
            "prefill_fit_s": med([ph.prefill_fit_s for ph in split]),
            "out_s": med([ph.out_s for ph in split]),
            "decode_step_served_s": med([ph.decode_s / ph.decode_steps for ph in n]),
            "decode_step_fit_s": med([ph.decode_fit_s / ph.decode_steps for ph in n]),
            "gap_per_step_s": med([ph.gaps_s / ph.decode_steps for ph in n]),
            "tail_s": med([ph.tail_s for ph in split]),
        })  # fmt: skip
    for k, v in batch_step_extra(probes, steps, coef).items():
        doc[f"decode_extra_batch_{k}_s"] = round(statistics.median(v), 6)
    return doc
