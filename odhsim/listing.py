"""What a scenario may name, for `odhsim list`: GPUs, model profiles, policies with their parameters and defaults,
autoscalers and catalogued traces. Rows are plain dicts so the CLI prints them as a table or as JSON."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

LISTS = ("gpus", "profiles", "policies", "autoscalers", "traces")


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    return text.replace("typing.", "").replace("NoneType", "None")


def params_of(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Each parameter of a policy's pydantic params model: name, type, default (None: required), description."""
    out = []
    for name, info in model.model_fields.items():
        required = info.is_required()
        default = None
        if not required:
            default = info.get_default(call_default_factory=True) if info.default is PydanticUndefined else info.default
        out.append(
            {
                "name": name,
                "type": _type_name(info.annotation),
                "required": required,
                "default": default.model_dump() if isinstance(default, BaseModel) else default,
                "description": info.description or "",
            }
        )
    return out


def format_params(params: list[dict[str, Any]], sep: str = "\n") -> str:
    """'name=default' per parameter ('name (required)' without a default), one a line by default for a table cell;
    '-' when a policy takes no parameters."""
    cells = [f"{p['name']} (required)" if p["required"] else f"{p['name']}={p['default']!r}" for p in params]
    return sep.join(cells) or "-"


def _policies(kinds: set[str] | None, exclude: set[str]) -> list[dict[str, Any]]:
    from policies.builtin import REGISTRY

    rows = []
    for kind in REGISTRY.kinds():
        if kind in exclude or (kinds is not None and kind not in kinds):
            continue
        for name in REGISTRY.names(kind):
            rows.append({"kind": kind, "name": name, "params": params_of(REGISTRY.params_model(kind, name))})
    if kinds is None:
        from policies.routing.profiles import PROFILES

        for name in sorted(PROFILES):
            spec = PROFILES[name]
            scorers = ", ".join(f"{s['plugin']} x{s['weight']:g}" for s in spec["scorers"])
            parts = [*(f"filter {f}" for f in spec["filters"]), *([f"scorers {scorers}"] if scorers else [])]
            rows.append(
                {
                    "kind": "router-profile",
                    "name": name,
                    "params": [],
                    "description": "; ".join([*parts, f"picker {spec['picker']}"]),
                }
            )
    return rows


def _gpus() -> list[dict[str, Any]]:
    from odhsim import catalog

    return [
        {
            "name": g.name,
            "memory_gb": g.memory_gb,
            "bf16_tflops": g.bf16_tflops,
            "mem_bw_gb_s": g.mem_bw_gb_s,
            "interconnect": g.interconnect,
            "usd_per_gpu_hour": g.price_per_gpu_hour,
            "aliases": ", ".join(g.aliases),
        }
        for g in (catalog.gpu(n) for n in catalog.gpu_names())
    ]


def _profiles() -> list[dict[str, Any]]:
    from odhsim import catalog
    from odhsim.profiles.latency import load_coefficients

    tps: dict[str, dict[str, list[int]]] = {}
    for key in load_coefficients():  # already the "profiles" mapping, keyed "model|GPU|tp"
        model, gpu, tp = key.split("|")
        tps.setdefault(model, {}).setdefault(gpu, []).append(int(tp))
    fitted = {m: [f"{g} tp{','.join(map(str, sorted(t)))}" for g, t in by.items()] for m, by in tps.items()}
    return [
        {
            "name": m.name,
            "params_b": m.params_b,
            "layers": m.layers,
            "kv_kib_per_token": m.kv_bytes_per_token / 1024,
            "max_context": m.max_context,
            "latency": "fitted: " + ", ".join(fitted[m.name]) if m.name in fitted else "roofline",
            "hf_id": m.hf_id,
        }
        for m in (catalog.model(n) for n in catalog.model_names())
    ]


def _traces() -> list[dict[str, Any]]:
    from odhsim.workload.catalog import describe, load_catalog

    keep = ("name", "format", "license", "url", "description")
    return [{k: describe(e).get(k, "") for k in keep} for e in load_catalog().values()]


def listing(what: str) -> list[dict[str, Any]]:
    """The rows of one list (see LISTS); an unknown name is a clear error listing the known ones."""
    from odhsim.errors import OdhsimError

    if what == "gpus":
        return _gpus()
    if what == "profiles":
        return _profiles()
    if what == "policies":
        return _policies(None, exclude={"autoscaler"})
    if what == "autoscalers":
        return _policies({"autoscaler"}, exclude=set())
    if what == "traces":
        return _traces()
    raise OdhsimError(f"unknown list {what!r}; choose one of: {', '.join(LISTS)}")
