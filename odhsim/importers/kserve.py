"""A KServe v1beta1 InferenceService turned into a scenario's model section, with a list of what did not map.

Mapped: the predictor's minReplicas / maxReplicas / scaleTarget / scaleMetric (they win over the matching Knative
annotations, as KServe's ksvc reconciler writes them over; minReplicas left out means 1), Knative's KPA annotations
(autoscaling.knative.dev/*) to the model's `autoscaling: {type: kpa, params}`, containerConcurrency (the KPA's
container_concurrency; a `fixed` model's concurrency slots; for an LLM the gateway's max_in_flight_per_replica),
canaryTrafficPercent to `canary`, storageUri to `storage_uri`, the nvidia.com/gpu limit to `tp`, the GPU type from
nodeSelector / node affinity (nvidia.com/gpu.product, cloud.google.com/gke-accelerator) and vLLM's engine arguments.
Everything else in the document is reported with its field path and why (`Unmapped`). Pure: no file I/O.
This module maps; kserve_doc reads the document, kserve_match names the model and GPU, kserve_scenario wraps
the result in a runnable scenario.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from odhsim import catalog
from odhsim.importers.kserve_doc import (
    KNATIVE,
    KPA_ANNOTATIONS,
    InferenceServiceDoc,
    KServeImport,
    KServeImportError,
    Unmapped,
    convert_annotation,
    parse_engine_args,
    whole_number,
)
from odhsim.importers.kserve_match import catalogue_profile, find_gpu
from odhsim.importers.kserve_scenario import minimal_scenario
from policies.lifecycle.storage import parse_storage_uri

__all__ = [
    "ImportOptions",
    "KServeImport",
    "KServeImportError",
    "Unmapped",
    "import_inference_service",
    "minimal_scenario",
]

GPU_RESOURCE = "nvidia.com/gpu"
LLM_FORMATS = frozenset({"huggingface", "vllm"})
FIXED_FORMATS = frozenset(
    {
        "sklearn",
        "xgboost",
        "lightgbm",
        "tensorflow",
        "pytorch",
        "onnx",
        "triton",
        "pmml",
        "paddle",
        "mlflow",
        "catboost",
    }
)
# Old-style predictors name the framework as a key (`predictor: {sklearn: {storageUri: ...}}`).
FRAMEWORK_KEYS = LLM_FORMATS | FIXED_FORMATS | {"model"}

# vLLM engine arguments -> odhsim engine fields (value type).
VLLM_ARGS: dict[str, tuple[str, type]] = {
    "max-model-len": ("max_model_len", int),
    "max-num-seqs": ("max_num_seqs", int),
    "max-num-batched-tokens": ("max_num_batched_tokens", int),
    "block-size": ("block_size", int),
    "gpu-memory-utilization": ("gpu_memory_utilization", float),
}


class ImportOptions(BaseModel):
    """What an InferenceService does not say but a scenario needs (each used only when the file lacks it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str | None = None
    gpu: str | None = None
    service_time_s: Annotated[float, Field(gt=0.0)] | None = None
    version: str = "v1"
    canary_version: str = "v2"


class _Predictor(BaseModel):
    """The predictor's typed scalar fields (the rest is read through the document walker)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    minReplicas: Annotated[int, Field(ge=0)] | None = None
    maxReplicas: Annotated[int, Field(ge=0)] = 0
    scaleTarget: Annotated[int, Field(ge=1)] | None = None
    scaleMetric: Literal["concurrency", "rps", "cpu", "memory"] | None = None
    containerConcurrency: Annotated[int, Field(ge=0, le=1000)] | None = None
    canaryTrafficPercent: Annotated[int, Field(ge=0, le=100)] | None = None


def import_inference_service(doc: Mapping[str, Any], options: ImportOptions | None = None) -> KServeImport:
    """Map one InferenceService document; raises KServeImportError naming what is missing or malformed."""
    opts = options or ImportOptions()
    d = InferenceServiceDoc(doc)
    if d.get("kind") != "InferenceService":
        raise KServeImportError(f"kind: expected InferenceService, got {doc.get('kind')!r}")
    api = d.get("apiVersion")
    if api != "serving.kserve.io/v1beta1":
        raise KServeImportError(f"apiVersion: expected serving.kserve.io/v1beta1, got {api!r}")
    name = d.get("metadata.name")
    if not isinstance(name, str) or not name:
        raise KServeImportError("metadata.name: required")
    pred_raw = d.doc.get("spec", {}).get("predictor")
    if not isinstance(pred_raw, Mapping):
        raise KServeImportError("spec.predictor: required (a mapping)")
    scalars = {k: v for k, v in pred_raw.items() if k in _Predictor.model_fields}
    try:
        pred = _Predictor.model_validate(scalars)
    except ValidationError as err:
        e = err.errors()[0]
        where = "spec.predictor." + ".".join(str(p) for p in e["loc"])
        raise KServeImportError(f"{where}: {e['msg']}") from None
    for key in scalars:
        d.used.add(f"spec.predictor.{key}")
    P = "spec.predictor"

    # the framework: `model: {modelFormat: {name}}` or the old `sklearn: {...}` style
    fw_key = next((k for k in pred_raw if k in FRAMEWORK_KEYS), None)
    if fw_key is None:
        what = "custom `containers`" if "containers" in pred_raw else "no model"
        raise KServeImportError(f"{P}: {what}; odhsim imports `model: {{modelFormat, storageUri, ...}}` predictors")
    M = f"{P}.{fw_key}"
    fmt = fw_key if fw_key != "model" else str(d.get(f"{M}.modelFormat.name", "")).lower()
    d.get(f"{M}.modelFormat.version")
    runtime = str(d.doc["spec"]["predictor"][fw_key].get("runtime", "")).lower()
    if fmt in LLM_FORMATS or "vllm" in runtime:
        kind = "llm"
    elif fmt in FIXED_FORMATS:
        kind = "fixed"
    else:
        known = ", ".join(sorted(LLM_FORMATS | FIXED_FORMATS))
        raise KServeImportError(f"{M}.modelFormat.name: {fmt!r} is not a known model format; known: {known}")

    notes: list[str] = []
    missing: list[str] = []
    model: dict[str, Any] = {"name": name, "kind": kind}
    if opts.version != "v1":
        model["version"] = opts.version

    # annotations: the InferenceService's, then the predictor's (KServe propagates both; the predictor's win)
    ann: dict[str, tuple[str, str]] = {}
    for base, node in (("metadata", doc.get("metadata")), (P, pred_raw)):
        for key, value in ((node or {}).get("annotations") or {}).items():
            ann[str(key)] = (str(value), f"{base}.annotations.{key}")

    def take(key: str) -> tuple[str, str] | None:
        got = ann.get(key)
        if got is not None:
            d.used.add(got[1])
        return got

    # storage
    uri = d.get(f"{M}.storageUri")
    if uri is not None:
        try:
            parse_storage_uri(str(uri))
            model["storage_uri"] = str(uri)
        except ValueError as err:
            d.skip(f"{M}.storageUri", str(err))

    # vLLM / Hugging Face runtime arguments
    args_raw = d.doc["spec"]["predictor"][fw_key].get("args") or []
    args = parse_engine_args(list(args_raw), f"{M}.args", d) if isinstance(args_raw, list) else {}
    if args_raw:
        d.used.add(f"{M}.args")

    # which LLM
    if kind == "llm":
        candidates = []
        if opts.profile:  # given explicitly: it must be in the catalogue (CatalogError lists the known ones)
            candidates.append((catalog.model(opts.profile).name, "--profile"))
        for arg in ("model", "model-id", "model-name"):
            if arg in args:
                candidates.append((args[arg][0], args[arg][1]))
        if isinstance(uri, str) and uri.lower().startswith("hf://"):
            candidates.append((uri[5:].split("@")[0].strip("/"), f"{M}.storageUri"))
        profile = None
        for cand, _ in candidates:
            found = catalogue_profile(str(cand))
            if found is not None:
                profile, base = found
                if base != str(cand):
                    notes.append(f"{cand} read as {base} (profile {profile}): a fine-tune keeps its base's shapes")
                break
        if profile is None:
            tried = ", ".join(c for c, _ in candidates) or "nothing to go by"
            missing.append(f"which LLM this is ({tried}): pass --profile, one of {', '.join(catalog.model_names())}")
        else:
            model["profile"] = profile
        for arg in ("model", "model-id", "model-name", "served-model-name", "port", "host"):
            args.pop(arg, None)
        if args.get("backend", ("", ""))[0] == "vllm":  # KServe's Hugging Face runtime on vLLM: odhsim's llm kind
            args.pop("backend")

    # GPUs
    limit = d.get(f"{M}.resources.limits", key=GPU_RESOURCE)
    requested = d.get(f"{M}.resources.requests", key=GPU_RESOURCE)
    gpus_raw, gpu_where = (requested, "requests") if limit is None else (limit, "limits")
    gpu_count = whole_number(gpus_raw, f"{M}.resources.{gpu_where}.{GPU_RESOURCE}") if gpus_raw is not None else 0
    tp_arg = args.pop("tensor-parallel-size", None)
    tp = (whole_number(tp_arg[0], tp_arg[1] or f"{M}.args") if tp_arg else 0) or max(gpu_count, 1)
    pp_arg = args.pop("pipeline-parallel-size", None)
    pp = whole_number(pp_arg[0], pp_arg[1] or f"{M}.args") if pp_arg else 1
    if gpu_count and tp * pp != gpu_count:
        notes.append(f"{GPU_RESOURCE}={gpu_count} but tensor x pipeline parallel = {tp * pp}; used tp={tp}, pp={pp}")
    if not gpu_count:
        notes.append(f"no {GPU_RESOURCE} limit: one GPU per replica (odhsim places every model on a GPU)")
    if tp > 1:
        model["tp"] = tp
    if pp > 1:
        model["pp"] = pp
    gpu, gpu_from = find_gpu(d, P)
    if opts.gpu:
        gpu = catalog.gpu(opts.gpu).name
    elif gpu is None:
        label = f" ({gpu_from} names no GPU in odhsim's catalogue)" if gpu_from else ""
        missing.append(f"the GPU type{label}: pass --gpu, one of {', '.join(catalog.gpu_names())}")
    if gpu is not None:
        model["gpu"] = gpu

    # engine arguments
    engine: dict[str, Any] = {}
    for arg, (value, path) in sorted(args.items()):
        if arg in VLLM_ARGS and kind == "llm":
            fname, typ = VLLM_ARGS[arg]
            try:
                engine[fname] = typ(value)
            except ValueError:
                raise KServeImportError(f"{path}: --{arg} {value!r} is not a {typ.__name__}") from None
        elif arg in ("enable-prefix-caching", "no-enable-prefix-caching") and kind == "llm":
            engine["enable_prefix_caching"] = arg == "enable-prefix-caching" and value.lower() != "false"
        else:
            d.skip(path, f"--{arg}: no odhsim counterpart")
    if engine:
        model["engine"] = engine

    # fixed models: a service time the InferenceService cannot say
    if kind == "fixed":
        if opts.service_time_s is None:
            missing.append("the per-request service time of a `fixed` model: pass --service-time-s (measured)")
        else:
            model["service_time"] = {"dist": "exponential", "mean_s": opts.service_time_s}

    # scaling
    mode = take("serving.kserve.io/deploymentMode")
    scaler = take("serving.kserve.io/autoscalerClass")
    klass = take(KNATIVE + "class")
    serverless = mode is None or mode[0] in ("Serverless", "Knative")
    kpa = serverless and (klass is None or klass[0] == "kpa.autoscaling.knative.dev")
    if not serverless:
        d.skip(mode[1], f"{mode[0]}: scaled by an HPA (or not at all), which odhsim does not model; replicas fixed")
    elif not kpa:
        d.skip(klass[1], f"{klass[0]}: odhsim autoscales with Knative's KPA only; replicas fixed")
    if scaler is not None:
        d.skip(scaler[1], "KServe's raw-deployment autoscaler; odhsim does not model it")
    min_replicas = 1 if pred.minReplicas is None else pred.minReplicas
    for key, spec_value, spec_name in (
        ("min-scale", min_replicas, "minReplicas"),
        ("minScale", min_replicas, "minReplicas"),
        ("max-scale", pred.maxReplicas or None, "maxReplicas"),
        ("maxScale", pred.maxReplicas or None, "maxReplicas"),
    ):
        got = take(KNATIVE + key)
        if got is not None and spec_value is not None and convert_annotation(got[0], "int", got[1]) != spec_value:
            d.skip(got[1], f"overridden by {P}.{spec_name}={spec_value} (KServe writes it over the annotation)")
        elif got is not None and spec_value is None:  # maxReplicas unset: the annotation stands
            pred = pred.model_copy(update={"maxReplicas": convert_annotation(got[0], "int", got[1])})
    params: dict[str, Any] = {"min_replicas": min_replicas, "max_replicas": pred.maxReplicas}
    for key, (param, how) in KPA_ANNOTATIONS.items():
        got = take(KNATIVE + key)
        if got is not None:
            params[param] = convert_annotation(got[0], how, got[1])
    metric = take(KNATIVE + "metric")
    metric_value = pred.scaleMetric or (metric[0] if metric else None)
    if pred.scaleTarget is not None:
        params["target"] = float(pred.scaleTarget)
    if metric_value in ("cpu", "memory"):
        d.skip(f"{P}.scaleMetric" if pred.scaleMetric else metric[1], f"{metric_value}: an HPA metric; odhsim's KPA "
               "scales on concurrency or rps; replicas fixed")  # fmt: skip
        kpa = False
    elif metric_value is not None:
        params["metric"] = metric_value
    for key in ("scale-to-zero-pod-retention-period", "activation-scale", "panic-window"):
        got = take(KNATIVE + key)
        if got is not None:
            d.skip(got[1], "not modelled by odhsim's KPA")
    cc = pred.containerConcurrency
    if cc:
        params["container_concurrency"] = cc
        if kind == "fixed":
            model["concurrency"] = cc
        else:
            notes.append(
                f"containerConcurrency={cc} (queue-proxy's hard limit) -> gateway.max_in_flight_per_replica={cc}, "
                "which applies to every model of the scenario"
            )
    initial = params.get("initial_scale", 1)
    if kpa:
        model["replicas"] = max(int(initial), min_replicas)
        model["autoscaling"] = {"type": "kpa", "params": params}
    else:
        model["replicas"] = min_replicas
        for p in ("target", "metric", "container_concurrency", "target_utilization", "stable_window_s"):
            params.pop(p, None)
        if pred.maxReplicas and pred.maxReplicas != min_replicas:
            notes.append(f"maxReplicas={pred.maxReplicas} unused: without the KPA the model keeps {min_replicas}")
        if kind == "fixed" and cc:
            model["concurrency"] = cc

    # canary
    if pred.canaryTrafficPercent is not None:
        model["canary"] = {"version": opts.canary_version, "traffic_percent": float(pred.canaryTrafficPercent)}
        notes.append(
            f"canaryTrafficPercent={pred.canaryTrafficPercent}: this spec is the new revision "
            f"({opts.canary_version}); the previous revision's spec is not in the file, so {opts.version} uses the "
            "same fields: edit the model's fields to the old revision's"
        )

    if missing:
        raise KServeImportError(f"InferenceService {name!r}: cannot tell " + "; ".join(missing))
    gateway = {"max_in_flight_per_replica": cc} if (cc and kind == "llm") else {}
    order = ("name", "version", "kind", "profile", "gpu", "tp", "pp", "replicas", "concurrency", "service_time")
    model = {k: model[k] for k in order if k in model} | {k: v for k, v in model.items() if k not in order}
    return KServeImport(model=model, gateway=gateway, unmapped=tuple(d.rest()), notes=tuple(notes))
