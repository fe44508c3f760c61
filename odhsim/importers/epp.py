"""`gateway.router: {file: epp.yaml}`: read an llm-d EndpointPickerConfig file named relative to the scenario file.

The mapping itself is pure (policies.routing.epp_config); this module only finds and reads the file, and names the
file and line in its errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from policies.routing.epp_config import EppConfigError, is_epp_config, translate_epp


def _line_of(message: str, lines: Mapping[tuple[int | str, ...], int]) -> int | None:
    """The line of the deepest field path an EPP error message starts with (`plugins[2].parameters.x: ...`)."""
    from odhsim.errors import ScenarioError
    from odhsim.scenario.yaml_io import parse_path  # the scenario loader's own path syntax

    try:
        path = tuple(parse_path(message.split(": ", 1)[0]))
    except ScenarioError:  # not a path: the message has no field prefix
        return None
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def resolve_router_file(value: Any, base_dir: Path) -> Any:
    """`{file: PATH}` -> the long-form router config read from PATH (relative to `base_dir`); other values as is.

    Raises ValueError naming the file (and the line, for mistakes inside it), so the scenario loader reports it at
    `gateway.router`.
    """
    if not (isinstance(value, Mapping) and "file" in value):
        return value
    if set(value) != {"file"}:
        others = ", ".join(sorted(str(k) for k in value if k != "file"))
        raise ValueError(f"`file` stands alone: the router comes from the file; remove {others}")
    from odhsim.errors import ScenarioError
    from odhsim.scenario.yaml_io import read_yaml_file

    path = Path(str(value["file"]))
    if not path.is_absolute():
        path = base_dir / path
    try:
        data, lines = read_yaml_file(path, f"router file {path}")
    except ScenarioError as err:
        raise ValueError(str(err)) from None
    if not is_epp_config(data):
        raise ValueError(f"router file {path}: expected an EndpointPickerConfig (apiVersion, kind, plugins, ...)")
    try:
        return translate_epp(data).router
    except EppConfigError as err:
        line = _line_of(str(err), lines)
        where = f"{path} line {line}" if line else str(path)
        raise ValueError(f"router file {where}: {err}") from None
