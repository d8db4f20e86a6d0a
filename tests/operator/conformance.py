"""What KServe, Knative Serving and KEDA do with the operator's children, as checks in Python.

Each rule is written from the project's source (KServe v0.20.0, Knative Serving v1.23.0, KEDA
v2.20.0; the file is named in each docstring), not copied: it returns the refusals the real
webhook or controller would give, or (defaulting) what it would change. ``Cluster`` is a small
API fake that applies the update-time rules (KServe's deploymentMode lock, KEDA's one-autoscaler
rule) and KServe's HPA, so a reconcile can be driven through a mode change and a handover.

The matrix: every example in manifests/examples/ and a generated set of specs (modes × GPU/CPU ×
scale-to-zero × queue × storage schemes × long names), each either refused by the operator with
a message naming the field, or accepted by every rule here.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import jsonpatch
from upscaler_operator.builders import BuildOptions, Child, Owner, build_children
from upscaler_operator.kube import KubeError, Ref
from upscaler_operator.spec import DeploymentSpec, InvalidSpec, parse_spec

from tests.operator.conftest import load_examples

# ---------------------------------------------------------------------------------------------
# quantities and durations, as Kubernetes and Go parse them (independent of the operator's own)

_QUANTITY = re.compile(r"^([0-9.]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_SUFFIX = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_GO_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?)(ns|us|µs|ms|s|m|h)")
_GO_UNIT = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),
    "ms": Decimal("1e-3"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}


def quantity(value: Any) -> Decimal:
    match = _QUANTITY.match(str(value))
    assert match, f"not a quantity the tests know: {value!r}"
    return Decimal(match.group(1)) * _SUFFIX[match.group(2)]


def go_duration_s(value: str) -> Decimal:
    """Go's time.ParseDuration, for the forms the operator writes."""
    parts = _GO_DURATION.findall(value)
    assert parts and "".join(a + b for a, b in parts) == value, value
    return sum((Decimal(n) * _GO_UNIT[u] for n, u in parts), Decimal(0))


# ---------------------------------------------------------------------------------------------
# KServe v0.20.0

#: config/configmap/inferenceservice.yaml, key inferenceService.resource (a default install)
KSERVE_DEFAULT_RESOURCES = {
    "requests": {"cpu": "1", "memory": "2Gi"},
    "limits": {"cpu": "1", "memory": "2Gi"},
}
KSERVE_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
KSERVE_AUTOSCALER_CLASSES = {"hpa", "external", "keda", "none"}
KSERVE_HPA_METRICS = {"cpu", "memory"}
KSERVE_KPA_METRICS = {"concurrency", "rps"}
KSERVE_BLOCKED_ENV = {"PYTHONPATH"}
KSERVE_MODE_NAMES = {"Serverless": "Knative", "RawDeployment": "Standard"}


def predictor_of(isvc: dict[str, Any]) -> dict[str, Any]:
    return isvc["spec"]["predictor"]


def container_of(isvc: dict[str, Any]) -> dict[str, Any]:
    (container,) = predictor_of(isvc)["containers"]
    return container


def kserve_defaulted_resources(container: dict[str, Any]) -> dict[str, dict[str, str]]:
    """KServe's mutating webhook fills each missing CPU/memory request and limit from
    inferenceservice-config (pkg/apis/serving/v1beta1/inference_service_defaults.go,
    setResourceRequirementDefaults)."""
    resources = copy.deepcopy(container.get("resources") or {})
    for side, defaults in KSERVE_DEFAULT_RESOURCES.items():
        given = resources.setdefault(side, {})
        for name, value in defaults.items():
            given.setdefault(name, value)
    return resources


def pod_resource_errors(resources: dict[str, dict[str, str]]) -> list[str]:
    """Kubernetes refuses a container whose request exceeds its limit (core validation)."""
    return [
        f"resources.requests.{name} {value} exceeds limits.{name} {resources['limits'][name]}"
        for name, value in (resources.get("requests") or {}).items()
        if name in (resources.get("limits") or {})
        and quantity(value) > quantity(resources["limits"][name])
    ]


