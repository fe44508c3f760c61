"""One explicit registry of policy factories keyed by (kind, name), each with its own pydantic params model.

Policies are registered in exactly one place (`policies.builtin`), never by import side effects, so the set of
available names is easy to read and a duplicate name is caught instead of silently replacing another policy.
This module knows no policy: every policy module imports it, so the filled registry is `policies.builtin.REGISTRY`
(builtin imports the `*/registration.py` modules, which import the policies, which import this one: one way).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from policies.errors import PolicyConfigError

Factory = Callable[[Any, np.random.Generator], object]


def _problem(error: Any, model: type[BaseModel]) -> str:
    """pydantic's message; for an unknown top-level key, the closest parameter name (or the known ones)."""
    loc = error["loc"]
    if error["type"] != "extra_forbidden" or len(loc) != 1:
        return str(error["msg"])
    known = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[0]), known, n=1, cutoff=0.6)
    return f"unknown parameter; did you mean {close[0]!r}?" if close else f"unknown parameter; known: {known}"


class PolicyParams(BaseModel):
    """Base of every policy's parameter model: unknown keys are errors, validated values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(PolicyParams):
    """For policies without parameters (any key given is an error)."""


class _Entry:
    __slots__ = ("factory", "params_model")

    def __init__(self, factory: Factory, params_model: type[BaseModel]) -> None:
        self.factory = factory
        self.params_model = params_model


class Registry:
    """Maps (kind, name) to a factory `factory(params: ParamsModel, rng) -> policy` and its params model."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, _Entry]] = {}

    def register(self, kind: str, name: str, factory: Factory, params_model: type[BaseModel]) -> None:
        """Add a policy; a second registration of the same (kind, name) is an error, never an override."""
        if not kind or not name:
            raise PolicyConfigError("a policy needs a non-empty kind and name")
        if not (isinstance(params_model, type) and issubclass(params_model, BaseModel)):
            raise PolicyConfigError(f"{kind} '{name}': params_model must be a pydantic BaseModel subclass")
        by_name = self._entries.setdefault(kind, {})
        if name in by_name:
            raise PolicyConfigError(f"duplicate {kind} '{name}': already registered")
        by_name[name] = _Entry(factory, params_model)

    def kinds(self) -> list[str]:
        return sorted(self._entries)

    def names(self, kind: str) -> list[str]:
        """The registered names of one kind, sorted (an unknown kind has none)."""
        return sorted(self._entries.get(kind, {}))

    def kinds_of(self, name: str) -> list[str]:
        """Every kind under which `name` is registered (resolves a plugin `type` in a router config)."""
        return sorted(kind for kind, by_name in self._entries.items() if name in by_name)

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, name = key
        return name in self._entries.get(kind, {})

    def _entry(self, kind: str, name: str) -> _Entry:
        entry = self._entries.get(kind, {}).get(name)
        if entry is None:
            known = ", ".join(self.names(kind)) or "(none)"
            raise PolicyConfigError(f"unknown {kind} '{name}'; known {kind}s: {known}")
        return entry

    def params_model(self, kind: str, name: str) -> type[BaseModel]:
        return self._entry(kind, name).params_model

    def validate(self, kind: str, name: str, params: dict[str, Any] | BaseModel | None = None) -> BaseModel:
        """Validate raw parameters with the policy's own model; errors name the policy and the field."""
        entry = self._entry(kind, name)
        if isinstance(params, entry.params_model):
            return params
        if isinstance(params, BaseModel):
            params = params.model_dump()
        try:
            return entry.params_model.model_validate(params or {})
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(params)'}: {_problem(e, entry.params_model)}"
                for e in err.errors()
            )
            raise PolicyConfigError(f"invalid params for {kind} '{name}': {problems}") from None

    def build(
        self,
        kind: str,
        name: str,
        params: dict[str, Any] | BaseModel | None,
        rng: np.random.Generator,
    ) -> object:
        """Validate `params` and construct the policy with the injected random generator."""
        validated = self.validate(kind, name, params)
        return self._entry(kind, name).factory(validated, rng)
