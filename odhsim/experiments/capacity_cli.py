"""`odhsim capacity SCENARIO [--slo ttft_p99=2 ...] [--gpu L40S ...] [--out DIR]`: the highest rate each
configuration sustains within its SLOs (odhsim.experiments.max_rate), a table, and a plot of latency against load."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.markup import escape
from rich.table import Table

from odhsim.cli_support import check_out_dir, make_console, to_json
from odhsim.errors import OdhsimError
from odhsim.experiments.fleet import Fleet, FleetJob, ReplicaGroup, gpu_options
from odhsim.experiments.max_rate import CapacityJob, CapacityResult, SloSpec
from odhsim.scenario.model import Scenario

console = make_console()
err_console = make_console(stderr=True)
PROBE_DURATION_S = 120.0
SLO_HELP = "METRIC_pNN=SECONDS (ttft, tpot, e2e), e.g. ttft_p99=2; default: the scenario's slos per class at p99."


class CapacityCliError(OdhsimError):
    """A capacity question that cannot be asked of this scenario."""


def model_rate(scenario: Scenario, model_index: int) -> float:
    """The model's arrival rate in the scenario as written: its requests in the workload over the arrival window."""
    from odhsim.rng import RngStreams
    from odhsim.workload.build import build_workload

    names = [m.name for m in scenario.models]
    wl = build_workload(scenario.workload, model_names=names, streams=RngStreams(scenario.seed),
                        base_dir=scenario.base_dir)  # fmt: skip
    n, last = 0, 0.0
    for b in wl.batches():
        keep = b.model == model_index
        if scenario.duration_s is not None:
            keep &= b.arrival_s < scenario.duration_s
        n += int(keep.sum())
        if len(b.arrival_s):
            last = max(last, float(b.arrival_s[-1]))
    span = scenario.duration_s or last
    return n / span if span > 0 else 0.0


def configurations(scenario: Scenario, model: str, gpus: Sequence[str]) -> list[tuple[str, Fleet]]:
    """The scenario's own fleet of `model`, then, per --gpu (or every catalogue option for `all`), as many replicas
    as the model has on that GPU at the smallest tensor-parallel degree that fits."""
    from odhsim import catalog

    m = scenario.models[scenario.model_index(model)]
    own = Fleet(model, tuple(ReplicaGroup(g.gpu, g.tp, g.replicas) for g in m.groups() if g.replicas > 0))
    if not own.groups or any(g.pp > 1 for g in m.groups()):
        raise CapacityCliError(f"model '{model}' has no replicas (or pipeline stages): give it replicas to measure")
    out = [("scenario", own)]
    options = dict(gpu_options(m, scenario))
    wanted = list(options) if "all" in gpus else []
    for name in gpus:
        if name == "all":
            continue
        try:
            gpu = catalog.gpu(name).name
        except Exception as err:
            raise CapacityCliError(f"--gpu {name!r}: {err}") from None
        if gpu not in options:
            raise CapacityCliError(f"--gpu {gpu}: {m.profile} does not fit it at tp <= 8 with its max_model_len")
        wanted.append(gpu)
    n = max(1, m.replicas)
    for gpu in dict.fromkeys(wanted):
        out.append((f"{gpu} x{options[gpu]}", Fleet(model, (ReplicaGroup(gpu, options[gpu], n),))))
    return out


