"""`odhsim import kserve FILE.yaml`: InferenceServices -> a scenario's model section (or a runnable scenario)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from odhsim.errors import OdhsimError
from odhsim.importers.kserve import (
    ImportOptions,
    KServeImport,
    KServeImportError,
    Unmapped,
    import_inference_service,
    minimal_scenario,
)

import_app = typer.Typer(no_args_is_help=True, help="Turn configurations you already have into scenario sections.")
err_console = Console(stderr=True)


def read_inference_services(path: Path, options: ImportOptions) -> tuple[list[KServeImport], list[Unmapped]]:
    """Every InferenceService in a (multi-document) YAML file; other documents are reported, not imported."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KServeImportError(f"{path}: no such file") from None
    except OSError as err:
        raise KServeImportError(f"{path}: cannot read ({err.strerror})") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise KServeImportError(f"{path}{where}: invalid YAML: {getattr(err, 'problem', None) or err}") from None
    imports: list[KServeImport] = []
    skipped: list[Unmapped] = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or doc.get("kind") != "InferenceService":
            kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
            skipped.append(Unmapped(f"document {i + 1}", f"kind {kind!r}: not an InferenceService"))
            continue
        try:
            imports.append(import_inference_service(doc, options))
        except KServeImportError as err:
            raise KServeImportError(f"{path} (document {i + 1}): {err}") from None
    if not imports:
        raise KServeImportError(f"{path}: no InferenceService in the file")
    return imports, skipped


def render(imports: list[KServeImport], *, scenario: bool, rate: float, duration_s: float, name: str) -> str:
    """The YAML to write: a `models:` section, or a whole scenario; validated with the scenario loader first."""
    from odhsim.scenario.load import scenario_from_dict

    full = minimal_scenario(imports, rate=rate, duration_s=duration_s, name=name)
    scenario_from_dict(full, source="the imported scenario")  # raises ScenarioError if the mapping is wrong
    body: dict[str, Any] = full if scenario else {"models": full["models"]}
    header = "# odhsim import kserve: " + (
        "the workload below is a placeholder; replace it with your traffic\n"
        if scenario
        else "paste under a scenario's `models:`\n"
    )
    gateway = full.get("gateway")
    if gateway and not scenario:
        header += f"# and set gateway: {yaml.safe_dump(gateway, default_flow_style=True).strip()}\n"
    return header + yaml.safe_dump(body, sort_keys=False)


@import_app.command("kserve")
def import_kserve(
    file: Annotated[Path, typer.Argument(help="KServe v1beta1 InferenceService YAML (several documents allowed).")],
    out: Annotated[Path | None, typer.Option(help="Write the YAML here instead of printing it.")] = None,
    scenario: Annotated[bool, typer.Option(help="Write a minimal runnable scenario around the models.")] = False,
    profile: Annotated[str | None, typer.Option(help="LLM profile when storageUri/args do not name one.")] = None,
    gpu: Annotated[str | None, typer.Option(help="GPU type when nodeSelector/affinity do not name one.")] = None,
    service_time_s: Annotated[
        float | None, typer.Option(help="Mean per-request service time of a `fixed` (predictive) model.")
    ] = None,
    rate: Annotated[float, typer.Option(help="--scenario: placeholder Poisson rate (requests/s).")] = 1.0,
    duration_s: Annotated[float, typer.Option(help="--scenario: placeholder workload duration.")] = 300.0,
) -> None:
    """Map InferenceServices (KPA annotations, replicas, containerConcurrency, canary, storageUri, GPUs) onto
    scenario models, and list what could not be mapped, with the field path and why."""
    try:
        options = ImportOptions.model_validate({"profile": profile, "gpu": gpu, "service_time_s": service_time_s})
    except ValidationError as err:
        e = err.errors()[0]
        flag = "-".join(map(str, e["loc"])).replace("_", "-")
        err_console.print(f"[bold red]error:[/] --{flag}: {escape(e['msg'])}", highlight=False)
        raise typer.Exit(2) from None
    try:
        imports, skipped = read_inference_services(file, options)
        text = render(imports, scenario=scenario, rate=rate, duration_s=duration_s, name=file.stem)
    except OdhsimError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        err_console.print(f"wrote {out}")
    rows = [("-", u) for u in skipped] + [(imp.model["name"], u) for imp in imports for u in imp.unmapped]
    if rows:
        err_console.print(f"[bold]not mapped[/] ({len(rows)} fields):", highlight=False)
    for model, u in rows:  # one line each (greppable, never cut): model, field path, why
        err_console.print(f"  {model}  {u.path}: {u.reason}", highlight=False, soft_wrap=True, markup=False)
    for imp in imports:
        for note in imp.notes:
            err_console.print(f"note {imp.model['name']}: {note}", highlight=False, soft_wrap=True, markup=False)
