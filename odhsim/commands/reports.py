"""Commands that inspect and report: traces info/list/fetch, profiles fit, bench (simulator speed), list."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from odhsim.cli_support import check_out_file, frame_records
from odhsim.commands.output import console, echo_json, err_console, fmt, frame_table, plain


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
        echo_json(info)
        return
    table = Table(title=escape(str(path)), header_style="bold")
    table.add_column("field")
    table.add_column("value", justify="right")
    for key, value in info.items():
        if isinstance(value, dict):
            value = "  ".join(f"{k} {plain(v)}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value[:10])) or "-"
        table.add_row(escape(key), fmt(value))
    console.print(table)


def traces_list() -> None:
    """The catalogued public traces `odhsim traces fetch` can download."""
    from odhsim.workload.catalog import describe, load_catalog

    table = Table(title="trace catalogue (traces/catalog.yaml)", header_style="bold")
    for col in ("name", "format", "license", "url"):
        table.add_column(col)
    for entry in load_catalog().values():
        d = describe(entry)
        table.add_row(*(fmt(d.get(k, "")) for k in ("name", "format", "license", "url")))
    console.print(table)


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


def profiles_fit(
    csv: Annotated[Path | None, typer.Option(help="Splitwise perf_model.csv (default: traces/splitwise/).")] = None,
    write: Annotated[bool, typer.Option(help="Rewrite odhsim/data/latency_coefficients.json from all rows.")] = False,
    json_: Annotated[
        bool, typer.Option("--json", help="Print the held-out errors and coefficients as JSON instead of tables.")
    ] = False,
    vidur: Annotated[
        bool,
        typer.Option(help="Fit 7B-70B profiles on Vidur's operator times (traces/vidur/) instead of Splitwise's."),
    ] = False,
    csv_out: Annotated[Path | None, typer.Option(help="With --vidur: also write the held-out table here.")] = None,
) -> None:
    """Refit the latency profiles and print the error on held-out prompt/batch sizes."""
    from odhsim.profiles.fit import DEFAULT_PERF_CSV, run_fit

    if vidur:
        _profiles_fit_vidur(write, csv_out, json_)
        return
    if csv_out is not None:
        raise typer.BadParameter("--csv-out goes with --vidur", param_hint="--csv-out")
    with err_console.status("fitting latency profiles ..."):
        errors, coefficients = run_fit(csv or DEFAULT_PERF_CSV, write=write)
    if json_:
        echo_json({"held_out_error": frame_records(errors), "coefficients": frame_records(coefficients)})
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
    console.print(frame_table(shown, "error on held-out prompt and batch sizes"))
    overall = errors[errors["model"] == "ALL"].iloc[0]
    verdict = "ok" if max(overall["prefill_mdape_pct"], overall["decode_mdape_pct"]) < 10 else "ABOVE TARGET"
    console.print(
        f"overall held-out MdAPE: prefill {overall['prefill_mdape_pct']:.2f}%, "
        f"decode {overall['decode_mdape_pct']:.2f}% (target < 10%: {verdict}); "
        f"{len(coefficients)} (model, GPU, TP) groups fitted"
    )
    if write:
        console.print("coefficients written to odhsim/data/latency_coefficients.json")


def _profiles_fit_vidur(write: bool, csv_out: Path | None, json_: bool) -> None:
    """`profiles fit --vidur`: held-out error per (model, GPU, TP), the issue's 7B/A100 example, optional write."""
    from odhsim.profiles.vidur_fit import run_vidur_fit

    check_out_file(csv_out, "--csv-out")
    with err_console.status("composing Vidur step times and fitting ..."):
        errors, coefficients, example, crosscheck = run_vidur_fit(write=write, csv_out=csv_out)
    done = [f"held-out table written to {csv_out}"] if csv_out else []
    done += ["Vidur coefficients written to odhsim/data/latency_coefficients.json"] if write else []
    if json_:
        tables = {"held_out_error": frame_records(errors), "coefficients": frame_records(coefficients)}
        echo_json({**tables, **example, "splitwise_crosscheck": frame_records(crosscheck)})
        for line in done:
            err_console.print(escape(line))
        return
    shown = errors.rename(
        columns={
            "prefill_mdape_pct": "prefill MdAPE %",
            "prefill_max_ape_pct": "prefill max %",
            "decode_mdape_pct": "decode MdAPE %",
            "decode_max_ape_pct": "decode max %",
            "cpu_max_ape_pct": "cpu max %",
        }
    ).drop(columns=["n_test_prefill", "n_test_decode", "cpu_source"])
    title = "Vidur: fitted GPU step time vs composed operator times, held-out shapes (every 5th batch, KV, chunk)"
    console.print(frame_table(shown, title))
    console.print(frame_table(crosscheck.round(2), "Vidur composition (GPU + CPU) / Splitwise's measured step time"))
    e = example
    console.print(
        f"Llama-2-7B / A100 / TP1 decode, batch {e['batch']} x {e['context_per_seq']} tokens: Vidur composed "
        f"{e['vidur_composed_gpu_ms']:.1f} ms (Vidur's predictor, issue 11: {e['vidur_predictor_gpu_ms_issue']:.0f} "
        f"ms), fitted GPU {e['fitted_gpu_ms']:.1f} ms + CPU {e['cpu_overhead_ms']:.1f} ms = "
        f"{e['fitted_step_ms']:.1f} ms; stored profile ({e['stored_source']}) {e['stored_step_ms']:.1f} ms; "
        f"roofline {e['roofline_ms']:.1f} ms",
        highlight=False,
        soft_wrap=True,
    )
    for line in done:
        console.print(escape(line), highlight=False, soft_wrap=True)


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
        echo_json(cases)
        if out is not None:
            write_bench(cases, out)
        return
    frame = pd.DataFrame(cases)
    shown = [c for c in ("name", "requests", "wall_s", "sim_requests_per_wall_s", "peak_rss_mb", "offered_load",
                         "ratio_vs_simpy") if c in frame.columns]  # fmt: skip
    console.print(frame_table(frame[shown].rename(columns={"sim_requests_per_wall_s": "req/wall-s"}), "odhsim bench"))
    console.print(
        "targets: Azure trace case >= 25,000 req/wall-s (on the machine the target was set on: bare SimPy's M/M/c "
        "there ran ~157k req/wall-s; compare before/after side by side); M/M/c ratio_vs_simpy >= 0.5; "
        "peak RSS (1 M) < 1,500 MB"
    )
    if out is not None:
        write_bench(cases, out)
        console.print(escape(f"saved to {out}"), highlight=False, soft_wrap=True)


def list_(
    what: Annotated[str, typer.Argument(help="gpus | profiles | policies | autoscalers | traces")],
    json_: Annotated[bool, typer.Option("--json", help="Print the rows as JSON instead of a table.")] = False,
) -> None:
    """What a scenario may name: GPUs, model profiles, policies and autoscalers with their parameters and defaults,
    catalogued traces."""
    from odhsim.listing import format_params, listing

    rows = listing(what)
    if json_:
        echo_json(rows)
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    title = escape(f"odhsim list {what} ({len(rows)})")
    table = Table(title=title, header_style="bold", show_lines="params" in columns)
    for col in columns:
        table.add_column("parameters (name=default)" if col == "params" else col, overflow="fold")
    for row in rows:
        cells = [format_params(row[c]) if c == "params" else row.get(c, "") for c in columns]
        table.add_row(*(fmt(c) for c in cells))
    console.print(table)
