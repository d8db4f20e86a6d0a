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
from upscaler_operator import spec as spec_module
from upscaler_operator.kube import Ref
from upscaler_operator.spec import (
    DEFAULT_UPSCALER_LORA,
    DeploymentSpec,
    duration_seconds,
    quantity,
)

ISVC_API_VERSION = "serving.kserve.io/v1beta1"
PODMONITOR_API_VERSION = "monitoring.coreos.com/v1"
KEDA_API_VERSION = "keda.sh/v1alpha1"
#: the predictor's two variants (predictor/Dockerfile, tools/build-images.sh): CUDA for deployments
#: with GPUs (chronoedit), the CPU-only build (tag suffix -cpu, ~2 GB smaller) for the rest (sr)
DEFAULT_PREDICTOR_IMAGE = "ghcr.io/chrono-upscaler/predictor:0.1.0"
DEFAULT_PREDICTOR_CPU_IMAGE = "ghcr.io/chrono-upscaler/predictor:0.1.0-cpu"
CPU_TAG_SUFFIX = "-cpu"

PORT = 8080
#: where KServe's storage initializer puts each storage URI (one emptyDir at the common parent);
#: a single legacy storage URI (STORAGE_URI, what the node cache serves) fills it whole
MODELS_ROOT = "/mnt/models"
MODEL_DIR = f"{MODELS_ROOT}/model"
LORA_MOUNTS = {"upscaler": f"{MODELS_ROOT}/upscaler-lora", "distill": f"{MODELS_ROOT}/distill-lora"}
CATALOG_DIR = "/etc/chrono-upscaler/loras"
CATALOG_KEY = "catalog.json"
CATALOG_PATH = f"{CATALOG_DIR}/{CATALOG_KEY}"
CATALOG_VOLUME = "lora-catalog"
#: spec.model.cache.claimName: compiled kernels and the prompt's embeddings (--cache-dir)
STARTUP_CACHE_DIR = "/var/cache/chrono-upscaler"
STARTUP_CACHE_VOLUME = "startup-cache"
#: KServe reads a custom container's single storage URI from this env (CustomSpecStorageUri)
STORAGE_URI_ENV = "STORAGE_URI"
LOCAL_MODEL_API_VERSION = "serving.kserve.io/v1alpha1"
#: the InferenceService annotation KServe matches against a cache's nodeGroups
NODE_GROUP_ANNOTATION = "serving.kserve.io/nodegroup"
#: what KServe's webhook writes on an InferenceService it serves from a node cache; it never
#: clears them once the service has no single storage URI, so a patch drops them and the webhook
#: writes them again on the way in while the service still uses a cache
LOCAL_MODEL_LABEL = "internal.serving.kserve.io/localmodel"
KSERVE_LOCAL_MODEL_LABELS = frozenset(
    {LOCAL_MODEL_LABEL, "internal.serving.kserve.io/localmodel-namespace"}
)
KSERVE_LOCAL_MODEL_ANNOTATIONS = frozenset(
    {
        "internal.serving.kserve.io/localmodel-sourceuri",
        "internal.serving.kserve.io/localmodel-pvc-name",
    }
)

#: KServe >= 0.16 names the modes Knative and Standard (its webhook rewrites the old names, which
#: would make every reconcile see a changed child)
DEPLOYMENT_MODES = {"Serverless": "Knative", "RawDeployment": "Standard"}
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
AUTOSCALER_CLASS_ANNOTATION = "serving.kserve.io/autoscalerClass"
RETENTION_ANNOTATION = "autoscaling.knative.dev/scale-to-zero-pod-retention-period"
#: Knative fails a revision not ready within its progress deadline (10 min by default)
PROGRESS_DEADLINE_ANNOTATION = "serving.knative.dev/progress-deadline"
PROGRESS_DEADLINE_MARGIN_S = 60
CATALOG_HASH_ANNOTATION = f"{GROUP}/lora-catalog-hash"
#: the hash of what the operator last applied; a child whose hash differs is patched
SPEC_HASH_ANNOTATION = f"{GROUP}/spec-hash"
#: metadata keys the operator owns on children: a patch removes those it no longer wants
MANAGED_ANNOTATIONS = frozenset(
    {
        DEPLOYMENT_MODE_ANNOTATION,
        AUTOSCALER_CLASS_ANNOTATION,
        SPEC_HASH_ANNOTATION,
        NODE_GROUP_ANNOTATION,
    }
)
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
CONTAINER_NAME = "kserve-container"

