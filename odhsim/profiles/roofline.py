"""Roofline latency for (model, GPU, TP) combinations nobody measured, in the same linear form as a fitted profile.

Prefill is compute-bound (2 * params FLOPs per token, plus causal attention ~ sum of prompt_len**2); decode is
memory-bound (every step reads the weights once and each sequence's KV cache). Tensor parallelism splits both
across `tp` GPUs but adds two all-reduces per layer: a latency per all-reduce that grows with log2(tp) and a
ring transfer of 2 (tp - 1) / tp * hidden * dtype bytes per token over the interconnect. As in the measurements,
batched prompt tokens beyond prefill_knee_tokens run at a lower MFU (the fitted profiles' hinge).

The efficiency factors are not guesses: `odhsim.profiles.calibration.calibrate_roofline` fits them to the Splitwise
measurements (llama2-70b TP 2/4/8 and bloom-176b TP 8 on A100-80GB and H100-80GB) and CALIBRATED holds the
result, so the roofline reproduces the measured groups to within the errors tests/test_profiles.py checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from odhsim import catalog
from odhsim.profiles.coefficients import LatencyModel


@dataclass(frozen=True, slots=True)
class RooflineFactors:
    """Achieved fractions of peak, and fixed costs (seconds), that turn datasheet peaks into latencies."""

    mfu_prefill: float  # fraction of peak FLOP/s reached by prefill GEMMs
    mfu_decode: float  # fraction of peak FLOP/s reached by the per-sequence decode GEMMs
    mbu: float  # fraction of peak memory bandwidth reached reading weights and KV cache
    link_efficiency: float  # achieved all-reduce bandwidth / the interconnect's headline bandwidth
    allreduce_latency_s: float  # per all-reduce, per log2(tp) step
    step_overhead_s: float  # fixed cost of any iteration (scheduling, kernel launches, sampling)
    decode_per_seq_overhead_s: float  # per sequence in a decode step (sampling, bookkeeping)
    mfu_prefill_long: float  # lower MFU reached by the batched tokens beyond prefill_knee_tokens
    prefill_knee_tokens: int  # where measured prefill turns from latency-bound to throughput-bound


# rounded(calibrate_roofline()) on the Splitwise perf_model.csv; mfu_prefill sits at its 0.75 bound.
CALIBRATED = RooflineFactors(
    mfu_prefill=0.75,
    mfu_decode=0.44,
    mbu=0.76,
    link_efficiency=0.18,
    allreduce_latency_s=52e-6,
    step_overhead_s=0.52e-3,
    decode_per_seq_overhead_s=0.18e-3,
    mfu_prefill_long=0.39,
    prefill_knee_tokens=2048,
)


def roofline_model(model_name: str, gpu_name: str, tp: int, factors: RooflineFactors = CALIBRATED) -> LatencyModel:
    """LatencyModel (source "roofline") from the catalogue specs of `model_name` on `tp` x `gpu_name`."""
    if tp < 1:
        raise ValueError(f"tp must be >= 1, got {tp}")
    m, g = catalog.model(model_name), catalog.gpu(gpu_name)
    f = factors
    flops = tp * g.peak_flops
    bandwidth = tp * g.mem_bw_bytes_s * f.mbu
    n_allreduce = 2 * m.layers if tp > 1 else 0
    allreduce_fixed = n_allreduce * f.allreduce_latency_s * math.log2(tp)
    ring_bytes = 2.0 * (tp - 1) / tp * m.hidden_size * m.dtype_bytes
    comm_per_token = n_allreduce * ring_bytes / (g.interconnect_bytes_s * f.link_efficiency)
    weight_read = m.weight_bytes / bandwidth
    gemm_flops = 2.0 * m.params
    attn_width = m.layers * m.num_heads * m.head_dim
    return LatencyModel(
        model=m.name,
        gpu=g.name,
        tp=tp,
        source="roofline",
        prefill_base_s=f.step_overhead_s + weight_read + allreduce_fixed,
        prefill_per_token_s=gemm_flops / (flops * f.mfu_prefill) + comm_per_token,
        # causal attention: QK^T and PV, 2 FLOPs per multiply-add, half the L x L square
        prefill_per_token_sq_s=2.0 * attn_width / (flops * f.mfu_prefill),
        prefill_knee_tokens=f.prefill_knee_tokens,
        prefill_per_token_above_knee_s=max(0.0, gemm_flops / flops * (1 / f.mfu_prefill_long - 1 / f.mfu_prefill)),
        decode_base_s=f.step_overhead_s + weight_read + allreduce_fixed,
        decode_per_seq_s=gemm_flops / (flops * f.mfu_decode) + comm_per_token + f.decode_per_seq_overhead_s,
        decode_per_context_token_s=m.kv_bytes_per_token / bandwidth + 4.0 * attn_width / (flops * f.mfu_decode),
    )
