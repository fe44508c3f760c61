"""Reading scenario files: YAML -> dict -> (overrides) -> Scenario, with errors that name file, line and field.

Loading writes nothing and, unless `check_files` is asked for, opens no trace: `odhsim validate` asks, so a
missing trace, a missing column or a header-only file is reported with the line of the field that names it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from odhsim.errors import OdhsimError, ScenarioError
from odhsim.scenario.checks import NON_FINITE_HINT, non_finite, unbounded_workload
from odhsim.scenario.deployment import FieldPathError
from odhsim.scenario.fieldpaths import Loc, field_names, yaml_loc
from odhsim.scenario.model import Scenario
from odhsim.scenario.yaml_io import parse_path, read_yaml_file, safe_load
from odhsim.workload.build import resolve_trace_path, trace_refs
from odhsim.workload.loaders import open_trace


def _format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _clean_loc(loc: Loc) -> Loc:
    """Drop pydantic's internal loc parts (union branch tags, validator names) so paths read like the YAML."""
    return tuple(p for p in loc if isinstance(p, int) or not str(p).startswith(("function-", "tagged-union")))


def where(loc: Loc, source: str, lines: Mapping[Loc, int], set_by: Mapping[Loc, str] | None = None) -> str:
    """What to blame for the value at `loc`: the `--set` that wrote it, else the file and the nearest line."""
    for path, item in (set_by or {}).items():
        if loc[: len(path)] == path or (path[: len(loc)] == loc and loc not in lines):
            return f"--set {item}"
    line = None
    probe = loc
    while probe and line is None:
        line = lines.get(probe)
        probe = probe[:-1]
    return f"{source} line {line}" if line else source


