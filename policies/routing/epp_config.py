"""llm-d's EndpointPickerConfig, as users write it for the EPP, turned into odhsim's long-form router config.

Accepted: `apiVersion` (inference.networking.x-k8s.io/v1alpha1 or llm-d.ai/v1alpha1), `kind: EndpointPickerConfig`,
`plugins` ({type, name, parameters}; name defaults to type) and `schedulingProfiles` ({name, plugins: [{pluginRef,
weight}]}). Defaults follow llm-d's config loader (pkg/epp/config/loader/defaults.go at 520af47): a scorer without
weight weighs 1; a profile without picker gets the first picker declared, else a max-score-picker; no profile at
all means one profile holding every filter, scorer and picker.

Every upstream plugin type is either mapped onto a registered odhsim plugin (parameters renamed from upstream's
camelCase), dropped because it does nothing in odhsim (each with the reason in `NO_OP_TYPES`), or refused with the
reason (`REFUSED_TYPES`); anything else is an error listing the known types. Pure: no file I/O here (a
`router: {file: ...}` is read by the scenario loader).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policies.errors import PolicyConfigError
from policies.registry import Registry
from policies.routing.prefix_index import DEFAULT_LRU_CAPACITY, LLMD_BLOCK_TOKENS
from policies.routing.prefix_scorer import DEFAULT_MAX_PREFIX_BLOCKS

EPP_KIND = "EndpointPickerConfig"
EPP_API_VERSIONS = ("inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1")
ROUTING_KINDS = ("filter", "scorer", "picker")

# Upstream type -> odhsim types tried in order (the first one registered is used).
MAPPED_TYPES: dict[str, tuple[str, ...]] = {
    "queue-scorer": ("queue-scorer",),
    "kv-cache-utilization-scorer": ("kv-cache-utilization-scorer",),
    "kv-cache-scorer": ("kv-cache-utilization-scorer",),  # llm-d's older name for the same scorer
    "prefix-cache-scorer": ("prefix-cache-scorer",),
    "load-aware-scorer": ("load-aware-scorer",),
    "session-affinity-scorer": ("session-affinity-scorer",),
    "active-request-scorer": ("active-request-scorer",),
    "token-load-scorer": ("token-load-scorer",),
    "lora-affinity-scorer": ("lora-affinity-scorer",),
    "running-requests-size-scorer": ("running-requests-size-scorer", "running-requests-scorer"),
    "max-score-picker": ("max-score-picker",),
    "max-score": ("max-score-picker",),  # older name (deploy/config/epp-kvcache-load-config.yaml)
    "random-picker": ("random-picker",),
    "weighted-random-picker": ("weighted-random-picker",),
    "prefix-cache-affinity-filter": ("prefix-cache-affinity-filter",),
}

_NO_PD = "odhsim's replicas serve both prefill and decode"
NO_OP_TYPES: dict[str, str] = {
    "decode-filter": f"keeps endpoints labelled decode/both or unlabelled; {_NO_PD}, so it keeps every endpoint",
    "single-profile-handler": "odhsim runs exactly one scheduling profile",
    "single-profile": "odhsim runs exactly one scheduling profile",
    "metrics-data-source": "odhsim's gateway scrapes every replica itself (gateway.scrape_interval_s)",
    "core-metrics-extractor": "odhsim's gateway scrapes every replica itself (gateway.scrape_interval_s)",
    "approx-prefix-cache-producer": "its parameters configure the prefix-cache-scorer, which keeps the index in odhsim",
    "inflight-load-producer": "odhsim's in-flight scorers count dispatches themselves",
    "openai-parser": "odhsim's requests arrive parsed (token counts and prefix blocks)",
    "tokenizer": "odhsim's requests arrive tokenized (token counts and prefix blocks)",
    "token-producer": "odhsim's requests arrive tokenized (token counts and prefix blocks)",
}

_PD_REASON = "prefill/decode disaggregation, which odhsim's engine does not model (" + _NO_PD + ")"
_PRECISE = (
    "scores from the model servers' KV-cache events (ZMQ), which odhsim's router does not receive; "
    "prefix-cache-scorer (the router's approximate index) is the odhsim equivalent"
)
_PREDICTOR = "needs llm-d's latency-predictor sidecar, which odhsim does not model"
REFUSED_TYPES: dict[str, str] = {
    "precise-prefix-cache-scorer": _PRECISE,
    "kvcache-aware-scorer": _PRECISE,
    "endpoint-notification-source": "feeds the precise-prefix-cache-scorer's KV-event subscribers: " + _PRECISE,
    **{
        t: _PD_REASON
        for t in (
            "prefill-filter",
            "encode-filter",
            "pd-profile-handler",
            "disagg-profile-handler",
            "disagg-headers-handler",
            "prefill-header-handler",
            "prefix-based-pd-decider",
            "always-disagg-pd-decider",
            "always-disagg-multimodal-decider",
        )
    },
    "data-parallel-profile-handler": "data-parallel ranks inside one server, which odhsim's engine does not model",
    "latency-scorer": _PREDICTOR,
    "predicted-latency-producer": _PREDICTOR,
    "slo-headroom-tier-filter": _PREDICTOR,
}

# Upstream parameter -> (odhsim field candidates, factor applied to the value). Others: camelCase -> snake_case.
PARAM_RENAMES: dict[str, tuple[tuple[str, ...], float]] = {
    "lruCapacityPerServer": (("lru_capacity_per_endpoint", "lru_capacity_per_server"), 1.0),
    "maxTTFTPenaltyMs": (("max_ttft_penalty_s",), 1e-3),
    "requestTimeout": (("request_timeout_s",), 1.0),
}
# Upstream values that are exactly what odhsim does when odhsim has no such parameter: accepted and dropped.
NEUTRAL_VALUES: dict[str, object] = {"autoTune": False, "maxNumOfEndpoints": 1}
# Parameters upstream itself ignores (deprecated): dropped when odhsim has no counterpart.
UPSTREAM_IGNORED = {"requestTimeout"}
_WHY_NOT: dict[str, str] = {
    "blockSize": "odhsim's prefix index works on the workload's prefix blocks (trace hash_ids); a block size only "
    "rescales the prefix-cache-scorer's limits, and the engine's KV block size is models[].engine.block_size",
    "autoTune": "odhsim sizes the index from lruCapacityPerServer; it does not read the server's cache size",
}
_WHY_NOT["blockSizeTokens"] = _WHY_NOT["hashBlockSize"] = _WHY_NOT["blockSize"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


class EppConfigError(PolicyConfigError):
    """A mistake in an EndpointPickerConfig; the message starts with the field's path in that config."""


