"""Reading YAML with line numbers: the parser that refuses duplicate keys, field path -> line maps, and the
`models[0].engine.block_size` path syntax, for the scenario loader and every file it reads for a scenario (an llm-d
router file). It sits below the scenario model, so the importers that model validation calls can use it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from odhsim.errors import ScenarioError

if TYPE_CHECKING:
    from odhsim.scenario.fieldpaths import Loc

_PATH_TOKEN = re.compile(r"([A-Za-z0-9_\-]+)|\[(\d+)\]")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last one
    silently, so a typo'd copy of a section would win without a word). Merge keys (`<<`) may still override."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {first})", key_node.start_mark
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str) -> Any:
    """yaml.safe_load that refuses duplicate keys in a mapping."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def yaml_lines(text: str) -> dict[Loc, int]:
    """Map each field path in a YAML document to its 1-based line, so errors can point at the line."""
    lines: dict[Loc, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: Loc) -> None:
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


def read_yaml_file(path: Path, label: str) -> tuple[Any, dict[Loc, int]]:
    """Parse a YAML file: (data, field path -> line). Errors name `label` (the file, or what it is for) and the
    line, never a traceback."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{label}: no such file") from None
    except OSError as err:
        raise ScenarioError(f"{label}: cannot read ({err.strerror})") from None
    try:
        data = safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ScenarioError(f"{label}{where}: invalid YAML: {problem}") from None
    return data, yaml_lines(text)
