"""Operator test fixtures: strict schema validators, and the real operator against kmock."""

from __future__ import annotations

import asyncio
import copy
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kmock
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def upstream_crd(project: str, name: str) -> Path:
    """An upstream CRD: ``../shared/<project>/`` (CI's checkout) if there, else what ``make crds``
    fetched into ``build/crds/<project>/`` (a pinned release, hash-checked)."""
    shared = ROOT.parent / "shared" / project / name
    return shared if shared.exists() else ROOT / "build" / "crds" / project / name


KSERVE_CRD = upstream_crd("kserve", "serving.kserve.io_inferenceservices.yaml")
KEDA_CRD = upstream_crd("keda", "keda.sh_scaledobjects.yaml")
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))

CR_RESOURCE = "serving.chrono-upscaler.dev/v1alpha1/upscalerdeployments"
ISVC_RESOURCE = "serving.kserve.io/v1beta1/inferenceservices"
PODMONITOR_RESOURCE = "monitoring.coreos.com/v1/podmonitors"
SCALEDOBJECT_RESOURCE = "keda.sh/v1alpha1/scaledobjects"
CONFIGMAP_RESOURCE = "v1/configmaps"


def strict_schema(schema: Any) -> Any:
    """The schema with unknown fields rejected wherever the API server would prune them.

    Kubernetes OpenAPI schemas allow extra properties (the server drops them); in tests a typo'd
    field must fail instead, so every object with ``properties`` and no
    ``x-kubernetes-preserve-unknown-fields`` gets ``additionalProperties: false``.
    """
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict_schema(value) for key, value in schema.items()}
    if "properties" in schema:
        result["properties"] = {
            key: strict_schema(value) for key, value in schema["properties"].items()
        }
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            result.setdefault("additionalProperties", False)
    return result


def validation_errors(validator: jsonschema.Validator, instance: Any) -> list[str]:
    return sorted(
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(instance)
    )


def missing_crd(what: str, path: Path) -> None:
    """CI has shared/ beside the clone: there a missing schema is a failure, elsewhere a skip
    that says what to run."""
    reason = (
        f"{what} is in neither ../shared/ nor {path.relative_to(ROOT)}: run `make crds` (it "
        "downloads the pinned release's CRDs, hash-checked, into build/crds/)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must provide shared/ beside the clone)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def kserve_validator() -> jsonschema.Validator:
    """KServe's full v1beta1 InferenceService schema, strict; the 2 MB YAML is read once."""
    if not KSERVE_CRD.exists():
        missing_crd("KServe's InferenceService CRD", KSERVE_CRD)
    with KSERVE_CRD.open("rb") as stream:
        crd = yaml.load(stream, Loader=yaml.CSafeLoader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    return jsonschema.Draft7Validator(strict_schema(version["schema"]["openAPIV3Schema"]))


@pytest.fixture(scope="session")
def keda_schema() -> dict[str, Any]:
    """KEDA's v1alpha1 ScaledObject schema (with its CEL rules), as KEDA's CRD ships it."""
    if not KEDA_CRD.exists():
        missing_crd("KEDA's ScaledObject CRD", KEDA_CRD)
    crd = yaml.safe_load(KEDA_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="session")
def keda_validator(keda_schema: dict[str, Any]) -> jsonschema.Validator:
    """KEDA's ScaledObject schema, strict."""
    return jsonschema.Draft7Validator(strict_schema(keda_schema))


@pytest.fixture(scope="session")
def crd_validator() -> jsonschema.Validator:
    """Our own CRD's schema, strict."""
    from upscaler_operator.crd import openapi_schema

    return jsonschema.Draft7Validator(strict_schema(openapi_schema()))


def load_examples() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, yaml.safe_load(path.read_text())) for path in EXAMPLES]


# ---------------------------------------------------------------------------------------------
# The real operator (kopf, embedded in the test's event loop) against kmock over real HTTP


