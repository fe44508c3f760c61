"""What the commands print: the consoles, table cells, `--json`, a run's summary, its SLOs and unserved models,
and the warnings said before a scenario runs. Shared by every command module."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from odhsim.cli_support import make_console, print_warnings, to_json

console = make_console()  # piped output is not cut at 80 columns
err_console = make_console(stderr=True)


def plain(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def fmt(value: Any) -> str:
    """A table cell: 4 significant digits, '-' for NaN; text escaped so brackets in names and paths survive."""
    return escape(plain(value))


def echo_json(value: Any) -> None:
    """`--json`: plain JSON on stdout, nothing else there (progress and warnings go to stderr)."""
    typer.echo(to_json(value))


SUMMARY_ROWS = (
    "requests", "completed", "shed", "failed", "timeout", "in_flight_at_stop", "ttft_p50_s", "ttft_p99_s",
    "tpot_p50_s", "e2e_p50_s", "e2e_p99_s", "throughput_rps", "output_tokens_per_s", "goodput_rps",
    "slo_attainment", "slo_missed", "availability", "retry_amplification", "prefix_cache_hit_rate", "preemptions",
    "gpu_hours", "cost_usd", "wall_s", "sim_requests_per_wall_s",
)  # fmt: skip


def summary_table(summary: dict[str, Any], title: str) -> Table:
    """The pooled metrics, and a column per model when the run has more than one (`summary["by_model"]`)."""
    by_model: dict[str, dict[str, Any]] = summary.get("by_model") or {}
    per_model = len(by_model) > 1
    table = Table(title=escape(title), show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("all models" if per_model else "value", justify="right")
    for name in by_model if per_model else ():
        table.add_column(escape(name), justify="right")
    for key in SUMMARY_ROWS:
        if key in summary:
            cells = [fmt(summary[key])]
            if per_model:
                cells += [fmt(m[key]) if key in m else "" for m in by_model.values()]
            table.add_row(key, *cells)
    return table


def slo_line(slos: dict[str, dict[str, float | None]]) -> str:
    """'SLOs (TTFT / end-to-end): critical 1 s / 30 s, ..., low none': the targets slo_missed counts against."""

    def target(v: float | None) -> str:
        return "-" if v is None else f"{v:g} s"

    parts = [
        f"{c} {target(t['ttft_s'])} / {target(t['e2e_s'])}" if t["ttft_s"] or t["e2e_s"] else f"{c} none"
        for c, t in slos.items()
    ]
    return "SLOs (TTFT / end-to-end) per priority class: " + ", ".join(parts)


def print_summary(summary: dict[str, Any], title: str) -> None:
    """The summary table, the SLOs it was measured against, then every run-level warning in yellow."""
    console.print(summary_table(summary, title))
    if summary.get("slos"):
        console.print(escape(slo_line(summary["slos"])), highlight=False, soft_wrap=True)
    print_warnings(err_console, summary.get("warnings"))


def report_unserved(unserved: dict[str, str], n_models: int, *, allow_empty: bool) -> None:
    """Name, in red, every model that could not serve and why; exit 3 when none could (unless --allow-empty)."""
    for model, why in unserved.items():
        err_console.print(
            f"[bold red]model {escape(model)} could not serve:[/] {escape(why)}", highlight=False, soft_wrap=True
        )
    if unserved and len(unserved) >= n_models:
        if allow_empty:
            err_console.print("[bold yellow]no model could serve; accepted (--allow-empty)[/]")
            return
        err_console.print(
            "[bold red]error:[/] no model could serve any request, so these results measure nothing; "
            "fix the models above, or pass --allow-empty to accept such a run (exit status 3)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(3)


def scenario_warnings(sc: Any) -> list[str]:
    """What is legal but likely wrong in a scenario, said before it runs: models that cannot serve (deploy
    verdict, no replicas and no autoscaler), plus the scenario module's validation warnings."""
    out = []
    for m in sc.models:
        approved, reason = m.deploy_verdict()
        if not approved:
            out.append(f"model {m.name!r} will be rejected at deploy: {reason}")
        elif m.replicas == 0 and m.autoscaling is None:
            out.append(f"model {m.name!r} has replicas: 0 and no autoscaler, so it can never serve")
    from odhsim.scenario.checks import validation_warnings

    return out + validation_warnings(sc)


def frame_table(df: Any, title: str) -> Table:
    table = Table(title=escape(title), header_style="bold")
    for col in df.columns:
        table.add_column(escape(str(col)), justify="right" if df[col].dtype.kind in "iuf" else "left")
    for row in df.itertuples(index=False):
        table.add_row(*(fmt(v) for v in row))
    return table
