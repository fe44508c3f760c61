"""Variant specs (`NAME=PROFILE` or `NAME=gateway.yaml`) and the per-variant Scenario built from the base file.

A variant changes only the scenario's `gateway` section, so everything else (cluster, models, workload, seed) is
shared and the comparison isolates the routing/queueing policy.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from odhsim.errors import ScenarioError
from odhsim.scenario.load import (
    apply_overrides,
    parse_overrides,
    read_scenario_dict,
    read_yaml_file,
    scenario_from_dict,
    validation_message,
)
from odhsim.scenario.model import GatewayConfig, Scenario
from policies.routing.profiles import profile_names

# Variant names become folder names under the output directory, so keep them to a safe path component.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")
_YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Variant:
    """One arm of a comparison: `gateway_overrides` replaces the matching keys of the scenario's gateway section."""

    name: str
    gateway_overrides: dict[str, Any]
    source: str = field(default="", compare=False)
    """What the spec pointed at (a profile name or a file path), for messages."""


def _looks_like_path(value: str) -> bool:
    return value.lower().endswith(_YAML_SUFFIXES) or "/" in value or "\\" in value or Path(value).is_file()


def _gateway_from_file(name: str, path: Path) -> dict[str, Any]:
    """Read a YAML file holding `{gateway: {...}}` or the gateway mapping itself, validated on its own."""
    where = f"variant {name!r}: {path}"
    data, lines = read_yaml_file(path, where)
    if not isinstance(data, dict) or not data:
        raise ScenarioError(f"{where}: expected a mapping: a gateway section, or `gateway:` holding one")
    if "gateway" in data:
        others = sorted(str(k) for k in data if k != "gateway")
        if others:
            raise ScenarioError(
                f"{where}: a variant file may only change the gateway section; remove {', '.join(others)}"
            )
        section = data["gateway"]
        lines = {k[1:]: v for k, v in lines.items() if k[:1] == ("gateway",)}
        if not isinstance(section, dict) or not section:
            raise ScenarioError(f"{where}: `gateway` must be a non-empty mapping")
    else:
        section = data
    try:
        GatewayConfig.model_validate(section)
    except ValidationError as err:
        detail = validation_message(err, str(path), lines)
        raise ScenarioError(f"variant {name!r}: invalid gateway section in {path}:\n{detail}") from None
    return section


def parse_variant(spec: str) -> Variant:
    """`NAME=PROFILE` (a registered routing profile) or `NAME=FILE` (YAML with a gateway section) -> Variant."""
    if "=" not in spec:
        raise ScenarioError(f"variant {spec!r}: expected NAME=PROFILE or NAME=FILE.yaml, for example rr=round-robin")
    name, value = (s.strip() for s in spec.split("=", 1))
    if not name:
        raise ScenarioError(f"variant {spec!r}: the name before '=' is empty")
    if not _NAME.fullmatch(name):
        raise ScenarioError(
            f"variant {name!r}: names may use letters, digits, '.', '_' and '-' (they become folder names)"
        )
    if not value:
        raise ScenarioError(f"variant {name!r}: nothing after '='; give a routing profile or a YAML file")
    if value in profile_names() and not _looks_like_path(value):
        return Variant(name, {"router": {"profile": value}}, source=value)
    if _looks_like_path(value):
        return Variant(name, _gateway_from_file(name, Path(value)), source=value)
    raise ScenarioError(
        f"variant {name!r}: unknown routing profile {value!r}; known profiles: {', '.join(profile_names())} "
        "(or give a path to a YAML file with a gateway section)"
    )


def parse_variants(specs: Sequence[str]) -> list[Variant]:
    """Parse several specs, in order (the first is the baseline); names must be unique."""
    if not specs:
        raise ScenarioError("give at least one variant (NAME=PROFILE or NAME=FILE.yaml); the first is the baseline")
    variants: list[Variant] = []
    for spec in specs:
        v = parse_variant(spec)
        if any(v.name == seen.name for seen in variants):
            raise ScenarioError(f"variant {v.name!r} is given twice; variant names must be unique")
        variants.append(v)
    return variants


def variant_scenario(base_path: str | Path, overrides: list[str] | None, variant: Variant) -> Scenario:
    """The base scenario file with `--set` overrides applied, then the variant's gateway keys merged over it.

    Built from the raw dict (not a validated Scenario) so a validation error can name the variant. The scenario
    is renamed `<base>[<variant>]` so run ids and the tables' `scenario` column tell the variants apart; the
    random streams depend only on the seed and component names, so the rename keeps common random numbers.
    """
    path = Path(base_path)
    data, lines = read_scenario_dict(path)
    data = apply_overrides(copy.deepcopy(data), parse_overrides(overrides))
    gateway = data.get("gateway") or {}
    if not isinstance(gateway, dict):
        raise ScenarioError(f"{path}: gateway must be a mapping")
    data["gateway"] = {**gateway, **copy.deepcopy(variant.gateway_overrides)}
    if isinstance(data.get("name"), str):
        data["name"] = f"{data['name']}[{variant.name}]"
    try:
        return scenario_from_dict(data, source=str(path), lines=lines, base_dir=path.resolve().parent)
    except ScenarioError as err:
        raise ScenarioError(f"variant {variant.name!r}: {err}") from None
