"""Measure the time spent outside the engine: a real gateway and real replica processes on 127.0.0.1.

The scenario's live models are served by a `LiveStack` (the same gateway, controller and replica processes as
`odhsim serve`; one replica each, no autoscaler, no response cache, anonymous requests allowed) and sent requests
one at a time (ALONE_GAP_S apart, timed from when each was due, as the replay times them), so nothing queues: what
a request takes beyond the fitted engine time (its prefill and decode steps at batch 1, or the batcher's delay and
one pass of one row) is the client's scheduling, HTTP in and out, tokenising, authentication, routing and
streaming. Then 1, 4 and 8 identical requests are sent at once, to read the decode step at those
batch sizes. The probe stack's replicas log their steps and the client times its requests on the same monotonic
clock, so each probe splits exactly into its phases (odhsim.calibrate.served): the overheads come from the steps
as the serving replica ran them. Without a step log (a spool that could not be read) the client-side estimate is
kept: `request_s` the median extra time to the first token, the token cadence of k requests together against the
engine's decode step at batch k for `step_s + step_per_seq_s * batch`, `per_token_s` what is left per later token
of the requests sent alone. The live runtime is imported inside the functions (CLI layer).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import math
import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from odhsim.calibrate.profile_file import Batching, Overheads, StepCoefficients
from odhsim.calibrate.served import ProbeTimes, decomposition, served_overheads
from odhsim.calibrate.stream_cpu import CpuPhase, PhaseMeter, stream_costs
from odhsim.errors import OdhsimError
from odhsim.profiles.coefficients import LatencyModel
from odhsim.scenario.load import scenario_from_dict

LLM_REQUESTS = ((16, 8), (64, 16), (128, 32), (256, 8), (32, 32), (192, 16))
"""(prompt tokens, output tokens) of the probe requests, cycled."""
TOGETHER = (1, 4, 8)
"""Requests sent at once to read the live token cadence at these decode batch sizes."""
TOGETHER_SHAPE = (64, 32)
ALONE_GAP_S = 0.1
"""Idle time before each request sent alone: a replay at low load reaches an idle stack (cold caches, sleeping
threads), which costs about a millisecond more than requests sent back to back (measured here: in + out 6.5 ms
with 0.15 s between requests, 5.4 ms without)."""


class OverheadError(OdhsimError):
    """The live stack could not be started or a probe request failed."""


@dataclass(frozen=True)
class Probe:
    model: str
    prompt_tokens: int
    output_tokens: int
    ttft_s: float
    e2e_s: float
    together: int = 0
    """0: sent alone; k: one of k requests sent at once (their decode steps ran at batch k)."""
    sent_s: float = math.nan
    """When it was sent, on the replicas' step-log clock (the monotonic clock); NaN when unknown."""

    def times(self) -> ProbeTimes:
        return ProbeTimes(self.prompt_tokens, self.output_tokens, self.sent_s, self.sent_s + self.ttft_s,
                          self.sent_s + self.e2e_s, self.together)  # fmt: skip


@dataclass(frozen=True)
class ProbeRun:
    """The probes and the engine steps the probe stack's replicas logged meanwhile (time_s on the same clock as
    the probes' sent_s; None when the step log could not be read)."""

    probes: list[Probe]
    steps: pd.DataFrame | None
    stream_cpu: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    """Per LLM: (request_cpu_s, stream_cpu_per_token_s) of the gateway and the client (odhsim.calibrate.stream_cpu)."""


def probe_scenario(data: dict[str, Any], models: list[str], base_dir: Path) -> Any:
    """The scenario to probe with: its live models, one replica each, nothing that changes a request's path
    beyond what every request pays (no autoscaler, canary, faults, response cache), anonymous requests allowed."""
    d = copy.deepcopy(data)
    d["models"] = [dict(m) for m in d["models"] if m.get("name") in models]
    for m in d["models"]:
        m["replicas"] = 1
        for key in ("autoscaling", "canary", "deployments"):
            m.pop(key, None)
    d.pop("faults", None)
    d.setdefault("gateway", {})
    d["gateway"] = {**d["gateway"], "response_cache": None}
    d["live"] = {**d.get("live", {}), "allow_anonymous": True, "api_keys_file": None}
    weights = d.get("workload", {}).get("models")
    if isinstance(weights, dict):
        d["workload"]["models"] = {k: v for k, v in weights.items() if k in models} or {models[0]: 1.0}
    return scenario_from_dict(d, source="<calibrate probe>", base_dir=base_dir)