def kserve_validation_errors(isvc: dict[str, Any]) -> list[str]:
    """KServe's validating webhook on create and update
    (pkg/apis/serving/v1beta1/inference_service_validation.go: validateInferenceServiceName,
    validateInferenceServiceAutoscaler, validateBlockedEnvVars with
    pkg/validation/env_policy.go, validateMultipleStorageURIsSpec, and the HPA/KPA metric
    lists of pkg/constants/constants.go)."""
    errors: list[str] = []
    meta, predictor = isvc["metadata"], predictor_of(isvc)
    if not KSERVE_NAME.match(meta["name"]):
        errors.append(f"name {meta['name']!r} is not [a-z]([-a-z0-9]*[a-z0-9])?")
    annotations = meta.get("annotations") or {}
    klass = annotations.get("serving.kserve.io/autoscalerClass")
    if klass is not None and klass not in KSERVE_AUTOSCALER_CLASSES:
        errors.append(f"[{klass}] is not a supported autoscaler class type")
    metric = predictor.get("scaleMetric")
    mode = annotations.get("serving.kserve.io/deploymentMode")
    allowed = KSERVE_KPA_METRICS if mode == "Knative" else KSERVE_HPA_METRICS
    if metric is not None and metric not in allowed:
        errors.append(f"[{metric}] is not a supported metric")
    for container in predictor.get("containers") or []:
        for item in container.get("env") or []:
            if item["name"] in KSERVE_BLOCKED_ENV:
                errors.append(f"setting {item['name']} in container {container['name']!r}")
    errors += storage_uris_errors(predictor.get("storageUris") or [])
    if custom_storage_uri(isvc) is not None and predictor.get("storageUris"):
        errors.append("Setting both StorageURI and StorageURIs is not supported.")
    return errors


#: KServe v0.20.0, pkg/constants/constants.go: what its webhook writes on a cached service
LOCAL_MODEL_LABEL = "internal.serving.kserve.io/localmodel"
LOCAL_MODEL_NAMESPACE_LABEL = "internal.serving.kserve.io/localmodel-namespace"
LOCAL_MODEL_SOURCE_ANNOTATION = "internal.serving.kserve.io/localmodel-sourceuri"
LOCAL_MODEL_PVC_ANNOTATION = "internal.serving.kserve.io/localmodel-pvc-name"


def custom_storage_uri(isvc: dict[str, Any]) -> str | None:
    """A custom predictor's single storage URI: the STORAGE_URI env of kserve-container
    (KServe v0.20.0, pkg/apis/serving/v1beta1/predictor_custom.go, GetStorageUri)."""
    for container in predictor_of(isvc).get("containers") or []:
        if container["name"] == "kserve-container":
            for item in container.get("env") or []:
                if item["name"] == "STORAGE_URI":
                    return item.get("value")
    return None


def match_storage_uri(cached: str, storage: str) -> bool:
    """KServe v0.20.0, pkg/apis/serving/v1alpha1/storage_uri_utils.go, MatchStorageURI: the
    same URI or one below it."""
    cached, storage = cached.removesuffix("/"), storage.removesuffix("/")
    return storage == cached or storage.startswith(cached + "/")


