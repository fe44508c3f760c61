"""Latency profiles by (model, GPU, TP[, PP]): fitted coefficients where measured, the calibrated roofline elsewhere.

The per-iteration form itself is `odhsim.profiles.coefficients.LatencyModel` (re-exported here).

Pipeline parallelism (`pipeline_model`): a token passes every stage in turn, so an iteration of a pp-stage
replica costs the sum of its stage times plus (pp - 1) stage-to-stage activation sends over the inter-node network.
With the layers split evenly the stage times add up to the whole model's time on one `tp` group (the per-iteration
overhead counted once), so the pipeline's coefficients are the tp profile's plus the sends: (pp - 1) x link latency
per iteration and (pp - 1) x hidden_size x dtype bytes / link bandwidth per token (each sequence in a decode step,
each prompt token in a prefill).
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from odhsim import catalog
from odhsim.errors import CatalogError
from odhsim.profiles.coefficients import COEFFICIENT_FIELDS, CPU_FIELDS, LatencyModel
from odhsim.profiles.roofline import roofline_model

__all__ = [
    "COEFFICIENTS_PATH",
    "COEFFICIENT_FIELDS",
    "LatencyModel",
    "latency_model",
    "load_coefficients",
    "pipeline_model",
]

COEFFICIENTS_PATH = Path(__file__).resolve().parents[1] / "data" / "latency_coefficients.json"


def load_coefficients(path: Path = COEFFICIENTS_PATH) -> dict[str, Any]:
    """Fitted profiles from a coefficients file, keyed "model|GPU|tp" (empty when the file is absent)."""
    if not path.exists():
        return {}
    return dict(json.loads(path.read_text()).get("profiles", {}))


@functools.cache
def _committed() -> dict[str, Any]:
    return load_coefficients()


def profile_key(model: str, gpu: str, tp: int) -> str:
    return f"{model}|{gpu}|{tp}"


def _fitted_gpu_names() -> dict[str, str]:
    """Fitted GPU names, lower-cased -> canonical (includes H100-80GB-PCAP, which is not in the catalogue)."""
    return {p["gpu"].lower(): p["gpu"] for p in _committed().values()}


def pipeline_model(
    stage_sum: LatencyModel, pp: int, activation_bytes_per_token: float, link_bytes_s: float, link_latency_s: float
) -> LatencyModel:
    """The latency of a `pp`-stage pipeline whose stages together cost `stage_sum` (the tp profile of the whole
    model): each iteration adds (pp - 1) sends of the activations, link_latency_s each, plus
    activation_bytes_per_token / link_bytes_s per token sent (module doc)."""
    if pp < 1:
        raise ValueError(f"pp must be >= 1, got {pp}")
    if stage_sum.pp != 1:
        raise ValueError("stage_sum must be a profile without pipeline stages")
    if pp == 1:
        return stage_sum
    if link_bytes_s <= 0 or link_latency_s < 0 or activation_bytes_per_token < 0:
        raise ValueError("link_bytes_s must be > 0, link_latency_s and activation_bytes_per_token >= 0")
    hops = pp - 1
    per_token = hops * activation_bytes_per_token / link_bytes_s
    return replace(
        stage_sum,
        source=f"{stage_sum.source}+pp{pp}",
        pp=pp,
        prefill_base_s=stage_sum.prefill_base_s + hops * link_latency_s,
        prefill_per_token_s=stage_sum.prefill_per_token_s + per_token,
        decode_base_s=stage_sum.decode_base_s + hops * link_latency_s,
        decode_per_seq_s=stage_sum.decode_per_seq_s + per_token,
    )


@functools.cache
def latency_model(
    model: str,
    gpu: str,
    tp: int,
    pp: int = 1,
    link_bytes_s: float = 25e9,
    link_latency_s: float = 10e-6,
) -> LatencyModel:
    """Fitted coefficients when (model, gpu, tp) was measured, else the calibrated roofline; with `pp` > 1 the
    pipeline's sends over the inter-node link (bytes/s, seconds per send) are added (`pipeline_model`). The link
    defaults are GpuPool's (200 Gb/s, 10 µs)."""
    if pp > 1:
        spec = catalog.model(model)
        base = latency_model(model, gpu, tp)
        return pipeline_model(base, pp, spec.hidden_size * spec.dtype_bytes, link_bytes_s, link_latency_s)
    if tp < 1:
        raise ValueError(f"tp must be >= 1, got {tp}")
    model_name = catalog.model(model).name
    try:
        gpu_name = catalog.gpu(gpu).name
    except CatalogError:
        fitted_gpu = _fitted_gpu_names().get(gpu.strip().lower())
        if fitted_gpu is None:
            raise
        gpu_name = fitted_gpu
    entry = _committed().get(profile_key(model_name, gpu_name, tp))
    if entry is not None:
        coeffs: dict[str, Any] = {name: float(entry.get(name, 0.0)) for name in (*COEFFICIENT_FIELDS, *CPU_FIELDS)}
        coeffs["prefill_knee_tokens"] = int(coeffs["prefill_knee_tokens"])
        source = "fitted-vidur" if entry.get("source") == "vidur" else "fitted"
        return LatencyModel(model=model_name, gpu=gpu_name, tp=tp, source=source, **coeffs)
    if gpu_name not in catalog.gpu_names():
        raise CatalogError(f"no fitted profile for {model_name} on {gpu_name} TP{tp} and no specs for a roofline")
    return roofline_model(model_name, gpu_name, tp)