async def _probe(
    data: dict[str, Any], kinds: dict[str, str], base_dir: Path, device: str, per_model: int, tick: Callable[[], None]
) -> ProbeRun:
    """Serve the models here; send the probes from a client process of its own, as `odhsim replay` does (a client
    sharing the gateway's event loop and process measures that sharing too: v2 infer took 45 ms more so)."""
    with tempfile.TemporaryDirectory(prefix="odhsim-probe-") as tmp:
        return await _probe_in(data, kinds, base_dir, device, per_model, tick, Path(tmp))


async def _probe_in(
    data: dict[str, Any],
    kinds: dict[str, str],
    base_dir: Path,
    device: str,
    per_model: int,
    tick: Callable[[], None],
    out_dir: Path,
) -> ProbeRun:
    from runtime.replica.steps_spool import SpoolError, read_spools
    from runtime.serve import LiveStack

    sc = probe_scenario(data, list(kinds), base_dir)
    stack = LiveStack(sc, port=0, device=device, out_dir=out_dir)  # out_dir: the replicas spool their steps there
    try:
        await stack.start()
        await stack.wait_deployed(180)
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_client_main, args=(stack.url, kinds, per_model, queue), name="calibrate-probes")
        proc.start()
        try:
            result = await asyncio.to_thread(queue.get, True, 900)
        finally:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    except OdhsimError:
        raise
    except Exception as err:  # a replica that did not start, a client that died: say what failed
        raise OverheadError(f"the live stack for measuring overheads failed: {err!r}") from err
    finally:
        await stack.stop()
    if isinstance(result, str):
        raise OverheadError(result)
    out = [Probe(**row) for row in result["probes"]]
    background = float(result["background_cores"])
    costs = {name: stream_costs([CpuPhase(**ph) for ph in phases], background)
             for name, phases in result["phases"].items()}  # fmt: skip
    try:  # absolute monotonic times (t0 = 0), the clock the client timed its probes on
        steps: pd.DataFrame | None = read_spools(out_dir / "steps", 0.0)
    except (OSError, SpoolError):
        steps = None
    n_llm = sum(1 for k in kinds.values() if k == "llm")
    for _ in range(len(kinds) * (per_model + 1) + n_llm * together_rounds(per_model) * len(TOGETHER)):
        tick()
    return ProbeRun(out, steps, {name: c for name, c in costs.items() if c is not None})


def _client_main(url: str, kinds: dict[str, str], per_model: int, queue: Any) -> None:
    """The probe client process: its probes and CPU phases as dicts on `queue`, or the error as text."""
    try:
        probes, phases, background = asyncio.run(_client(url, kinds, per_model))
        queue.put({
            "probes": [dataclasses.asdict(p) for p in probes],
            "phases": {name: [dataclasses.asdict(ph) for ph in mine] for name, mine in phases.items()},
            "background_cores": background,
        })  # fmt: skip
    except Exception as err:
        queue.put(f"probe client: {err}")


