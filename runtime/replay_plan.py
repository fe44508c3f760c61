"""What a replay sends: the requests of a trace file or of a scenario's workload (built as the simulator builds
it, same seed, same streams), bounded, scaled to replay time and clipped to what the live models take, plus the
deterministic prompts that stand in for the trace's prompt token counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from odhsim.errors import OdhsimError
from odhsim.rng import RngStreams
from odhsim.scenario.model import Scenario
from odhsim.workload.build import build_workload
from odhsim.workload.loaders import open_trace
from odhsim.workload.schema import RequestBatch, concat

SCENARIO_SUFFIXES = (".yaml", ".yml")
FILLER = "the quick brown fox jumps over the lazy dog while a small model serves its tokens one by one; "


class ReplayError(OdhsimError):
    """Bad replay input (source, target, options); the CLI prints it and exits 2."""


DEFAULT_LIMIT, DEFAULT_MAX_DURATION_S = 10_000, 900.0
"""A replay is bounded unless its caller passes None: a whole public trace at its own pace can last for hours."""
TRACE_MAX_PROMPT_TOKENS, TRACE_MAX_OUTPUT_TOKENS = 256, 64
"""Token clips of a trace file's requests when none are given (what the tiny live LMs serve); a scenario's
requests are clipped to its own `live.limits` unless smaller clips are given."""


@dataclass(frozen=True)
class ReplayOptions:
    """speed: arrivals at `speed` x the trace's rate; limit / max_duration_s: stop sending after that many requests
    or that many (replay) seconds; concurrency: most requests outstanding (and connections); request_timeout_s:
    per request; straggler_timeout_s: the most the replay waits after its last send; model: where a trace file's
    requests go (default: the target's first model); prompt_tag: written before each prompt's row number, so two
    replays with different tags share no prompt prefix (a gateway's prefix-cache index remembers earlier replays'
    prompts, which are otherwise the same text row by row)."""

    speed: float = 1.0
    limit: int | None = DEFAULT_LIMIT
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None
    concurrency: int = 256
    request_timeout_s: float = 120.0
    straggler_timeout_s: float = 60.0
    model: str | None = None
    temperature: float = 1.0
    prompt_tag: str = ""

    def __post_init__(self) -> None:
        tag = self.prompt_tag
        if len(tag) > 16 or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in tag):
            raise ReplayError(f"prompt_tag: at most 16 ASCII letters, digits, '-', '_' or '.', got {tag[:40]!r}")
        if not self.speed > 0:
            raise ReplayError(f"--speed must be > 0, got {self.speed}")
        if self.limit is not None and self.limit < 1:
            raise ReplayError(f"--limit must be >= 1, got {self.limit}")
        if self.max_duration_s is not None and not self.max_duration_s > 0:
            raise ReplayError(f"--max-duration must be > 0, got {self.max_duration_s}")
        if (self.max_prompt_tokens is not None and self.max_prompt_tokens < 2) or (
            self.max_output_tokens is not None and self.max_output_tokens < 1
        ):
            raise ReplayError("--max-prompt-tokens must be >= 2 and --max-output-tokens >= 1")
        if self.concurrency < 1 or self.request_timeout_s <= 0 or self.straggler_timeout_s < 0:
            raise ReplayError("concurrency >= 1, request timeout > 0 and straggler timeout >= 0 are required")


@dataclass(frozen=True, eq=False)
class ReplayPlan:
    """The requests to send (arrival_s already scaled to replay seconds, tokens clipped) and their labels."""

    name: str
    seed: int
    requests: RequestBatch
    model_names: list[str]
    tenant_names: list[str]
    kinds: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    scenario: Scenario | None = None
    clipped_prompts: int = 0
    clipped_outputs: int = 0
    max_prompt_tokens: int = TRACE_MAX_PROMPT_TOKENS
    max_output_tokens: int = TRACE_MAX_OUTPUT_TOKENS


# -- the plan ------------------------------------------------------------------------------------------------
def _take(batches: Any, opts: ReplayOptions, duration_s: float | None) -> RequestBatch:
    """Time-sorted requests up to the limit and the duration (both in replay seconds)."""
    parts, n = [], 0
    horizon = opts.max_duration_s
    for b in batches:
        keep = np.ones(len(b), bool)
        if duration_s is not None:
            keep &= b.arrival_s < duration_s
        if horizon is not None:
            keep &= b.arrival_s / opts.speed < horizon
        b = b.take(keep)
        if opts.limit is not None:
            b = b.take(np.arange(min(len(b), opts.limit - n)))
        parts.append(b)
        n += len(b)
        if (opts.limit is not None and n >= opts.limit) or (len(keep) and not keep[-1]):
            break
    return concat(parts)


def load_plan(source: str | Path | Scenario, opts: ReplayOptions) -> ReplayPlan:
    """Requests from a scenario's workload (built as the simulator builds it; a file or an already loaded
    Scenario, as `odhsim fidelity` passes one) or from a trace file."""
    scenario: Scenario | None = source if isinstance(source, Scenario) else None
    path = Path(f"{scenario.name}.yaml") if scenario is not None else Path(str(source))
    if scenario is None and not path.exists():
        raise ReplayError(f"{path}: no such file (give a trace file or a scenario YAML)")
    if scenario is None and path.suffix.lower() in SCENARIO_SUFFIXES:
        from odhsim.scenario.load import load_scenario

        scenario = load_scenario(path)
    if scenario is not None:
        models = [m.name for m in scenario.models]
        workload = build_workload(
            scenario.workload, model_names=models, streams=RngStreams(scenario.seed), base_dir=scenario.base_dir
        )
        batch = _take(workload.batches(), opts, scenario.duration_s)
        name, seed, tenants = scenario.name, scenario.seed, list(workload.tenant_names)
        kinds = {m.name: m.kind for m in scenario.models}
        versions = {m.name: m.version for m in scenario.models}
        limits = scenario.live.limits
        max_prompt = min(opts.max_prompt_tokens or limits.max_prompt_tokens, limits.max_prompt_tokens)
        max_output = min(opts.max_output_tokens or limits.max_tokens, limits.max_tokens)
    else:
        batch = _take(open_trace(path).batches(), opts, None)
        name, seed, tenants, kinds, versions = path.stem, 0, ["default"], {}, {}
        models = [opts.model or ""]  # resolved against the target when not given
        max_prompt = opts.max_prompt_tokens or TRACE_MAX_PROMPT_TOKENS
        max_output = opts.max_output_tokens or TRACE_MAX_OUTPUT_TOKENS
    if len(batch) == 0:
        raise ReplayError(f"{path}: no requests to replay (check --limit / --max-duration)")
    prompt = np.clip(batch.prompt_tokens, 2, max_prompt)
    output = np.clip(batch.output_tokens, 1, max_output)
    plan_batch = batch.with_columns(
        arrival_s=batch.arrival_s / opts.speed, prompt_tokens=prompt.astype(np.int64), output_tokens=output
    )
    return ReplayPlan(
        name=name,
        seed=seed,
        requests=plan_batch,
        model_names=models,
        tenant_names=tenants,
        kinds=kinds,
        versions=versions,
        scenario=scenario,
        clipped_prompts=int((batch.prompt_tokens > max_prompt).sum()),
        clipped_outputs=int((batch.output_tokens > max_output).sum()),
        max_prompt_tokens=int(max_prompt),
        max_output_tokens=int(max_output),
    )


def synth_prompt(row: int, tokens: int, tag: str = "") -> str:
    """A deterministic ASCII prompt of exactly `tokens` tokens (BOS + tokens-1 bytes), unique per row (and per
    `tag`: tag and row open the prompt, so another tag changes its first block and, ids being chained, every block)."""
    n = max(1, tokens - 1)
    text = f"[{tag}:{row}] " if tag else f"[{row}] "
    text += FILLER * (n // len(FILLER) + 1)
    return text[:n]
