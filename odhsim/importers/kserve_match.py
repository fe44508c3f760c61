"""Naming what an InferenceService runs: a Hugging Face model id to a catalogue latency profile (fine-tunes
read as their base), and a node label or affinity to a catalogue GPU."""

from __future__ import annotations

import re

from odhsim import catalog
from odhsim.errors import CatalogError
from odhsim.importers.kserve_doc import InferenceServiceDoc

GPU_LABELS = ("nvidia.com/gpu.product", "cloud.google.com/gke-accelerator")

# Fine-tune and packaging suffixes of Hugging Face ids (Llama-3.1-8B-Instruct, Llama-2-7b-chat-hf,
# Mistral-7B-Instruct-v0.2): the architecture, and so the latency profile, is the base model's.
_FINETUNE_SUFFIX = re.compile(r"-(instruct|chat|hf|it)(-v\d+(\.\d+)*)?$", re.IGNORECASE)


def catalogue_profile(name: str) -> tuple[str, str] | None:
    """(profile, the name it was found under) for a model id, trying it as given, then without its fine-tune
    suffixes and without Meta's "Meta-" prefix; None when the catalogue has no such model."""
    tried: list[str] = []
    base = name.strip()
    while base and base not in tried:
        tried.append(base)
        head, _, last = base.rpartition("/")
        stem = _FINETUNE_SUFFIX.sub("", last)
        base = f"{head}/{stem}" if head else stem
    more = [re.sub(r"(^|/)Meta-(?=Llama-3\.)", r"\1", t, flags=re.IGNORECASE) for t in tried]
    packaged = [f"{t}{tail}" for t in tried[1:] for tail in ("-hf", "-v0.1")]  # the catalogue's base ids
    for cand in dict.fromkeys([*tried, *more, *packaged]):
        try:
            return catalog.model(cand).name, cand
        except CatalogError:
            continue
    return None


def gpu_from_label(value: str) -> str | None:
    """nvidia.com/gpu.product (NVIDIA-A100-SXM4-80GB, Tesla-T4, NVIDIA-H100-80GB-HBM3) or a GKE accelerator
    (nvidia-tesla-a100, nvidia-l4) -> the catalogue's GPU, else None."""
    text = value.lower().replace("nvidia-", "").replace("tesla-", "")
    for candidate in (value, text):
        try:
            return catalog.gpu(candidate).name
        except CatalogError:
            pass
    family = re.search(r"(a100|h100|h200|l40s|a10g|l4|t4)", text)
    if family is None:
        return None
    memory = re.search(r"(\d+)gb", text)
    for candidate in (f"{family.group(1)}-{memory.group(1)}gb" if memory else "", family.group(1)):
        try:
            return catalog.gpu(candidate).name if candidate else None
        except CatalogError:
            continue
    return None


def find_gpu(d: InferenceServiceDoc, pred: str) -> tuple[str | None, str | None]:
    """(catalogue GPU, where it came from) from the predictor's nodeSelector or required node affinity."""
    for label in GPU_LABELS:
        value = d.get(f"{pred}.nodeSelector", key=label)
        if isinstance(value, str):
            return gpu_from_label(value), f"{pred}.nodeSelector.{label}"
    terms = d.doc.get("spec", {}).get("predictor", {}).get("affinity", {}).get("nodeAffinity", {})
    terms = (terms.get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
    for i, term in enumerate(terms):
        for j, expr in enumerate(term.get("matchExpressions") or []):
            if expr.get("key") in GPU_LABELS and expr.get("operator") == "In" and expr.get("values"):
                base = f"{pred}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                where = f"{base}.nodeSelectorTerms[{i}].matchExpressions[{j}]"
                d.used.add(where)
                return gpu_from_label(str(expr["values"][0])), where
    return None, None
