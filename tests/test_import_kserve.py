"""`odhsim import kserve`: realistic InferenceServices become scenario models that validate, and what does not map
is reported with its field path. Field names and annotation keys follow KServe v1beta1 (ComponentExtensionSpec:
minReplicas, maxReplicas, scaleTarget, scaleMetric, containerConcurrency, canaryTrafficPercent) and Knative's
autoscaling.knative.dev/* annotations; KServe's ksvc reconciler writes minReplicas (default 1) over min-scale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from odhsim.cli import app
from odhsim.errors import CatalogError
from odhsim.importers.kserve import ImportOptions, KServeImportError, import_inference_service, minimal_scenario
from odhsim.scenario.load import load_scenario, scenario_from_dict

VLLM_KPA = """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: llama-chat
  namespace: team-a
  annotations:
    serving.kserve.io/deploymentMode: Serverless
    autoscaling.knative.dev/class: kpa.autoscaling.knative.dev
    autoscaling.knative.dev/metric: concurrency
    autoscaling.knative.dev/target: "8"
    autoscaling.knative.dev/target-utilization-percentage: "80"
    autoscaling.knative.dev/window: "120s"
    autoscaling.knative.dev/panic-window-percentage: "20"
    autoscaling.knative.dev/panic-threshold-percentage: "300"
    autoscaling.knative.dev/scale-down-delay: "5m"
    autoscaling.knative.dev/initial-scale: "2"
    autoscaling.knative.dev/min-scale: "0"
    autoscaling.knative.dev/scale-to-zero-pod-retention-period: "10m"
spec:
  predictor:
    minReplicas: 1
    maxReplicas: 6
    nodeSelector:
      nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB
    model:
      modelFormat:
        name: huggingface
      runtime: kserve-huggingfaceserver
      storageUri: hf://meta-llama/Llama-3.1-8B
      args:
        - --backend=vllm
        - --max-model-len=8192
        - --max-num-seqs
        - "128"
        - --tensor-parallel-size=2
        - --enforce-eager
      resources:
        limits:
          cpu: "6"
          memory: 24Gi
          nvidia.com/gpu: "2"
"""

SKLEARN = """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: sklearn-iris
spec:
  predictor:
    containerConcurrency: 4
    scaleMetric: rps
    scaleTarget: 50
    affinity:
      nodeAffinity:
        requiredDuringSchedulingIgnoredDuringExecution:
          nodeSelectorTerms:
          - matchExpressions:
            - key: nvidia.com/gpu.product
              operator: In
              values: [Tesla-T4]
    model:
      modelFormat:
        name: sklearn
      storageUri: gs://kfserving-examples/models/sklearn/1.0/model
"""

CANARY = """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: summarize
spec:
  predictor:
    canaryTrafficPercent: 10
    minReplicas: 2
    maxReplicas: 4
    containerConcurrency: 16
    nodeSelector:
      cloud.google.com/gke-accelerator: nvidia-h100-80gb
    model:
      modelFormat:
        name: vllm
      storageUri: s3://models/llama3-8b/v2
      args: ["--model=meta-llama/Meta-Llama-3-8B"]
      resources:
        limits:
          nvidia.com/gpu: 1
