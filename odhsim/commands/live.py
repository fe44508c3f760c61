"""Commands of the live runtime: serve, replay against a live endpoint, and bench-live."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from odhsim.cli_support import check_out_dir
from odhsim.commands.output import console, err_console, print_summary


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
    replay_source: Annotated[
        Path | None,
        typer.Option(
            "--replay",
            help="Replay this trace or scenario (the scenario itself: its workload) against "
            "the stack, faults armed as it starts, then stop; results like `odhsim run --out`.",
        ),
    ] = None,
    speed: Annotated[float, typer.Option(help="With --replay: replay at this multiple of the trace's rate.")] = 1.0,
    limit: Annotated[int, typer.Option(help="With --replay: send at most this many requests.")] = 10_000,
) -> None:
    """Serve a scenario for real: gateway + replica processes, deploy flow, autoscaling, restarts (Ctrl-C stops)."""
    from odhsim.scenario.load import load_scenario
    from runtime.serve import serve as serve_live

    check_out_dir(out)
    sc = load_scenario(scenario, set_)
    if replay_source is not None:
        from runtime.serve_replay import serve_replay

        if out is None or duration is not None:
            raise typer.BadParameter("--replay needs --out DIR and stops when the replay ends (no --duration)")
        result = serve_replay(sc, replay_source, out, device=device, speed=speed, limit=limit)
        print_summary(result.summary, f"{result.scenario_name} served live, {replay_source} replayed")
        console.print(escape(f"results written to {out}/ (the stack's own records in {out}/serve/)"), highlight=False)
        return
    raise typer.Exit(serve_live(sc, port=port, device=device, out_dir=out, duration_s=duration, console=console))


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