@dataclass(frozen=True, slots=True)
class EppTranslation:
    """The odhsim long form (`router`: plugins/filters/scorers/picker) and, per dropped plugin, why (`dropped`)."""

    router: dict[str, Any]
    dropped: tuple[tuple[str, str], ...]


def is_epp_config(data: object) -> bool:
    """An EndpointPickerConfig (as opposed to odhsim's own router forms): it has kind, apiVersion or profiles."""
    return isinstance(data, Mapping) and any(k in data for k in ("kind", "apiVersion", "schedulingProfiles"))


def _err(loc: str, msg: str) -> EppConfigError:
    return EppConfigError(f"{loc}: {msg}" if loc else msg)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def go_duration_s(value: object, loc: str) -> float:
    """A Go duration ("1m0s", "90s", "250ms") or a number of seconds, in seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise _err(loc, f"{value!r} is not a duration (for example 90s, 2m, 1m30s)")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def known_types() -> list[str]:
    return sorted({*MAPPED_TYPES, *NO_OP_TYPES, *REFUSED_TYPES})


def _resolve_type(upstream: str, loc: str, registry: Registry) -> tuple[str, str]:
    """(odhsim type, kind) of a mapped upstream type."""
    for candidate in MAPPED_TYPES[upstream]:
        kinds = [k for k in registry.kinds_of(candidate) if k in ROUTING_KINDS]
        if kinds:
            return candidate, kinds[0]
    raise _err(loc, f"plugin type {upstream!r} maps to {MAPPED_TYPES[upstream][0]!r}, which is not registered")


def _known_params(model_fields: Mapping[str, Any]) -> str:
    reverse = {f: up for up, (fields, _) in PARAM_RENAMES.items() for f in fields}
    names = sorted(reverse.get(f, _camel(f)) for f in model_fields)
    return ", ".join(names) or "(none)"


# Prefix-index block sizes as upstream names them, with tokens per unit: llm-d's blockSizeTokens counts tokens;
# hashBlockSize (older llm-d / GIE) and blockSize (GIE) count prompt characters, which GIE takes as 4 per token.
BLOCK_SIZE_KEYS: dict[str, float] = {"blockSizeTokens": 1.0, "hashBlockSize": 0.25, "blockSize": 0.25}


def _rescale_block_size(raw: Mapping[str, Any], fields: Mapping[str, Any], loc: str) -> dict[str, Any]:
    """Fold an upstream block size into the prefix scorer's token-sized limits, so a config as deployed (nearly all
    of upstream's carry hashBlockSize) keeps its index capacity and match limit in tokens: lruCapacityPerServer
    and maxPrefixBlocksToMatch count blocks of that size, odhsim's fields count llm-d's 16-token blocks or tokens."""
    given = [k for k in BLOCK_SIZE_KEYS if k in raw]
    if not given or not {"lru_capacity_per_endpoint", "max_prefix_tokens_to_match"} <= set(fields):
        return dict(raw)
    if len(given) > 1:
        raise _err(f"{loc}.{given[1]}", f"give one block size, not {' and '.join(given)}")
    key = given[0]
    size = raw[key]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise _err(f"{loc}.{key}", f"must be a positive integer, got {size!r}")
    tokens = size * BLOCK_SIZE_KEYS[key]  # tokens per upstream block
    out = {k: v for k, v in raw.items() if k != key}
    lru = out.pop("lruCapacityPerServer", DEFAULT_LRU_CAPACITY)
    if not isinstance(lru, bool) and isinstance(lru, int | float):
        out["lruCapacityPerServer"] = max(1, round(lru * tokens / LLMD_BLOCK_TOKENS))
    else:
        out["lruCapacityPerServer"] = lru  # the params model reports the bad value
    blocks = out.pop("maxPrefixBlocksToMatch", DEFAULT_MAX_PREFIX_BLOCKS)
    if "maxPrefixTokensToMatch" not in out:
        if not isinstance(blocks, bool) and isinstance(blocks, int | float):
            out["maxPrefixTokensToMatch"] = max(1, round(blocks * tokens))
        else:
            out["maxPrefixBlocksToMatch"] = blocks
    return out


def _map_params(raw: object, odh_type: str, kind: str, loc: str, registry: Registry) -> dict[str, Any]:
    """Upstream `parameters` -> odhsim params, checked against the odhsim plugin's own params model."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _err(loc, f"parameters must be a mapping, got {type(raw).__name__}")
    fields = registry.params_model(kind, odh_type).model_fields
    raw = _rescale_block_size(raw, fields, loc)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{loc}.{key}"
        key = str(key)
        targets, factor = PARAM_RENAMES.get(key, ((_snake(key),), 1.0))
        target = next((t for t in targets if t in fields), None)
        if target is None:
            if key in NEUTRAL_VALUES and value == NEUTRAL_VALUES[key]:
                continue
            if key in UPSTREAM_IGNORED:
                continue
            why = _WHY_NOT.get(key, "no odhsim counterpart")
            raise _err(where, f"unknown parameter of {odh_type} ({why}); known: {_known_params(fields)}")
        if key == "requestTimeout":
            value = go_duration_s(value, where)
        elif factor != 1.0 and isinstance(value, int | float) and not isinstance(value, bool):
            value = value * factor
        out[target] = value
    try:
        registry.validate(kind, odh_type, out)
    except PolicyConfigError as err:
        raise _err(loc, str(err)) from None
    return out


