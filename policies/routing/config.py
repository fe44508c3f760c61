"""The scenario's `gateway.router` section (llm-d EPP-config style) and `build_router` making the Router.

Either a named profile (`profile: llm-d-default`), the long form: plugins (name, type, params), filters and
scorers referring to plugins by name (scorer weight defaults to 1), one picker; or llm-d's own
EndpointPickerConfig pasted as users write it (apiVersion, kind, plugins, schedulingProfiles), which
`policies.routing.epp_config` turns into the long form. References, plugin kinds and each plugin's parameters are
checked when the configuration is validated, so mistakes surface at load time.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from policies.errors import PolicyConfigError
from policies.registry import Registry
from policies.routing.epp_config import is_epp_config, translate_epp
from policies.routing.framework import SchedulerProfile
from policies.routing.profiles import profile_names, profile_spec

ROUTING_KINDS = ("filter", "scorer", "picker")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginSpec(_Frozen):
    """One plugin instance: `name` is how filters/scorers/picker refer to it, `type` as llm-d spells it."""

    name: Annotated[str, Field(min_length=1)]
    type: Annotated[str, Field(min_length=1)]
    params: dict[str, Any] = Field(default_factory=dict)


class ScorerRef(_Frozen):
    plugin: Annotated[str, Field(min_length=1)]
    weight: Annotated[float, Field(ge=0.0)] = 1.0


class RouterConfig(_Frozen):
    """`profile: NAME`, or the long form `plugins` + `filters` + `scorers` + `picker` (exactly one)."""

    profile: str | None = None
    plugins: tuple[PluginSpec, ...] | None = None
    filters: tuple[str, ...] | None = None
    scorers: tuple[ScorerRef, ...] | None = None
    picker: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_epp_config(cls, v: Any) -> Any:
        # llm-d's EndpointPickerConfig as written for the EPP; `file:` is read by the scenario loader.
        if isinstance(v, dict) and set(v) == {"file"}:
            raise ValueError(
                "`router: {file: ...}` is read by the scenario loader (relative to the scenario file); "
                "here pass the EndpointPickerConfig's contents"
            )
        if is_epp_config(v):
            return translate_epp(v).router
        return v

    @field_validator("scorers", mode="before")
    @classmethod
    def _scorer_shorthand(cls, v: Any) -> Any:
        # `scorers: [q, kv]` is accepted as weight 1 each.
        if isinstance(v, list | tuple):
            return [{"plugin": s} if isinstance(s, str) else s for s in v]
        return v

    @model_validator(mode="after")
    def _check(self) -> RouterConfig:
        long_form = (self.plugins, self.filters, self.scorers, self.picker)
        if self.profile is not None:
            if any(x is not None for x in long_form):
                raise ValueError("give either `profile` or the long form (plugins, filters, scorers, picker), not both")
            if self.profile not in profile_names():
                known = ", ".join(profile_names())
                raise ValueError(f"unknown router profile '{self.profile}'; known profiles: {known}")
            return self
        if self.plugins is None or self.picker is None:
            raise ValueError("give `profile`, or the long form with at least `plugins` and `picker`")
        from policies.builtin import (
            REGISTRY,
        )  # the registry imports the plugins; config stays importable first

        check_references(self, REGISTRY)
        return self

    def expanded(self) -> RouterConfig:
        """The long form (a named profile spelled out); a long-form config returns itself."""
        if self.profile is None:
            return self
        return RouterConfig.model_validate(profile_spec(self.profile))


def _kind_of(spec: PluginSpec, registry: Registry) -> str:
    kinds = [k for k in registry.kinds_of(spec.type) if k in ROUTING_KINDS]
    if not kinds:
        known = ", ".join(n for k in ROUTING_KINDS for n in registry.names(k))
        raise PolicyConfigError(f"plugin '{spec.name}': unknown type '{spec.type}'; known types: {known}")
    if len(kinds) > 1:
        raise PolicyConfigError(f"plugin '{spec.name}': type '{spec.type}' is ambiguous ({', '.join(kinds)})")
    return kinds[0]


def check_references(config: RouterConfig, registry: Registry) -> dict[str, str]:
    """Check a long-form config against a registry; returns plugin name -> kind. Raises PolicyConfigError."""
    plugins = config.plugins or ()
    kinds: dict[str, str] = {}
    for spec in plugins:
        if spec.name in kinds:
            raise PolicyConfigError(f"plugin name '{spec.name}' is defined twice")
        kind = _kind_of(spec, registry)
        try:
            registry.validate(kind, spec.type, spec.params)
        except PolicyConfigError as err:
            raise PolicyConfigError(f"plugin '{spec.name}': {err}") from None
        kinds[spec.name] = kind
    defined = ", ".join(kinds) or "(none)"

    def need(ref: str, kind: str, where: str) -> None:
        if ref not in kinds:
            raise PolicyConfigError(f"unknown plugin '{ref}' in {where}; defined plugins: {defined}")
        if kinds[ref] != kind:
            raise PolicyConfigError(f"plugin '{ref}' in {where} is a {kinds[ref]}, not a {kind}")

    for ref in config.filters or ():
        need(ref, "filter", "filters")
    seen: set[str] = set()
    for sref in config.scorers or ():
        need(sref.plugin, "scorer", "scorers")
        if sref.plugin in seen:
            raise PolicyConfigError(f"scorer '{sref.plugin}' is listed twice in scorers")
        seen.add(sref.plugin)
    if config.picker is None:
        raise PolicyConfigError("the long form needs a `picker`")
    need(config.picker, "picker", "picker")
    return kinds


def build_router(
    config: RouterConfig | dict[str, Any],
    rng: np.random.Generator,
    registry: Registry | None = None,
) -> SchedulerProfile:
    """Build the scheduler profile a config describes; every plugin gets the same injected Generator.

    Every random draw (the pickers', the prefix-cache affinity filter's exploration) comes from this Generator,
    so the picks are a function of the seed and the request history alone.
    """
    if registry is None:
        from policies.builtin import REGISTRY

        registry = REGISTRY
    cfg = config if isinstance(config, RouterConfig) else RouterConfig.model_validate(config)
    cfg = cfg.expanded()
    kinds = check_references(cfg, registry)
    specs = {p.name: p for p in cfg.plugins or ()}
    built: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in built:
            spec = specs[name]
            plugin = registry.build(kinds[name], spec.type, spec.params, rng)
            if hasattr(plugin, "name"):
                plugin.name = name
            built[name] = plugin
        return built[name]

    filters = [get(name) for name in cfg.filters or ()]
    scorers = [(get(s.plugin), s.weight) for s in cfg.scorers or ()]
    assert cfg.picker is not None  # check_references guarantees it
    return SchedulerProfile(filters, scorers, get(cfg.picker))
