"""`odhsim calibrate`: fit the simulator's profiles on this machine's live engine, or on a request log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from odhsim.commands.output import console, echo_json, err_console, fmt
from odhsim.errors import OdhsimError


class CalibrateUsageError(OdhsimError):
    """The options do not make a calibration (no scenario and no request log, both, ...)."""


def calibrate(
    scenario: Annotated[Path | None, typer.Argument(help="Scenario whose live models to calibrate.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for <model>.json and <scenario>-calibrated.yaml.")] = Path(
        "calib"
    ),
    device: Annotated[str, typer.Option(help="cpu | cuda: where the engine runs while timed.")] = "cpu",
    quick: Annotated[bool, typer.Option(help="A small grid and few probes (under a minute on 2 cores).")] = False,
    threads: Annotated[int | None, typer.Option(help="Torch threads per engine (default: the replicas').")] = None,
    no_overheads: Annotated[
        bool, typer.Option("--no-overheads", help="Skip the live gateway probes (overheads stay 0).")
    ] = False,
    scenario_out: Annotated[
        Path | None, typer.Option(help="Where the calibrated scenario goes (default OUT/<scenario>-calibrated.yaml).")
    ] = None,
    cpu_share: Annotated[
        bool,
        typer.Option(
            "--cpu-share", help="Also time the engine in 1..cores+2 processes at once (minutes; a quiet machine)."
        ),
    ] = False,
    from_requests: Annotated[
        Path | None, typer.Option("--from-requests", help="Fit from a requests.parquet alone (no engine access).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="With --from-requests: the model whose requests to use.")] = None,
    instrumented: Annotated[
        Path | None,
        typer.Option(help="With --from-requests: a profile file fitted on the engine, to compare against."),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Profile each live model's engine over a grid, fit the simulator's latency family (held-out error printed),
    measure the overheads outside the engine against a live gateway, and write calibrated profiles and scenario.
    With --from-requests, fit the step coefficients from per-request phase times instead."""
    if from_requests is not None:
        if scenario is not None:
            raise CalibrateUsageError("give a scenario or --from-requests, not both")
        _from_requests(from_requests, model, instrumented, out, json_)
        return
    if scenario is None:
        raise CalibrateUsageError("give a scenario to calibrate, or --from-requests requests.parquet")
    if model is not None or instrumented is not None:
        raise CalibrateUsageError("--model and --instrumented go with --from-requests")
    from odhsim.calibrate.instrumented import CalibrateOptions, calibrate_scenario

    opts = CalibrateOptions(
        device=device, quick=quick, threads=threads, measure_overheads=not no_overheads, measure_cpu=cpu_share
    )
    with Progress(
        TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console
    ) as bar:
        task = bar.add_task("steps", total=None)
        result = calibrate_scenario(
            scenario,
            opts,
            out,
            plan=lambda n: bar.update(task, total=n),
            advance=lambda k: bar.advance(task, k),
            scenario_out=scenario_out,
        )
    docs = {name: p.model_dump(mode="json", exclude_none=True, exclude={"live"}) for name, p in result.profiles.items()}
    if json_:
        echo_json({"profiles": docs, "files": result.files})
        return
    for name, prof in result.profiles.items():
        console.print(_profile_table(name, prof.model_dump(mode="json", exclude_none=True)))
    for f in result.files:
        console.print(f"wrote {escape(f)}")


def _profile_table(name: str, doc: dict[str, Any]) -> Table:
    prov = doc["provenance"]
    held = prov.get("held_out", {})
    title = (
        f"{name} ({doc['kind']}) on {prov['device']}: held-out error median {held.get('median_pct', float('nan')):.1f}%"
        f", p90 {held.get('p90_pct', float('nan')):.1f}% ({held.get('points', 0)} points)"
    )
    table = Table(title=escape(title), header_style="bold")
    table.add_column("term")
    table.add_column("value", justify="right")
    for section in ("latency", "overheads", "cpu"):
        for key, value in (doc.get(section) or {}).items():
            table.add_row(f"{section}.{key}", fmt(value))
    batching = doc.get("batching")
    if batching:
        for b, t in sorted(batching["service_time_s_by_batch"].items(), key=lambda kv: int(kv[0])):
            table.add_row(f"service_s at batch {b}", fmt(t))
        table.add_row("max_batch_delay_ms", fmt(batching["max_batch_delay_ms"]))
    return table


def _from_requests(path: Path, model: str | None, instrumented: Path | None, out: Path, json_: bool) -> None:
    from odhsim.calibrate.fit import FitError
    from odhsim.calibrate.from_requests import client_view, compare_fits, fit_from_requests, read_requests
    from odhsim.calibrate.profile_file import load_profile

    df = read_requests(path, model)
    try:
        coef, counts = fit_from_requests(df)
    except FitError as err:
        raise CalibrateUsageError(f"{path}: {err}") from None
    ref = None
    if instrumented is not None:
        prof = load_profile(instrumented)
        if prof.latency is None:
            raise CalibrateUsageError(f"{instrumented}: not an llm profile (no latency section)")
        ref = client_view(prof.latency, prof.overheads)  # what a client-side log holds: engine + overheads
    out.mkdir(parents=True, exist_ok=True)
    dest = out / f"{model or 'model'}-from-requests.json"
    doc: dict[str, Any] = {"source": str(path), "model": model, "rows": counts, "latency": coef.model_dump()}
    cmp = compare_fits(coef, ref) if ref is not None else None
    if cmp is not None:
        doc["instrumented"] = {"file": str(instrumented), "latency_with_overheads": ref.model_dump() if ref else None}
        doc["comparison"] = cmp.to_dict(orient="records")
    import json

    dest.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if json_:
        echo_json({**doc, "file": str(dest)})
        return
    table = Table(title=escape(f"step coefficients from {path} ({counts})"), header_style="bold")
    table.add_column("coefficient")
    table.add_column("from requests", justify="right")
    if ref is not None:
        table.add_column("instrumented + overheads", justify="right")
        table.add_column("diff %", justify="right")
    for key, value in coef.model_dump().items():
        cells = [fmt(value)]
        if ref is not None:
            r = getattr(ref, key)
            cells += [fmt(r), fmt((value - r) / r * 100) if r else "-"]
        table.add_row(key, *cells)
    console.print(table)
    if cmp is not None:
        steps = Table(title="step times of the two fits", header_style="bold")
        for col in cmp.columns:
            steps.add_column(col, justify="left" if col == "step" else "right")
        for row in cmp.itertuples(index=False):
            steps.add_row(*(fmt(v) for v in row))
        console.print(steps)
    console.print(f"wrote {escape(str(dest))}")