async def wait_until(
    condition: Callable[[], Any], timeout: float = 15.0, message: str = "condition"
) -> Any:
    """Poll without blocking the loop (kmock and kopf both run on it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        await asyncio.sleep(0.05)


def new_emulator(pod_monitors: bool, keda: bool = False) -> Any:
    from tests.operator.kube_emulator import RealisticEmulator

    emulator = RealisticEmulator()
    emulator.resources.load_bundled()
    verbs = {"get", "list", "watch", "create", "patch", "update", "delete"}
    emulator.resources[CR_RESOURCE] = kmock.ResourceInfo(
        kind="UpscalerDeployment",
        singular="upscalerdeployment",
        namespaced=True,
        verbs=verbs,
        shortnames={"ud", "upscaler"},
        subresources={"status"},
    )
    emulator.resources[ISVC_RESOURCE] = kmock.ResourceInfo(
        kind="InferenceService",
        singular="inferenceservice",
        namespaced=True,
        verbs=verbs,
        shortnames={"isvc"},
        subresources={"status"},
    )
    if pod_monitors:
        emulator.resources[PODMONITOR_RESOURCE] = kmock.ResourceInfo(
            kind="PodMonitor", singular="podmonitor", namespaced=True, verbs=verbs
        )
    if keda:
        emulator.resources[SCALEDOBJECT_RESOURCE] = kmock.ResourceInfo(
            kind="ScaledObject",
            singular="scaledobject",
            namespaced=True,
            verbs=verbs,
            shortnames={"so"},
            subresources={"status"},
        )
    return emulator


@dataclass
class Cluster:
    """A kmock API server with the operator running against it."""

    emulator: Any
    url: str
    metrics: Any
    reconciler: Any

    def objects(self, resource: str) -> dict[tuple[str, str], dict[str, Any]]:
        found = {}
        for (res, namespace, name), obj in list(self.emulator.objects.items()):
            if res == resource and not obj.deleted:
                found[namespace, name] = copy.deepcopy(obj.raw)
        return found

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects(resource).get((namespace, name))

    def requests(self, method: str, path_part: str) -> list[Any]:
        return [
            r
            for r in list(self.emulator._requests)
            if str(r.method).upper().endswith(method) and path_part in r.url.path
        ]

    async def call(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        headers = {}
        if method == "PATCH":
            kind = "json-patch" if isinstance(body, list) else "merge-patch"
            headers["Content-Type"] = f"application/{kind}+json"
        async with self.emulator.request(method, path, json=body, headers=headers) as response:
            payload = await response.json()
            assert response.status == status, payload
            return payload

    def cost_gauge(self, namespace: str, name: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "upscaler_deployment_hourly_cost_usd", {"namespace": namespace, "deployment": name}
        )

    def reconciles(self, outcome: str) -> float:
        return (
            self.metrics.registry.get_sample_value(
                "upscaler_operator_reconciles_total", {"outcome": outcome}
            )
            or 0.0
        )


def cr_path(namespace: str, name: str = "") -> str:
    base = f"/apis/serving.chrono-upscaler.dev/v1alpha1/namespaces/{namespace}/upscalerdeployments"
    return f"{base}/{name}" if name else base


def isvc_path(namespace: str, name: str) -> str:
    return f"/apis/serving.kserve.io/v1beta1/namespaces/{namespace}/inferenceservices/{name}"


def configmap_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps/{name}"


def scaled_object_path(namespace: str, name: str) -> str:
    return f"/apis/keda.sh/v1alpha1/namespaces/{namespace}/scaledobjects/{name}"


@asynccontextmanager
async def running_operator(
    *,
    pod_monitors: bool = False,
    keda: bool = False,
    existing: tuple[dict[str, Any], ...] = (),
    **config: Any,
) -> AsyncIterator[Cluster]:
    """kopf in this loop against a fresh emulator; ``existing`` CRs are there before it starts.

    ``keda`` registers KEDA's ScaledObject kind (as if KEDA were installed); ``config`` adds
    OperatorConfig fields (e.g. a default Redis).
    """
    import kopf
    from upscaler_operator.config import OperatorConfig
    from upscaler_operator.handlers import build_registry
    from upscaler_operator.kube import Kube
    from upscaler_operator.metrics import Metrics
    from upscaler_operator.reconcile import Reconciler

    emulator = new_emulator(pod_monitors, keda)
    for body in existing:  # as left by an earlier run of the operator (no kopf annotations)
        meta = body["metadata"]
        emulator.objects[CR_RESOURCE, meta["namespace"], meta["name"]] = copy.deepcopy(body)
    async with emulator, kmock.Server(emulator) as server:
        url = str(server.url).rstrip("/")
        # short watches: kmock ignores timeoutSeconds, so the client side ends them
        settings = OperatorConfig(
            watch_timeout_s=5, retry_delay_s=1, discovery_ttl_s=0.2, workers=4, **config
        )
        metrics = Metrics()
        reconciler = Reconciler(Kube.for_server(url), metrics, settings)

        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True)

        task = asyncio.create_task(
            kopf.operator(
                registry=build_registry(reconciler, settings, login=login),
                settings=kopf.OperatorSettings(),
                standalone=True,
                clusterwide=True,
            )
        )
        cluster = Cluster(emulator, url, metrics, reconciler)
        watched = ["/upscalerdeployments", "/inferenceservices", "/configmaps"]
        if keda:
            watched.append("/scaledobjects")
        try:
            for part in watched:  # objects made before a watch starts may be missed by kmock
                await wait_until(
                    lambda part=part: any(
                        r.params.get("watch") == "true" for r in cluster.requests("GET", part)
                    ),
                    message=f"kopf watching {part}",
                )
            yield cluster
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
