"""Pure builders: an UpscalerDeployment's spec into the manifests of its children.

No API calls and no kopf here, so tests call them directly and validate the output against
KServe's CRD. Every child has a deterministic name, the operator's labels and a controller owner
reference to the UpscalerDeployment (Kubernetes garbage-collects children with their owner).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from upscaler_operator import (
    API_VERSION,
    DEPLOYMENT_LABEL,
    GROUP,
    KIND,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    uris,
)
from upscaler_operator.kube import Ref
from upscaler_operator.spec import DEFAULT_UPSCALER_LORA, DeploymentSpec

ISVC_API_VERSION = "serving.kserve.io/v1beta1"
PODMONITOR_API_VERSION = "monitoring.coreos.com/v1"
DEFAULT_PREDICTOR_IMAGE = "ghcr.io/chrono-upscaler/predictor:0.1.0"

PORT = 8080
#: where KServe's storage initializer puts each storage URI (one emptyDir at the common parent)
MODELS_ROOT = "/mnt/models"
MODEL_DIR = f"{MODELS_ROOT}/model"
LORA_MOUNTS = {"upscaler": f"{MODELS_ROOT}/upscaler-lora", "distill": f"{MODELS_ROOT}/distill-lora"}
CATALOG_DIR = "/etc/chrono-upscaler/loras"
CATALOG_KEY = "catalog.json"
CATALOG_PATH = f"{CATALOG_DIR}/{CATALOG_KEY}"
CATALOG_VOLUME = "lora-catalog"

#: KServe >= 0.16 names the modes Knative and Standard (its webhook rewrites the old names, which
#: would make every reconcile see a changed child)
DEPLOYMENT_MODES = {"Serverless": "Knative", "RawDeployment": "Standard"}
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
AUTOSCALER_CLASS_ANNOTATION = "serving.kserve.io/autoscalerClass"
RETENTION_ANNOTATION = "autoscaling.knative.dev/scale-to-zero-pod-retention-period"
#: Knative fails a revision not ready within its progress deadline (10 min by default)
PROGRESS_DEADLINE_ANNOTATION = "serving.knative.dev/progress-deadline"
PROGRESS_DEADLINE_MARGIN_S = 300
CATALOG_HASH_ANNOTATION = f"{GROUP}/lora-catalog-hash"
#: the hash of what the operator last applied; a child whose hash differs is patched
SPEC_HASH_ANNOTATION = f"{GROUP}/spec-hash"
#: metadata keys the operator owns on children: a patch removes those it no longer wants
MANAGED_ANNOTATIONS = frozenset(
    {DEPLOYMENT_MODE_ANNOTATION, AUTOSCALER_CLASS_ANNOTATION, SPEC_HASH_ANNOTATION}
)
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

#: startup budget: ChronoEdit-14B loads for many minutes from a cold disk; sr in seconds
STARTUP_PROBE = {"chronoedit": (10, 180), "sr": (5, 36)}  # (period s, failures): 30 min, 3 min
#: the route may run a little past the predictor's own deadline so the predictor answers 504
ROUTE_TIMEOUT_MARGIN_S = 30
#: draining: requests in flight may run for a whole request timeout after SIGTERM
DRAIN_MARGIN_S = 60


@dataclass(frozen=True)
class Owner:
    """The UpscalerDeployment the children belong to."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: Any) -> Owner:
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


@dataclass(frozen=True)
class BuildOptions:
    """What the builders need beyond the spec: operator settings and cluster capabilities."""

    predictor_image: str = DEFAULT_PREDICTOR_IMAGE
    pod_monitor: bool = False  # the cluster serves monitoring.coreos.com/v1 podmonitors


@dataclass(frozen=True)
class Child:
    """A manifest with where it goes; ``spec_hash`` fingerprints it for drift detection."""

    ref: Ref
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def spec_hash(self) -> str:
        return self.manifest["metadata"]["annotations"][SPEC_HASH_ANNOTATION]


def isvc_name(owner_name: str) -> str:
    return owner_name


def catalog_name(owner_name: str) -> str:
    return f"{owner_name}-loras"


def pod_monitor_name(owner_name: str) -> str:
    return f"{owner_name}-predictor"


def build_children(owner: Owner, spec: DeploymentSpec, options: BuildOptions) -> list[Child]:
    """Every child the deployment needs, the InferenceService last (it mounts the ConfigMap)."""
    children = [build_lora_catalog(owner, spec)]
    if options.pod_monitor:
        children.append(build_pod_monitor(owner, spec))
    children.append(build_inference_service(owner, spec, options))
    return children


