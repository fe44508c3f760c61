"""Reading an InferenceService document: which fields were read (the rest is reported as `Unmapped`), its
Knative annotations and vLLM-style arguments as typed values, and the errors that name the field."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from odhsim.errors import OdhsimError
from policies.routing.epp_config import EppConfigError, go_duration_s

KNATIVE = "autoscaling.knative.dev/"

# Annotation (without the autoscaling.knative.dev/ prefix) -> (KPA param, how the string becomes its value).
_PERCENT = "percent"
_DURATION = "duration"
KPA_ANNOTATIONS: dict[str, tuple[str, str]] = {
    "target": ("target", "float"),
    "target-utilization-percentage": ("target_utilization", _PERCENT),
    "window": ("stable_window_s", _DURATION),
    "panic-window-percentage": ("panic_window_percentage", "float"),
    "panic-threshold-percentage": ("panic_threshold", _PERCENT),
    "scale-down-delay": ("scale_down_delay_s", _DURATION),
    "initial-scale": ("initial_scale", "int"),
    "initialScale": ("initial_scale", "int"),
    "target-burst-capacity": ("target_burst_capacity", "float"),
}
# Subtrees reported once, with the reason.
SUBTREE_REASONS: dict[str, str] = {
    "status": "the cluster's state, not configuration",
    "metadata.labels": "labels select nothing in odhsim",
    "metadata.namespace": "odhsim simulates one namespace",
    "spec.transformer": "odhsim simulates the predictor only (a transformer's latency is not modelled)",
    "spec.explainer": "odhsim simulates the predictor only",
    "spec.predictor.model.runtime": "odhsim's engine model stands for the runtime (kind llm: vLLM-like; fixed)",
    "spec.predictor.model.resources.limits.cpu": "odhsim places replicas by GPU only",
    "spec.predictor.model.resources.limits.memory": "odhsim places replicas by GPU only",
    "spec.predictor.model.resources.requests.cpu": "odhsim places replicas by GPU only",
    "spec.predictor.model.resources.requests.memory": "odhsim places replicas by GPU only",
    "spec.predictor.tolerations": "odhsim's GPU pool has no taints",
    "spec.predictor.serviceAccountName": "no credentials in a simulation",
}


class KServeImportError(OdhsimError):
    """An InferenceService that cannot become a model section; the message names the field and what to pass."""


@dataclass(frozen=True, slots=True)
class Unmapped:
    """A field of the InferenceService with no odhsim counterpart (or overridden), and why."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class KServeImport:
    """One InferenceService: the model section, gateway settings it implies, and what was not mapped."""

    model: dict[str, Any]
    gateway: dict[str, Any] = field(default_factory=dict)
    unmapped: tuple[Unmapped, ...] = ()
    notes: tuple[str, ...] = ()


class InferenceServiceDoc:
    """The document with a record of which leaves were read, so the rest can be reported."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc
        self.used: set[str] = set()
        self.unmapped: list[Unmapped] = []

    def get(self, path: str, default: Any = None, *, key: str | None = None) -> Any:
        """The value at a dotted `path` (then at `key`, which may itself hold dots: nvidia.com/gpu), marked read."""
        node: Any = self.doc
        parts = path.split(".") + ([key] if key is not None else [])
        for part in parts:
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        self.used.add(path if key is None else f"{path}.{key}")
        return node

    def skip(self, path: str, reason: str) -> None:
        self.used.add(path)
        self.unmapped.append(Unmapped(path, reason))

    def leaves(self) -> Iterator[str]:
        def walk(node: Any, prefix: str) -> Iterator[str]:
            if isinstance(node, Mapping) and node:
                for k, v in node.items():
                    yield from walk(v, f"{prefix}.{k}" if prefix else str(k))
            elif isinstance(node, list) and node:
                for i, v in enumerate(node):
                    yield from walk(v, f"{prefix}[{i}]")
            else:
                yield prefix

        yield from walk(self.doc, "")

    def rest(self) -> list[Unmapped]:
        """Every leaf never read, collapsed to the subtrees with a known reason."""
        out = list(self.unmapped)
        seen_subtrees: set[str] = set()
        for leaf in self.leaves():
            if any(leaf == u or leaf.startswith((u + ".", u + "[")) for u in self.used):
                continue
            sub = next((s for s in SUBTREE_REASONS if leaf == s or leaf.startswith((s + ".", s + "["))), None)
            if sub is not None:
                if sub not in seen_subtrees:
                    seen_subtrees.add(sub)
                    out.append(Unmapped(sub, SUBTREE_REASONS[sub]))
                continue
            out.append(Unmapped(leaf, "no odhsim counterpart"))
        return out


def whole_number(value: object, where: str) -> int:
    """A non-negative whole number from YAML or an argument string; a KServeImportError naming `where` otherwise."""
    text = str(value).strip()
    if not text.isdigit():
        raise KServeImportError(f"{where}: {value!r} is not a whole number")
    return int(text)


def convert_annotation(raw: object, how: str, where: str) -> float | int:
    try:
        if how == _DURATION:
            return go_duration_s(raw, where)
        value = float(str(raw))
    except (EppConfigError, ValueError):
        raise KServeImportError(f"{where}: {raw!r} is not a {how if how != 'float' else 'number'}") from None
    if how == _PERCENT:
        return value / 100.0
    if how == "int":
        if value != int(value):
            raise KServeImportError(f"{where}: {raw!r} is not a whole number")
        return int(value)
    return value


def parse_engine_args(args: list[Any], where: str, d: InferenceServiceDoc) -> dict[str, tuple[str, str]]:
    """vLLM-style `--name=value` / `--name value` / `--flag` -> {name: (value, path)}."""
    out: dict[str, tuple[str, str]] = {}
    i = 0
    while i < len(args):
        arg, path = str(args[i]), f"{where}[{i}]"
        if not arg.startswith("--"):
            d.skip(path, "not a --option; no odhsim counterpart")
            i += 1
            continue
        name, eq, value = arg[2:].partition("=")
        name = name.replace("_", "-")
        if not eq and i + 1 < len(args) and not str(args[i + 1]).startswith("--"):
            value = str(args[i + 1])
            d.used.add(f"{where}[{i + 1}]")
            i += 1
        out[name] = (value if (eq or value) else "true", path)
        i += 1
    return out
