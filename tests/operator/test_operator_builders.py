"""Builders: a spec into InferenceService, ConfigMap, PodMonitor and ScaledObject manifests.

Every InferenceService built here is validated against KServe's full v1beta1 CRD schema, and
every ScaledObject against KEDA's (with its CEL rule), both made strict so an invented or
misspelt field fails.
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
    build_scaled_object,
    duration_seconds,
    lora_path,
    predictor_args,
)
from upscaler_operator.spec import parse_spec

from tests.operator.conftest import load_examples, validation_errors
from tests.operator.schema_tools import cel_errors

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
            "compile": False,
            "precision": "fp8",
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
            "env": [  # no HF_HUB_OFFLINE: the catalog's hf:// LoRA is fetched per request
                {"name": "LOG_LEVEL", "value": "DEBUG"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ],
        },
        requestTimeoutSeconds=600,
    ),
    "sr-raw": SR,
    "sr-serverless": {"engine": "sr", "model": {"srModel": "realesrgan"}},
    "chronoedit-raw-queue-secret-s3": merged(
        CHRONOEDIT,
        scaling={"mode": "RawDeployment", "minReplicas": 0, "maxReplicas": 8},
        queue={"redis": {"secretRef": {"name": "redis"}}, "maxQueued": 50, "leaseSeconds": 20},
        outputs={
            "store": "s3",
            "s3": {
                "bucket": "outputs",
                "prefix": "chronoedit/",
                "endpointUrl": "http://minio.storage.svc:9000",
                "publicUrl": "https://cdn.example.com/outputs",
                "region": "eu-west-1",
                "credentialsSecret": {"name": "s3-keys"},
            },
        },
        predictor={"env": [{"name": "HF_HUB_OFFLINE", "value": "1"}]},
    ),
    "sr-raw-queue-url": merged(
        SR,
        scaling={
            "mode": "RawDeployment",
            "minReplicas": 1,
            "maxReplicas": 4,
            "targetQueueLength": 3,
            "scaleToZeroGracePeriod": "90s",
        },
        queue={"redis": {"url": "rediss://redis.queue.svc:6380/2"}, "prefix": "shared"},
    ),
    "chronoedit-serverless-queue": merged(
        CHRONOEDIT,
        queue={"redis": {"url": "redis://redis.queue.svc"}},
        outputs={"store": "redis"},
    ),
}
#: the variants that get a ScaledObject where KEDA is installed
KEDA_VARIANTS = ["chronoedit-raw-queue-secret-s3", "sr-raw-queue-url"]
KEDA_OPTIONS = BuildOptions(predictor_image="registry.example.com/predictor:1", keda=True)


def build(spec: dict[str, Any], options: BuildOptions = OPTIONS) -> dict[str, Any]:
    return build_inference_service(OWNER, parse_spec(spec, name=OWNER.name), options).manifest


@pytest.mark.parametrize("keda", [False, True], ids=["without-keda", "with-keda"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_operator_inference_service_validates_against_kserve_crd(
    variant: str, keda: bool, kserve_validator
) -> None:
    manifest = build(VARIANTS[variant], KEDA_OPTIONS if keda else OPTIONS)
    assert validation_errors(kserve_validator, manifest) == []


def scaled_object(spec: dict[str, Any], owner: Owner = OWNER) -> dict[str, Any]:
    return build_scaled_object(owner, parse_spec(spec, name=owner.name)).manifest


@pytest.mark.parametrize("variant", KEDA_VARIANTS)
def test_operator_scaled_object_validates_against_keda_crd(
    variant: str, keda_validator, keda_schema
) -> None:
    manifest = scaled_object(VARIANTS[variant])
    assert validation_errors(keda_validator, manifest) == []
    assert cel_errors(keda_schema, manifest) == []  # KEDA's own rule: min ≤ max


@pytest.mark.parametrize(
    ("where", "typo"),
    [
        (("spec",), "minReplicas"),  # KEDA's is minReplicaCount
        (("spec", "scaleTargetRef"), "namespace"),
        (("spec", "triggers", 0), "metdata"),
        (("spec", "advanced"), "restoreToOriginalReplicas"),
        (("spec", "advanced", "scalingModifiers"), "activation"),
    ],
)
def test_operator_keda_validation_rejects_a_typo(where: tuple, typo: str, keda_validator) -> None:
    manifest = scaled_object(VARIANTS["sr-raw-queue-url"])
    node: Any = manifest
    for key in where:
        node = node[key]
    node[typo] = "x"
    errors = validation_errors(keda_validator, manifest)
    assert any("Additional properties are not allowed" in e and repr(typo) in e for e in errors)


def test_operator_keda_validation_rejects_bad_values(keda_validator, keda_schema) -> None:
    manifest = scaled_object(VARIANTS["sr-raw-queue-url"])
    manifest["spec"]["triggers"][0]["metadata"]["listLength"] = 3  # metadata values are strings
    assert validation_errors(keda_validator, manifest)
    manifest = scaled_object(VARIANTS["sr-raw-queue-url"])
    manifest["spec"]["minReplicaCount"] = 9  # above maxReplicaCount: KEDA's CEL rule
    assert validation_errors(keda_validator, manifest) == []
    assert cel_errors(keda_schema, manifest) == [
        "minReplicaCount must be less than or equal to maxReplicaCount"
    ]


@pytest.mark.parametrize(("filename", "body"), load_examples(), ids=lambda v: str(v)[:30])
def test_operator_examples_build_valid_children(
    filename: str, body: dict[str, Any], kserve_validator, keda_validator, keda_schema
) -> None:
    spec = parse_spec(body["spec"], name=body["metadata"]["name"])
    owner = Owner(body["metadata"]["name"], body["metadata"]["namespace"], "uid")
    for options in (OPTIONS, KEDA_OPTIONS):
        for child in build_children(owner, spec, options):
            if child.kind == "InferenceService":
                assert validation_errors(kserve_validator, child.manifest) == []
            if child.kind == "ScaledObject":
                assert validation_errors(keda_validator, child.manifest) == []
                assert cel_errors(keda_schema, child.manifest) == []


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
    # explicit CPU and memory on both sides: KServe would fill a missing one with its own small
    # defaults (cpu 1, 2Gi)
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": "64Gi"},
        "limits": {"cpu": "8", "memory": "96Gi", "nvidia.com/gpu": "2"},
    }
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
    # the route (and Knative's activator) holds a request through a start from zero: 300 s of
    # request, 120 s of measured start, 30 s so the predictor's own 504 comes first
    assert predictor["timeout"] == 450 and "terminationGracePeriodSeconds" not in predictor
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/v1/models/upscaler", "port": 8080}
    # five measured starts (2 min each by default): 10 minutes, the issue's ceiling
    assert startup["periodSeconds"] * startup["failureThreshold"] == 10 * 60
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
        "--no-compile",
        "--precision", "fp8",
        "--upscaler-lora", "/mnt/models/upscaler-lora/upsample.safetensors",
        "--distill-lora", "/mnt/models/model/lora/chronoedit_distill_lora.safetensors",
        "--gpu-hourly-usd", "2.5",
        "--lora-catalog", CATALOG_PATH,
        "--default-num-inference-steps", "8",
        "--default-output-format", "webp",
        "--shutdown-grace", "300",
        "--request-timeout", "300",
    ]  # fmt: skip
    sr = parse_spec({"engine": "sr", "model": {"srModel": "realesrgan"}}, name="fast")
    assert predictor_args("fast", sr) == [
        "serve", "--host", "0.0.0.0", "--port", "8080", "--model-name", "fast",
        "--engine", "sr", "--sr-model", "realesrgan",
        "--shutdown-grace", "300", "--request-timeout", "300",
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
        # KServe mounts a pvc:// entry of storageUris as the whole claim: the sub-path follows
        ("distill", "pvc://weights/loras/distill", "/mnt/models/distill-lora/loras/distill"),
        ("distill", "pvc://weights", "/mnt/models/distill-lora"),
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
        # the CPU limit filled (at least the request): KServe's default of 1 would undercut it
        "limits": {"memory": "120Gi", "cpu": "8", "nvidia.com/gpu": "2"},
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
    assert container["resources"] == {  # the sr defaults, explicit (no GPU)
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }
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


def test_operator_queue_and_outputs_args_are_the_contract_with_the_predictor() -> None:
    spec = parse_spec(VARIANTS["sr-raw-queue-url"], name="fast")
    args = predictor_args("fast", spec, "team-a")
    assert args[args.index("--request-timeout") + 2 :] == [
        "--redis-url", "rediss://redis.queue.svc:6380/2",
        "--redis-prefix", "shared",
        "--output-store", "redis",  # the default with a shared queue
    ]  # fmt: skip
    spec = parse_spec(VARIANTS["chronoedit-raw-queue-secret-s3"], name="upscaler")
    args = predictor_args("upscaler", spec, "team-a")
    assert args[args.index("--request-timeout") + 2 :] == [
        "--redis-prefix", "team-a:upscaler",  # <namespace>:<name>: unique per deployment
        "--max-queued", "50",
        "--queue-lease", "20",
        "--output-store", "s3://outputs/chronoedit",
        "--s3-endpoint-url", "http://minio.storage.svc:9000",
        "--s3-public-url", "https://cdn.example.com/outputs",
    ]  # fmt: skip
    assert "--redis-url" not in args  # it comes from the Secret, by env
    plain = predictor_args("upscaler", parse_spec(CHRONOEDIT, name="upscaler"), "team-a")
    assert not any(arg.startswith(("--redis", "--output-store", "--s3")) for arg in plain)


def test_operator_secrets_reach_the_predictor_by_reference_only() -> None:
    manifest = build(VARIANTS["chronoedit-raw-queue-secret-s3"], KEDA_OPTIONS)
    (container,) = manifest["spec"]["predictor"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    secret_refs = {
        name: item["valueFrom"]["secretKeyRef"] for name, item in env.items() if "valueFrom" in item
    }
    assert secret_refs == {
        "UPSCALER_REDIS_URL": {"name": "redis", "key": "url"},
        "UPSCALER_REDIS_ADDRESS": {"name": "redis", "key": "address", "optional": True},
        "UPSCALER_REDIS_USERNAME": {"name": "redis", "key": "username", "optional": True},
        "UPSCALER_REDIS_PASSWORD": {"name": "redis", "key": "password", "optional": True},
        "AWS_ACCESS_KEY_ID": {"name": "s3-keys", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "s3-keys", "key": "AWS_SECRET_ACCESS_KEY"},
    }
    assert env["AWS_DEFAULT_REGION"] == {"name": "AWS_DEFAULT_REGION", "value": "eu-west-1"}
    assert container["env"][-1] == {"name": "HF_HUB_OFFLINE", "value": "1"}  # the user's, last
    text = json.dumps(container["args"])
    assert not any(word in text for word in ("redis-url", "s3-keys", "AWS_", "secret", "@"))
    # nothing secret anywhere in the manifests: only names of Secrets and of their keys
    everything = json.dumps([c.manifest for c in build_children(
        OWNER, parse_spec(VARIANTS["chronoedit-raw-queue-secret-s3"], name="upscaler"), KEDA_OPTIONS
    )])  # fmt: skip
    assert "redis://" not in everything and 'password": "' not in everything


def test_operator_custom_secret_keys_for_s3() -> None:
    spec = merged(
        VARIANTS["chronoedit-raw-queue-secret-s3"],
        outputs={"store": "s3", "s3": {"bucket": "bkt", "credentialsSecret": {
            "name": "minio", "accessKeyIdKey": "accesskey", "secretAccessKeyKey": "secretkey"}}},
    )  # fmt: skip
    (container,) = build(spec)["spec"]["predictor"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs["AWS_ACCESS_KEY_ID"] == {"name": "minio", "key": "accesskey"}
    assert refs["AWS_SECRET_ACCESS_KEY"] == {"name": "minio", "key": "secretkey"}
    assert container["args"][-2:] == ["--output-store", "s3://bkt"]


def test_operator_raw_deployment_with_a_queue_leaves_scaling_to_keda() -> None:
    manifest = build(VARIANTS["chronoedit-raw-queue-secret-s3"], KEDA_OPTIONS)
    meta, predictor = manifest["metadata"], manifest["spec"]["predictor"]
    assert meta["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    # KServe then makes no HPA and leaves the Deployment's replicas to KEDA
    assert meta["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    assert "scaleMetric" not in predictor and "scaleTarget" not in predictor
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (0, 8)
    assert predictor["terminationGracePeriodSeconds"] > 300  # a draining replica hands work back


def test_operator_raw_deployment_with_a_queue_but_no_keda_falls_back_to_kserve_hpa() -> None:
    manifest = build(VARIANTS["chronoedit-raw-queue-secret-s3"], OPTIONS)
    meta, predictor = manifest["metadata"], manifest["spec"]["predictor"]
    assert meta["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("cpu", 80)
    assert predictor["minReplicas"] == 1  # nothing would wake a Deployment at zero
    spec = parse_spec(VARIANTS["chronoedit-raw-queue-secret-s3"], name="upscaler")
    assert [c.kind for c in build_children(OWNER, spec, OPTIONS)] == [
        "ConfigMap", "PodMonitor", "InferenceService"
    ]  # fmt: skip


def test_operator_serverless_with_a_queue_keeps_knative() -> None:
    manifest = build(VARIANTS["chronoedit-serverless-queue"], KEDA_OPTIONS)
    meta, predictor = manifest["metadata"], manifest["spec"]["predictor"]
    assert meta["annotations"] == {
        "serving.kserve.io/deploymentMode": "Knative",
        SPEC_HASH_ANNOTATION: meta["annotations"][SPEC_HASH_ANNOTATION],
    }
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", 1)
    spec = parse_spec(VARIANTS["chronoedit-serverless-queue"], name="upscaler")
    assert "ScaledObject" not in [c.kind for c in build_children(OWNER, spec, KEDA_OPTIONS)]
    args = predictor["containers"][0]["args"]
    assert args[-6:] == [
        "--redis-url", "redis://redis.queue.svc", "--redis-prefix", "team-a:upscaler",
        "--output-store", "redis",
    ]  # fmt: skip


def test_operator_scaled_object_scales_the_predictor_deployment_on_the_queue() -> None:
    spec = parse_spec(VARIANTS["chronoedit-raw-queue-secret-s3"], name="upscaler")
    child = build_scaled_object(OWNER, spec)
    assert child.ref.path == (
        "/apis/keda.sh/v1alpha1/namespaces/team-a/scaledobjects/upscaler-predictor"
    )
    manifest = child.manifest
    assert (manifest["apiVersion"], manifest["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    body = manifest["spec"]
    # KServe's Deployment for the predictor in Standard mode: <isvc>-predictor
    assert body["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "upscaler-predictor",
        "envSourceContainerName": "kserve-container",
    }
    assert (body["minReplicaCount"], body["maxReplicaCount"]) == (0, 8)
    assert "cooldownPeriod" not in body  # KEDA's default, 300 s
    assert body["advanced"]["restoreToOriginalReplicaCount"] is True
    assert body["advanced"]["scalingModifiers"] == {
        "formula": "running * 2 + waiting",
        "target": "2",
        "activationTarget": "0",
        "metricType": "AverageValue",
    }
    waiting, running = body["triggers"]
    assert (waiting["type"], waiting["name"], running["name"]) == ("redis", "waiting", "running")
    # the Redis from a Secret: KEDA reads host:port and credentials through the container's env
    assert waiting["metadata"] == {
        "addressFromEnv": "UPSCALER_REDIS_ADDRESS",
        "usernameFromEnv": "UPSCALER_REDIS_USERNAME",
        "passwordFromEnv": "UPSCALER_REDIS_PASSWORD",
        "databaseIndex": "0",
        "enableTLS": "false",
        "listName": "team-a:upscaler:waiting",
        "listLength": "2",
        "activationListLength": "0",
    }
    assert running["metadata"]["listName"] == "team-a:upscaler:running"


def test_operator_scaled_object_from_a_plain_url_and_options() -> None:
    body = scaled_object(VARIANTS["sr-raw-queue-url"])["spec"]
    waiting = body["triggers"][0]["metadata"]
    assert (waiting["address"], waiting["databaseIndex"], waiting["enableTLS"]) == (
        "redis.queue.svc:6380", "2", "true"
    )  # fmt: skip
    assert not any(key.endswith("FromEnv") for key in waiting)
    assert waiting["listName"] == "shared:waiting"  # spec.queue.prefix, shared on purpose
    assert body["cooldownPeriod"] == 90
    assert body["minReplicaCount"] == 1
    assert body["advanced"]["scalingModifiers"]["formula"] == "running * 3 + waiting"
    secret = merged(VARIANTS["chronoedit-raw-queue-secret-s3"], queue={"redis": {
        "secretRef": {"name": "r", "key": "uri"}, "databaseIndex": 4, "tls": True}})  # fmt: skip
    metadata = scaled_object(secret)["spec"]["triggers"][1]["metadata"]
    assert (metadata["databaseIndex"], metadata["enableTLS"]) == ("4", "true")
    ipv6 = merged(SR, queue={"redis": {"url": "redis://[fd00::1]"}})
    metadata = scaled_object(ipv6)["spec"]["triggers"][0]["metadata"]
    assert (metadata["address"], metadata["databaseIndex"]) == ("[fd00::1]:6379", "0")


def test_operator_children_with_keda_end_with_the_scaled_object() -> None:
    spec = parse_spec(VARIANTS["chronoedit-raw-queue-secret-s3"], name="upscaler")
    options = BuildOptions(pod_monitor=True, keda=True)
    children = build_children(OWNER, spec, options)
    assert [c.kind for c in children] == [
        "ConfigMap", "PodMonitor", "InferenceService", "ScaledObject"
    ]  # fmt: skip
    meta = children[-1].manifest["metadata"]
    assert meta["ownerReferences"][0]["uid"] == OWNER.uid
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "upscaler-operator"
    assert meta["labels"]["serving.chrono-upscaler.dev/deployment"] == "upscaler"
    assert meta["annotations"][SPEC_HASH_ANNOTATION] == children[-1].spec_hash
    for mode_change in ({"mode": "Serverless"}, {"mode": "RawDeployment", "minReplicas": 1}):
        other = merged(VARIANTS["chronoedit-raw-queue-secret-s3"], scaling=mode_change)
        if "minReplicas" in mode_change:
            other.pop("queue")
            other.pop("outputs")
        kinds = [c.kind for c in build_children(OWNER, parse_spec(other, name="up"), options)]
        assert "ScaledObject" not in kinds


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [("300s", 300), ("10m", 600), ("1h30m", 5400), ("1.5h", 5400), ("500ms", 1), ("2m0.5s", 121)],
)
def test_operator_durations_in_whole_seconds(duration: str, seconds: int) -> None:
    assert duration_seconds(duration) == seconds
