"""Reading scenario files: YAML -> dict -> (overrides) -> Scenario, with errors that name file, line and field.

Loading has no side effects: nothing is written and no trace is opened here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from odhsim.errors import ScenarioError
from odhsim.scenario.deployment import FieldPathError
from odhsim.scenario.model import Scenario

_PATH_TOKEN = re.compile(r"([A-Za-z0-9_\-]+)|\[(\d+)\]")


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def yaml_lines(text: str) -> dict[tuple[int | str, ...], int]:
    """Map each field path in a YAML document to its 1-based line, so errors can point at the line."""
    lines: dict[tuple[int | str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: tuple[int | str, ...]) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                k = key.value
                lines[(*path, k)] = key.start_mark.line + 1
                walk(value, (*path, k))
                lines[(*path, k)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    if root is not None:
        walk(root, ())
    return lines


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """Drop pydantic's internal loc parts (union branch tags, validator names) so paths read like the YAML."""
    return tuple(p for p in loc if isinstance(p, int) or not str(p).startswith(("function-", "tagged-union")))


def validation_message(err: ValidationError, source: str, lines: dict[tuple[int | str, ...], int]) -> str:
    parts = []
    for e in err.errors():
        loc = _clean_loc(tuple(e["loc"]))
        cause = e.get("ctx", {}).get("error")
        if isinstance(cause, FieldPathError):  # a validator named the field below the model it checked
            loc = (*loc, *cause.loc)
        line = None
        probe = loc
        while probe and line is None:
            line = lines.get(probe)
            probe = probe[:-1]
        where = f"{source} line {line}" if line else source
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        parts.append(f"{where}: {_format_loc(loc)}: {msg}")
    return "\n".join(parts)


def parse_path(path: str) -> list[int | str]:
    """'models[0].engine.block_size' -> ['models', 0, 'engine', 'block_size']."""
    if not path or path.strip() != path:
        raise ScenarioError(f"--set: bad field path {path!r}")
    tokens: list[int | str] = []
    pos = 0
    for m in _PATH_TOKEN.finditer(path):
        gap = path[pos : m.start()]
        is_name = m.group(1) is not None
        if gap != ("." if is_name and tokens else ""):
            raise ScenarioError(f"--set: bad field path {path!r}")
        tokens.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if pos != len(path) or not tokens:
        raise ScenarioError(f"--set: bad field path {path!r}")
    return tokens


def parse_overrides(items: list[str] | None) -> list[tuple[list[int | str], Any]]:
    """Parse `--set path=value` items; values are YAML scalars or flow collections (`[1, 2]`, `{a: 1}`)."""
    out = []
    for item in items or []:
        if "=" not in item:
            raise ScenarioError(f"--set {item!r}: expected path=value, for example models[0].replicas=4")
        path, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
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


def scenario_from_dict(
    data: dict[str, Any],
    *,
    source: str = "<scenario>",
    lines: dict[tuple[int | str, ...], int] | None = None,
    base_dir: Path | None = None,
) -> Scenario:
    try:
        return Scenario.model_validate(data, context={"base_dir": base_dir or Path.cwd()})
    except ValidationError as err:
        raise ScenarioError(validation_message(err, source, lines or {})) from None


def read_yaml_file(path: Path, label: str) -> tuple[Any, dict[tuple[int | str, ...], int]]:
    """Parse a YAML file: (data, field path -> line). Errors name `label` (the file, or what it is for) and the
    line, never a traceback."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{label}: no such file") from None
    except OSError as err:
        raise ScenarioError(f"{label}: cannot read ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ScenarioError(f"{label}{where}: invalid YAML: {problem}") from None
    return data, yaml_lines(text)


def read_scenario_dict(path: Path) -> tuple[dict[str, Any], dict[tuple[int | str, ...], int]]:
    if not path.exists():
        raise ScenarioError(f"{path}: no such scenario file")
    data, lines = read_yaml_file(path, str(path))
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario must be a YAML mapping at the top level")
    return data, lines


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Load and validate a scenario file, applying `--set path=value` overrides first."""
    p = Path(path)
    data, lines = read_scenario_dict(p)
    data = apply_overrides(data, parse_overrides(overrides))
    return scenario_from_dict(data, source=str(p), lines=lines, base_dir=p.resolve().parent)