def capacity(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML: its workload (scaled) and SLOs.")],
    slo: Annotated[list[str] | None, typer.Option("--slo", help=SLO_HELP)] = None,
    model: Annotated[str | None, typer.Option(help="The model to measure (default: the first LLM).")] = None,
    gpu: Annotated[
        list[str] | None, typer.Option("--gpu", help="Also measure the model's replica count on this GPU; 'all'.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help=f"Seconds simulated per probe (default: min(duration, {PROBE_DURATION_S:g})).")
    ] = None,
    rel_tol: Annotated[float, typer.Option(help="Bisection stops when failing / met <= 1 + rel_tol.")] = 0.05,
    out: Annotated[Path | None, typer.Option(help="Folder for capacity.csv, probes.csv, latency_vs_load.png.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: path=value.")] = None,
    executor: Annotated[str, typer.Option(help="inline (this process), local (process pool) or ray.")] = "inline",
    workers: Annotated[int, typer.Option(help="Workers for --executor local or ray.")] = 1,
    address: Annotated[str | None, typer.Option(help="--executor ray: a cluster, e.g. ray://head:10001.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """The highest arrival rate each configuration sustains within its SLOs (bisection, common random numbers)."""
    try:
        _capacity(scenario, slo or [], model, gpu or [], duration, rel_tol, out, set_ or [], executor, workers,
                  address, json_)  # fmt: skip
    except OdhsimError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _capacity(
    path: Path,
    slo_texts: list[str],
    model: str | None,
    gpus: list[str],
    duration: float | None,
    rel_tol: float,
    out: Path | None,
    overrides: list[str],
    executor: str,
    workers: int,
    address: str | None,
    json_: bool,
) -> None:
    from odhsim.experiments.capacity import run_jobs
    from odhsim.experiments.executors import make_executor
    from odhsim.experiments.max_rate import search_capacity
    from odhsim.scenario.load import load_scenario

    slos = tuple(SloSpec.parse(t) for t in slo_texts)
    if not 0 < rel_tol < 1:
        raise CapacityCliError(f"--rel-tol {rel_tol}: need 0 < rel_tol < 1")
    if duration is not None and not duration > 0:
        raise CapacityCliError(f"--duration {duration}: need a positive number of seconds")
    check_out_dir(out)
    sc = load_scenario(path, overrides)
    llms = [m.name for m in sc.models if m.kind == "llm"]
    name = model or (llms[0] if llms else sc.models[0].name)
    if name not in [m.name for m in sc.models]:
        raise CapacityCliError(f"--model {name!r}: the scenario's models are {', '.join(m.name for m in sc.models)}")
    base = model_rate(sc, sc.model_index(name))
    if not base > 0:
        raise CapacityCliError(f"model '{name}' receives no requests in {path}: nothing to scale")
    probe_s = duration or min(sc.duration_s or PROBE_DURATION_S, PROBE_DURATION_S)
    jobs = [CapacityJob(label, FleetJob(sc, fleet, base, base, probe_s, sc.seed), slos, rel_tol)
            for label, fleet in configurations(sc, name, gpus)]  # fmt: skip
    status = err_console.status(f"measuring {len(jobs)} configuration(s) of '{name}' on {executor}")
    with status, make_executor(executor, workers=workers, address=address) as ex:
        results: list[CapacityResult] = run_jobs(jobs, search_capacity, ex)
    table = pd.DataFrame([r.row() for r in results])
    probes = pd.DataFrame([row for r in results for row in r.probe_rows()])
    what = ", ".join(f"{s.name} <= {s.limit_s:g} s" for s in slos) or "the scenario's slos (per class, p99)"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "capacity.csv", index=False)
        probes.to_csv(out / "probes.csv", index=False)
        plot_latency_vs_load(results, slos, out / "latency_vs_load.png", title=f"{sc.name}: {name}")
    if json_:
        typer.echo(to_json({"scenario": sc.name, "model": name, "slos": what, "scenario_rate_rps": base,
                            "probe_duration_s": probe_s, "rel_tol": rel_tol, "configurations": table.to_dict("records"),
                            "probes": probes.to_dict("records")}))  # fmt: skip
        return
    t = Table(title=escape(f"capacity of '{name}' in {sc.name} within {what}"))
    for col in ("configuration", "$/h", "max req/s", "first missed", "probes", "$/h per req/s"):
        t.add_column(col, justify="left" if col == "configuration" else "right")
    for r in results:
        row = r.row()
        t.add_row(escape(f"{r.label}: {r.fleet.label}"), f"{r.usd_per_hour:.2f}", f"{r.rate_rps:.3g}",
                  "none" if math.isinf(r.failing_rps) else f"{r.failing_rps:.3g}", str(len(r.probes)),
                  f"{row['usd_per_hour_per_rps']:.3g}")  # fmt: skip
    console.print(t)
    console.print(escape(
        f"each rate simulated {probe_s:g} s with the same workload seed (scenario rate {base:.3g} req/s, scaled); "
        f"the capacity lies in [max, first missed), which are within {rel_tol:.0%} of each other when converged"
    ), highlight=False, soft_wrap=True)  # fmt: skip
    for r in results:
        if not r.converged:
            err_console.print(escape(f"{r.label}: not converged (bracket {r.rate_rps:.3g}..{r.failing_rps:.3g})"),
                              style="yellow", highlight=False)  # fmt: skip
    if out is not None:
        console.print(escape(f"wrote {out / 'capacity.csv'}, probes.csv, latency_vs_load.png"), soft_wrap=True)


def plot_latency_vs_load(
    results: Sequence[CapacityResult], slos: Sequence[SloSpec], path: Path, *, title: str = ""
) -> Any:
    """TTFT and end-to-end p99 against the offered rate, one line per configuration (filled markers: SLOs met),
    each SLO's limit as a dashed line and each capacity as a dotted one. Returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, ("ttft", "e2e"), strict=True):
        for i, r in enumerate(results):
            color = f"C{i}"
            pts = sorted(r.probes, key=lambda p: p.rate_rps)
            xs = [p.rate_rps for p in pts]
            ys = [min(p.latency_s[f"{metric}_p99"], 1e4) for p in pts]
            ax.plot(xs, ys, "-", color=color, label=r.label)
            ax.scatter(xs, ys, color=color, facecolors=[color if p.meets else "none" for p in pts], zorder=3)
            if r.rate_rps > 0:
                ax.axvline(r.rate_rps, color=color, linestyle=":", linewidth=1)
        for s in slos:
            if s.metric == metric:
                ax.axhline(s.limit_s, color="black", linestyle="--", linewidth=1, label=f"SLO {s.name}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # plain numbers, not powers of ten
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("offered load (req/s)")
        ax.set_ylabel(f"{metric.upper()} p99 (s)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig
