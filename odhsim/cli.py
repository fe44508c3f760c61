"""The `odhsim` command line: run, validate, traces, profiles, bench."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from odhsim.cli_support import (
    check_out_dir,
    check_out_file,
    check_seed,
    frame_records,
    make_console,
    print_warnings,
    to_json,
)
from odhsim.errors import OdhsimError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENARIO = REPO_ROOT / "scenarios" / "default.yaml"

app = typer.Typer(add_completion=False, no_args_is_help=True, help="odhsim: simulate and compare ML-serving policies.")
traces_app = typer.Typer(no_args_is_help=True, help="Inspect and download traces.")
profiles_app = typer.Typer(no_args_is_help=True, help="GPU latency profiles.")
app.add_typer(traces_app, name="traces")
app.add_typer(profiles_app, name="profiles")
app.add_typer(__import__("odhsim.importers.cli", fromlist=["import_app"]).import_app, name="import")
app.command("sweep")(__import__("odhsim.experiments.cli", fromlist=["sweep"]).sweep)
app.command("capacity")(__import__("odhsim.experiments.capacity_cli", fromlist=["capacity"]).capacity)

console = make_console()  # piped output is not cut at 80 columns
err_console = make_console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Print an OdhsimError's message (it names the file, line or field) and exit 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OdhsimError as err:
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except ModuleNotFoundError as err:
            if err.name is None or err.name.split(".")[0] not in LIVE_EXTRA_MODULES:
                raise
            err_console.print(
                "[bold red]error:[/] "
                + escape(
                    f"the live runtime needs its extra (missing module {err.name!r}): "
                    "pip install -e '.[live]'  (or `make test`, which installs it)"
                ),
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


# what `pip install -e '.[live]'` adds; a command needing one of them says so instead of printing a traceback
LIVE_EXTRA_MODULES = frozenset({"torch", "fastapi", "uvicorn", "uvloop", "httptools", "prometheus_client", "redis"})


def _plain(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def _fmt(value: Any) -> str:
    """A table cell: 4 significant digits, '-' for NaN; text escaped so brackets in names and paths survive."""
    return escape(_plain(value))


def _echo_json(value: Any) -> None:
    """`--json`: plain JSON on stdout, nothing else there (progress and warnings go to stderr)."""
    typer.echo(to_json(value))


SUMMARY_ROWS = (
    "requests", "completed", "shed", "failed", "timeout", "in_flight_at_stop", "ttft_p50_s", "ttft_p99_s",
    "tpot_p50_s", "e2e_p50_s", "e2e_p99_s", "throughput_rps", "output_tokens_per_s", "goodput_rps",
    "slo_attainment", "slo_missed", "prefix_cache_hit_rate", "preemptions", "gpu_hours", "cost_usd", "wall_s",
    "sim_requests_per_wall_s",
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
            cells = [_fmt(summary[key])]
            if per_model:
                cells += [_fmt(m[key]) if key in m else "" for m in by_model.values()]
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


@app.command()
@user_errors
def run(
    scenario: Annotated[Path | None, typer.Argument(help="Scenario YAML (default: scenarios/default.yaml).")] = None,
    seed: Annotated[int | None, typer.Option(help="Root seed (overrides the scenario's).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write requests/replicas/timeseries/events.parquet + summary.json here.")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: path=value (repeatable).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    allow_empty: Annotated[
        bool, typer.Option(help="Exit 0 even when no model could serve (otherwise such a run exits 3).")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of tables.")] = False,
) -> None:
    """Simulate a scenario and print its summary (pooled and per model, with the SLOs used)."""
    from odhsim.scenario.load import load_scenario
    from odhsim.sim.run import simulate

    check_seed(seed)
    check_out_dir(out)
    path = scenario or DEFAULT_SCENARIO
    sc = load_scenario(path, set_)
    check_seed(sc.seed if seed is None else seed, "seed")
    print_warnings(err_console, scenario_warnings(sc))
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("sim {task.fields[now]:>9.1f} s"),
        TextColumn("{task.fields[arrived]:>9,} requests"),
        TimeElapsedColumn(),
        console=err_console,
        disable=quiet,
        transient=True,
    ) as bar:
        task = bar.add_task(escape(sc.name), total=None, now=0.0, arrived=0)

        def progress(now: float, horizon: float | None, arrived: int) -> None:
            bar.update(task, total=horizon, completed=min(now, horizon) if horizon else now, now=now, arrived=arrived)

        result = simulate(sc, seed=seed, progress=progress)
    if json_:
        _echo_json(result.summary)
        print_warnings(err_console, result.summary.get("warnings"))
    else:
        print_summary(result.summary, f"{sc.name} (seed {result.seed})")
        if any(m.canary is not None for m in sc.models):
            from odhsim.results.summary import by_version

            console.print(_frame_table(by_version(result.requests), "by model and version"))
    if out is not None:
        result.write(out)
        (err_console if json_ else console).print(escape(f"results written to {out}/"), highlight=False)
    report_unserved(result.summary.get("unserved_models") or {}, len(sc.models), allow_empty=allow_empty)


@app.command()
@user_errors
def validate(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML to check.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: path=value.")] = None,
    engine: Annotated[
        str, typer.Option(help="Check for this engine too: sim (odhsim run) or live (odhsim serve).")
    ] = "sim",
) -> None:
    """Check a scenario file without running it (traces: header and first row)."""
    from odhsim.scenario.checks import live_refusals
    from odhsim.scenario.load import load_scenario

    if engine not in ("sim", "live"):
        raise OdhsimError(f"--engine must be sim or live, got {engine!r}")
    sc = load_scenario(scenario, set_, check_files=True)
    check_seed(sc.seed, "seed")
    refused = live_refusals(sc) if engine == "live" else []
    if refused:
        raise OdhsimError(f"{scenario}: the live engine cannot serve this scenario: " + "; ".join(refused))
    replicas = sum(m.replicas for m in sc.models)
    console.print(
        escape(f"{scenario}: ok ({sc.name}: {len(sc.models)} models, {replicas} replicas)"),
        highlight=False,
        soft_wrap=True,
    )
    print_warnings(err_console, scenario_warnings(sc))


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


def _frame_table(df: Any, title: str) -> Table:
    table = Table(title=escape(title), header_style="bold")
    for col in df.columns:
        table.add_column(escape(str(col)), justify="right" if df[col].dtype.kind in "iuf" else "left")
    for row in df.itertuples(index=False):
        table.add_row(*(_fmt(v) for v in row))
    return table


@traces_app.command("info")
@user_errors
def traces_info(
    path: Annotated[Path, typer.Argument(help="Trace file (Azure 2023/2024 CSV, Mooncake JSONL, plain CSV).")],
    format: Annotated[str, typer.Option(help="auto | azure2023 | azure2024 | mooncake | csv")] = "auto",
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip and count malformed rows instead of stopping.")] = False,
    trace_filter: Annotated[str | None, typer.Option(help="Keep only rows whose `trace` column equals this.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the figures as JSON instead of a table.")] = False,
) -> None:
    """Request count, span, rate and token-length percentiles of a trace (one streaming pass)."""
    from odhsim.workload.loaders import trace_info

    with err_console.status(escape(f"reading {path} ...")):
        info = trace_info(path, format=format, on_error="skip" if skip_bad_rows else "raise", trace_filter=trace_filter)
    if json_:
        _echo_json(info)
        return
    table = Table(title=escape(str(path)), header_style="bold")
    table.add_column("field")
    table.add_column("value", justify="right")
    for key, value in info.items():
        if isinstance(value, dict):
            value = "  ".join(f"{k} {_plain(v)}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value[:10])) or "-"
        table.add_row(escape(key), _fmt(value))
    console.print(table)


@traces_app.command("list")
@user_errors
def traces_list() -> None:
    """The catalogued public traces `odhsim traces fetch` can download."""
    from odhsim.workload.catalog import describe, load_catalog

    table = Table(title="trace catalogue (traces/catalog.yaml)", header_style="bold")
    for col in ("name", "format", "license", "url"):
        table.add_column(col)
    for entry in load_catalog().values():
        d = describe(entry)
        table.add_row(*(_fmt(d.get(k, "")) for k in ("name", "format", "license", "url")))
    console.print(table)


@traces_app.command("fetch")
@user_errors
def traces_fetch(
    name: Annotated[str, typer.Argument(help="Catalogue name (see `odhsim traces list`).")],
    dest: Annotated[Path, typer.Option(help="Folder to download into.")] = Path("data/traces"),
    force: Annotated[bool, typer.Option(help="Download again even if a verified copy is there.")] = False,
) -> None:
    """Download a catalogued public trace and check it against its recorded sha256."""
    from odhsim.workload.catalog import fetch_trace

    with err_console.status(escape(f"downloading {name} ...")):
        path = fetch_trace(name, dest, force=force)
    console.print(escape(f"{name}: {path}"), highlight=False, soft_wrap=True)


@profiles_app.command("fit")
@user_errors
def profiles_fit(
    csv: Annotated[Path | None, typer.Option(help="Splitwise perf_model.csv (default: traces/splitwise/).")] = None,
    write: Annotated[bool, typer.Option(help="Rewrite odhsim/data/latency_coefficients.json from all rows.")] = False,
    json_: Annotated[
        bool, typer.Option("--json", help="Print the held-out errors and coefficients as JSON instead of tables.")
    ] = False,
) -> None:
    """Refit the latency profiles and print the error on held-out prompt/batch sizes."""
    from odhsim.profiles.fit import DEFAULT_PERF_CSV, run_fit

    with err_console.status("fitting latency profiles ..."):
        errors, coefficients = run_fit(csv or DEFAULT_PERF_CSV, write=write)
    if json_:
        _echo_json({"held_out_error": frame_records(errors), "coefficients": frame_records(coefficients)})
        if write:
            err_console.print("coefficients written to odhsim/data/latency_coefficients.json")
        return
    shown = errors.rename(
        columns={
            "prefill_mdape_pct": "prefill MdAPE %",
            "decode_mdape_pct": "decode MdAPE %",
            "prefill_max_ape_pct": "prefill max %",
            "decode_max_ape_pct": "decode max %",
        }
    )[["model", "gpu", "tp", "prefill MdAPE %", "decode MdAPE %", "prefill max %", "decode max %"]]
    console.print(_frame_table(shown, "error on held-out prompt and batch sizes"))
    overall = errors[errors["model"] == "ALL"].iloc[0]
    verdict = "ok" if max(overall["prefill_mdape_pct"], overall["decode_mdape_pct"]) < 10 else "ABOVE TARGET"
    console.print(
        f"overall held-out MdAPE: prefill {overall['prefill_mdape_pct']:.2f}%, "
        f"decode {overall['decode_mdape_pct']:.2f}% (target < 10%: {verdict}); "
        f"{len(coefficients)} (model, GPU, TP) groups fitted"
    )
    if write:
        console.print("coefficients written to odhsim/data/latency_coefficients.json")


@app.command()
@user_errors
def bench(
    out: Annotated[Path | None, typer.Option(help="Also save the cases as a JSON list here.")] = None,
    mmc_requests: Annotated[int, typer.Option(help="Requests in the M/M/c case.")] = 1_000_000,
    rounds: Annotated[int, typer.Option(help="Alternating M/M/c rounds (medians are reported).")] = 3,
    json_: Annotated[bool, typer.Option("--json", help="Print the cases as JSON instead of a table.")] = False,
) -> None:
    """Simulator speed and memory: Azure conversation trace (1x, 10x compressed) and 1 M-request M/M/c vs SimPy."""
    import pandas as pd

    from odhsim.bench import run_bench, write_bench

    check_out_file(out)
    with err_console.status("running benchmark cases (each in its own process) ..."):
        cases = run_bench(mmc_requests=mmc_requests, rounds=rounds)
    if json_:
        _echo_json(cases)
        if out is not None:
            write_bench(cases, out)
        return
    frame = pd.DataFrame(cases)
    shown = [c for c in ("name", "requests", "wall_s", "sim_requests_per_wall_s", "peak_rss_mb", "offered_load",
                         "ratio_vs_simpy") if c in frame.columns]  # fmt: skip
    console.print(_frame_table(frame[shown].rename(columns={"sim_requests_per_wall_s": "req/wall-s"}), "odhsim bench"))
    console.print("targets: trace case >= 10,000 req/wall-s; M/M/c ratio_vs_simpy >= 0.5; peak RSS (1 M) < 1,500 MB")
    if out is not None:
        write_bench(cases, out)
        console.print(escape(f"saved to {out}"), highlight=False, soft_wrap=True)


@app.command()
@user_errors
def compare(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML every variant runs.")],
    policy: Annotated[
        list[str],
        typer.Option("--policy", help="NAME=PROFILE (a routing profile name or a YAML file with a gateway section)."),
    ],
    seeds: Annotated[int, typer.Option(help="Seeds per variant (the same seeds for every variant).")] = 5,
    out: Annotated[
        Path | None, typer.Option(help="Keep each run, comparison.csv, runs.csv and comparison.png.")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a scenario field: path=value.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the comparison rows as JSON, not a table.")] = False,
    executor: Annotated[str, typer.Option(help="inline (this process), local (process pool) or ray.")] = "inline",
    workers: Annotated[int, typer.Option(help="Workers for --executor local or ray.")] = 1,
    address: Annotated[str | None, typer.Option(help="--executor ray: a cluster, e.g. ray://head:10001.")] = None,
    replicates: Annotated[
        str, typer.Option(help="What replicates vary: seeds, windows (of a trace) or auto (windows for a trace).")
    ] = "auto",
    window_s: Annotated[
        float | None, typer.Option("--window-s", help="Trace seconds per replicate window (default: fits --seeds).")
    ] = None,
) -> None:
    """A/B comparison: every variant on the same workloads (common random numbers), paired statistics vs the first."""
    from odhsim.analysis import comparison_table, parse_variants, run_comparison
    from odhsim.experiments.executors import make_executor

    check_out_dir(out)
    variants = parse_variants(policy)
    with make_executor(executor, workers=workers, address=address) as ex, Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
        TimeElapsedColumn(), console=err_console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("comparing", total=len(variants) * seeds)

        def progress(variant: str, seed: int, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=escape(f"{variant} seed {seed}"))

        result = run_comparison(
            scenario, variants, seeds=seeds, overrides=set_, out_dir=out, progress=progress, executor=ex,
            replicates=replicates, window_s=window_s,
        )  # fmt: skip
    reps = result.replicates
    if json_:
        _echo_json({"baseline": result.baseline, "seeds": result.seeds, "rows": frame_records(result.table),
                    "replicates": reps.to_json() if reps is not None else None})  # fmt: skip
    else:
        console.print(comparison_table(result))
        if reps is not None:
            console.print(escape(f"replicates: {reps.description}"), highlight=False, soft_wrap=True)
    if reps is not None and reps.warning:
        print_warnings(err_console, [reps.warning])
    for variant, texts in result.warnings.items():
        print_warnings(err_console, texts, prefix=f"warning ({variant})")
    if out is not None:
        (err_console if json_ else console).print(
            escape(
                f"comparison written to {out}/ (comparison.csv, runs.csv, replicates.json, comparison.png, "
                "<variant>/seed<N>/)"
            ),
            highlight=False,
        )


@app.command()
@user_errors
def cost(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML to run and cost.")],
    seed: Annotated[int | None, typer.Option(help="Root seed (overrides the scenario's).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: path=value.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of tables.")] = False,
    rate: Annotated[
        float | None, typer.Option(help="Right-size for this arrival rate (req/s; default: the workload's mean).")
    ] = None,
    search_duration: Annotated[
        float | None, typer.Option(help="Seconds simulated per search run (default: min(duration, 300)).")
    ] = None,
) -> None:
    """Cost report: spend per model, unit costs, idle GPU waste, always-on comparison and right-sizing."""
    from odhsim.analysis.cost_report import cost_report
    from odhsim.scenario.load import load_scenario
    from odhsim.sim.run import simulate

    check_seed(seed)
    sc = load_scenario(scenario, set_)
    check_seed(sc.seed if seed is None else seed, "seed")
    print_warnings(err_console, scenario_warnings(sc))
    with err_console.status(escape(f"simulating {sc.name} ...")):
        result = simulate(sc, seed=seed)
    report_unserved(result.summary.get("unserved_models") or {}, len(sc.models), allow_empty=True)
    with err_console.status("right-sizing ...") as status:
        report = cost_report(
            result,
            sc,
            progress=lambda done, total, what: status.update(escape(f"right-sizing {done}/{total}: {what}")),
            rate=rate,
            duration_s=search_duration,
        )
    recs = [r.to_json() for r in report.recommendations]
    if json_:
        _echo_json(
            {
                "scenario": sc.name,
                "seed": result.seed,
                "recommendation": recs[0]["recommendation"] if len(recs) == 1 else None,
                "recommendations": recs,
                "models": frame_records(report.models),
                "rightsizing": frame_records(report.rightsizing),
            }
        )
        return
    by_metric = report.models.set_index("model").T.reset_index(names="metric")  # a column per model: fits a terminal
    console.print(_frame_table(by_metric, f"cost of {sc.name} (seed {result.seed})"))
    if len(report.rightsizing):
        shown = report.rightsizing.set_index("model").T.reset_index(names="right-sizing")
        console.print(_frame_table(shown, "right-sizing: the cheapest fleet meeting the SLOs, found by simulation"))
        for r in recs:
            console.print(
                escape(f"{r['model']}: sized for {r['target_rps']:.3g} req/s ({r['rate_basis']}); each fleet "
                       f"simulated {r['duration_s']:g} s at that rate, p99 of every request against its class's "
                       "SLOs; the pick verified on fresh arrivals"),
                highlight=False,
            )  # fmt: skip


@app.command()
@user_errors
def serve(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML with `live:` sections (see scenarios/live.yaml).")],
    port: Annotated[
        int | None, typer.Option(help="Gateway port (default: the scenario's live.port; 0: any free).")
    ] = None,
    device: Annotated[str, typer.Option(help="Where replicas run their torch models: auto | cpu | cuda.")] = "auto",
    out: Annotated[
        Path | None, typer.Option(help="Write events/replicas.parquet, replica logs, serve.json here.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: until Ctrl-C).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: path=value (repeatable).")] = None,
) -> None:
    """Serve a scenario for real: gateway + replica processes, deploy flow, autoscaling, restarts (Ctrl-C stops)."""
    from odhsim.scenario.load import load_scenario
    from runtime.serve import serve as serve_live

    check_out_dir(out)
    sc = load_scenario(scenario, set_)
    raise typer.Exit(serve_live(sc, port=port, device=device, out_dir=out, duration_s=duration, console=console))


@app.command()
@user_errors
def replay(
    source: Annotated[Path, typer.Argument(help="A trace file (Azure, Mooncake, plain CSV) or a scenario YAML.")],
    target: Annotated[str, typer.Option(help="Base URL of the live gateway, e.g. http://127.0.0.1:8000.")],
    speed: Annotated[float, typer.Option(help="Replay at this multiple of the trace's rate.")] = 1.0,
    limit: Annotated[int, typer.Option(help="Send at most this many requests (a replay is always bounded).")] = 10_000,
    max_duration: Annotated[
        float, typer.Option(help="Send only requests due in the first S seconds of the replay.")
    ] = 900.0,
    out: Annotated[
        Path | None, typer.Option(help="Write requests.parquet (the simulator's schema) + summary.json.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="API key for every request (default: per tenant from $ODHSIM_API_KEYS).")
    ] = None,
    max_prompt_tokens: Annotated[
        int | None, typer.Option(help="Clip prompts (default: a scenario's live.limits; 256 for a trace).")
    ] = None,
    max_output_tokens: Annotated[
        int | None, typer.Option(help="Clip outputs (default: a scenario's live.limits; 64 for a trace).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model a trace file's requests go to (default: the target's first).")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Most requests outstanding at once.")] = 256,
    straggler_timeout: Annotated[
        float, typer.Option(help="After the last send, wait at most this long; the rest end as unfinished.")
    ] = 60.0,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Replay a trace or a scenario's workload open-loop against a live endpoint; results like `odhsim run`'s."""
    from runtime.replay import replay as replay_live

    check_out_dir(out)
    with Progress(
        TextColumn("[bold]replay"), BarColumn(), TextColumn("{task.fields[sent]:>6,} sent"),
        TextColumn("{task.fields[done]:>6,}/{task.fields[planned]:,} done"), TimeElapsedColumn(),
        console=err_console, disable=quiet, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("replay", total=None, sent=0, done=0, planned=0)

        def progress(sent: int, done: int, total: int) -> None:
            bar.update(task, total=total, completed=done, sent=sent, done=done, planned=total)

        result = replay_live(
            source, target, speed=speed, limit=limit, max_duration_s=max_duration, api_key=api_key, out_dir=out,
            progress=progress, max_prompt_tokens=max_prompt_tokens, max_output_tokens=max_output_tokens,
            model=model, concurrency=concurrency, straggler_timeout_s=straggler_timeout,
        )  # fmt: skip
    print_summary(result.summary, f"{result.scenario_name} live replay against {target}")
    if out is not None:
        console.print(escape(f"results written to {out}/"), highlight=False, soft_wrap=True)


@app.command("bench-live")
@user_errors
def bench_live(
    device: Annotated[str, typer.Option(help="Where the replicas run: auto | cpu | cuda.")] = "auto",
    requests: Annotated[int, typer.Option(help="Requests in the Azure-conversation-shaped replay.")] = 2000,
    out: Annotated[Path | None, typer.Option(help="Keep the replay's results and the serve records here.")] = None,
) -> None:
    """Live runtime figures: gateway overhead vs direct, continuous-batching ratio, a 2,000-request trace replay,
    and priority under overload (critical vs low at 2.5 x capacity)."""
    from runtime.bench_live import bench_tables, run_bench_live

    check_out_dir(out)
    with console.status("running the live benchmark (starts `odhsim serve`, replays a trace, overloads it) ..."):
        figures = run_bench_live(device=device, requests=requests, out_dir=out)
    for table in bench_tables(figures):
        console.print(table)


@app.command("list")
@user_errors
def list_(
    what: Annotated[str, typer.Argument(help="gpus | profiles | policies | autoscalers | traces")],
    json_: Annotated[bool, typer.Option("--json", help="Print the rows as JSON instead of a table.")] = False,
) -> None:
    """What a scenario may name: GPUs, model profiles, policies and autoscalers with their parameters and defaults,
    catalogued traces."""
    from odhsim.listing import format_params, listing

    rows = listing(what)
    if json_:
        _echo_json(rows)
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    title = escape(f"odhsim list {what} ({len(rows)})")
    table = Table(title=title, header_style="bold", show_lines="params" in columns)
    for col in columns:
        table.add_column("parameters (name=default)" if col == "params" else col, overflow="fold")
    for row in rows:
        cells = [format_params(row[c]) if c == "params" else row.get(c, "") for c in columns]
        table.add_row(*(_fmt(c) for c in cells))
    console.print(table)
