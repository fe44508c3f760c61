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
    raise FidelityError("give a scenario, or --sim DIR and --live DIR")