def storage_key(uri: str) -> str:
    """KServe v0.20.0, local_model_cache_types.go, GetStorageKey: the folder of a cached URI."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def kserve_local_model(
    isvc: dict[str, Any], caches: list[dict[str, Any]]
) -> tuple[str, str, str] | None:
    """What KServe's defaulting webhook attaches (KServe v0.20.0,
    pkg/apis/serving/v1beta1/inference_service_defaults.go, setLocalModelLabel): the first
    LocalModelNamespaceCache of the namespace whose sourceModelUri matches the predictor's
    storage URI and, when the InferenceService names a node group, lists it. Returns (cache,
    PVC, the URI the storage initializer is then given: storage_initializer_injector.go)."""
    uri = custom_storage_uri(isvc)
    if uri is None:
        return None
    annotations = isvc["metadata"].get("annotations") or {}
    group = annotations.get("serving.kserve.io/nodegroup")
    for cache in caches:
        if cache["metadata"]["namespace"] != isvc["metadata"]["namespace"]:
            continue
        spec = cache["spec"]
        if not match_storage_uri(spec["sourceModelUri"], uri):
            continue
        if group is not None and group not in spec["nodeGroups"]:
            continue
        pvc = f"{cache['metadata']['name']}-{group or spec['nodeGroups'][0]}"
        sub_path = uri.removeprefix(spec["sourceModelUri"])
        sub_path = sub_path if sub_path.startswith("/") else "/" + sub_path
        source = f"pvc://{pvc}/models/{storage_key(spec['sourceModelUri'])}{sub_path}"
        return cache["metadata"]["name"], pvc, source
    return None


def local_model_cache_errors(cache: dict[str, Any], node_groups: set[str]) -> list[str]:
    """KServe v0.20.0's webhook on a LocalModelNamespaceCache
    (pkg/webhook/admission/localmodelnamespacecache/local_model_namespace_cache_validation.go,
    validateNodeGroups): every node group must exist."""
    return [
        f"NodeGroup {group} not found"
        for group in cache["spec"]["nodeGroups"]
        if group not in node_groups
    ]


def local_model_cache_update_error(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The CRD's rule on spec.sourceModelUri (local_model_namespace_cache_types.go):
    self == oldSelf."""
    if old["spec"]["sourceModelUri"] != new["spec"]["sourceModelUri"]:
        return "StorageUri is immutable"
    return None


def storage_uris_errors(entries: list[dict[str, str]]) -> list[str]:
    """validateStorageURISpec and validateMultipleStorageURIsSpec
    (KServe v0.20.0, pkg/apis/serving/v1beta1/inference_service_validation.go)."""
    errors, paths, pvc_paths = [], [], []
    for entry in entries:
        uri, path = entry.get("uri", ""), entry.get("mountPath", "")
        if not uri:
            errors.append("storage URI cannot be empty")
        if path == "/" or not path.startswith("/") or ".." in path:
            errors.append(f"storage path {path!r} must be absolute, not /, without '..'")
        (pvc_paths if uri.startswith("pvc://") else paths).append(path)
    if len(pvc_paths) != len(set(pvc_paths)):
        errors.append("PVC storage paths must be unique")
    if len(paths) > 1 and common_parent(paths) == "/":
        errors.append(f"storage paths must have a common parent directory: {paths}")
    return errors