#: who scales the predictor (see ``autoscaler``)
KNATIVE, HPA, KEDA, HPA_WITHOUT_KEDA = "knative", "hpa", "keda", "hpa-without-keda"
#: KServe creates no HPA of its own for this class and leaves the Deployment's replicas alone
EXTERNAL_AUTOSCALER_CLASS = "external"
#: the Redis keys of the shared queue (predictor/queue/redis.py): waiting ids, running leases
WAITING_SUFFIX, RUNNING_SUFFIX = ":waiting", ":running"

#: the startup probe's period per engine; its failures follow from the startup budget
STARTUP_PROBE_PERIOD_S = {"chronoedit": 10, "sr": 5}
#: the startup budget is this many measured starts (spec.startupSeconds): room for a node-cache
#: miss that downloads the weights again and an image pull (docs/operator.md, Cold starts)
STARTUP_BUDGET_FACTOR = 5
#: the route may run a little past the predictor's own deadline so the predictor answers 504
ROUTE_TIMEOUT_MARGIN_S = 30
#: the pod's termination grace period runs this much past the predictor's --shutdown-grace: after
#: the grace the predictor waits up to 10 s for stopped jobs to reach their next step or tile and
#: up to 5 s for webhooks, then exits, all before the kubelet's SIGKILL
SHUTDOWN_MARGIN_S = 20
#: CPU and memory when spec.predictor.resources leaves them out: explicit requests AND limits,
#: because KServe's webhook fills a missing one from inferenceservice-config (cpu 1, 2Gi), which
#: would cap a larger request (an invalid pod) or silently cap the memory at 2 GiB
DEFAULT_RESOURCES = {
    "chronoedit": {
        "requests": {"cpu": "4", "memory": "64Gi"},
        "limits": {"cpu": "8", "memory": "96Gi"},
    },
    "sr": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
}
#: KEDA names its HPA keda-hpa-<ScaledObject> unless told; that would pass 63 characters
KEDA_HPA_SUFFIX = "-keda"


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

    predictor_image: str = DEFAULT_PREDICTOR_IMAGE  # deployments with GPUs: the CUDA variant
    predictor_cpu_image: str = DEFAULT_PREDICTOR_CPU_IMAGE  # deployments without: the CPU one
    pod_monitor: bool = False  # the cluster serves monitoring.coreos.com/v1 podmonitors
    keda: bool = False  # the cluster serves keda.sh/v1alpha1 scaledobjects
    #: the cluster serves LocalModelNamespaceCaches and has spec.model.cache.nodeGroup
    local_model_cache: bool = False


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


def predictor_image(spec: DeploymentSpec, options: BuildOptions) -> str:
    """spec.predictor.image, else the operator's image for the deployment's accelerator."""
    if spec.predictor.image:
        return spec.predictor.image
    return options.predictor_image if spec.gpus is not None else options.predictor_cpu_image


def image_variant(image: str, options: BuildOptions) -> str | None:
    """``cpu`` or ``cuda`` where the image's variant is known, else None: the operator's own two
    images, or a tag ending in ``-cpu`` (how tools/build-images.sh tags the CPU variant)."""
    if image == options.predictor_cpu_image:
        return "cpu"
    if image == options.predictor_image and not _tag(image).endswith(CPU_TAG_SUFFIX):
        return "cuda"
    return "cpu" if _tag(image).endswith(CPU_TAG_SUFFIX) else None


def _tag(image: str) -> str:
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.partition(":")[2]