def _unknown_field(err: Any, loc: Loc, shown: Loc) -> str:
    """'unknown field X', with the closest known field name of that section (or the known names)."""
    known = field_names(err.title, loc[:-1])
    msg = f"unknown field {shown[-1]!r}"
    close = difflib.get_close_matches(str(shown[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"{msg}; did you mean {close[0]!r}?"
    return f"{msg}; known: {', '.join(known)}" if known else msg


def validation_message(
    err: ValidationError, source: str, lines: Mapping[Loc, int], set_by: Mapping[Loc, str] | None = None
) -> str:
    parts = []
    for e in err.errors():
        loc = _clean_loc(tuple(e["loc"]))
        cause = e.get("ctx", {}).get("error")
        if isinstance(cause, FieldPathError):  # a validator named the field below the model it checked
            loc = (*loc, *cause.loc)
        shown = yaml_loc(err.title, loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = _unknown_field(err, loc, shown)
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "finite_number":  # a string such as "inf" or "1e999" that a float field parsed
            msg = f"{e['input']} {NON_FINITE_HINT}"
        parts.append(f"{where(shown, source, lines, set_by)}: {_format_loc(shown)}: {msg}")
    return "\n".join(parts)


def parse_overrides(items: list[str] | None) -> list[tuple[list[int | str], Any]]:
    """Parse `--set path=value` items; values are YAML scalars or flow collections (`[1, 2]`, `{a: 1}`)."""
    out = []
    for item in items or []:
        if "=" not in item:
            raise ScenarioError(f"--set {item!r}: expected path=value, for example models[0].replicas=4")
        path, raw = item.split("=", 1)
        try:
            value = safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ScenarioError(f"--set {item!r}: value is not valid YAML ({err})") from None
        out.append((parse_path(path.strip()), value))
    return out


def apply_overrides(data: dict[str, Any], overrides: list[tuple[list[int | str], Any]]) -> dict[str, Any]:
    for path, value in overrides:
        node: Any = data
        shown = _format_loc(tuple(path))
        for i, key in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(key, int):
                if not isinstance(node, list) or key >= len(node):
                    raise ScenarioError(f"--set {shown}: no element {_format_loc(tuple(path[: i + 1]))}")
                node = node[key]
            else:
                if not isinstance(node, dict):
                    raise ScenarioError(f"--set {shown}: {_format_loc(tuple(path[:i]))} is not a mapping")
                node = node.setdefault(key, [] if isinstance(nxt, int) else {})
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise ScenarioError(f"--set {shown}: no element {shown}")
            node[last] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ScenarioError(f"--set {shown}: {_format_loc(tuple(path[:-1]))} is not a mapping")
    return data


def override_sources(items: list[str] | None) -> dict[Loc, str]:
    """Field path -> the `--set` item that wrote it, so an error about that value blames the option, not a line."""
    return {tuple(path): item for item in items or [] for path, _ in parse_overrides([item])}


def _refuse_non_finite(
    value: Any, title: str, source: str, lines: Mapping[Loc, int], set_by: Mapping[Loc, str] | None
) -> None:
    bad = list(non_finite(value))
    if bad:
        raise ScenarioError(
            "\n".join(
                f"{where(yaml_loc(title, loc), source, lines, set_by)}: {_format_loc(yaml_loc(title, loc))}: "
                f"{v} {NON_FINITE_HINT}"
                for loc, v in bad
            )
        )


def scenario_from_dict(
    data: dict[str, Any],
    *,
    source: str = "<scenario>",
    lines: dict[Loc, int] | None = None,
    base_dir: Path | None = None,
    set_by: Mapping[Loc, str] | None = None,
) -> Scenario:
    """Validate a scenario mapping. Every number must be finite (an infinite duration never ends a run): YAML's
    `.inf`/`.nan` are refused before validation, and strings such as "inf" that a float field parsed, after."""
    lines = lines or {}
    _refuse_non_finite(data, "Scenario", source, lines, set_by)
    try:
        sc = Scenario.model_validate(data, context={"base_dir": base_dir or Path.cwd()})
    except ValidationError as err:
        raise ScenarioError(validation_message(err, source, lines, set_by)) from None
    _refuse_non_finite(sc, "Scenario", source, lines, set_by)
    unbounded = unbounded_workload(sc)
    if unbounded is not None:
        raise ScenarioError(f"{source}: {unbounded}")
    return sc


def check_trace_files(
    sc: Scenario, *, source: str, lines: Mapping[Loc, int], set_by: Mapping[Loc, str] | None = None
) -> None:
    """Open every trace the workload names, reading only its header and first data row: the file exists, its
    format is known, the required columns are there and it has at least one request. Errors name the field."""
    model_names = [m.name for m in sc.models]
    for loc, ref in trace_refs(sc.workload):
        try:
            path = resolve_trace_path(ref.path, sc.base_dir, f"relative paths start at {source}'s folder")
            open_trace(path, ref.format, trace_filter=ref.trace_filter, model_names=model_names)
        except OdhsimError as err:
            raise ScenarioError(f"{where(loc, source, lines, set_by)}: {_format_loc(loc)}: {err}") from None


def read_scenario_dict(path: Path) -> tuple[dict[str, Any], dict[Loc, int]]:
    if not path.exists():
        raise ScenarioError(f"{path}: no such scenario file")
    data, lines = read_yaml_file(path, str(path))
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario must be a YAML mapping at the top level")
    return data, lines


def load_scenario(path: str | Path, overrides: list[str] | None = None, *, check_files: bool = False) -> Scenario:
    """Load and validate a scenario file, applying `--set path=value` overrides first; with `check_files`, also
    open the traces it names (header and first row; see `check_trace_files`)."""
    p = Path(path)
    data, lines = read_scenario_dict(p)
    data = apply_overrides(data, parse_overrides(overrides))
    set_by = override_sources(overrides)
    sc = scenario_from_dict(data, source=str(p), lines=lines, base_dir=p.resolve().parent, set_by=set_by)
    if check_files:
        check_trace_files(sc, source=str(p), lines=lines, set_by=set_by)
    return sc