def _as_list(data: Mapping[str, Any], key: str, loc: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _err(f"{loc}{key}", f"must be a list, got {type(value).__name__}")
    return value


def translate_epp(data: Mapping[str, Any], registry: Registry | None = None) -> EppTranslation:
    """Turn an EndpointPickerConfig mapping into odhsim's long-form router config (raises EppConfigError)."""
    if registry is None:
        from policies.builtin import REGISTRY

        registry = REGISTRY
    api = data.get("apiVersion")
    if api is not None and api not in EPP_API_VERSIONS:
        raise _err(
            "apiVersion", f"{api!r} is not an EndpointPickerConfig version; known: {', '.join(EPP_API_VERSIONS)}"
        )
    kind = data.get("kind")
    if kind is not None and kind != EPP_KIND:
        raise _err("kind", f"{kind!r}: expected {EPP_KIND}")
    known_top = {"apiVersion", "kind", "plugins", "schedulingProfiles", "featureGates", "dataLayer", "parser"}
    for key in data:
        if key not in known_top:
            why = {
                "flowControl": "set odhsim's gateway.flow_control instead",
                "saturationDetector": "set odhsim's gateway.flow_control saturation detector instead",
            }.get(str(key), f"known: {', '.join(sorted(known_top))}")
            raise _err(str(key), f"not supported in gateway.router ({why})")

    plugins: list[dict[str, Any]] = []  # odhsim PluginSpec dicts, in declared order
    kinds: dict[str, str] = {}
    dropped: list[tuple[str, str]] = []
    no_ops: set[str] = set()
    producer_params: dict[str, Any] = {}
    producer_loc = ""
    declared: set[str] = set()
    for i, spec in enumerate(_as_list(data, "plugins", "")):
        loc = f"plugins[{i}]"
        if not isinstance(spec, Mapping):
            raise _err(loc, "each plugin must be a mapping with `type` (and optional `name`, `parameters`)")
        extra = sorted(set(spec) - {"type", "name", "parameters"})
        if extra:
            raise _err(f"{loc}.{extra[0]}", "unknown field; a plugin has type, name and parameters")
        up_type = spec.get("type")
        if not isinstance(up_type, str) or not up_type:
            raise _err(f"{loc}.type", "required (a plugin type, for example queue-scorer)")
        name = spec.get("name") or up_type
        if name in declared:
            raise _err(f"{loc}.name", f"plugin name {name!r} is defined twice")
        declared.add(name)
        if up_type in REFUSED_TYPES:
            raise _err(f"{loc}.type", f"{up_type!r} is not supported: {REFUSED_TYPES[up_type]}")
        if up_type in NO_OP_TYPES:
            if up_type == "approx-prefix-cache-producer" and spec.get("parameters"):
                producer_params = dict(spec["parameters"])
                producer_loc = f"{loc}.parameters"
            elif spec.get("parameters") and up_type not in ("metrics-data-source", "core-metrics-extractor"):
                raise _err(f"{loc}.parameters", f"{up_type} takes no parameters in odhsim ({NO_OP_TYPES[up_type]})")
            no_ops.add(name)
            dropped.append((name, NO_OP_TYPES[up_type]))
            continue
        if up_type not in MAPPED_TYPES:
            raise _err(f"{loc}.type", f"unknown plugin type {up_type!r}; known: {', '.join(known_types())}")
        odh_type, kind_ = _resolve_type(up_type, f"{loc}.type", registry)
        params = _map_params(spec.get("parameters"), odh_type, kind_, f"{loc}.parameters", registry)
        plugins.append({"name": name, "type": odh_type, "params": params})
        kinds[name] = kind_
    if producer_params:  # upstream >= the producer split: the index parameters live on the producer
        for p in plugins:
            if p["type"] == "prefix-cache-scorer":
                p["params"] = {
                    **_map_params(producer_params, p["type"], "scorer", producer_loc, registry),
                    **p["params"],
                }

    profiles = _as_list(data, "schedulingProfiles", "")
    if len(profiles) > 1:
        names = ", ".join(str(p.get("name")) for p in profiles if isinstance(p, Mapping))
        raise _err(
            "schedulingProfiles",
            f"{len(profiles)} profiles ({names}) need a profile handler choosing between them (pd-profile-handler, "
            f"disagg-profile-handler): {_PD_REASON}; give one profile",
        )
    if profiles:
        prof = profiles[0]
        if not isinstance(prof, Mapping):
            raise _err("schedulingProfiles[0]", "a profile is a mapping with `name` and `plugins`")
        extra = sorted(set(prof) - {"name", "plugins"})
        if extra:
            raise _err(f"schedulingProfiles[0].{extra[0]}", "unknown field; a profile has name and plugins")
        refs = _as_list(prof, "plugins", "schedulingProfiles[0].")
    else:  # upstream: one default profile with every filter, scorer and picker
        refs = [{"pluginRef": p["name"]} for p in plugins]

    filters: list[str] = []
    scorers: list[dict[str, Any]] = []
    picker: str | None = None
    defined = ", ".join(sorted(declared)) or "(none)"
    for j, ref in enumerate(refs):
        loc = f"schedulingProfiles[0].plugins[{j}]"
        if not isinstance(ref, Mapping) or not isinstance(ref.get("pluginRef"), str):
            raise _err(loc, "each entry needs `pluginRef` (a plugin's name) and, for scorers, an optional `weight`")
        extra = sorted(set(ref) - {"pluginRef", "weight"})
        if extra:
            raise _err(f"{loc}.{extra[0]}", "unknown field; an entry has pluginRef and weight")
        name = ref["pluginRef"]
        if name in no_ops:
            continue
        if name not in kinds:
            raise _err(f"{loc}.pluginRef", f"unknown plugin {name!r}; defined plugins: {defined}")
        weight = ref.get("weight")
        if kinds[name] == "scorer":
            if weight is None:
                weight = 1.0
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
                raise _err(f"{loc}.weight", f"must be a number >= 0, got {weight!r}")
            if any(s["plugin"] == name for s in scorers):
                raise _err(f"{loc}.pluginRef", f"scorer {name!r} is listed twice")
            scorers.append({"plugin": name, "weight": float(weight)})
            continue
        if weight is not None:
            raise _err(f"{loc}.weight", f"{name!r} is a {kinds[name]}; only scorers take a weight")
        if kinds[name] == "filter":
            filters.append(name)
        elif picker is not None and picker != name:
            raise _err(f"{loc}.pluginRef", f"a profile has one picker; {picker!r} is already its picker")
        else:
            picker = name
    if picker is None:  # upstream: the first picker declared, else a max-score-picker
        picker = next((p["name"] for p in plugins if kinds[p["name"]] == "picker"), None)
    if picker is None:
        picker = "max-score-picker"
        if picker in declared:
            raise _err("plugins", f"{picker!r} names a plugin that is not a picker; the default picker needs that name")
        plugins.append({"name": picker, "type": "max-score-picker", "params": {}})
    used = {*filters, *(s["plugin"] for s in scorers), picker}
    return EppTranslation(
        router={
            "plugins": [p for p in plugins if p["name"] in used],
            "filters": filters,
            "scorers": scorers,
            "picker": picker,
        },
        dropped=tuple(dropped),
    )
