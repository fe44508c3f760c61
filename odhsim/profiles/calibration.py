"""Calibration of the roofline's efficiency factors against Splitwise's measurements, and its error per group.

Kept apart from `roofline` (which the simulator loads) because it needs the measurement table and scipy: it sits
above both `roofline` and `fit`, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import astuple, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from odhsim import catalog
from odhsim.profiles.fit import DEFAULT_PERF_CSV, load_measurements, predict_decode, predict_prefill
from odhsim.profiles.roofline import CALIBRATED, RooflineFactors, roofline_model

if TYPE_CHECKING:
    import pandas as pd


KNEE_CANDIDATES = (1024, 1536, 2048)
# (lower, upper) bounds per factor: physical ranges, so the calibration cannot buy fit with impossible values
_BOUNDS = {
    "mfu_prefill": (0.05, 0.75),
    "mfu_decode": (0.01, 0.75),
    "mbu": (0.2, 0.9),
    "link_efficiency": (0.005, 1.0),
    "allreduce_latency_s": (1e-7, 1e-3),
    "step_overhead_s": (1e-4, 0.05),
    "decode_per_seq_overhead_s": (1e-7, 1e-2),
    "mfu_prefill_long": (0.01, 0.75),
}


def _measured(csv_path: Path | str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    pre, dec = load_measurements(DEFAULT_PERF_CSV if csv_path is None else csv_path)
    known = catalog.gpu_names()  # the power-capped H100 has no datasheet entry, so no roofline
    return pre[pre["gpu"].isin(known)], dec[dec["gpu"].isin(known)]


def _log_ratios(pre: pd.DataFrame, dec: pd.DataFrame, f: RooflineFactors) -> dict[tuple, tuple[np.ndarray, ...]]:
    out = {}
    for (m, g, t), p in pre.groupby(["model", "gpu", "tp"]):
        d = dec[(dec["model"] == m) & (dec["gpu"] == g) & (dec["tp"] == t)]
        lm = roofline_model(m, g, int(t), f)
        ratios = (predict_prefill(lm, p) / p["y"].to_numpy(), predict_decode(lm, d) / d["y"].to_numpy())
        out[(m, g, int(t))] = (np.log(ratios[0]), np.log(ratios[1]))
    return out


def calibrate_roofline(csv_path: Path | str | None = None) -> RooflineFactors:
    """Least-squares fit of the factors (log-ratio loss, within _BOUNDS) to the measured, catalogued groups."""
    from scipy.optimize import least_squares

    pre, dec = _measured(csv_path)
    names = [fl.name for fl in fields(RooflineFactors) if fl.name != "prefill_knee_tokens"]
    lo, hi = (np.log([_BOUNDS[n][i] for n in names]) for i in (0, 1))
    x0 = np.log([getattr(CALIBRATED, n) for n in names])
    best: tuple[float, RooflineFactors] | None = None
    for knee in KNEE_CANDIDATES:

        def resid(x: np.ndarray, knee: int = knee) -> np.ndarray:
            f = RooflineFactors(**dict(zip(names, np.exp(x).tolist(), strict=True)), prefill_knee_tokens=knee)
            return np.concatenate([np.concatenate(v) for v in _log_ratios(pre, dec, f).values()])

        fit = least_squares(resid, np.clip(x0, lo + 1e-9, hi - 1e-9), bounds=(lo, hi))
        f = RooflineFactors(**dict(zip(names, np.exp(fit.x).tolist(), strict=True)), prefill_knee_tokens=knee)
        if best is None or fit.cost < best[0]:
            best = (float(fit.cost), f)
    assert best is not None
    return best[1]


def rounded(f: RooflineFactors, digits: int = 2) -> RooflineFactors:
    """Factors to `digits` significant figures, as committed in CALIBRATED."""
    values = [v if isinstance(v, int) else float(f"{v:.{digits}g}") for v in astuple(f)]
    return replace(f, **{fl.name: v for fl, v in zip(fields(f), values, strict=True)})


def roofline_errors(csv_path: Path | str | None = None, factors: RooflineFactors = CALIBRATED) -> pd.DataFrame:
    """Per measured group: median and max absolute % error of the roofline against the measurements."""
    import pandas as pd

    rows = []
    for (m, g, t), (lp, ld) in _log_ratios(*_measured(csv_path), factors).items():
        ep, ed = np.abs(np.expm1(lp)) * 100, np.abs(np.expm1(ld)) * 100
        rows.append(
            {
                "model": m,
                "gpu": g,
                "tp": t,
                "prefill_mdape_pct": float(np.median(ep)),
                "prefill_max_ape_pct": float(ep.max()),
                "decode_mdape_pct": float(np.median(ed)),
                "decode_max_ape_pct": float(ed.max()),
            }
        )
    return pd.DataFrame(rows)