def common_parent(paths: list[str]) -> str:
    split = [p.strip("/").split("/") for p in paths]
    common = []
    for parts in zip(*split, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return "/" + "/".join(common)


def kserve_mounts(predictor: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Where each storageUris entry's content appears: mount path → (kind, source).

    KServe v0.20.0, pkg/webhook/admission/pod/storage_initializer_injector.go: a ``pvc://``
    entry is mounted as the whole claim at its mountPath (SubPath ""), the rest are downloaded by
    one storage-initializer into an emptyDir at their common parent, each into its mountPath.
    """
    mounts = {}
    for entry in predictor.get("storageUris") or []:
        uri = entry["uri"]
        if uri.startswith("pvc://"):
            mounts[entry["mountPath"]] = ("pvc-claim-root", uri.split("://", 1)[1].split("/")[0])
        else:
            mounts[entry["mountPath"]] = ("download", uri)
    return mounts


def resolve_in_pod(path: str, predictor: dict[str, Any]) -> str | None:
    """The storage URI location a path in the pod shows, e.g. ``pvc://claim/sub``; None if the
    path is in no storage mount."""
    for mount, (kind, source) in kserve_mounts(predictor).items():
        if path == mount or path.startswith(mount + "/"):
            rest = path[len(mount) :].strip("/")
            if kind == "pvc-claim-root":
                return f"pvc://{source}/{rest}".rstrip("/")
            return source if not rest else f"{source}#{rest}"
    return None


def kserve_mode_update_error(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """validateDeploymentMode (KServe v0.20.0,
    pkg/apis/serving/v1beta1/inference_service_validation.go): once the status records a
    deployment mode, an update whose annotation names another is refused."""
    if (new.get("metadata") or {}).get("deletionTimestamp"):
        return None
    recorded = (old.get("status") or {}).get("deploymentMode")
    if not recorded:
        return None
    recorded = KSERVE_MODE_NAMES.get(recorded, recorded)
    wanted = ((new.get("metadata") or {}).get("annotations") or {}).get(
        "serving.kserve.io/deploymentMode"
    )
    if wanted is not None and wanted != recorded:
        return f"update rejected: deploymentMode cannot be changed from {recorded!r} to {wanted!r}"
    return None


# ---------------------------------------------------------------------------------------------
# Knative Serving v1.23.0

#: pkg/apis/config/features.go, defaultFeaturesConfig (what a default install allows)
KNATIVE_DEFAULT_FEATURES = {
    "kubernetes.podspec-persistent-volume-claim": False,
    "kubernetes.podspec-persistent-volume-write": False,
}
#: pkg/apis/autoscaling/register.go, WindowMax
KNATIVE_WINDOW_MAX_S = 3600


def knative_annotation_errors(annotations: dict[str, str]) -> list[str]:
    """validateLastPodRetention (Knative Serving v1.23.0,
    pkg/apis/autoscaling/annotation_validation.go): the retention period parses as a Go
    duration between 0 and WindowMax (1h)."""
    value = annotations.get("autoscaling.knative.dev/scale-to-zero-pod-retention-period")
    if value is None:
        return []
    seconds = go_duration_s(value)
    if not 0 <= seconds <= KNATIVE_WINDOW_MAX_S:
        return [f"scale-to-zero-pod-retention-period {value} is outside 0s–1h"]
    return []


def knative_pvc_errors(
    predictor: dict[str, Any], features: dict[str, bool] | None = None
) -> list[str]:
    """validatePersistentVolumeClaims (Knative Serving v1.23.0, pkg/apis/serving/
    k8s_validation.go) over the volumes KServe adds for pvc:// storageUris, which are never
    read-only (KServe v0.20.0, pkg/utils/storage.go, AddModelMount)."""
    features = {**KNATIVE_DEFAULT_FEATURES, **(features or {})}
    errors = []
    for mount, (kind, claim) in kserve_mounts(predictor).items():
        if kind != "pvc-claim-root":
            continue
        if not features["kubernetes.podspec-persistent-volume-claim"]:
            errors.append(f"Persistent volume claim support is disabled ({claim} at {mount})")
        if not features["kubernetes.podspec-persistent-volume-write"]:
            errors.append(f"Persistent volume write support is disabled ({claim} not read-only)")
    return errors


def knative_podspec_errors(predictor: dict[str, Any]) -> list[str]:
    """PodSpecMask (Knative Serving v1.23.0, pkg/apis/serving/fieldmask.go) drops, and the
    webhook refuses, terminationGracePeriodSeconds in a revision's pod spec."""
    if "terminationGracePeriodSeconds" in predictor:
        return ["terminationGracePeriodSeconds is not allowed in a Knative revision"]
    return []


def knative_termination_grace_s(predictor: dict[str, Any]) -> int:
    """Knative sets the pod's grace period to the revision's timeoutSeconds (Knative Serving
    v1.23.0, pkg/reconciler/revision/resources/deploy.go); KServe's ``timeout`` is that."""
    return int(predictor["timeout"])


# ---------------------------------------------------------------------------------------------
# KEDA v2.20.0

KEDA_MAX_NAME = 63


def keda_hpa_name(scaled_object: dict[str, Any]) -> str:
    """getHpaName (KEDA v2.20.0, apis/keda/v1alpha1/scaledobject_webhook.go)."""
    name = (
        (scaled_object["spec"].get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}
    ).get("name")
    return name or f"keda-hpa-{scaled_object['metadata']['name']}"


def keda_validation_errors(scaled_object: dict[str, Any]) -> list[str]:
    """verifyName, the HPA-name length check and verifyReplicaCount (KEDA v2.20.0,
    apis/keda/v1alpha1/scaledobject_webhook.go and scaledobject_types.go)."""
    errors = []
    name, spec = scaled_object["metadata"]["name"], scaled_object["spec"]
    if len(name) > KEDA_MAX_NAME:
        errors.append(f"scaledobject name {name!r} is longer than {KEDA_MAX_NAME}")
    hpa = keda_hpa_name(scaled_object)
    if len(hpa) > KEDA_MAX_NAME:
        errors.append(f"HPA name {hpa!r} derived from scaledobject is {len(hpa)} characters")
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if low > high:
        errors.append("minReplicaCount must not exceed maxReplicaCount")
    return errors


def keda_hpa_conflict(scaled_object: dict[str, Any], hpas: list[dict[str, Any]]) -> str | None:
    """verifyHpas (KEDA v2.20.0, apis/keda/v1alpha1/scaledobject_webhook.go): refused while an
    HPA it does not own targets the same workload, unless ownership transfer names it."""
    target = scaled_object["spec"]["scaleTargetRef"]
    annotations = scaled_object["metadata"].get("annotations") or {}
    for hpa in hpas:
        meta = hpa["metadata"]
        if (meta.get("annotations") or {}).get("validations.keda.sh/hpa-ownership") == "false":
            continue
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref.get("kind"), ref["name"]) != (target.get("kind", "Deployment"), target["name"]):
            continue
        owners = meta.get("ownerReferences") or []
        name = scaled_object["metadata"]["name"]
        if any(o.get("kind") == "ScaledObject" and o.get("name") == name for o in owners):
            continue
        transfer = annotations.get("scaledobject.keda.sh/transfer-hpa-ownership") == "true"
        if transfer and keda_hpa_name(scaled_object) == meta["name"]:
            continue
        return f"the workload {target['name']!r} is already managed by the hpa {meta['name']!r}"
    return None


# ---------------------------------------------------------------------------------------------
# every rule over one built set of children


def derived_names(child: Child) -> list[str]:
    """The child's name and the DNS-label names others derive from it: KServe's predictor
    Deployment and Service ``<isvc>-predictor`` (KServe v0.20.0, pkg/constants/constants.go,
    PredictorServiceName) and Knative's first revision ``<ksvc>-00001`` (Knative Serving
    v1.23.0, pkg/reconciler/configuration/resources/revision.go)."""
    name = child.manifest["metadata"]["name"]
    if child.kind == "InferenceService":
        return [name, f"{name}-predictor", f"{name}-predictor-00001"]
    if child.kind == "ScaledObject":
        return [name, keda_hpa_name(child.manifest)]
    return [name]


def child_errors(children: list[Child]) -> list[str]:
    """Every create-time refusal or silent change of the children, by KServe, Knative, KEDA."""
    errors: list[str] = []
    for child in children:
        manifest = child.manifest
        for name in derived_names(child):
            if len(name) > KEDA_MAX_NAME:
                errors.append(f"derived name {name!r} is longer than 63 characters")
        if child.kind == "InferenceService":
            predictor = predictor_of(manifest)
            container = container_of(manifest)
            errors += kserve_validation_errors(manifest)
            defaulted = kserve_defaulted_resources(container)
            if defaulted != (container.get("resources") or {}):
                errors.append(f"KServe changes the resources to {defaulted}")
            errors += pod_resource_errors(defaulted)
            mode = manifest["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
            if mode == "Knative":
                errors += knative_annotation_errors(predictor.get("annotations") or {})
                errors += knative_podspec_errors(predictor)
                enabled = dict.fromkeys(KNATIVE_DEFAULT_FEATURES, True)
                errors += knative_pvc_errors(predictor, enabled)  # as docs/install.md asks
        elif child.kind == "ScaledObject":
            errors += keda_validation_errors(manifest)
    return errors


# ---------------------------------------------------------------------------------------------
# the matrix

LONG_NAME = "u" + "p" * 44  # 45 characters: the CRD's maximum
STORAGE = {
    "hf": "hf://nvidia/ChronoEdit-14B-Diffusers",
    "s3": "s3://models/chronoedit",
    "gs": "gs://models/chronoedit",
    "https": "https://models.example.com/chronoedit.tar.gz",
    "pvc": "pvc://weights/models/chronoedit",
}


def matrix() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(id, name, spec): modes × GPU/CPU × scale-to-zero × queue × storage × long names."""
    for mode, engine, to_zero, queue, storage, long in itertools.product(
        ("Serverless", "RawDeployment"),
        ("chronoedit", "sr"),
        (True, False),
        (True, False),
        tuple(STORAGE),
        (False, True),
    ):
        if engine == "sr" and storage != "hf":
            continue  # sr downloads nothing
        spec: dict[str, Any] = {"engine": engine}
        if engine == "chronoedit":
            spec["model"] = {"storageUri": STORAGE[storage]}
            spec["gpu"] = {"count": 1}
            spec["predictor"] = {"resources": {"requests": {"cpu": "8", "memory": "96Gi"}}}
            if storage == "pvc":
                spec["model"]["upscalerLora"] = "pvc://weights/loras/upscaler"
        scaling: dict[str, Any] = {"mode": mode, "maxReplicas": 4}
        scaling["minReplicas"] = 0 if to_zero else 1
        if to_zero:
            scaling["scaleToZeroGracePeriod"] = "30m"
        spec["scaling"] = scaling
        if queue:
            spec["queue"] = {"redis": {"url": "redis://redis.queue.svc:6379/0"}}
        name = LONG_NAME if long else "up"
        parts = (
            mode,
            "gpu" if engine == "chronoedit" else "cpu",
            "zero" if to_zero else "one",
            "queue" if queue else "noqueue",
            storage if engine == "chronoedit" else "none",
            "long" if long else "short",
        )
        case = "-".join(parts)
        yield case, name, spec


def cases() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(id, namespace, name, spec) of every example and every matrix spec."""
    found = [
        (filename, body["metadata"]["namespace"], body["metadata"]["name"], body["spec"])
        for filename, body in load_examples()
    ]
    found += [(case, "team-a", name, spec) for case, name, spec in matrix()]
    return found


def parse_or_refusal(name: str, raw: dict[str, Any]) -> DeploymentSpec | list[str]:
    """The typed spec, or the operator's refusal (each error naming its field)."""
    try:
        return parse_spec(raw, name=name)
    except InvalidSpec as exc:
        return exc.errors


def build(namespace: str, name: str, spec: DeploymentSpec, keda: bool = True) -> list[Child]:
    return build_children(
        Owner(name, namespace, "owner-uid"), spec, BuildOptions(pod_monitor=True, keda=keda)
    )


def isvc_of(children: list[Child]) -> dict[str, Any]:
    (isvc,) = [c.manifest for c in children if c.kind == "InferenceService"]
    return isvc


def arg(container: dict[str, Any], flag: str) -> str | None:
    args = container["args"]
    return args[args.index(flag) + 1] if flag in args else None


CR_API = "serving.chrono-upscaler.dev/v1alpha1"


def reconcile(cluster: Cluster, name: str, spec: dict[str, Any], namespace: str = "ns") -> Any:
    """Store the UpscalerDeployment (keeping its status) and run the operator's reconcile."""
    from upscaler_operator.config import OperatorConfig
    from upscaler_operator.metrics import Metrics
    from upscaler_operator.reconcile import Reconciler

    ref = Ref(CR_API, "upscalerdeployments", namespace, name)
    status = (cluster.objects.get(ref.path) or {}).get("status")
    body = {
        "apiVersion": CR_API,
        "kind": "UpscalerDeployment",
        "metadata": {"name": name, "namespace": namespace, "uid": "owner-uid", "generation": 1},
        "spec": copy.deepcopy(spec),
    }
    if status:
        body["status"] = status
    cluster.objects[ref.path] = body
    if cluster.operator is None:
        cluster.operator = Reconciler(cluster, Metrics(), OperatorConfig())  # type: ignore[arg-type]
    return cluster.operator.reconcile(namespace, name)


def conditions(cluster: Cluster, name: str, namespace: str = "ns") -> dict[str, dict[str, Any]]:
    ref = Ref(CR_API, "upscalerdeployments", namespace, name)
    found = cluster.objects[ref.path].get("status", {}).get("conditions", [])
    return {c["type"]: c for c in found}


# ---------------------------------------------------------------------------------------------
# a cluster that applies the update-time rules


class Cluster:
    """The operator's Kube, over a dict of objects, with KServe's and KEDA's webhooks.

    KServe's controller is simulated by ``kserve_reconcile``: it records the deployment mode in
    the InferenceService's status, makes its HPA for autoscalerClass hpa, and removes it for any
    other class (a later reconcile, as in KServe's raw HPA reconciler).
    """

    def __init__(
        self,
        kserve_resources: set[str] | None = None,
        keda: bool = True,
        node_groups: tuple[str, ...] = (),
        local_model_enabled: bool = True,
    ) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.keda = keda
        #: inferenceservice-config's localModel.enabled: KServe attaches node caches at all
        self.local_model_enabled = local_model_enabled
        for group in node_groups:
            ref = Ref("serving.kserve.io/v1alpha1", "localmodelnodegroups", None, group)
            self.objects[ref.path] = {"metadata": {"name": group}, "spec": {}}
        self.kserve_resources = kserve_resources or {
            "servingruntimes",
            "localmodelnamespacecaches",
        }
        self.events: list[dict[str, Any]] = []
        self.operator: Any = None  # the Reconciler driving it (``reconcile``)
        self._uid = itertools.count(1)

    def get(self, ref: Ref) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get(ref.path))

    def list_items(self, ref: Ref) -> list[dict[str, Any]]:
        prefix = ref.collection_path + "/"
        return [copy.deepcopy(v) for k, v in self.objects.items() if k.startswith(prefix)]

    def hpas(self, namespace: str) -> list[dict[str, Any]]:
        return self.list_items(Ref("autoscaling/v2", "horizontalpodautoscalers", namespace))

    def _admit(self, ref: Ref, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        errors: list[str] = []
        if ref.plural == "inferenceservices":
            errors += kserve_validation_errors(new)
            if old is not None and (error := kserve_mode_update_error(old, new)):
                errors.append(error)
        elif ref.plural == "scaledobjects":
            errors += keda_validation_errors(new)
            if error := keda_hpa_conflict(new, self.hpas(ref.namespace or "")):
                errors.append(error)
        elif ref.plural == "localmodelnamespacecaches":
            errors += local_model_cache_errors(new, self.node_groups())
            if old is not None and (error := local_model_cache_update_error(old, new)):
                errors.append(error)
        if errors:
            raise KubeError(400, "BadRequest", "; ".join(errors))

    def node_groups(self) -> set[str]:
        ref = Ref("serving.kserve.io/v1alpha1", "localmodelnodegroups", None)
        return {body["metadata"]["name"] for body in self.list_items(ref)}

    def _default(self, ref: Ref, body: dict[str, Any]) -> None:
        """KServe's defaulting webhook on an InferenceService: the node-cache label and
        annotations (setLocalModelLabel), or none of them."""
        if ref.plural != "inferenceservices":
            return
        if custom_storage_uri(body) is None:
            return  # KServe returns early here and leaves earlier labels as they are
        meta = body["metadata"]
        labels, annotations = meta.setdefault("labels", {}), meta.setdefault("annotations", {})
        for key in (LOCAL_MODEL_LABEL, LOCAL_MODEL_NAMESPACE_LABEL):
            labels.pop(key, None)
        for key in (LOCAL_MODEL_SOURCE_ANNOTATION, LOCAL_MODEL_PVC_ANNOTATION):
            annotations.pop(key, None)
        caches = self.list_items(
            Ref("serving.kserve.io/v1alpha1", "localmodelnamespacecaches", ref.namespace)
        )
        found = kserve_local_model(body, caches) if self.local_model_enabled else None
        if found is not None:
            name, pvc, _ = found
            (cache,) = [c for c in caches if c["metadata"]["name"] == name]
            labels[LOCAL_MODEL_LABEL] = name
            labels[LOCAL_MODEL_NAMESPACE_LABEL] = ref.namespace or ""
            annotations[LOCAL_MODEL_SOURCE_ANNOTATION] = cache["spec"]["sourceModelUri"]
            annotations[LOCAL_MODEL_PVC_ANNOTATION] = pvc

    def create(self, ref: Ref, body: dict[str, Any]) -> dict[str, Any]:
        if ref.plural == "events":
            self.events.append(copy.deepcopy(body))
            return copy.deepcopy(body)
        if ref.path in self.objects:
            raise KubeError(409, "AlreadyExists", "exists")
        self._admit(ref, None, body)
        stored = copy.deepcopy(body)
        self._default(ref, stored)
        stored["metadata"]["uid"] = f"uid-{next(self._uid)}"
        self.objects[ref.path] = stored
        return copy.deepcopy(stored)

    def json_patch(self, ref: Ref, operations: list[dict[str, Any]]) -> dict[str, Any]:
        old = self.objects[ref.path]
        new = jsonpatch.apply_patch(old, operations)
        self._admit(ref, old, new)
        self._default(ref, new)
        self.objects[ref.path] = new
        return copy.deepcopy(new)

    def merge_patch_status(self, ref: Ref, patch: dict[str, Any]) -> dict[str, Any]:
        body = self.objects.setdefault(ref.path, {"metadata": {}})
        status = body.setdefault("status", {})
        for key, value in patch.items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = value
        return copy.deepcopy(body)

    def delete(self, ref: Ref) -> None:
        if ref.plural == "localmodelnamespacecaches":  # KServe's ValidateDelete
            isvcs = self.list_items(
                Ref("serving.kserve.io/v1beta1", "inferenceservices", ref.namespace)
            )
            for isvc in isvcs:
                labels = isvc["metadata"].get("labels") or {}
                if (
                    labels.get(LOCAL_MODEL_LABEL) == ref.name
                    and labels.get(LOCAL_MODEL_NAMESPACE_LABEL) == ref.namespace
                ):
                    raise KubeError(
                        400,
                        "BadRequest",
                        f"LocalModelNamespaceCache {ref.namespace}/{ref.name} is being used by "
                        f"InferenceService {ref.namespace}/{isvc['metadata']['name']}",
                    )
        self.objects.pop(ref.path, None)
        for path, body in list(self.objects.items()):  # garbage collection of dependents
            owners = (body.get("metadata") or {}).get("ownerReferences") or []
            if any(
                o.get("name") == ref.name and o.get("kind") == "InferenceService" for o in owners
            ):
                del self.objects[path]

    def resources(self, api_version: str) -> set[str] | None:
        if api_version == "keda.sh/v1alpha1":
            return {"scaledobjects"} if self.keda else None
        if api_version == "serving.kserve.io/v1alpha1":
            return set(self.kserve_resources)
        return None

    def kserve_reconcile(self) -> None:
        """KServe's controller: status.deploymentMode, and its HPA in Standard mode."""
        for path, isvc in list(self.objects.items()):
            if "/inferenceservices/" not in path:
                continue
            annotations = isvc["metadata"].get("annotations") or {}
            mode = annotations.get("serving.kserve.io/deploymentMode")
            isvc.setdefault("status", {})["deploymentMode"] = mode
            namespace, name = isvc["metadata"]["namespace"], isvc["metadata"]["name"]
            hpa_ref = Ref(
                "autoscaling/v2", "horizontalpodautoscalers", namespace, f"{name}-predictor"
            )
            klass = annotations.get("serving.kserve.io/autoscalerClass", "hpa")
            if mode == "Standard" and klass == "hpa":
                self.objects.setdefault(
                    hpa_ref.path,
                    {
                        "metadata": {
                            "name": f"{name}-predictor",
                            "namespace": namespace,
                            "ownerReferences": [{"kind": "InferenceService", "name": name}],
                        },
                        "spec": {
                            "scaleTargetRef": {
                                "apiVersion": "apps/v1",
                                "kind": "Deployment",
                                "name": f"{name}-predictor",
                            }
                        },
                    },
                )
            else:
                self.objects.pop(hpa_ref.path, None)
