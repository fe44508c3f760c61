"""`odhsim explain`: why a run got its result (anomalies, routing regret, one request's life); and the anomaly
lines `odhsim run` prints under its summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.markup import escape
from rich.table import Table

from odhsim.commands.output import console, echo_json, err_console, fmt, frame_table

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


def explain(
    results: Annotated[Path, typer.Argument(help="A results folder (odhsim run --out DIR).")],
    request: Annotated[
        int | None, typer.Option("--request", help="Tell this request's life (its request_id in requests.parquet).")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print plain JSON instead of tables.")] = False,
) -> None:
    """Why the run got its result: anomalies and routing regret, or (--request ID) one request's life with every
    routing decision and the alternatives it had."""
    from odhsim.explain.life import load, request_life, run_overview

    loaded = load(results)
    if request is not None:
        life = request_life(loaded, request, results)
        if json_:
            echo_json(life)
        else:
            print_life(life)
        return
    overview = run_overview(loaded, results)
    if json_:
        echo_json(overview)
    else:
        print_overview(overview)


def _t(v: Any) -> str:
    return "-" if v is None else f"{v:.3f} s"


def print_life(life: dict[str, Any]) -> None:
    """The request's row as a short story, then each decision; a route lists every candidate it had."""
    r = life["request"]
    tenant = f", tenant {r['tenant']}" if r.get("tenant") else ""
    head = f"({r['model']}, {r['priority']}{tenant}): {r['prompt_tokens']} prompt tokens, {r['output_tokens']} output"
    console.print(f"[bold]request {r['request_id']}[/] {escape(head)} tokens", highlight=False)
    story = [
        ("arrived", _t(r["arrival_s"])),
        ("response cache", "hit" if r["cache_hit"] else "miss"),
        ("service began", _t(r["start_s"]) + (" (first attempt)" if r["attempts"] and r["attempts"] > 1 else "")),
        ("served by", r["replica"] or "-"),
        ("prefix cache", f"{r['cached_tokens']} prompt tokens cached"),
        ("first token", _t(r["first_token_s"])),
        ("finished", _t(r["finish_s"]) + f" {r['status']}" + (f" ({r['reason']})" if r["reason"] else "")),
        ("attempts", f"{r['attempts']} ({r['retries']} retries{', fallback' if r['fallback'] else ''})"),
    ]
    for what, text in story:
        console.print(f"  {what:<15} {escape(text)}", highlight=False)
    for step in life["decisions"]:
        console.print(f"[bold]{step['time_s']:.3f} s {escape(step['kind'])}[/]: {escape(step['detail'])}",
                      highlight=False, soft_wrap=True)  # fmt: skip
        if "candidates" in step:
            console.print(candidate_table(step["candidates"]))


def candidate_table(cands: list[dict[str, Any]]) -> Table:
    """Every candidate of a routing decision: its state, why it was filtered, each scorer's score, the total and
    the latency estimate (when the run kept its regret yardstick)."""
    scorers = list(dict.fromkeys(s["scorer"] for c in cands for s in c["scores"]))
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    for col in ("", "replica", "waiting", "running", "kv", "prefix blocks", "filtered by", *scorers, "total",
                "estimate"):  # fmt: skip
        table.add_column(escape(col), justify="left" if col in ("", "replica", "filtered by") else "right")
    for c in cands:
        score = {s["scorer"]: s for s in c["scores"]}
        cells = [
            "->" if c["picked"] else "",
            escape(c["name"]),
            fmt(c["waiting"]),
            fmt(c["running"]),
            fmt(c["kv_usage"]),
            "-" if c["prefix_blocks"] is None or c["prefix_blocks"] < 0 else fmt(c["prefix_blocks"]),
            escape(c["filtered_by"]),
            *(_score_cell(score.get(n)) for n in scorers),
            "-" if c["total"] is None else fmt(c["total"]),
            "-" if c["estimate_s"] is None else f"{c['estimate_s']:.4f} s",
        ]
        table.add_row(*cells)
    return table


def _score_cell(s: dict[str, Any] | None) -> str:
    if s is None or s["raw"] is None:
        return "-"
    return f"{s['clamped']:.3g} x{s['weight']:g}"


def print_overview(o: dict[str, Any]) -> None:
    """Anomaly counts and episodes, then each model's regret and its worst decisions."""
    console.print(f"[bold]{escape(str(o['run_id']))}[/]: {o['requests']} requests ({escape(o['results'])})",
                  highlight=False)  # fmt: skip
    if o.get("note"):
        console.print(escape(o["note"]), highlight=False)
    counts = o.get("anomalies") or {}
    found = {k: v for k, v in counts.items() if v}
    if counts and not found:
        console.print("anomalies: none of " + ", ".join(counts), highlight=False)
    if found:
        table = Table(title="anomalies", header_style="bold")
        table.add_column("kind")
        table.add_column("episodes", justify="right")
        for k, v in found.items():
            table.add_row(escape(k), str(v))
        console.print(table)
        for ep in o["episodes"]:
            ages = ep.get("picks_metrics_age_s")
            seen = f" (picked on metrics {ages[0]:.2f}-{ages[1]:.2f} s old)" if ages else ""
            console.print(f"  {escape(ep['detail'] + seen)}", highlight=False, soft_wrap=True)
    regret = o.get("regret") or {}
    if regret:
        from odhsim.explain.life import worst_table

        table = Table(title="routing regret (estimated TTFT of the pick minus the best candidate's)",
                      header_style="bold")  # fmt: skip
        for col in ("model", "policy", "decisions", "p50", "p90", "mean", "share > 0"):
            table.add_column(col, justify="left" if col in ("model", "policy") else "right")
        for model, r in regret.items():
            table.add_row(escape(model), escape(r["policy"]), str(r["decisions"]), f"{r['p50_s']:.4f} s",
                          f"{r['p90_s']:.4f} s", f"{r['mean_s']:.4f} s", f"{r['share_positive']:.1%}")  # fmt: skip
        console.print(table)
        console.print(frame_table(worst_table(regret), "worst decisions (odhsim explain RESULTS --request ID)"))
    if o.get("regret_note"):
        console.print(escape(o["regret_note"]), highlight=False, soft_wrap=True)