def labels(owner: Owner, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "chrono-upscaler",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": component,
        MANAGED_BY_LABEL: MANAGED_BY,
        DEPLOYMENT_LABEL: owner.name,
    }


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _child(
    owner: Owner,
    api_version: str,
    kind: str,
    plural: str,
    name: str,
    component: str,
    annotations: dict[str, str],
    body: dict[str, Any],
) -> Child:
    manifest: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": labels(owner, component),
            "annotations": dict(annotations),
            "ownerReferences": [owner_reference(owner)],
        },
        **body,
    }
    manifest["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = content_hash(manifest)
    return Child(Ref(api_version, plural, owner.namespace, name), manifest)


def content_hash(value: Any) -> str:
    """A short, stable fingerprint of JSON-able content."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def catalog_json(spec: DeploymentSpec) -> str:
    """The LoRA catalog as the predictor reads it: a JSON object of name → URI."""
    return json.dumps({lora.name: lora.uri for lora in spec.loras}, indent=2, sort_keys=True) + "\n"


def build_lora_catalog(owner: Owner, spec: DeploymentSpec) -> Child:
    """The ConfigMap with the LoRA catalog (always present, ``{}`` when spec.loras is empty)."""
    return _child(
        owner,
        "v1",
        "ConfigMap",
        "configmaps",
        catalog_name(owner.name),
        "lora-catalog",
        {},
        {"data": {CATALOG_KEY: catalog_json(spec)}},
    )


def build_pod_monitor(owner: Owner, spec: DeploymentSpec) -> Child:
    """A PodMonitor scraping the predictor's /metrics.

    Knative renames the serving container's port to ``user-port``; in RawDeployment mode it keeps
    the name the builder gives it.
    """
    port = "user-port" if spec.scaling.mode == "Serverless" else "http1"
    body = {
        "spec": {
            "selector": {
                "matchLabels": {
                    "serving.kserve.io/inferenceservice": isvc_name(owner.name),
                    "component": "predictor",
                }
            },
            "podMetricsEndpoints": [{"port": port, "path": "/metrics", "interval": "30s"}],
        }
    }
    return _child(
        owner,
        PODMONITOR_API_VERSION,
        "PodMonitor",
        "podmonitors",
        pod_monitor_name(owner.name),
        "monitoring",
        {},
        body,
    )


def storage_uris(spec: DeploymentSpec) -> list[dict[str, str]]:
    """KServe storageUris: the model and any LoRA given as a URI, each at its own mount path."""
    if spec.engine != "chronoedit":
        return []
    entries = [{"uri": spec.model.storage_uri or "", "mountPath": MODEL_DIR}]
    for slot, source in _lora_sources(spec).items():
        if uris.scheme_of(source) is not None:
            entries.append({"uri": source, "mountPath": LORA_MOUNTS[slot]})
    return entries


def _lora_sources(spec: DeploymentSpec) -> dict[str, str]:
    sources = {"upscaler": spec.model.upscaler_lora or DEFAULT_UPSCALER_LORA}
    if spec.model.distill_lora:
        sources["distill"] = spec.model.distill_lora
    return sources


def lora_path(slot: str, source: str) -> str:
    """Where a LoRA is inside the pod.

    A relative path lives in the model directory. A URI is downloaded into its own mount: a URI
    naming one ``.safetensors`` object (http, s3, gs) lands as that file; a repository (hf://)
    or a directory lands as a directory, and the predictor takes the one .safetensors in it.
    """
    scheme = uris.scheme_of(source)
    if scheme is None:
        return f"{MODEL_DIR}/{source}"
    basename = source.rstrip("/").rsplit("/", 1)[-1]
    if scheme in ("http", "https", "s3", "gs") and basename.endswith(".safetensors"):
        return f"{LORA_MOUNTS[slot]}/{basename}"
    return LORA_MOUNTS[slot]


def predictor_args(name: str, spec: DeploymentSpec) -> list[str]:
    """``chrono-upscaler`` arguments: the contract with the predictor's ``serve`` command."""
    args = ["serve", "--host", "0.0.0.0", "--port", str(PORT), "--model-name", name]
    args += ["--engine", spec.engine]
    if spec.engine == "chronoedit":
        args += ["--model-dir", MODEL_DIR, "--dtype", spec.model.dtype]
        for slot, source in _lora_sources(spec).items():
            args += [f"--{slot}-lora", lora_path(slot, source)]
        if spec.pricing.gpu_hourly_usd is not None:
            args += ["--gpu-hourly-usd", _number(spec.pricing.gpu_hourly_usd)]
    elif spec.model.sr_model:
        args += ["--sr-model", spec.model.sr_model]
    if spec.loras:
        args += ["--lora-catalog", CATALOG_PATH]
    if spec.defaults.num_inference_steps is not None:
        args += ["--default-num-inference-steps", str(spec.defaults.num_inference_steps)]
    if spec.defaults.output_format is not None:
        args += ["--default-output-format", spec.defaults.output_format]
    args += ["--request-timeout", str(spec.request_timeout_seconds)]
    return args


def _number(value: float) -> str:
    return f"{value:g}" if float(value) != int(value) else str(int(value))


def _resources(spec: DeploymentSpec) -> dict[str, Any]:
    resources = {key: dict(value) for key, value in spec.predictor.resources.items() if value}
    gpus = spec.gpus
    if gpus is not None:
        resources.setdefault("limits", {})[gpus.resource_name] = str(gpus.count)
    return {key: {name: str(q) for name, q in value.items()} for key, value in resources.items()}


def _probe(path: str, period: int, failures: int, timeout: int = 5) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _container(name: str, spec: DeploymentSpec, options: BuildOptions) -> dict[str, Any]:
    readiness_path = f"/v1/models/{name}"  # KServe's model readiness on the same port
    period, failures = STARTUP_PROBE[spec.engine]
    container: dict[str, Any] = {
        "name": "kserve-container",
        "image": spec.predictor.image or options.predictor_image,
        "command": ["chrono-upscaler"],
        "args": predictor_args(name, spec),
        "ports": [{"name": "http1", "containerPort": PORT, "protocol": "TCP"}],
        "startupProbe": _probe(readiness_path, period, failures),
        "readinessProbe": _probe(readiness_path, 10, 3),
        "livenessProbe": _probe("/", 30, 5, timeout=10),
        "volumeMounts": [{"name": CATALOG_VOLUME, "mountPath": CATALOG_DIR, "readOnly": True}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.predictor.image_pull_policy:
        container["imagePullPolicy"] = spec.predictor.image_pull_policy
    if spec.predictor.env:
        container["env"] = [dict(item) for item in spec.predictor.env]
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    return container


def _scheduling(spec: DeploymentSpec) -> dict[str, Any]:
    node_selector = dict(spec.predictor.node_selector)
    tolerations = [dict(item) for item in spec.predictor.tolerations]
    gpus = spec.gpus
    if gpus is not None:
        if gpus.product_selector:
            node_selector[GPU_PRODUCT_LABEL] = gpus.product_selector
        gpu_toleration = {"key": gpus.resource_name, "operator": "Exists", "effect": "NoSchedule"}
        if gpu_toleration not in tolerations:
            tolerations.insert(0, gpu_toleration)
    scheduling: dict[str, Any] = {}
    if node_selector:
        scheduling["nodeSelector"] = node_selector
    if tolerations:
        scheduling["tolerations"] = tolerations
    return scheduling


def build_inference_service(owner: Owner, spec: DeploymentSpec, options: BuildOptions) -> Child:
    """The KServe InferenceService running the predictor image."""
    name = isvc_name(owner.name)
    scaling = spec.scaling
    serverless = scaling.mode == "Serverless"
    annotations = {DEPLOYMENT_MODE_ANNOTATION: DEPLOYMENT_MODES[scaling.mode]}
    if not serverless:
        annotations[AUTOSCALER_CLASS_ANNOTATION] = "hpa"
    pod_annotations = {CATALOG_HASH_ANNOTATION: content_hash(catalog_json(spec))}
    if serverless:
        period, failures = STARTUP_PROBE[spec.engine]
        deadline = period * failures + PROGRESS_DEADLINE_MARGIN_S
        pod_annotations[PROGRESS_DEADLINE_ANNOTATION] = f"{deadline}s"
        if scaling.scale_to_zero_grace_period:
            pod_annotations[RETENTION_ANNOTATION] = scaling.scale_to_zero_grace_period
    predictor: dict[str, Any] = {
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "scaleMetric": "concurrency" if serverless else "cpu",
        "scaleTarget": scaling.target_concurrency if serverless else scaling.target_cpu_utilization,
        # Knative: the revision's request timeout, and (Knative sets it so) the pod's grace period
        "timeout": spec.request_timeout_seconds + ROUTE_TIMEOUT_MARGIN_S,
        "labels": {DEPLOYMENT_LABEL: owner.name},
        "annotations": pod_annotations,
        **_scheduling(spec),
        "containers": [_container(name, spec, options)],
        "volumes": [{"name": CATALOG_VOLUME, "configMap": {"name": catalog_name(owner.name)}}],
    }
    if not serverless:  # Knative refuses this field; it derives the grace period from timeout
        predictor["terminationGracePeriodSeconds"] = spec.request_timeout_seconds + DRAIN_MARGIN_S
    if spec.predictor.service_account_name:
        predictor["serviceAccountName"] = spec.predictor.service_account_name
    storage = storage_uris(spec)
    if storage:
        predictor["storageUris"] = storage
    return _child(
        owner,
        ISVC_API_VERSION,
        "InferenceService",
        "inferenceservices",
        name,
        "predictor",
        annotations,
        {"spec": {"predictor": predictor}},
    )