def image_errors(spec: DeploymentSpec, options: BuildOptions) -> list[str]:
    """A CPU-only predictor image on a deployment that asks for GPUs: it could not use them."""
    gpus, image = spec.gpus, predictor_image(spec, options)
    if gpus is None or image_variant(image, options) != "cpu":
        return []
    source = "spec.predictor.image" if spec.predictor.image else "the operator's PREDICTOR_IMAGE"
    return [
        f"{source}: {image} is the CPU-only predictor image, but this deployment asks for "
        f"{gpus.count} {gpus.resource_name} per replica ({spec.engine} runs on CUDA); use the "
        f"CUDA image (the same tag without {CPU_TAG_SUFFIX}, built by tools/build-images.sh)"
    ]


def isvc_name(owner_name: str) -> str:
    return owner_name


def catalog_name(owner_name: str) -> str:
    return f"{owner_name}-loras"


def pod_monitor_name(owner_name: str) -> str:
    return f"{owner_name}-predictor"


def scaled_object_name(owner_name: str) -> str:
    return f"{owner_name}-predictor"


def keda_hpa_name(owner_name: str) -> str:
    """The HPA KEDA makes for the ScaledObject (``advanced.horizontalPodAutoscalerConfig.name``)."""
    return f"{scaled_object_name(owner_name)}{KEDA_HPA_SUFFIX}"


def predictor_deployment_name(owner_name: str) -> str:
    """The Deployment KServe makes for the predictor in Standard (RawDeployment) mode."""
    return f"{isvc_name(owner_name)}-predictor"


def model_cache_name(owner_name: str, storage_uri: str) -> str:
    """Named for the URI too: KServe makes sourceModelUri immutable, so another URI is another
    cache (the old one is deleted once KServe has moved the InferenceService off it)."""
    return f"{owner_name}-model-{hashlib.sha256(storage_uri.encode()).hexdigest()[:8]}"


def model_caches_ref(namespace: str) -> Ref:
    return Ref(LOCAL_MODEL_API_VERSION, "localmodelnamespacecaches", namespace)


def node_cached(spec: DeploymentSpec, options: BuildOptions) -> bool:
    """The weights come from KServe's node-local cache: asked for, and the cluster has it."""
    return spec.engine == "chronoedit" and spec.model.cache.enabled and options.local_model_cache


def startup_budget_s(spec: DeploymentSpec) -> int:
    """How long a start may take before Kubernetes and Knative give up on it."""
    return spec.startup_seconds * STARTUP_BUDGET_FACTOR


def scaled_object_ref(owner: Owner) -> Ref:
    return Ref(KEDA_API_VERSION, "scaledobjects", owner.namespace, scaled_object_name(owner.name))


def queue_prefix(namespace: str, name: str, spec: DeploymentSpec) -> str | None:
    """The shared queue's Redis key prefix: spec.queue.prefix, else ``<namespace>:<name>``.

    ``:`` cannot occur in a namespace or a name, so no two deployments get the same default.
    """
    if spec.queue is None:
        return None
    return spec.queue.prefix or f"{namespace}:{name}"


def wants_keda(spec: DeploymentSpec) -> bool:
    """RawDeployment with a shared queue: KEDA should scale it on the queue."""
    return spec.scaling.mode == "RawDeployment" and spec.queue is not None


def autoscaler(spec: DeploymentSpec, options: BuildOptions) -> str:
    """Who scales the predictor: Knative (Serverless), KServe's HPA on CPU (RawDeployment), KEDA
    on the queue (RawDeployment with spec.queue), or, where KEDA is not installed, KServe's HPA
    instead (``HPA_WITHOUT_KEDA``: at least one replica, since nothing would wake it from zero).
    """
    if spec.scaling.mode == "Serverless":
        return KNATIVE
    if not wants_keda(spec):
        return HPA
    return KEDA if options.keda else HPA_WITHOUT_KEDA


