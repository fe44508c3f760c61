"""What one fidelity run is asked to do (FidelitySettings), what it shows while running (Hooks), and the
scenario-side preparation both engines share: the live check, the request list fitted to the live model, and the
scenario that replays it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odhsim.fidelity.compare import FidelityError
from odhsim.fidelity.workloads import Requests, fit_lengths, replaying, scenario_requests, trace_requests, write_trace
from odhsim.scenario.model import Scenario


@dataclass(frozen=True)
class FidelitySettings:
    """rates: fractions of the measured capacity, or req/s with `absolute`; duration_s: each load's sending time;
    workload: a trace file instead of the scenario's workload (its first requests from `skip_s`); length_scale:
    token counts are divided by it (a trace of a big model's lengths, replayed on a tiny one)."""

    rates: tuple[float, ...] = (0.3, 0.6, 0.9)
    absolute: bool = False
    duration_s: float = 30.0
    workload: Path | None = None
    skip_s: float = 0.0
    length_scale: float = 1.0
    device: str = "cpu"
    step_s: float = 0.5
    probe_requests: int | None = None
    straggler_timeout_s: float = 60.0
    ready_timeout_s: float = 240.0
    fresh_serve: bool | None = None
    """None: fresh per load only when the scenario autoscales or has faults."""
    sim_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.rates or any(not r > 0 for r in self.rates):
            raise FidelityError(f"--rates must be positive numbers, got {list(self.rates)}")
        if not self.absolute and any(r > 2 for r in self.rates):
            raise FidelityError(f"--rates {list(self.rates)}: fractions of capacity above 2; add --absolute for req/s")
        if not self.duration_s > 0:
            raise FidelityError(f"--duration must be > 0, got {self.duration_s}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise FidelityError(f"--device must be auto, cpu or cuda, got {self.device!r}")


Stage = Callable[[str], None]
ReplayProgress = Callable[[int, int, int], None]


@dataclass
class Hooks:
    """What the caller shows: a stage line, and replay progress (sent, done, total)."""

    stage: Stage = lambda text: None
    replay: ReplayProgress | None = None


def check_live(scenario: Scenario, path: Path) -> None:
    """The scenario must be servable: every model needs its `live:` section (what its replicas run)."""
    missing = [f"models.{i} ({m.name})" for i, m in enumerate(scenario.models) if m.live is None]
    if len(missing) == len(scenario.models):
        raise FidelityError(
            f"{path}: no model has a `live:` section, so there is nothing to serve; odhsim fidelity compares the "
            "simulator with `odhsim serve` (see scenarios/live.yaml or scenarios/fidelity.yaml)"
        )
    if missing:
        raise FidelityError(f"{path}: {', '.join(missing)}: no `live:` section (every model must be servable)")
    from odhsim.scenario.checks import live_refusals

    refused = live_refusals(scenario)
    if refused:
        raise FidelityError(f"{path}: the live engine cannot serve it: " + "; ".join(refused))


def token_limits(scenario: Scenario) -> tuple[int, int, int | None]:
    """(max prompt, max output, LM context) the live engine accepts for this scenario's requests."""
    limits = scenario.live.limits
    contexts = [
        m.engine.max_model_len or m.live.lm.max_seq_len
        for m in scenario.models
        if m.live is not None and m.live.lm is not None
    ]
    return limits.max_prompt_tokens, limits.max_tokens, min(contexts) if contexts else None


def base_requests(scenario: Scenario, settings: FidelitySettings) -> Requests:
    """The request list every load rescales: the trace's or the scenario's, tokens fitted to the live model."""
    if settings.workload is not None:
        raw = trace_requests(settings.workload, limit=50_000, skip_s=settings.skip_s)
    else:
        raw = scenario_requests(scenario)
    max_prompt, max_output, context = token_limits(scenario)
    return fit_lengths(
        raw, max_prompt=max_prompt, max_output=max_output, max_model_len=context, length_scale=settings.length_scale
    )


def needs_fresh_serve(scenario: Scenario, settings: FidelitySettings) -> bool:
    if settings.fresh_serve is not None:
        return settings.fresh_serve
    return any(m.autoscaling is not None for m in scenario.models) or bool(getattr(scenario, "faults", None))


def fidelity_scenario(scenario: Scenario, req: Requests, folder: Path, settings: FidelitySettings) -> Scenario:
    """The scenario replaying `req` (written to folder/requests.csv), stopping by itself."""
    trace = write_trace(req, folder / "workload.csv")
    fid = replaying(scenario, trace, settings.duration_s)
    hard = settings.duration_s + settings.straggler_timeout_s
    update: dict[str, Any] = {"hard_stop_s": hard, **settings.sim_overrides}
    if "steps" in type(fid.outputs).model_fields:  # the simulator's step log, to read beside serve's
        update["outputs"] = fid.outputs.model_copy(update={"steps": True})
    return fid.model_copy(update=update)