"""


def _run(text: str, **opts: Any) -> Any:
    return import_inference_service(yaml.safe_load(text), ImportOptions(**opts))


def _paths(result: Any) -> dict[str, str]:
    return {u.path: u.reason for u in result.unmapped}


def test_vllm_llm_with_kpa_annotations() -> None:
    r = _run(VLLM_KPA)
    m = r.model
    assert (m["name"], m["kind"], m["profile"], m["gpu"], m["tp"]) == (
        "llama-chat",
        "llm",
        "llama3.1-8b",
        "A100-80GB",
        2,
    )
    assert m["storage_uri"] == "hf://meta-llama/Llama-3.1-8B"
    assert m["engine"] == {"max_model_len": 8192, "max_num_seqs": 128}
    assert m["replicas"] == 2  # initial-scale 2 above minReplicas 1
    assert m["autoscaling"] == {
        "type": "kpa",
        "params": {
            "min_replicas": 1,
            "max_replicas": 6,
            "target": 8.0,
            "target_utilization": 0.8,
            "stable_window_s": 120.0,
            "panic_window_percentage": 20.0,
            "panic_threshold": 3.0,
            "scale_down_delay_s": 300.0,
            "initial_scale": 2,
            "metric": "concurrency",
        },
    }
    unmapped = _paths(r)
    assert "minReplicas=1" in unmapped["metadata.annotations.autoscaling.knative.dev/min-scale"]
    assert "metadata.annotations.autoscaling.knative.dev/scale-to-zero-pod-retention-period" in unmapped
    assert unmapped["spec.predictor.model.args[5]"] == "--enforce-eager: no odhsim counterpart"
    assert unmapped["spec.predictor.model.resources.limits.cpu"] == "odhsim places replicas by GPU only"
    assert "metadata.namespace" in unmapped
    # mapped fields are not reported
    assert not any(p.endswith(("target", "window", "storageUri", "nvidia.com/gpu.product")) for p in unmapped)
    sc = scenario_from_dict(minimal_scenario([r]))
    kpa = sc.models[0].autoscaling
    assert kpa is not None and kpa.params["panic_threshold"] == 3.0
    assert sc.models[0].tp == 2 and sc.gpu_pool[0].count == 12  # 6 replicas x 2 GPUs


def test_sklearn_with_container_concurrency() -> None:
    with pytest.raises(KServeImportError, match="pass --service-time-s"):
        _run(SKLEARN)
    r = _run(SKLEARN, service_time_s=0.02)
    m = r.model
    assert (m["kind"], m["gpu"], m["concurrency"]) == ("fixed", "T4", 4)
    assert m["service_time"] == {"dist": "exponential", "mean_s": 0.02}
    assert m["storage_uri"] == "gs://kfserving-examples/models/sklearn/1.0/model"
    assert m["autoscaling"]["params"] == {
        "min_replicas": 1,
        "max_replicas": 0,
        "target": 50.0,
        "metric": "rps",
        "container_concurrency": 4,
    }
    assert r.gateway == {}  # a fixed model's limit is its own slots, not the gateway's
    sc = scenario_from_dict(minimal_scenario([r]))
    assert sc.models[0].concurrency == 4 and sc.models[0].kind == "fixed"


def test_canary_and_llm_container_concurrency() -> None:
    r = _run(CANARY)
    m = r.model
    assert (m["profile"], m["gpu"], m["replicas"]) == ("llama3-8b", "H100-80GB", 2)
    assert m["canary"] == {"version": "v2", "traffic_percent": 10.0}
    assert m["autoscaling"]["params"]["container_concurrency"] == 16
    assert r.gateway == {"max_in_flight_per_replica": 16}
    assert any("previous revision's spec is not in the file" in n for n in r.notes)
    sc = scenario_from_dict(minimal_scenario([r]))
    assert sc.models[0].canary is not None and sc.models[0].canary.traffic_percent == 10.0
    assert sc.gateway.max_in_flight_per_replica == 16


def test_raw_deployment_and_hpa_metrics_are_reported_not_faked() -> None:
    doc = yaml.safe_load(SKLEARN)
    doc["metadata"]["annotations"] = {"serving.kserve.io/deploymentMode": "RawDeployment"}
    doc["spec"]["predictor"]["scaleMetric"] = "cpu"
    r = import_inference_service(doc, ImportOptions(service_time_s=0.02))
    assert "autoscaling" not in r.model and r.model["replicas"] == 1
    unmapped = _paths(r)
    assert "HPA" in unmapped["metadata.annotations.serving.kserve.io/deploymentMode"]
    assert "an HPA metric" in unmapped["spec.predictor.scaleMetric"]


def test_missing_facts_are_named_with_the_flag_to_pass() -> None:
    doc = yaml.safe_load(VLLM_KPA)
    doc["spec"]["predictor"]["model"]["storageUri"] = "s3://bucket/my-finetune"
    del doc["spec"]["predictor"]["nodeSelector"]
    with pytest.raises(KServeImportError) as err:
        import_inference_service(doc)
    assert "pass --profile" in str(err.value) and "pass --gpu" in str(err.value)
    assert import_inference_service(doc, ImportOptions(profile="llama3-8b", gpu="l4")).model["gpu"] == "L4"
    with pytest.raises(CatalogError, match="unknown model 'nope'"):
        import_inference_service(doc, ImportOptions(profile="nope", gpu="L4"))
    doc["spec"]["predictor"]["minReplicas"] = "two"
    with pytest.raises(KServeImportError, match=r"spec\.predictor\.minReplicas: "):
        import_inference_service(doc)


def test_cli_writes_a_scenario_that_loads_and_lists_unmapped_fields(tmp_path: Path) -> None:
    src = tmp_path / "isvc.yaml"
    src.write_text(VLLM_KPA + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    out = tmp_path / "scenario.yaml"
    res = CliRunner().invoke(app, ["import", "kserve", str(src), "--scenario", "--out", str(out)])
    assert res.exit_code == 0, res.output
    sc = load_scenario(out)
    assert sc.models[0].name == "llama-chat" and sc.models[0].autoscaling is not None
    assert "scale-to-zero-pod-retention-period" in res.output
    assert "not an InferenceService" in res.output
    assert "llama-chat  spec.predictor.model.args[5]: --enforce-eager: no odhsim counterpart" in res.output
    res = CliRunner().invoke(app, ["import", "kserve", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "no such file" in res.output
