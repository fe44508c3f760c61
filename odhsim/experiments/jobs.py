"""One simulation to run: a scenario, field overrides and a seed, with an id that names it across reruns.

A Job is small and picklable, so it travels to a process pool or a Ray worker; `run_job` runs it in whatever
process holds it. The id hashes the scenario's content (the file's bytes, or a Scenario's JSON), the canonical
overrides and the seed, so a rerun of a sweep recognises the jobs it has already finished. The traces a scenario
names are not hashed: replacing a trace file under an unchanged scenario does not change job ids.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from odhsim.errors import ScenarioError
from odhsim.results.run_result import RunResult, json_safe
from odhsim.scenario.load import apply_overrides, read_scenario_dict, scenario_from_dict
from odhsim.scenario.model import Scenario
from odhsim.scenario.yaml_io import parse_path

Override = tuple[str, Any]
"""(dotted field path as `--set` takes it, e.g. "models[0].replicas", value)."""


def _canonical(value: Any) -> str:
    return json.dumps(json_safe(value), sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Job:
    """`scenario` (a file path or a validated Scenario) with `overrides` applied, run on `seed`.

    `label` is free text carried along (compare puts the variant name there); it is not part of the id."""

    scenario: str | Scenario
    seed: int
    overrides: tuple[Override, ...] = ()
    label: str = field(default="", compare=False)

    @cached_property
    def job_id(self) -> str:
        """16 hex digits of sha256(scenario content, sorted overrides, seed)."""
        if isinstance(self.scenario, Scenario):
            content = self.scenario.model_dump_json()
        else:
            path = Path(self.scenario)
            try:
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as err:
                raise ScenarioError(f"{path}: cannot read the scenario ({err.strerror})") from None
        key = _canonical({"scenario": content, "overrides": sorted(self.overrides, key=lambda o: o[0]),
                          "seed": int(self.seed)})  # fmt: skip
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    @property
    def params(self) -> dict[str, Any]:
        """The overrides as {path: value}, in the order given."""
        return dict(self.overrides)


@dataclass(frozen=True, eq=False)
class JobOutput:
    """What a job returns: its summary (plain JSON types), optionally the per-request table or the whole result."""

    summary: dict[str, Any]
    wall_s: float
    requests: pd.DataFrame | None = None
    result: RunResult | None = None


def job_scenario(job: Job) -> Scenario:
    """The job's scenario with its overrides applied and validated; errors name the override or the file line."""
    set_by = {tuple(parse_path(p)): f"{p}={v}" for p, v in job.overrides}
    parsed = [(parse_path(p), v) for p, v in job.overrides]
    if isinstance(job.scenario, Scenario):
        if not parsed:
            return job.scenario
        data = apply_overrides(job.scenario.model_dump(mode="json"), parsed)
        return scenario_from_dict(data, source=job.scenario.name, base_dir=job.scenario.base_dir, set_by=set_by)
    path = Path(job.scenario)
    data, lines = read_scenario_dict(path)
    data = apply_overrides(data, parsed)
    return scenario_from_dict(data, source=str(path), lines=lines, base_dir=path.resolve().parent, set_by=set_by)


def run_job(job: Job, *, with_requests: bool = False, keep_result: bool = False) -> JobOutput:
    """Simulate one job in this process and return its summary (and the request table or whole result if asked)."""
    from odhsim.sim.run import simulate  # the engine loads in the worker that runs the job

    t0 = time.perf_counter()
    result = simulate(job_scenario(job), seed=job.seed)
    return JobOutput(
        summary=json_safe(result.summary),
        wall_s=time.perf_counter() - t0,
        requests=result.requests if with_requests else None,
        result=result if keep_result else None,
    )