def build_children(owner: Owner, spec: DeploymentSpec, options: BuildOptions) -> list[Child]:
    """Every child the deployment needs, in the order they are applied.

    The InferenceService comes after the ConfigMap it mounts, and the ScaledObject after the
    InferenceService: KServe drops its own HPA (autoscalerClass external) before KEDA's appears.
    """
    children = [build_lora_catalog(owner, spec)]
    if node_cached(spec, options):
        children.append(build_model_cache(owner, spec))
    if options.pod_monitor:
        children.append(build_pod_monitor(owner, spec))
    children.append(build_inference_service(owner, spec, options))
    if autoscaler(spec, options) == KEDA:
        children.append(build_scaled_object(owner, spec))
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


def build_model_cache(owner: Owner, spec: DeploymentSpec) -> Child:
    """A LocalModelNamespaceCache: KServe keeps the model on the node group's disks, and an
    InferenceService in this namespace whose storage URI matches mounts that copy."""
    cache = spec.model.cache
    body: dict[str, Any] = {
        "sourceModelUri": spec.model.storage_uri or "",
        "modelSize": cache.model_size,
        "nodeGroups": [cache.node_group or ""],
    }
    if spec.predictor.service_account_name:  # whose credentials fetch the weights
        body["serviceAccountName"] = spec.predictor.service_account_name
    return _child(
        owner,
        LOCAL_MODEL_API_VERSION,
        "LocalModelNamespaceCache",
        "localmodelnamespacecaches",
        model_cache_name(owner.name, spec.model.storage_uri or ""),
        "model-cache",
        {},
        {"spec": body},
    )


def storage_uris(spec: DeploymentSpec, cached: bool = False) -> list[dict[str, str]]:
    """KServe storageUris: the model and any LoRA given as a URI, each at its own mount path;
    none when the node cache serves the model (KServe refuses storageUris beside it)."""
    if spec.engine != "chronoedit" or cached:
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


def mounted_path(uri: str, mount: str) -> str:
    """Where a storage URI's content is inside the pod, given its storageUris mount path.

    KServe mounts a ``pvc://claim/sub/path`` entry of storageUris as the whole claim at the
    mount path (no subPath), so the sub-path is appended here; a downloaded URI fills the mount.
    """
    if uris.scheme_of(uri) == "pvc":
        sub_path = uri.split("://", 1)[1].partition("/")[2].strip("/")
        return f"{mount}/{sub_path}" if sub_path else mount
    return mount


def model_dir(spec: DeploymentSpec, cached: bool = False) -> str:
    """The predictor's --model-dir: the model's mount, plus a pvc:// URI's sub-path. From the
    node cache the model fills KServe's single-URI mount, /mnt/models."""
    if cached:
        return MODELS_ROOT
    return mounted_path(spec.model.storage_uri or "", MODEL_DIR)


def lora_path(
    slot: str, source: str, spec: DeploymentSpec | None = None, cached: bool = False
) -> str:
    """Where a LoRA is inside the pod.

    A relative path lives in the model directory. A URI is downloaded into its own mount: a URI
    naming one ``.safetensors`` object (http, s3, gs) lands as that file; a repository (hf://)
    or a directory lands as a directory, and the predictor takes the one .safetensors in it; a
    pvc:// claim is mounted whole, so its sub-path follows the mount.
    """
    scheme = uris.scheme_of(source)
    if scheme is None:
        return f"{model_dir(spec, cached) if spec is not None else MODEL_DIR}/{source}"
    if scheme == "pvc":
        return mounted_path(source, LORA_MOUNTS[slot])
    basename = source.rstrip("/").rsplit("/", 1)[-1]
    if scheme in ("http", "https", "s3", "gs") and basename.endswith(".safetensors"):
        return f"{LORA_MOUNTS[slot]}/{basename}"
    return LORA_MOUNTS[slot]


