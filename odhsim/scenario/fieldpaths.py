"""Field paths against the scenario's pydantic models: which fields a section has, and locs as the YAML reads.

Why: pydantic reports an unknown key without the model it was checked against, and puts a discriminated union's
tag into the path (`workload.sources[0].gamma.rate`); walking the model types along the path recovers both, so
an error can say "did you mean 'min_replicas'?" and name the line of `workload.sources[0].rate`.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

Loc = tuple[int | str, ...]


def _unwrap(tp: Any) -> list[Any]:
    """Annotated[X, ...] -> [X]; X | Y | None -> [X, Y, None]."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _unwrap(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [u for a in get_args(tp) for u in _unwrap(a)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _step(tp: Any, part: int | str) -> list[Any]:
    """The types one path part below `tp` (empty when the part does not apply to it)."""
    origin, args = get_origin(tp), get_args(tp)
    if isinstance(part, int):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return [args[part]] if part < len(args) else []
        if origin in (list, tuple, Sequence) and args:
            return [args[0]]
        return []
    if _is_model(tp):
        field = tp.model_fields.get(part)
        return [field.annotation] if field is not None else []
    if origin in (dict, Mapping) and len(args) == 2:
        return [args[1]]
    return []


def _is_tag(model: Any, part: str) -> bool:
    """Whether `part` is the tag pydantic put in the path for union member `model` (its Literal or its name)."""
    if not _is_model(model):
        return False
    if model.__name__ == part:
        return True
    return any(
        get_origin(f.annotation) is Literal and part in get_args(f.annotation) for f in model.model_fields.values()
    )


def _walk(root: type[BaseModel], loc: Loc) -> tuple[Loc, list[Any]]:
    """(loc without union tags, the candidate types at its end)."""
    kinds: list[Any] = [root]
    shown: list[int | str] = []
    for part in loc:
        here = [u for k in kinds for u in _unwrap(k)]
        below = [t for k in here for t in _step(k, part)]
        if below:
            kinds = below
            shown.append(part)
            continue
        tagged = [k for k in here if isinstance(part, str) and _is_tag(k, part)]
        if tagged:
            kinds = tagged
            continue
        kinds = []
        shown.append(part)
    return tuple(shown), [u for k in kinds for u in _unwrap(k)]


@functools.cache
def _roots() -> dict[str, type[BaseModel]]:
    """Every model reachable from Scenario, by class name (a ValidationError's `title`)."""
    from odhsim.scenario.model import Scenario

    found: dict[str, type[BaseModel]] = {}
    todo: list[Any] = [Scenario]
    while todo:
        tp = todo.pop()
        for u in _unwrap(tp):
            if _is_model(u):
                if u.__name__ in found:
                    continue
                found[u.__name__] = u
                todo.extend(f.annotation for f in u.model_fields.values())
            else:
                todo.extend(get_args(u))
    return found


def yaml_loc(title: str, loc: Loc) -> Loc:
    """`loc` of an error raised validating model `title`, with union tags dropped (as the YAML spells it)."""
    root = _roots().get(title)
    return _walk(root, loc)[0] if root is not None else loc


def field_names(title: str, loc: Loc) -> list[str]:
    """The field names of the section at `loc` (several union members: all their fields), in declared order."""
    root = _roots().get(title)
    if root is None:
        return []
    names: dict[str, None] = {}
    for k in _walk(root, loc)[1]:
        if _is_model(k):
            names.update(dict.fromkeys(k.model_fields))
    return list(names)
