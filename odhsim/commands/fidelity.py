"""`odhsim fidelity` (compare two result folders, or serve + replay + simulate a scenario at several loads) and
`odhsim bench-fidelity`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from odhsim.cli_support import check_out_dir
from odhsim.commands.output import console


def fidelity(
    scenario: Annotated[
        Path | None, typer.Argument(help="Scenario with `live:` sections to serve, replay and simulate.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Write fidelity.csv, plots/ and each run's results here.")] = Path(
        "results/fidelity"
    ),
    sim: Annotated[Path | None, typer.Option(help="Compare this simulated result folder (with --live).")] = None,
    live: Annotated[Path | None, typer.Option(help="... with this live result folder (with --sim).")] = None,
    load: Annotated[float, typer.Option(help="With --sim/--live: the load label written in the table.")] = math.nan,
    step: Annotated[float, typer.Option(help="Time step (s) of the queue and ready-replica series.")] = 0.5,
    workload: Annotated[
        Path | None, typer.Option(help="Replay this trace (Azure, Mooncake, CSV) instead of the scenario's workload.")
    ] = None,
    rates: Annotated[
        str,
        typer.Option(
            help="Loads, comma-separated: fractions of the measured live capacity (or req/s with --absolute)."
        ),
    ] = "0.3,0.6,0.9",
    absolute: Annotated[bool, typer.Option(help="--rates are req/s; no capacity probe.")] = False,
    duration: Annotated[float, typer.Option(help="Seconds of arrivals per load (both engines).")] = 30.0,
    length_scale: Annotated[float, typer.Option(help="Divide the workload's token counts by this.")] = 1.0,
    skip: Annotated[float, typer.Option(help="With --workload: start this many trace seconds in.")] = 0.0,
    device: Annotated[str, typer.Option(help="Where the live replicas run: cpu | cuda | auto.")] = "cpu",
) -> None:
    """Measure the simulator against the live engine: TTFT, E2E, throughput, queue and ready replicas."""
    from odhsim.fidelity.compare import FidelityError, compare_folders, load_run
    from odhsim.fidelity.plots import plot_fidelity
    from odhsim.fidelity.report import fidelity_table, write_csv

    if sim is not None or live is not None:
        if sim is None or live is None or scenario is not None:
            raise FidelityError("give --sim DIR and --live DIR together, without a scenario")
        check_out_dir(out)
        table, series = compare_folders(sim, live, load=load, step_s=step)
        path = write_csv(table, out)
        plot = plot_fidelity(load_run(sim, "sim"), load_run(live, "live"), series, out / "plots" / "fidelity.png")
        console.print(fidelity_table(table, f"fidelity: {sim} (sim) against {live} (live)"))
        console.print(escape(f"written: {path}, {plot}"), highlight=False, soft_wrap=True)
        return
    if scenario is None:
        raise FidelityError("give a scenario, or --sim DIR and --live DIR")
    run_loop(scenario, out, workload=workload, rates=rates, absolute=absolute, duration_s=duration,
             length_scale=length_scale, skip_s=skip, device=device, step=step)  # fmt: skip


def parse_rates(text: str) -> tuple[float, ...]:
    from odhsim.fidelity.compare import FidelityError

    try:
        return tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise FidelityError(f"--rates {text!r}: expected numbers separated by commas, e.g. 0.3,0.6,0.9") from None


def run_loop(scenario: Path, out: Path, *, rates: str, step: float, **kw: object) -> None:
    """Serve + replay + simulate per load with progress bars; print the table."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from odhsim.commands.output import err_console
    from odhsim.fidelity.loop import FidelitySettings, Hooks, run_fidelity
    from odhsim.fidelity.report import fidelity_table
    from odhsim.scenario.load import load_scenario

    check_out_dir(out)
    settings = FidelitySettings(rates=parse_rates(rates), step_s=step, **kw)  # type: ignore[arg-type]
    sc = load_scenario(scenario)
    with Progress(
        TextColumn("[bold]fidelity[/] {task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
        TimeElapsedColumn(), console=err_console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("starting", total=None, count="")

        def stage(text: str) -> None:
            bar.update(task, description=escape(text), completed=0, total=None, count="")

        def replay(sent: int, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, count=f"{done:,}/{total:,} answered, {sent:,} sent")

        table = run_fidelity(scenario, sc, settings, out, Hooks(stage, replay))
    console.print(fidelity_table(table, f"fidelity: {sc.name}, simulated against served ({out}/fidelity.csv)"))
    console.print(escape(f"written: {out}/fidelity.csv, {out}/plots/, {out}/load-*/{{live,sim}}"), highlight=False)


def bench_fidelity(
    out: Annotated[Path, typer.Option(help="Write bench-fidelity.csv, plots/ and every run here.")] = Path(
        "results/bench-fidelity"
    ),
    duration: Annotated[float, typer.Option(help="Seconds of arrivals per run (the KPA rush: 1.5x).")] = 20.0,
    device: Annotated[str, typer.Option(help="Where the live replicas run: cpu | cuda | auto.")] = "cpu",
    scenario: Annotated[
        Path | None, typer.Option(help="Base scenario (default scenarios/fidelity.yaml, else scenarios/live.yaml).")
    ] = None,
    case: Annotated[
        list[str] | None, typer.Option(help="Run only these cases: poisson, bursty, azure, kpa-rush, crash.")
    ] = None,
    calibrate: Annotated[
        bool,
        typer.Option(help="Calibrate on this machine right before the runs (--no-calibrate: the base's profile file)."),
    ] = True,
) -> None:
    """Simulator vs live engine at 0.3/0.6/0.9 of capacity (Poisson, bursty, Azure slice), a KPA rush and a replica
    crash, against issue 11's targets; prints the table and writes bench-fidelity.csv."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from odhsim.commands.output import err_console
    from odhsim.fidelity.bench import BenchSettings, bench_table, run_bench_fidelity
    from odhsim.fidelity.compare import FidelityError
    from odhsim.fidelity.loop import Hooks

    known = BenchSettings().cases
    cases = tuple(case or known)
    unknown = sorted(set(cases) - set(known))
    if unknown:
        raise FidelityError(f"--case {unknown}: unknown; known: {', '.join(known)}")
    if not duration > 0:
        raise FidelityError(f"--duration must be > 0, got {duration}")
    check_out_dir(out)
    bench = BenchSettings(duration_s=duration, rush_duration_s=1.5 * duration, device=device, scenario=scenario,
                          cases=cases, calibrate=calibrate)  # fmt: skip
    with Progress(
        SpinnerColumn(), TextColumn("[bold]bench-fidelity[/] {task.description}"), TextColumn("{task.fields[count]}"),
        TimeElapsedColumn(), console=err_console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("starting", total=None, count="")

        def stage(text: str) -> None:
            bar.update(task, description=escape(text), count="")

        def replay(sent: int, done: int, total: int) -> None:
            bar.update(task, count=f"{done:,}/{total:,} answered")

        result = run_bench_fidelity(out, bench, Hooks(stage, replay))
    console.print(bench_table(result))
    console.print(escape(f"written: {out}/bench-fidelity.csv, {out}/plots/"), highlight=False)