def predictor_args(
    name: str, spec: DeploymentSpec, namespace: str = "default", cached: bool = False
) -> list[str]:
    """``chrono-upscaler`` arguments: the contract with the predictor's ``serve`` command.

    Never a secret: a Redis URL from a Secret reaches the predictor as UPSCALER_REDIS_URL (its
    --redis-url default), S3 keys as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
    """
    args = ["serve", "--host", "0.0.0.0", "--port", str(PORT), "--model-name", name]
    args += ["--engine", spec.engine]
    if spec.engine == "chronoedit":
        args += ["--model-dir", model_dir(spec, cached), "--dtype", spec.model.dtype]
        args += ["--compile" if spec.model.compile else "--no-compile"]
        args += ["--precision", spec.model.precision]
        for slot, source in _lora_sources(spec).items():
            args += [f"--{slot}-lora", lora_path(slot, source, spec, cached)]
        if spec.model.cache.claim_name:
            args += ["--cache-dir", STARTUP_CACHE_DIR]
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
    args += ["--shutdown-grace", str(spec.shutdown_grace)]
    args += ["--request-timeout", str(spec.request_timeout_seconds)]
    return args + _queue_args(name, spec, namespace) + _output_args(spec)


def _queue_args(name: str, spec: DeploymentSpec, namespace: str) -> list[str]:
    queue = spec.queue
    if queue is None:
        return []
    args = []
    if queue.redis.url is not None:  # no credentials (checked); a Secret's URL goes by env
        args += ["--redis-url", queue.redis.url]
    args += ["--redis-prefix", queue_prefix(namespace, name, spec) or ""]
    if queue.max_queued is not None:
        args += ["--max-queued", str(queue.max_queued)]
    if queue.lease_seconds is not None:
        args += ["--queue-lease", str(queue.lease_seconds)]
    return args


def _output_args(spec: DeploymentSpec) -> list[str]:
    outputs = spec.outputs
    if outputs.s3 is not None:
        args = ["--output-store", outputs.s3.url]
        if outputs.s3.endpoint_url:
            args += ["--s3-endpoint-url", outputs.s3.endpoint_url]
        if outputs.s3.public_url:
            args += ["--s3-public-url", outputs.s3.public_url]
        return args
    if outputs.store != "memory":
        return ["--output-store", outputs.store]
    return []


