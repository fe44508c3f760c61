"""Commands that run a scenario several times and analyse it: compare (A/B) and cost (cost report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from odhsim.cli_support import check_out_dir, check_seed, frame_records, print_warnings
from odhsim.commands.output import (
    console,
    echo_json,
    err_console,
    frame_table,
    report_unserved,
    scenario_warnings,
)


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
        echo_json({"baseline": result.baseline, "seeds": result.seeds, "rows": frame_records(result.table),
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
        echo_json(
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
    console.print(frame_table(by_metric, f"cost of {sc.name} (seed {result.seed})"))
    if len(report.rightsizing):
        shown = report.rightsizing.set_index("model").T.reset_index(names="right-sizing")
        console.print(frame_table(shown, "right-sizing: the cheapest fleet meeting the SLOs, found by simulation"))
        for r in recs:
            console.print(
                escape(f"{r['model']}: sized for {r['target_rps']:.3g} req/s ({r['rate_basis']}); each fleet "
                       f"simulated {r['duration_s']:g} s at that rate, p99 of every request against its class's "
                       "SLOs; the pick verified on fresh arrivals"),
                highlight=False,
            )  # fmt: skip