async def _client(
    url: str, kinds: dict[str, str], per_model: int
) -> tuple[list[Probe], dict[str, list[CpuPhase]], float]:
    import httpx

    from runtime.replay import Sender
    from runtime.replay_plan import ReplayOptions, synth_prompt

    out: list[Probe] = []
    phases: dict[str, list[CpuPhase]] = {}
    clock = time.monotonic  # the replicas' step log's clock (one clock for every process of the machine)
    meter = PhaseMeter()
    idle = meter.start()
    await asyncio.sleep(0.5)
    background = meter.phase(idle, 0, 0)
    background_cores = max(0.0, background.cpu_s / background.wall_s)
    async with httpx.AsyncClient(base_url=url, timeout=60.0, trust_env=False) as client:
        sender = Sender(client, clock, ReplayOptions())
        for name, kind in kinds.items():
            alone_at = meter.start()
            tokens = 0
            for i in range(per_model + 1):  # the first one warms the path up and is not kept
                p, o = LLM_REQUESTS[i % len(LLM_REQUESTS)]
                # sent as the replay sends: at a planned time, ALONE_GAP_S after the last answer, from a task of
                # its own; times count from the plan, as the replay's do from each request's arrival
                t0 = clock() + ALONE_GAP_S
                await asyncio.sleep(t0 - clock())
                if kind == "llm":
                    body = {"model": name, "prompt": synth_prompt(10_000 + i, p), "max_tokens": o,
                            "temperature": 1.0, "seed": i, "ignore_eos": True, "stream": True}  # fmt: skip
                    res = await asyncio.create_task(sender.completion({}, body))
                else:
                    p, o = 0, 1
                    res = await asyncio.create_task(sender.infer({}, name, i))
                if res.status != "ok":
                    raise OverheadError(f"probe request to model '{name}' failed: {res.status} {res.reason}")
                tokens += o
                if i > 0:
                    out.append(Probe(name, p, o, res.first_token_s - t0, res.finish_s - t0, sent_s=t0))
            if kind == "llm":
                mine = [meter.phase(alone_at, per_model + 1, tokens)]
                together_at = meter.start()
                sent = len(out)
                for _ in range(together_rounds(per_model)):
                    out += await _together(sender, name, clock)
                together = out[sent:]
                mine.append(meter.phase(together_at, len(together), sum(pr.output_tokens for pr in together)))
                phases[name] = mine
    return out, phases, background_cores


def together_rounds(per_model: int) -> int:
    """Rounds of requests sent together: one in a quick calibration, three otherwise."""
    return 1 if per_model < 8 else 3


async def _together(sender: Any, name: str, clock: Callable[[], float]) -> list[Probe]:
    """k identical requests at once, for k in TOGETHER: admitted in one step, they decode as a batch of k."""
    from runtime.replay_plan import synth_prompt

    p, o = TOGETHER_SHAPE
    out: list[Probe] = []
    for k in TOGETHER:
        t0 = clock()
        bodies = [{"model": name, "prompt": synth_prompt(20_000 + 100 * k + j, p), "max_tokens": o,
                   "temperature": 1.0, "seed": j, "ignore_eos": True, "stream": True} for j in range(k)]  # fmt: skip
        results = await asyncio.gather(*(sender.completion({}, b) for b in bodies))
        for res in results:
            if res.status != "ok":
                raise OverheadError(f"probe request to model '{name}' failed: {res.status} {res.reason}")
            out.append(Probe(name, p, o, res.first_token_s - t0, res.finish_s - t0, together=k, sent_s=t0))
    return out


def probe_live(
    data: dict[str, Any],
    kinds: dict[str, str],
    base_dir: Path,
    device: str,
    per_model: int,
    tick: Callable[[], None] = lambda: None,
) -> ProbeRun:
    """Serve the scenario's live models (`kinds`: name -> llm/fixed) and time `per_model` requests to each."""
    try:  # the event loop `odhsim serve` runs the gateway on (uvloop when installed), so its costs are the ones paid
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_probe(data, kinds, base_dir, device, per_model, tick))


def _timed(probes: list[Probe], steps: pd.DataFrame | None, model: str) -> tuple[list[ProbeTimes], pd.DataFrame]:
    """The probes on the step log's clock and that model's steps (none when the log or the send times are missing)."""
    if steps is None or not probes or any(pr.sent_s != pr.sent_s for pr in probes):
        return [], pd.DataFrame()
    return [pr.times() for pr in probes], steps[steps["model"] == model]


