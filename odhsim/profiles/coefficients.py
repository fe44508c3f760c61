"""LatencyModel: the iteration latency of an LLM replica, linear in batch terms so decode fast-forwards in closed form.

A prefill iteration costs base + per_token * tokens + per_token_sq * sum(prompt_len**2), plus an optional
hinge per_token_above_knee * max(0, tokens - knee): measured prefill is latency-bound (cheap per token) below a
few thousand batched tokens and compute-bound above, a kink no straight line fits. A decode step costs
base + per_seq * batch + per_context_token * total_context. Since an unchanged batch's total context grows by
`batch` every step, the time of k steps is a quadratic in k: the simulator jumps straight to the next event
instead of stepping token by token.

The engine's CPU work per iteration (scheduling, sampling, input preparation, output processing) is its own term,
cpu_step_s + cpu_per_seq_s * sequences, added to every iteration (a decode step's sequences are its batch; a prefill
iteration, whose form carries no sequence count, pays for one). Profiles fitted on GPU kernel times (Vidur) set it
from measured vLLM overheads; profiles measured end to end (Splitwise) and the roofline already include it in their
base and per-sequence coefficients and leave it 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
CPU_FIELDS = ("cpu_step_s", "cpu_per_seq_s")


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """Coefficients (seconds) of one (model, GPU, TP[, PP]) deployment; `source` is "fitted" (Splitwise's
    end-to-end measurements), "fitted-vidur" (Vidur's operator times) or "roofline" (with "+pp<N>" when pipeline
    stages were added)."""

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
    cpu_step_s: float = 0.0
    cpu_per_seq_s: float = 0.0
    # GPU + CPU terms summed once here, so an iteration costs the same arithmetic as without a CPU term (and the
    # same bits when it is 0: x + 0.0 == x)
    _prefill_base_all_s: float = field(default=0.0, init=False, repr=False, compare=False)
    _decode_base_all_s: float = field(default=0.0, init=False, repr=False, compare=False)
    _decode_per_seq_all_s: float = field(default=0.0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in (*COEFFICIENT_FIELDS, *CPU_FIELDS):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        object.__setattr__(self, "_prefill_base_all_s", self.prefill_base_s + (self.cpu_step_s + self.cpu_per_seq_s))
        object.__setattr__(self, "_decode_base_all_s", self.decode_base_s + self.cpu_step_s)
        object.__setattr__(self, "_decode_per_seq_all_s", self.decode_per_seq_s + self.cpu_per_seq_s)
        if self.decode_base_s + self.decode_per_seq_s <= 0.0:
            raise ValueError("a decode step must take time: decode_base_s + decode_per_seq_s must be > 0")

    def prefill_s(self, tokens: int, sum_sq_tokens: int | None = None) -> float:
        """One prefill iteration over `tokens` batched prompt tokens; sum_sq defaults to one sequence."""
        if tokens <= 0:
            return 0.0
        sq = tokens * tokens if sum_sq_tokens is None else sum_sq_tokens
        above = max(0, tokens - self.prefill_knee_tokens) * self.prefill_per_token_above_knee_s
        return self._prefill_base_all_s + self.prefill_per_token_s * tokens + self.prefill_per_token_sq_s * sq + above

    def decode_step_s(self, batch: int, context_tokens: int) -> float:
        """One decode step of `batch` sequences holding `context_tokens` cached tokens in total."""
        if batch <= 0:
            return 0.0
        base, per_seq = self._decode_base_all_s, self._decode_per_seq_all_s
        return base + per_seq * batch + self.decode_per_context_token_s * context_tokens

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