def _secret_env(name: str, secret: str, key: str, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def operator_env(spec: DeploymentSpec) -> list[dict[str, Any]]:
    """The predictor's environment from spec.queue and spec.outputs: secrets by reference only.

    A Redis in a Secret: its URL for the predictor, and (optional keys, read by KEDA through
    ``addressFromEnv``/``usernameFromEnv``/``passwordFromEnv``) its host:port and credentials.
    """
    env: list[dict[str, Any]] = []
    secret = spec.queue.redis.secret if spec.queue is not None else None
    if secret is not None:
        env += [
            _secret_env(spec_module.REDIS_URL_ENV, secret.name, secret.key),
            _secret_env(spec_module.REDIS_ADDRESS_ENV, secret.name, "address", optional=True),
            _secret_env(spec_module.REDIS_USERNAME_ENV, secret.name, "username", optional=True),
            _secret_env(spec_module.REDIS_PASSWORD_ENV, secret.name, "password", optional=True),
        ]
    s3 = spec.outputs.s3
    if s3 is not None and s3.credentials is not None:
        credentials = s3.credentials
        env += [
            _secret_env(
                spec_module.S3_ACCESS_KEY_ENV, credentials.name, credentials.access_key_id_key
            ),
            _secret_env(
                spec_module.S3_SECRET_KEY_ENV, credentials.name, credentials.secret_access_key_key
            ),
        ]
    if s3 is not None and s3.region:
        env.append({"name": spec_module.S3_REGION_ENV, "value": s3.region})
    return env


def _number(value: float) -> str:
    return f"{value:g}" if float(value) != int(value) else str(int(value))


def _resources(spec: DeploymentSpec) -> dict[str, Any]:
    """The container's resources: CPU and memory always with both a request and a limit.

    What spec.predictor.resources gives is kept; a missing side is filled from the given one and
    the engine's default (``DEFAULT_RESOURCES``): a missing limit is the larger of the request
    and the default limit, a missing request the smaller of the limit and the default request.
    """
    resources = {key: dict(value) for key, value in spec.predictor.resources.items() if value}
    requests, limits = resources.setdefault("requests", {}), resources.setdefault("limits", {})
    defaults = DEFAULT_RESOURCES[spec.engine]
    for name in ("cpu", "memory"):
        request, limit = requests.get(name), limits.get(name)
        default_request, default_limit = defaults["requests"][name], defaults["limits"][name]
        if request is None and limit is None:
            requests[name], limits[name] = default_request, default_limit
        elif limit is None:
            limits[name] = max(request, default_limit, key=quantity)
        elif request is None:
            requests[name] = min(limit, default_request, key=quantity)
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


def _container(
    name: str, namespace: str, spec: DeploymentSpec, options: BuildOptions
) -> dict[str, Any]:
    readiness_path = f"/v1/models/{name}"  # KServe's model readiness on the same port
    period = STARTUP_PROBE_PERIOD_S[spec.engine]
    failures = -(-startup_budget_s(spec) // period)
    cached = node_cached(spec, options)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": predictor_image(spec, options),
        "command": ["chrono-upscaler"],
        "args": predictor_args(name, spec, namespace, cached),
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
    if spec.model.cache.claim_name:
        container["volumeMounts"].append(
            {"name": STARTUP_CACHE_VOLUME, "mountPath": STARTUP_CACHE_DIR}
        )
    if spec.predictor.image_pull_policy:
        container["imagePullPolicy"] = spec.predictor.image_pull_policy
    env = operator_env(spec) + [dict(item) for item in spec.predictor.env]
    if cached:  # the one storage URI KServe matches against the node cache
        env.insert(0, {"name": STORAGE_URI_ENV, "value": spec.model.storage_uri or ""})
    if env:
        container["env"] = env
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
    scaler = autoscaler(spec, options)
    annotations = {DEPLOYMENT_MODE_ANNOTATION: DEPLOYMENT_MODES[scaling.mode]}
    if not serverless:
        annotations[AUTOSCALER_CLASS_ANNOTATION] = (
            EXTERNAL_AUTOSCALER_CLASS if scaler == KEDA else "hpa"
        )
    cached = node_cached(spec, options)
    if cached:
        annotations[NODE_GROUP_ANNOTATION] = spec.model.cache.node_group or ""
    pod_annotations = {CATALOG_HASH_ANNOTATION: content_hash(catalog_json(spec))}
    if serverless:
        deadline = startup_budget_s(spec) + PROGRESS_DEADLINE_MARGIN_S
        pod_annotations[PROGRESS_DEADLINE_ANNOTATION] = f"{deadline}s"
        if scaling.scale_to_zero_grace_period:
            pod_annotations[RETENTION_ANNOTATION] = scaling.scale_to_zero_grace_period
    # without KEDA nothing would scale a Deployment up from zero: KServe's HPA keeps one
    min_replicas = (
        max(1, scaling.min_replicas) if scaler == HPA_WITHOUT_KEDA else scaling.min_replicas
    )
    predictor: dict[str, Any] = {"minReplicas": min_replicas, "maxReplicas": scaling.max_replicas}
    if scaler == KNATIVE:
        predictor.update(scaleMetric="concurrency", scaleTarget=scaling.target_concurrency)
    elif scaler != KEDA:  # KEDA's ScaledObject says what it scales on
        predictor.update(scaleMetric="cpu", scaleTarget=scaling.target_cpu_utilization)
    drain = spec.shutdown_grace + SHUTDOWN_MARGIN_S
    route = spec.request_timeout_seconds + ROUTE_TIMEOUT_MARGIN_S
    if serverless:  # Knative's activator holds a request that arrives at zero replicas
        route += spec.startup_seconds
    volumes = [{"name": CATALOG_VOLUME, "configMap": {"name": catalog_name(owner.name)}}]
    if spec.model.cache.claim_name:
        volumes.append(
            {
                "name": STARTUP_CACHE_VOLUME,
                "persistentVolumeClaim": {"claimName": spec.model.cache.claim_name},
            }
        )
    predictor.update(
        {
            # Knative: the revision's request timeout (the activator's too: a request waiting
            # for a replica to start counts), and (Knative sets it so) the pod's grace, which
            # must cover the predictor's --shutdown-grace too
            "timeout": max(route, drain),
            "labels": {DEPLOYMENT_LABEL: owner.name},
            "annotations": pod_annotations,
            **_scheduling(spec),
            "containers": [_container(name, owner.namespace, spec, options)],
            "volumes": volumes,
        }
    )
    if not serverless:  # Knative refuses this field; it derives the grace period from timeout
        predictor["terminationGracePeriodSeconds"] = drain
    if spec.predictor.service_account_name:
        predictor["serviceAccountName"] = spec.predictor.service_account_name
    storage = storage_uris(spec, cached)
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


def _redis_connection(spec: DeploymentSpec) -> dict[str, str]:
    """KEDA's redis scaler connection: parsed from a plain URL, or read from the pod's env."""
    assert spec.queue is not None
    redis = spec.queue.redis
    address = redis.address()
    if address is not None:
        return {
            "address": address.address,
            "databaseIndex": str(address.database_index),
            "enableTLS": "true" if address.tls else "false",
        }
    return {  # env the operator sets from the Secret's address, username and password keys
        "addressFromEnv": spec_module.REDIS_ADDRESS_ENV,
        "usernameFromEnv": spec_module.REDIS_USERNAME_ENV,
        "passwordFromEnv": spec_module.REDIS_PASSWORD_ENV,
        "databaseIndex": str(redis.database_index),
        "enableTLS": "true" if redis.tls else "false",
    }


def build_scaled_object(owner: Owner, spec: DeploymentSpec) -> Child:
    """A KEDA ScaledObject scaling the predictor's Deployment on the shared queue.

    Two redis triggers read the queue's keys: ``waiting`` (the list of waiting request ids, LLEN)
    and ``running`` (the sorted set of leases held by replicas working a request, ZCARD; KEDA's
    redis scaler counts either). The formula ``running × T + waiting`` against the average target
    T (targetQueueLength) gives ``running + ⌈waiting / T⌉`` replicas: one per request being run
    (never fewer replicas than busy ones; a busy pod the ReplicaSet picks to stop hands its
    request back to the queue, to run again from the start) plus one per T waiting. Active
    (scaled up from zero) while anything waits or runs; back to minReplicas cooldownPeriod after
    the queue went idle.
    """
    assert spec.queue is not None
    scaling = spec.scaling
    prefix = queue_prefix(owner.namespace, owner.name, spec) or ""
    target = str(scaling.target_queue_length)
    connection = _redis_connection(spec)

    def trigger(name: str, key: str) -> dict[str, Any]:
        metadata = {
            **connection,
            "listName": key,
            "listLength": target,
            "activationListLength": "0",
        }
        return {"type": "redis", "name": name, "metadata": metadata}

    body: dict[str, Any] = {
        "scaleTargetRef": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": predictor_deployment_name(owner.name),
            "envSourceContainerName": CONTAINER_NAME,
        },
        "minReplicaCount": scaling.min_replicas,
        "maxReplicaCount": scaling.max_replicas,
        "advanced": {
            # KEDA's default HPA name, keda-hpa-<ScaledObject>, passes 63 characters for long names
            "horizontalPodAutoscalerConfig": {"name": keda_hpa_name(owner.name)},
            # when the ScaledObject goes (spec changed), give the Deployment back its replicas:
            # KServe's HPA cannot scale up a Deployment KEDA left at zero
            "restoreToOriginalReplicaCount": True,
            "scalingModifiers": {
                "formula": f"running * {target} + waiting",
                "target": target,
                "activationTarget": "0",
                "metricType": "AverageValue",
            },
        },
        "triggers": [
            trigger("waiting", prefix + WAITING_SUFFIX),
            trigger("running", prefix + RUNNING_SUFFIX),
        ],
    }
    if scaling.scale_to_zero_grace_period:
        body["cooldownPeriod"] = duration_seconds(scaling.scale_to_zero_grace_period)
    return _child(
        owner,
        KEDA_API_VERSION,
        "ScaledObject",
        "scaledobjects",
        scaled_object_name(owner.name),
        "autoscaling",
        {},
        {"spec": body},
    )
