"""The real operator (kopf) against a Kubernetes API mock (kmock) over real HTTP.

Each test starts kopf in the test's event loop against a fresh emulator (about half a second),
drives the cluster through HTTP as a user or KServe would, and waits for the operator's answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.operator.conftest import (
    CONFIGMAP_RESOURCE,
    CR_RESOURCE,
    ISVC_RESOURCE,
    PODMONITOR_RESOURCE,
    ROOT,
    SCALEDOBJECT_RESOURCE,
    Cluster,
    configmap_path,
    cr_path,
    isvc_path,
    new_emulator,
    running_operator,
    scaled_object_path,
    wait_until,
)

pytestmark = [
    pytest.mark.asyncio(loop_scope="function"),
    # kmock 0.8 reads its bundled resource list with a deprecated importlib call
    pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning"),
]

NS = "demo"
NAME = "upscaler"


def deployment(name: str = NAME, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "engine": "chronoedit",
        "model": {"storageUri": "hf://nvidia/ChronoEdit-14B-Diffusers"},
        "gpu": {"count": 1, "productSelector": "NVIDIA-H100-80GB-HBM3"},
        "pricing": {"gpuHourlyUsd": 2.5},
        "scaling": {"minReplicas": 0, "maxReplicas": 4},
        "loras": [{"name": "paint", "uri": "hf://nvidia/Paint-Lora/paint.safetensors"}],
    }
    body.update(spec)
    return {
        "apiVersion": "serving.chrono-upscaler.dev/v1alpha1",
        "kind": "UpscalerDeployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": body,
    }


def conditions(cluster: Cluster, name: str = NAME) -> dict[str, dict[str, Any]]:
    status = (cluster.get(CR_RESOURCE, NS, name) or {}).get("status") or {}
    return {c["type"]: c for c in status.get("conditions", [])}


def container_args(isvc: dict[str, Any]) -> list[str]:
    return isvc["spec"]["predictor"]["containers"][0]["args"]


async def create(cluster: Cluster, body: dict[str, Any]) -> dict[str, Any]:
    created = await cluster.call("POST", cr_path(NS), body, status=201)
    await wait_until(lambda: conditions(cluster, body["metadata"]["name"]), message="a status")
    return created


async def test_operator_creates_owned_children_and_reports_not_ready() -> None:
    async with running_operator(pod_monitors=True) as cluster:
        created = await create(cluster, deployment())
        isvc = cluster.get(ISVC_RESOURCE, NS, NAME)
        catalog = cluster.get(CONFIGMAP_RESOURCE, NS, f"{NAME}-loras")
        monitor = cluster.get(PODMONITOR_RESOURCE, NS, f"{NAME}-predictor")
        assert isvc and catalog and monitor
        for child in (isvc, catalog, monitor):
            (ref,) = child["metadata"]["ownerReferences"]
            assert ref["uid"] == created["metadata"]["uid"]
            assert (ref["kind"], ref["name"], ref["controller"]) == (
                "UpscalerDeployment",
                NAME,
                True,
            )
        assert json.loads(catalog["data"]["catalog.json"]) == {
            "paint": "hf://nvidia/Paint-Lora/paint.safetensors"
        }
        assert "--lora-catalog" in container_args(isvc)
        status = cluster.get(CR_RESOURCE, NS, NAME)["status"]
        found = conditions(cluster)
        assert found["Reconciled"]["status"] == "True"
        assert found["InferenceServiceReady"]["status"] == "Unknown"
        assert found["Ready"]["status"] == "False"
        assert status["observedGeneration"] == 1
        assert status["inferenceService"] == NAME
        assert status["replicas"] == 0 and status["estimatedHourlyCostUsd"] == 0
        # the status is written inside the reconcile, the counter at its end: wait for it
        await wait_until(lambda: cluster.reconciles("ok") >= 1, message="a counted reconcile")


async def test_operator_resumes_deployments_that_exist_before_it_starts() -> None:
    body = deployment("older")
    body["metadata"].update(
        uid="0f000000-0000-4000-8000-000000000001",
        generation=3,
        resourceVersion="7",
        creationTimestamp="2026-11-01T00:00:00Z",
    )
    async with running_operator(existing=(body,)) as cluster:
        isvc = await wait_until(lambda: cluster.get(ISVC_RESOURCE, NS, "older"), message="isvc")
        assert isvc["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
        await wait_until(lambda: conditions(cluster, "older"), message="status")
        assert cluster.get(CR_RESOURCE, NS, "older")["status"]["observedGeneration"] == 3


async def test_operator_mirrors_inference_service_readiness_url_replicas_and_cost() -> None:
    async with running_operator() as cluster:
        await create(cluster, deployment(gpu={"count": 2}))
        url = f"http://{NAME}.{NS}.example.com"
        isvc_status = {
            "status": {
                "url": url,
                "conditions": [{"type": "Ready", "status": "True"}],
                "modelStatus": {"copies": {"failedCopies": 0, "totalCopies": 3}},
            }
        }
        # what KServe's controller does: write the InferenceService's status subresource
        await cluster.call("PATCH", isvc_path(NS, NAME) + "/status", isvc_status)
        await wait_until(lambda: conditions(cluster)["Ready"]["status"] == "True", message="Ready")
        status = cluster.get(CR_RESOURCE, NS, NAME)["status"]
        assert status["url"] == url
        assert status["replicas"] == 3
        assert status["estimatedHourlyCostUsd"] == pytest.approx(3 * 2 * 2.5)
        assert cluster.cost_gauge(NS, NAME) == pytest.approx(15.0)
        found = conditions(cluster)
        assert found["InferenceServiceReady"]["status"] == "True"
        assert found["Ready"]["message"] == f"serving at {url}"

        # KServe reports a failure: the CR follows, with KServe's reason and message
        failing = {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "RevisionFailed",
                        "message": "startup probe failed",
                    }
                ],
                "modelStatus": {"copies": {"failedCopies": 1, "totalCopies": 0}},
            }
        }
        await cluster.call("PATCH", isvc_path(NS, NAME) + "/status", failing)
        await wait_until(
            lambda: conditions(cluster)["Ready"]["status"] == "False", message="!Ready"
        )
        found = conditions(cluster)
        assert found["InferenceServiceReady"]["reason"] == "RevisionFailed"
        assert "startup probe failed" in found["Ready"]["message"]
        assert cluster.cost_gauge(NS, NAME) == 0

        # deleting the deployment removes its cost series
        await cluster.call("DELETE", cr_path(NS, NAME))
        await wait_until(lambda: cluster.cost_gauge(NS, NAME) is None, message="series removed")


async def test_operator_patches_children_in_place_on_spec_update() -> None:
    async with running_operator() as cluster:
        await create(cluster, deployment())
        before_isvc = cluster.get(ISVC_RESOURCE, NS, NAME)
        before_catalog = cluster.get(CONFIGMAP_RESOURCE, NS, f"{NAME}-loras")
        update = {
            "spec": {
                "scaling": {"minReplicas": 1, "maxReplicas": 6},
                "loras": [
                    {"name": "paint", "uri": "hf://nvidia/Paint-Lora/paint.safetensors"},
                    {"name": "ink", "uri": "https://loras.example.com/ink.safetensors"},
                ],
                "defaults": {"numInferenceSteps": 20},
            }
        }
        await cluster.call("PATCH", cr_path(NS, NAME), update)
        await wait_until(
            lambda: cluster.get(CR_RESOURCE, NS, NAME)["status"].get("observedGeneration") == 2,
            message="observedGeneration 2",
        )
        isvc = cluster.get(ISVC_RESOURCE, NS, NAME)
        catalog = cluster.get(CONFIGMAP_RESOURCE, NS, f"{NAME}-loras")
        assert isvc["metadata"]["uid"] == before_isvc["metadata"]["uid"]  # patched, not recreated
        assert catalog["metadata"]["uid"] == before_catalog["metadata"]["uid"]
        predictor = isvc["spec"]["predictor"]
        assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 6)
        args = container_args(isvc)
        assert args[args.index("--default-num-inference-steps") + 1] == "20"
        assert set(json.loads(catalog["data"]["catalog.json"])) == {"paint", "ink"}
        assert conditions(cluster)["Reconciled"]["status"] == "True"
        # the catalog's hash is on the pod template, so the new catalog rolls the pods
        before_hash = before_isvc["spec"]["predictor"]["annotations"]
        assert predictor["annotations"] != before_hash
        # no patch when nothing changed: one PATCH per child for the one update
        assert len(cluster.requests("PATCH", f"/inferenceservices/{NAME}")) == 1


async def test_operator_recreates_children_deleted_by_hand() -> None:
    async with running_operator() as cluster:
        await create(cluster, deployment())
        old_isvc = cluster.get(ISVC_RESOURCE, NS, NAME)
        old_catalog = cluster.get(CONFIGMAP_RESOURCE, NS, f"{NAME}-loras")

        await cluster.call("DELETE", isvc_path(NS, NAME))
        isvc = await wait_until(lambda: cluster.get(ISVC_RESOURCE, NS, NAME), message="isvc back")
        assert isvc["metadata"]["uid"] != old_isvc["metadata"]["uid"]
        assert isvc["spec"] == old_isvc["spec"]

        await cluster.call("DELETE", configmap_path(NS, f"{NAME}-loras"))
        catalog = await wait_until(
            lambda: cluster.get(CONFIGMAP_RESOURCE, NS, f"{NAME}-loras"), message="catalog back"
        )
        assert catalog["metadata"]["uid"] != old_catalog["metadata"]["uid"]
        assert catalog["data"] == old_catalog["data"]


async def test_operator_reports_invalid_spec_without_retrying_and_keeps_running() -> None:
    async with running_operator() as cluster:
        # kmock validates nothing, like an API server given the CRD without its schema
        bad = deployment(
            loras=[
                {"name": "paint", "uri": "hf://nvidia/Paint-Lora/paint.safetensors"},
                {"name": "old", "uri": "ftp://files.example.com/old.safetensors"},
            ],
            scaling={"minReplicas": 3, "maxReplicas": 2},
        )
        await create(cluster, bad)
        ready = conditions(cluster)["Ready"]
        assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
        assert "spec.loras[1].uri: unsupported scheme 'ftp'" in ready["message"]
        assert (
            "spec.scaling.minReplicas must not exceed spec.scaling.maxReplicas" in ready["message"]
        )
        assert cluster.get(ISVC_RESOURCE, NS, NAME) is None  # nothing built from a bad spec

        # no retry storm: a few seconds later, no further reconciles or status writes
        await wait_until(lambda: cluster.reconciles("invalid") >= 1, message="a counted reconcile")
        invalid, writes = cluster.reconciles("invalid"), len(cluster.requests("PATCH", "/status"))
        await asyncio.sleep(2.5)
        assert cluster.reconciles("invalid") == invalid == 1
        assert len(cluster.requests("PATCH", "/status")) == writes

        # the operator still serves other deployments, and the fixed one
        await create(cluster, deployment("other"))
        assert conditions(cluster, "other")["Reconciled"]["status"] == "True"
        await cluster.call("PATCH", cr_path(NS, NAME), {"spec": deployment()["spec"]})
        await wait_until(lambda: cluster.get(ISVC_RESOURCE, NS, NAME), message="fixed deployment")
        await wait_until(
            lambda: conditions(cluster)["Reconciled"]["status"] == "True", message="reconciled"
        )


async def test_operator_retries_after_an_api_conflict() -> None:
    async with running_operator() as cluster:
        # someone else's ConfigMap has the catalog's name: the operator must not take it over
        clash = {"metadata": {"name": f"{NAME}-loras", "namespace": NS}, "data": {"mine": "1"}}
        await cluster.call("POST", f"/api/v1/namespaces/{NS}/configmaps", clash, status=201)
        await create(cluster, deployment())
        reconciled = conditions(cluster)["Reconciled"]
        assert (reconciled["status"], reconciled["reason"]) == ("False", "ReconcileFailed")
        assert "not managed by upscaler-operator" in reconciled["message"]
        assert cluster.get(CONFIGMAP_RESOURCE, NS, f"{NAME}-loras")["data"] == {"mine": "1"}
        # once it is gone, kopf's retry (after --retry-delay, 1 s here) builds everything
        await cluster.call("DELETE", configmap_path(NS, f"{NAME}-loras"))
        await wait_until(lambda: cluster.get(ISVC_RESOURCE, NS, NAME), message="isvc after retry")
        await wait_until(
            lambda: conditions(cluster)["Reconciled"]["status"] == "True", message="reconciled"
        )
        assert cluster.reconciles("error") >= 1


QUEUED = {
    "scaling": {"mode": "RawDeployment", "minReplicas": 0, "maxReplicas": 4},
    "queue": {"redis": {"secretRef": {"name": "upscaler-redis"}}},
}
AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"


def autoscaler_class(cluster: Cluster, name: str = NAME) -> str | None:
    isvc = cluster.get(ISVC_RESOURCE, NS, name) or {}
    return ((isvc.get("metadata") or {}).get("annotations") or {}).get(AUTOSCALER_CLASS)


async def test_operator_scales_a_queued_raw_deployment_with_keda_and_removes_it_after() -> None:
    async with running_operator(keda=True) as cluster:
        created = await create(cluster, deployment(**QUEUED))
        scaled = await wait_until(
            lambda: cluster.get(SCALEDOBJECT_RESOURCE, NS, f"{NAME}-predictor"),
            message="the ScaledObject",
        )
        (ref,) = scaled["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "UpscalerDeployment",
            NAME,
            created["metadata"]["uid"],
            True,
        )
        assert scaled["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "upscaler-operator"
        body = scaled["spec"]
        assert body["scaleTargetRef"]["name"] == f"{NAME}-predictor"
        assert (body["minReplicaCount"], body["maxReplicaCount"]) == (0, 4)
        assert body["triggers"][0]["metadata"]["listName"] == f"{NS}:{NAME}:waiting"
        await wait_until(lambda: autoscaler_class(cluster) == "external", message="external")
        isvc = cluster.get(ISVC_RESOURCE, NS, NAME)
        assert isvc["spec"]["predictor"]["minReplicas"] == 0
        assert "--redis-prefix" in container_args(isvc)
        await wait_until(
            lambda: conditions(cluster).get("Autoscaling", {}).get("reason") == "Pending",
            message="Autoscaling pending",
        )

        # KEDA reports on its ScaledObject: the deployment's Autoscaling condition follows
        keda_status = {
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "ScaledObjectReady"},
                    {"type": "Active", "status": "False", "reason": "ScalerNotActive"},
                ]
            }
        }
        path = scaled_object_path(NS, f"{NAME}-predictor")
        await cluster.call("PATCH", path + "/status", keda_status)
        await wait_until(
            lambda: conditions(cluster)["Autoscaling"]["status"] == "True", message="KEDA ready"
        )
        autoscaling = conditions(cluster)["Autoscaling"]
        assert autoscaling["reason"] == "KEDAScaling"
        assert autoscaling["message"].endswith("idle")
        assert conditions(cluster)["Ready"]["status"] == "False"  # KServe has not reported yet

        # the spec drops the queue: the ScaledObject goes, KServe's HPA comes back
        update = {"spec": {"queue": None, "scaling": {"minReplicas": 1}}}
        await cluster.call("PATCH", cr_path(NS, NAME), update)
        await wait_until(
            lambda: cluster.get(SCALEDOBJECT_RESOURCE, NS, f"{NAME}-predictor") is None,
            message="the ScaledObject deleted",
        )
        await wait_until(lambda: autoscaler_class(cluster) == "hpa", message="hpa")
        await wait_until(
            lambda: conditions(cluster)["Autoscaling"]["reason"] == "HPA", message="HPA"
        )
        assert cluster.get(ISVC_RESOURCE, NS, NAME)["metadata"]["uid"] == isvc["metadata"]["uid"]
        assert len(cluster.requests("DELETE", "/scaledobjects/")) == 1


async def test_operator_recreates_a_scaled_object_deleted_by_hand() -> None:
    async with running_operator(keda=True) as cluster:
        await create(cluster, deployment(**QUEUED))
        name = f"{NAME}-predictor"
        old = await wait_until(
            lambda: cluster.get(SCALEDOBJECT_RESOURCE, NS, name), message="the ScaledObject"
        )
        await cluster.call("DELETE", scaled_object_path(NS, name))

        def recreated() -> bool:
            current = cluster.get(SCALEDOBJECT_RESOURCE, NS, name)
            return current is not None and current["metadata"]["uid"] != old["metadata"]["uid"]

        await wait_until(recreated, message="the ScaledObject back")


async def test_operator_without_keda_says_so_and_keeps_running() -> None:
    async with running_operator(keda=False) as cluster:
        await create(cluster, deployment(**QUEUED))
        await wait_until(lambda: "Autoscaling" in conditions(cluster), message="Autoscaling")
        found = conditions(cluster)
        assert found["Autoscaling"]["status"] == "False"
        assert found["Autoscaling"]["reason"] == "KEDANotInstalled"
        assert "KServe's HPA scales 1–4 replicas on CPU instead" in found["Autoscaling"]["message"]
        assert found["Reconciled"]["status"] == "True"  # everything it could make is there
        isvc = cluster.get(ISVC_RESOURCE, NS, NAME)
        assert autoscaler_class(cluster) == "hpa"
        assert isvc["spec"]["predictor"]["minReplicas"] == 1
        assert cluster.objects(SCALEDOBJECT_RESOURCE) == {}
        assert not cluster.requests("POST", "/scaledobjects")
        # the operator goes on serving others
        await create(cluster, deployment("other"))
        assert conditions(cluster, "other")["Reconciled"]["status"] == "True"
        assert conditions(cluster, "other")["Autoscaling"]["reason"] == "Knative"


async def test_operator_uses_its_default_redis_for_a_queue_that_names_none() -> None:
    async with running_operator(keda=True, default_redis_url="redis://redis.upscaler:6379/1") as (
        cluster
    ):
        await create(cluster, deployment(queue={}, scaling=QUEUED["scaling"]))
        scaled = await wait_until(
            lambda: cluster.get(SCALEDOBJECT_RESOURCE, NS, f"{NAME}-predictor"),
            message="the ScaledObject",
        )
        metadata = scaled["spec"]["triggers"][0]["metadata"]
        assert (metadata["address"], metadata["databaseIndex"]) == ("redis.upscaler:6379", "1")
        args = container_args(cluster.get(ISVC_RESOURCE, NS, NAME))
        assert args[args.index("--redis-url") + 1] == "redis://redis.upscaler:6379/1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_operator_command_line_runs_with_kubeconfig_metrics_and_liveness(tmp_path) -> None:
    """``python -m upscaler_operator`` as a pod runs it, logging in through $KUBECONFIG."""
    import kmock

    emulator = new_emulator(pod_monitors=False)
    async with emulator, kmock.Server(emulator) as server:
        url = str(server.url).rstrip("/")
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "kmock", "cluster": {"server": url}}],
                    "users": [{"name": "test", "user": {"token": "test-token"}}],
                    "contexts": [
                        {"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}
                    ],
                    "current-context": "kmock",
                }
            )
        )
        metrics_port, liveness_port = _free_port(), _free_port()
        log_path = tmp_path / "operator.log"
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "METRICS_PORT": str(metrics_port),
            "LIVENESS_PORT": str(liveness_port),
            "WATCH_TIMEOUT_SECONDS": "5",
            "PREDICTOR_IMAGE": "registry.example.com/predictor:test",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "upscaler_operator"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        cluster = Cluster(emulator, url, None, None)
        try:
            await wait_until(
                lambda: (
                    process.poll() is None
                    and any(
                        r.params.get("watch") == "true"
                        for r in cluster.requests("GET", "/upscalerdeployments")
                    )
                ),
                timeout=30,
                message=f"the operator watching:\n{log_path.read_text()}",
            )
            await cluster.call("POST", cr_path(NS), deployment(), status=201)
            isvc = await wait_until(
                lambda: cluster.get(ISVC_RESOURCE, NS, NAME), timeout=20, message="isvc"
            )
            image = isvc["spec"]["predictor"]["containers"][0]["image"]
            assert image == "registry.example.com/predictor:test"
            async with httpx.AsyncClient() as client:
                health = await client.get(f"http://127.0.0.1:{liveness_port}/healthz")
                assert health.status_code == 200
                scraped = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
            assert 'upscaler_operator_reconciles_total{outcome="ok"}' in scraped
            assert "upscaler_operator_reconcile_duration_seconds_bucket" in scraped
            assert (
                'upscaler_deployment_hourly_cost_usd{deployment="upscaler",namespace="demo"}'
                in scraped
            )
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        assert process.returncode == 0, log_path.read_text()
