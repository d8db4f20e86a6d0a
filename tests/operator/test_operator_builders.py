"""Builders: a spec into InferenceService, ConfigMap and PodMonitor manifests.

Every InferenceService built here is validated against KServe's full v1beta1 CRD schema, made
strict so an invented or misspelt field fails.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from upscaler_operator.builders import (
    CATALOG_HASH_ANNOTATION,
    CATALOG_PATH,
    PROGRESS_DEADLINE_ANNOTATION,
    RETENTION_ANNOTATION,
    SPEC_HASH_ANNOTATION,
    BuildOptions,
    Owner,
    build_children,
    build_inference_service,
    build_lora_catalog,
    build_pod_monitor,
    lora_path,
    predictor_args,
)
from upscaler_operator.spec import parse_spec

from tests.operator.conftest import load_examples, validation_errors

OWNER = Owner(name="upscaler", namespace="team-a", uid="0b1c2d3e-0000-4000-8000-000000000001")
OPTIONS = BuildOptions(predictor_image="registry.example.com/predictor:1", pod_monitor=True)

CHRONOEDIT = {
    "engine": "chronoedit",
    "model": {"storageUri": "hf://nvidia/ChronoEdit-14B-Diffusers"},
    "gpu": {"count": 2, "productSelector": "NVIDIA-H100-80GB-HBM3"},
    "pricing": {"gpuHourlyUsd": 2.5},
}
SR = {"engine": "sr", "scaling": {"mode": "RawDeployment", "minReplicas": 1, "maxReplicas": 3}}
LORAS = [
    {"name": "paint", "uri": "hf://nvidia/Paint-Lora/paint.safetensors"},
    {"name": "ink", "uri": "https://loras.example.com/ink.safetensors"},
]


def merged(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    result = copy.deepcopy(base)
    result.update(changes)
    return result


VARIANTS: dict[str, dict[str, Any]] = {
    "chronoedit-serverless": CHRONOEDIT,
    "chronoedit-serverless-loras": merged(
        CHRONOEDIT,
        loras=LORAS,
        scaling={"maxReplicas": 4, "targetConcurrency": 2, "scaleToZeroGracePeriod": "10m"},
        defaults={"numInferenceSteps": 8, "outputFormat": "webp"},
        model={
            "storageUri": "s3://models/chronoedit",
            "upscalerLora": "https://files.example.com/loras/upsample.safetensors",
            "distillLora": "lora/chronoedit_distill_lora.safetensors",
            "dtype": "float16",
        },
    ),
    "chronoedit-raw-everything": merged(
        CHRONOEDIT,
        loras=LORAS,
        scaling={"mode": "RawDeployment", "minReplicas": 1, "maxReplicas": 2},
        predictor={
            "image": "registry.example.com/predictor:custom",
            "imagePullPolicy": "Always",
            "serviceAccountName": "model-reader",
            "resources": {"requests": {"cpu": 8, "memory": "96Gi"}, "limits": {"memory": "120Gi"}},
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
            ],
            "env": [
                {"name": "HF_HUB_OFFLINE", "value": "1"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ],
        },
        requestTimeoutSeconds=600,
    ),
    "sr-raw": SR,
    "sr-serverless": {"engine": "sr", "model": {"srModel": "realesrgan"}},
}


def build(spec: dict[str, Any], options: BuildOptions = OPTIONS) -> dict[str, Any]:
    return build_inference_service(OWNER, parse_spec(spec, name=OWNER.name), options).manifest


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_operator_inference_service_validates_against_kserve_crd(
    variant: str, kserve_validator
) -> None:
    manifest = build(VARIANTS[variant])
    assert validation_errors(kserve_validator, manifest) == []


@pytest.mark.parametrize(("filename", "body"), load_examples(), ids=lambda v: str(v)[:30])
def test_operator_examples_build_valid_inference_services(
    filename: str, body: dict[str, Any], kserve_validator
) -> None:
    spec = parse_spec(body["spec"], name=body["metadata"]["name"])
    owner = Owner(body["metadata"]["name"], body["metadata"]["namespace"], "uid")
    for child in build_children(owner, spec, OPTIONS):
        if child.kind == "InferenceService":
            assert validation_errors(kserve_validator, child.manifest) == []


@pytest.mark.parametrize(
    ("where", "typo"),
    [
        (("spec", "predictor"), "minReplica"),
        (("spec", "predictor", "containers", 0), "comand"),
        (("spec", "predictor", "containers", 0, "startupProbe", "httpGet"), "paht"),
        (("spec", "predictor", "storageUris", 0), "mountpath"),
        (("metadata",), None),  # metadata is open in the CRD: nothing to reject there
    ],
)
def test_operator_kserve_validation_rejects_a_typo(
    where: tuple, typo: str | None, kserve_validator
) -> None:
    manifest = build(CHRONOEDIT)
    node: Any = manifest
    for key in where:
        node = node[key]
    node[typo or "anything"] = "x"
    errors = validation_errors(kserve_validator, manifest)
    if typo is None:
        assert errors == []
    else:
        assert any("Additional properties are not allowed" in e and repr(typo) in e for e in errors)


def test_operator_chronoedit_predictor_runs_the_predictor_with_gpu_scheduling() -> None:
    manifest = build(CHRONOEDIT)
    meta, predictor = manifest["metadata"], manifest["spec"]["predictor"]
    assert (manifest["apiVersion"], manifest["kind"]) == (
        "serving.kserve.io/v1beta1",
        "InferenceService",
    )
    assert (meta["name"], meta["namespace"]) == ("upscaler", "team-a")
    assert meta["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert "serving.kserve.io/autoscalerClass" not in meta["annotations"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == "registry.example.com/predictor:1"
    assert container["command"] == ["chrono-upscaler"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert predictor["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert predictor["storageUris"] == [
        {"uri": "hf://nvidia/ChronoEdit-14B-Diffusers", "mountPath": "/mnt/models/model"},
        {
            "uri": "hf://nvidia/ChronoEdit-14B-Diffusers-Upscaler-Lora",
            "mountPath": "/mnt/models/upscaler-lora",
        },
    ]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (0, 1)
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", 1)
    # Knative derives the grace period from the timeout and refuses the field itself
    assert predictor["timeout"] == 330 and "terminationGracePeriodSeconds" not in predictor
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/v1/models/upscaler", "port": 8080}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 25 * 60  # a 14B cold load
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/upscaler"
    assert container["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    assert container["volumeMounts"] == [
        {"name": "lora-catalog", "mountPath": "/etc/chrono-upscaler/loras", "readOnly": True}
    ]
    assert predictor["volumes"] == [
        {"name": "lora-catalog", "configMap": {"name": "upscaler-loras"}}
    ]


def test_operator_predictor_args_are_the_contract_with_the_predictor() -> None:
    spec = parse_spec(VARIANTS["chronoedit-serverless-loras"], name="upscaler")
    assert predictor_args("upscaler", spec) == [
        "serve", "--host", "0.0.0.0", "--port", "8080", "--model-name", "upscaler",
        "--engine", "chronoedit",
        "--model-dir", "/mnt/models/model",
        "--dtype", "float16",
        "--upscaler-lora", "/mnt/models/upscaler-lora/upsample.safetensors",
        "--distill-lora", "/mnt/models/model/lora/chronoedit_distill_lora.safetensors",
        "--gpu-hourly-usd", "2.5",
        "--lora-catalog", CATALOG_PATH,
        "--default-num-inference-steps", "8",
        "--default-output-format", "webp",
        "--request-timeout", "300",
    ]  # fmt: skip
    sr = parse_spec({"engine": "sr", "model": {"srModel": "realesrgan"}}, name="fast")
    assert predictor_args("fast", sr) == [
        "serve", "--host", "0.0.0.0", "--port", "8080", "--model-name", "fast",
        "--engine", "sr", "--sr-model", "realesrgan", "--request-timeout", "300",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("slot", "source", "path"),
    [
        ("upscaler", "hf://nvidia/Upscaler-Lora", "/mnt/models/upscaler-lora"),
        (
            "upscaler",
            "s3://bucket/loras/up.safetensors",
            "/mnt/models/upscaler-lora/up.safetensors",
        ),
        ("distill", "gs://bucket/loras/", "/mnt/models/distill-lora"),
        ("distill", "pvc://weights/loras/distill", "/mnt/models/distill-lora"),
        ("distill", "lora/d.safetensors", "/mnt/models/model/lora/d.safetensors"),
    ],
)
def test_operator_lora_paths_inside_the_pod(slot: str, source: str, path: str) -> None:
    assert lora_path(slot, source) == path


def test_operator_lora_files_inside_the_model_need_no_extra_download() -> None:
    spec = merged(
        CHRONOEDIT,
        model={
            "storageUri": "pvc://weights/chronoedit",
            "upscalerLora": "loras/upsample_lora_diffusers.safetensors",
        },
    )
    predictor = build(spec)["spec"]["predictor"]
    assert predictor["storageUris"] == [
        {"uri": "pvc://weights/chronoedit", "mountPath": "/mnt/models/model"}
    ]


def test_operator_raw_deployment_uses_hpa_on_cpu_and_a_drain_grace_period() -> None:
    manifest = build(VARIANTS["chronoedit-raw-everything"])
    meta, predictor = manifest["metadata"], manifest["spec"]["predictor"]
    assert meta["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert meta["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("cpu", 80)
    assert predictor["terminationGracePeriodSeconds"] > 600  # longer than a request may run
    assert predictor["serviceAccountName"] == "model-reader"
    (container,) = predictor["containers"]
    assert container["image"] == "registry.example.com/predictor:custom"
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"] == {
        "requests": {"cpu": "8", "memory": "96Gi"},
        "limits": {"memory": "120Gi", "nvidia.com/gpu": "2"},
    }
    assert predictor["nodeSelector"] == {
        "pool": "gpu",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    }
    assert predictor["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert predictor["tolerations"][1]["key"] == "dedicated"
    assert container["env"][1]["valueFrom"] == {"secretKeyRef": {"name": "s", "key": "k"}}


def test_operator_sr_runs_on_cpu_without_gpu_or_storage() -> None:
    predictor = build(SR)["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert "resources" not in container
    assert "nodeSelector" not in predictor and "tolerations" not in predictor
    assert "storageUris" not in predictor
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] <= 5 * 60


def test_operator_serverless_retention_and_catalog_hash_annotations() -> None:
    predictor = build(VARIANTS["chronoedit-serverless-loras"])["spec"]["predictor"]
    assert predictor["annotations"][RETENTION_ANNOTATION] == "10m"
    # Knative would fail the revision before a 14B model finishes its startup probe
    startup = predictor["containers"][0]["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    deadline = predictor["annotations"][PROGRESS_DEADLINE_ANNOTATION]
    assert int(deadline.removesuffix("s")) > budget
    raw = build(VARIANTS["chronoedit-raw-everything"])["spec"]["predictor"]["annotations"]
    assert PROGRESS_DEADLINE_ANNOTATION not in raw and RETENTION_ANNOTATION not in raw
    assert predictor["scaleTarget"] == 2
    without = build(CHRONOEDIT)["spec"]["predictor"]["annotations"]
    assert without[CATALOG_HASH_ANNOTATION] != predictor["annotations"][CATALOG_HASH_ANNOTATION]


def test_operator_lora_catalog_configmap() -> None:
    spec = parse_spec(merged(CHRONOEDIT, loras=LORAS), name="upscaler")
    child = build_lora_catalog(OWNER, spec)
    assert child.ref.path == "/api/v1/namespaces/team-a/configmaps/upscaler-loras"
    assert json.loads(child.manifest["data"]["catalog.json"]) == {
        "ink": "https://loras.example.com/ink.safetensors",
        "paint": "hf://nvidia/Paint-Lora/paint.safetensors",
    }
    empty = build_lora_catalog(OWNER, parse_spec(CHRONOEDIT, name="upscaler"))
    assert json.loads(empty.manifest["data"]["catalog.json"]) == {}
    assert "--lora-catalog" not in build(CHRONOEDIT)["spec"]["predictor"]["containers"][0]["args"]


@pytest.mark.parametrize(
    ("mode", "port"), [("Serverless", "user-port"), ("RawDeployment", "http1")]
)
def test_operator_pod_monitor_scrapes_the_predictor(mode: str, port: str) -> None:
    spec = parse_spec(merged(CHRONOEDIT, scaling={"mode": mode, "minReplicas": 1}), name="upscaler")
    child = build_pod_monitor(OWNER, spec)
    assert child.ref.path == (
        "/apis/monitoring.coreos.com/v1/namespaces/team-a/podmonitors/upscaler-predictor"
    )
    body = child.manifest["spec"]
    assert body["selector"]["matchLabels"]["serving.kserve.io/inferenceservice"] == "upscaler"
    assert body["podMetricsEndpoints"] == [{"port": port, "path": "/metrics", "interval": "30s"}]


def test_operator_children_are_named_labelled_and_owned() -> None:
    spec = parse_spec(CHRONOEDIT, name="upscaler")
    children = build_children(OWNER, spec, OPTIONS)
    assert [c.kind for c in children] == ["ConfigMap", "PodMonitor", "InferenceService"]
    for child in children:
        meta = child.manifest["metadata"]
        assert meta["ownerReferences"] == [{
            "apiVersion": "serving.chrono-upscaler.dev/v1alpha1", "kind": "UpscalerDeployment",
            "name": "upscaler", "uid": OWNER.uid, "controller": True, "blockOwnerDeletion": True,
        }]  # fmt: skip
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "upscaler-operator"
        assert meta["labels"]["serving.chrono-upscaler.dev/deployment"] == "upscaler"
        assert meta["annotations"][SPEC_HASH_ANNOTATION] == child.spec_hash
    no_monitoring = build_children(OWNER, spec, BuildOptions(pod_monitor=False))
    assert [c.kind for c in no_monitoring] == ["ConfigMap", "InferenceService"]


def test_operator_builders_are_deterministic_and_hash_the_content() -> None:
    spec = parse_spec(CHRONOEDIT, name="upscaler")
    first, again = (build_children(OWNER, spec, OPTIONS) for _ in range(2))
    assert [c.manifest for c in first] == [c.manifest for c in again]
    changed = parse_spec(merged(CHRONOEDIT, scaling={"maxReplicas": 9}), name="upscaler")
    isvc_before, isvc_after = first[-1], build_children(OWNER, changed, OPTIONS)[-1]
    assert isvc_before.spec_hash != isvc_after.spec_hash
    assert first[0].spec_hash == build_children(OWNER, changed, OPTIONS)[0].spec_hash