def probe_summary(
    probes: list[Probe], coef: StepCoefficients | None, steps: pd.DataFrame | None = None
) -> dict[str, Any]:
    """The probes in brief, for the profile's provenance: medians of the requests sent alone, per batch k of
    requests sent together their token cadence next to the engine's decode step, and with the step log each
    phase of a request on one clock (`served`: odhsim.calibrate.served.decomposition)."""
    alone = [pr for pr in probes if pr.together == 0]
    doc: dict[str, Any] = {
        "alone": len(alone),
        "alone_ttft_median_s": round(statistics.median(pr.ttft_s for pr in alone), 6) if alone else None,
        "alone_e2e_median_s": round(statistics.median(pr.e2e_s for pr in alone), 6) if alone else None,
    }
    if coef is not None:
        lm = LatencyModel(model="probe", gpu="cpu", tp=1, source="calibrated", **coef.model_dump())
        for k in sorted({pr.together for pr in probes if pr.together}):
            mine = [pr for pr in probes if pr.together == k]
            p, o = mine[0].prompt_tokens, mine[0].output_tokens
            cadence = statistics.median((pr.e2e_s - pr.ttft_s) / (o - 1) for pr in mine)
            engine = lm.decode_span_s(k, k * (p + 1), o - 1) / (o - 1)
            doc[f"together_{k}"] = {"live_token_cadence_s": round(cadence, 6), "engine_decode_step_s": round(engine, 6)}
        timed, mine = _timed(probes, steps, probes[0].model if probes else "")
        if timed and len(mine):
            doc["served"] = decomposition(timed, mine, coef)
    return doc


def llm_overheads(probes: list[Probe], coef: StepCoefficients, steps: pd.DataFrame | None = None) -> Overheads:
    """From the served steps when the probe stack's step log has them (odhsim.calibrate.served.served_overheads);
    else the client-side estimate:
    request_s: median time to the first token beyond the engine's batch-1 prefill (requests sent alone).
    step_s + step_per_seq_s * k: the live token cadence of k requests decoding together beyond the engine's
    decode step at batch k (non-negative least squares over TOGETHER). per_token_s: what is left per later
    token of the requests sent alone once the step overhead at batch 1 is counted."""
    timed, mine = _timed(probes, steps, probes[0].model if probes else "")
    if timed and len(mine):
        served = served_overheads(timed, mine, coef)
        if served is not None:
            return served
    lm = LatencyModel(model="probe", gpu="cpu", tp=1, source="calibrated", **coef.model_dump())
    alone = [pr for pr in probes if pr.together == 0]
    first = [pr.ttft_s - lm.prefill_s(pr.prompt_tokens) for pr in alone]
    step_s = per_seq_s = 0.0
    rows = []
    for k in sorted({pr.together for pr in probes if pr.together}):
        mine = [pr for pr in probes if pr.together == k]
        p, o = mine[0].prompt_tokens, mine[0].output_tokens
        cadence = statistics.median((pr.e2e_s - pr.ttft_s) / (o - 1) for pr in mine)
        engine = lm.decode_span_s(k, k * (p + 1), o - 1) / (o - 1)
        rows.append((k, cadence - engine))
    if len(rows) >= 2:
        x = np.array([[1.0, k] for k, _ in rows])
        (step_s, per_seq_s), _ = nnls(x, np.array([extra for _, extra in rows]))
    later = []
    for pr in alone:
        if pr.output_tokens > 1:
            steps = pr.output_tokens - 1
            decode = lm.decode_span_s(1, pr.prompt_tokens + 1, steps) + steps * (step_s + per_seq_s)
            later.append((pr.e2e_s - pr.ttft_s - decode) / steps)
    return Overheads(
        request_s=round(max(0.0, statistics.median(first)), 6),
        per_token_s=round(max(0.0, statistics.median(later)), 7) if later else 0.0,
        step_s=round(float(step_s), 7),
        step_per_seq_s=round(float(per_seq_s), 7),
    )


def fixed_overheads(probes: list[Probe], batching: Batching) -> Overheads:
    """Median time beyond the batcher's delay and one pass of one row."""
    engine = batching.max_batch_delay_ms / 1000.0 + batching.service_s(1)
    return Overheads(request_s=round(max(0.0, statistics.median(pr.e2e_s - engine for pr in probes)), 6))
