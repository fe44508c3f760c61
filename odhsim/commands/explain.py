"""`odhsim explain`: why a run got its result (anomalies, routing regret, one request's life); and the anomaly
lines `odhsim run` prints under its summary."""

from __future__ import annotations

from typing import Any

import pandas as pd
from rich.markup import escape

from odhsim.commands.output import err_console

MAX_LINES = 10
"""Episodes `odhsim run` lists under its summary (all of them are in events.parquet)."""


def anomaly_lines(summary: dict[str, Any], events: pd.DataFrame | None) -> list[str]:
    """'anomalies: herding 2, replica_starved 1', then one line per episode (at most MAX_LINES); empty when the
    run had none (or predates anomaly detection)."""
    counts = {k: v for k, v in (summary.get("anomalies") or {}).items() if v}
    if not counts:
        return []
    lines = ["anomalies: " + ", ".join(f"{k} {v}" for k, v in counts.items())]
    if events is not None and len(events):
        found = events.loc[events["kind"].astype(str) == "anomaly", "detail"].astype(str).tolist()
        lines += [f"  {d}" for d in found[:MAX_LINES]]
        if len(found) > MAX_LINES:
            lines.append(f"  ... {len(found) - MAX_LINES} more (events.parquet, kind 'anomaly'; odhsim explain)")
    return lines


def print_anomalies(summary: dict[str, Any], events: pd.DataFrame | None) -> None:
    """The anomaly lines in yellow on stderr (nothing when there were none)."""
    for line in anomaly_lines(summary, events):
        err_console.print(f"[yellow]{escape(line)}[/]", highlight=False, soft_wrap=True)
