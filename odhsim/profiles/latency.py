"""Iteration latency of an LLM replica: linear in batch terms, so decode can be fast-forwarded in closed form.

Pipeline parallelism (`pipeline_model`): a token passes every stage in turn, so an iteration of a pp-stage
replica costs the sum of its stage times plus (pp - 1) stage-to-stage activation sends over the inter-node network.
With the layers split evenly the stage times add up to the whole model's time on one `tp` group (the per-iteration
overhead counted once), so the pipeline's coefficients are the tp profile's plus the sends: (pp - 1) x link latency
per iteration and (pp - 1) x hidden_size x dtype bytes / link bandwidth per token (each sequence in a decode step,
each prompt token in a prefill).

A prefill iteration costs base + per_token * tokens + per_token_sq * sum(prompt_len**2), plus an optional
hinge per_token_above_knee * max(0, tokens - knee): measured prefill is latency-bound (cheap per token) below a
few thousand batched tokens and compute-bound above, a kink no straight line fits. A decode step costs
base + per_seq * batch + per_context_token * total_context. Since an unchanged batch's total context grows by
`batch` every step, the time of k steps is a quadratic in k: the simulator jumps straight to the next event
instead of stepping token by token.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from odhsim import catalog
from odhsim.errors import CatalogError

COEFFICIENTS_PATH = Path(__file__).resolve().parents[1] / "data" / "latency_coefficients.json"
COEFFICIENT_FIELDS = (
    "prefill_base_s",
    "prefill_per_token_s",
    "prefill_per_token_sq_s",
    "decode_base_s",
    "decode_per_seq_s",
    "decode_per_context_token_s",
    "prefill_knee_tokens",
    "prefill_per_token_above_knee_s",
)


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """Coefficients (seconds) of one (model, GPU, TP[, PP]) deployment; `source` is "fitted" or "roofline" (with
    "+pp<N>" when pipeline stages were added)."""

    model: str
    gpu: str
    tp: int
    source: str
    prefill_base_s: float
    prefill_per_token_s: float
    prefill_per_token_sq_s: float
    decode_base_s: float
    decode_per_seq_s: float
    decode_per_context_token_s: float
    prefill_knee_tokens: int = 0
    prefill_per_token_above_knee_s: float = 0.0
    pp: int = 1

    def __post_init__(self) -> None:
        for name in COEFFICIENT_FIELDS:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if self.decode_base_s + self.decode_per_seq_s <= 0.0:
            raise ValueError("a decode step must take time: decode_base_s + decode_per_seq_s must be > 0")

    def prefill_s(self, tokens: int, sum_sq_tokens: int | None = None) -> float:
        """One prefill iteration over `tokens` batched prompt tokens; sum_sq defaults to one sequence."""
        if tokens <= 0:
            return 0.0
        sq = tokens * tokens if sum_sq_tokens is None else sum_sq_tokens
        above = max(0, tokens - self.prefill_knee_tokens) * self.prefill_per_token_above_knee_s
        return self.prefill_base_s + self.prefill_per_token_s * tokens + self.prefill_per_token_sq_s * sq + above

    def decode_step_s(self, batch: int, context_tokens: int) -> float:
        """One decode step of `batch` sequences holding `context_tokens` cached tokens in total."""
        if batch <= 0:
            return 0.0
        return self.decode_base_s + self.decode_per_seq_s * batch + self.decode_per_context_token_s * context_tokens

    def decode_span_s(self, batch: int, context_tokens: int, steps: int) -> float:
        """Time of `steps` consecutive decode steps of an unchanged batch (context grows by `batch` per step)."""
        if steps <= 0 or batch <= 0:
            return 0.0
        first = self.decode_step_s(batch, context_tokens)
        return steps * first + self.decode_per_context_token_s * batch * (steps * (steps - 1) / 2)

    def decode_steps_within(self, batch: int, context_tokens: int, elapsed_s: float) -> int:
        """The largest k with decode_span_s(batch, context_tokens, k) <= elapsed_s (exact, closed form)."""
        if batch <= 0:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if not elapsed_s > 0.0:
            return 0
        if not math.isfinite(elapsed_s):
            raise ValueError(f"elapsed_s must be finite, got {elapsed_s}")
        a = self.decode_per_context_token_s * batch / 2.0  # span(k) = a k^2 + b k
        b = self.decode_step_s(batch, context_tokens) - a
        if a == 0.0:
            k_real = elapsed_s / b
        else:
            root = math.sqrt(b * b + 4.0 * a * elapsed_s)
            k_real = 2.0 * elapsed_s / (b + root) if b > 0.0 else (root - b) / (2.0 * a)
        k = max(0, math.floor(k_real))
        while self.decode_span_s(batch, context_tokens, k + 1) <= elapsed_s:
            k += 1
        while k > 0 and self.decode_span_s(batch, context_tokens, k) > elapsed_s:
            k -= 1
        return k


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
    from odhsim.profiles.roofline import roofline_model

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
        coeffs: dict[str, Any] = {name: float(entry.get(name, 0.0)) for name in COEFFICIENT_FIELDS}
        coeffs["prefill_knee_tokens"] = int(coeffs["prefill_knee_tokens"])
        return LatencyModel(model=model_name, gpu=gpu_name, tp=tp, source="fitted", **coeffs)
    if gpu_name not in catalog.gpu_names():
        raise CatalogError(f"no fitted profile for {model_name} on {gpu_name} TP{tp} and no specs for a roofline")
    return roofline_model(model_name, gpu_name, tp)
