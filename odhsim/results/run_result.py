"""A run's results: four tidy tables and a summary, each row tagged with run_id, seed and scenario; optionally the
engine step log (odhsim.results.steps) and the cores' decision records (odhsim.results.decisions), written as
steps.parquet and decisions.parquet when present."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from odhsim.results.decisions import read_decisions, write_decisions
from odhsim.results.steps import write_steps

TABLES = ("requests", "replicas", "timeseries", "events")


def json_safe(value: Any) -> Any:
    """Plain JSON: NaN and infinities become null, numpy scalars Python numbers, paths strings; mappings, lists
    and tuples recurse."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, str):
        return json_safe(value.item())
    return value


@dataclass(frozen=True, eq=False)
class RunResult:
    run_id: str
    seed: int
    scenario_name: str
    requests: pd.DataFrame
    replicas: pd.DataFrame
    timeseries: pd.DataFrame
    events: pd.DataFrame
    summary: dict[str, Any]
    steps: pd.DataFrame | None = None  # one row per engine step (outputs.steps / odhsim serve --out); None: off
    decisions: pd.DataFrame | None = None  # one row per core decision (outputs.decisions); None: off

    @staticmethod
    def tag(
        *,
        scenario_name: str,
        run_id: str,
        seed: int,
        summary: dict[str, Any],
        steps: pd.DataFrame | None = None,
        decisions: pd.DataFrame | None = None,
        **tables: pd.DataFrame,
    ) -> RunResult:
        """Add run_id, seed and scenario columns so results of sweeps concatenate."""
        tagged: dict[str, Any] = {}
        if steps is not None:
            tables = {**tables, "steps": steps}
        if decisions is not None:
            tables = {**tables, "decisions": decisions}
        for name, df in tables.items():
            df = df.copy()
            df.insert(0, "scenario", pd.Categorical([scenario_name] * len(df)))
            df.insert(0, "seed", seed)
            df.insert(0, "run_id", pd.Categorical([run_id] * len(df)))
            tagged[name] = df
        return RunResult(run_id=run_id, seed=seed, scenario_name=scenario_name, summary=summary, **tagged)

    def write(self, out_dir: str | Path) -> Path:
        """Write the four tables (and steps.parquet / decisions.parquet when there is a step log / decision log)
        as Parquet and the summary as JSON into `out_dir` (created if needed)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in TABLES:
            getattr(self, name).to_parquet(out / f"{name}.parquet", index=False)
        if self.steps is not None:
            write_steps(self.steps, out / "steps.parquet")
        if self.decisions is not None:
            write_decisions(self.decisions, out / "decisions.parquet")
        (out / "summary.json").write_text(
            json.dumps(json_safe(self.summary), indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        return out


def load_results(out_dir: str | Path) -> dict[str, Any]:
    """Read a results folder back: {'requests': DataFrame, ..., 'summary': dict}, plus 'steps' and 'decisions'
    when the folder has steps.parquet / decisions.parquet."""
    out = Path(out_dir)
    loaded: dict[str, Any] = {name: pd.read_parquet(out / f"{name}.parquet") for name in TABLES}
    if (out / "steps.parquet").exists():
        loaded["steps"] = pd.read_parquet(out / "steps.parquet")
    if (out / "decisions.parquet").exists():
        loaded["decisions"] = read_decisions(out / "decisions.parquet")
    loaded["summary"] = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return loaded
