"""The reconcile against an in-memory API: idempotence, conflicts, API errors, patches."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import jsonpatch
import pytest
from upscaler_operator.builders import (
    AUTOSCALER_CLASS_ANNOTATION,
    SPEC_HASH_ANNOTATION,
    BuildOptions,
    Owner,
    build_inference_service,
)
from upscaler_operator.config import OperatorConfig
from upscaler_operator.kube import KubeError, Ref
from upscaler_operator.metrics import Metrics
from upscaler_operator.reconcile import (
    ReconcileFailed,
    Reconciler,
    is_up_to_date,
    owner_of,
    patch_operations,
)
from upscaler_operator.spec import parse_spec

ISVC = "/apis/serving.kserve.io/v1beta1/namespaces/ns/inferenceservices/up"
CATALOG = "/api/v1/namespaces/ns/configmaps/up-loras"
CR = "/apis/serving.chrono-upscaler.dev/v1alpha1/namespaces/ns/upscalerdeployments/up"


class FakeKube:
    """Objects by path; records writes; optional failures by (method, path)."""

    def __init__(self, podmonitors: bool = False, keda: bool = False) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self.failures: dict[tuple[str, str], KubeError] = {}
        self.podmonitors = podmonitors
        self.keda = keda
        self.discoveries: list[str] = []
        self._uids = itertools.count(1)

    def _fail(self, method: str, path: str) -> None:
        if (method, path) in self.failures:
            raise self.failures[(method, path)]

    def get(self, ref: Ref) -> dict[str, Any] | None:
        self._fail("GET", ref.path)
        return copy.deepcopy(self.objects.get(ref.path))

    def create(self, ref: Ref, body: dict[str, Any]) -> dict[str, Any]:
        self._fail("POST", ref.path)
        if ref.path in self.objects:
            raise KubeError(409, "AlreadyExists", "exists")
        stored = copy.deepcopy(body)
        stored["metadata"]["uid"] = f"uid-{next(self._uids)}"
        self.objects[ref.path] = stored
        self.writes.append(("POST", ref.path))
        return copy.deepcopy(stored)

    def json_patch(self, ref: Ref, operations: list[dict[str, Any]]) -> dict[str, Any]:
        self._fail("PATCH", ref.path)
        self.objects[ref.path] = jsonpatch.apply_patch(self.objects[ref.path], operations)
        self.writes.append(("PATCH", ref.path))
        return copy.deepcopy(self.objects[ref.path])

    def merge_patch_status(self, ref: Ref, status_patch: dict[str, Any]) -> dict[str, Any]:
        self._fail("PATCH", ref.path + "/status")
        body = self.objects.setdefault(ref.path, {"metadata": {}})
        status = body.setdefault("status", {})
        for key, value in status_patch.items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = value
        self.writes.append(("PATCH", ref.path + "/status"))
        return copy.deepcopy(body)

    def delete(self, ref: Ref) -> None:
        self._fail("DELETE", ref.path)
        if self.objects.pop(ref.path, None) is not None:
            self.writes.append(("DELETE", ref.path))

    def list_items(self, ref: Ref) -> list[dict[str, Any]]:
        self._fail("GET", ref.collection_path)
        prefix = ref.collection_path + "/"
        found = [body for path, body in self.objects.items() if path.startswith(prefix)]
        return copy.deepcopy(found)

    def resources(self, api_version: str) -> set[str] | None:
        self.discoveries.append(api_version)
        if api_version == "keda.sh/v1alpha1":
            return {"scaledobjects", "triggerauthentications"} if self.keda else None
        if api_version == "monitoring.coreos.com/v1":
            return {"podmonitors", "servicemonitors"} if self.podmonitors else None
        if api_version == "serving.kserve.io/v1alpha1":  # KServe 0.20
            return {"servingruntimes", "localmodelnamespacecaches"}
        return None


def deployment(**spec: Any) -> dict[str, Any]:
    body = {"engine": "chronoedit", "model": {"storageUri": "hf://nvidia/ChronoEdit-14B-Diffusers"}}
    body.update(spec)
    return {
        "metadata": {"name": "up", "namespace": "ns", "uid": "owner-uid", "generation": 1},
        "spec": body,
    }


def reconciler(kube: FakeKube, **config: Any) -> Reconciler:
    return Reconciler(kube, Metrics(), OperatorConfig(**config))  # type: ignore[arg-type]


def run(operator: Reconciler, kube: FakeKube, body: dict[str, Any]) -> Any:
    """Store the deployment (keeping its status) as the API would, then reconcile it."""
    status = kube.objects.get(CR, {}).get("status")
    kube.objects[CR] = {**copy.deepcopy(body), **({"status": status} if status else {})}
    return operator.reconcile("ns", "up")


def test_operator_reconcile_is_idempotent() -> None:
    kube = FakeKube()
    operator = reconciler(kube)
    body = deployment()
    assert run(operator, kube, body).outcome == "ok"
    assert [w for w in kube.writes if not w[1].endswith("/status")] == [
        ("POST", CATALOG),
        ("POST", ISVC),
    ]
    kube.writes.clear()
    run(operator, kube, body)
    assert kube.writes == []  # nothing changed: no child patch, no status write
    assert (
        operator.metrics.registry.get_sample_value(
            "upscaler_operator_reconciles_total", {"outcome": "ok"}
        )
        == 2
    )


def test_operator_reconcile_patches_only_what_changed() -> None:
    kube = FakeKube()
    operator = reconciler(kube)
    run(operator, kube, deployment())
    kube.writes.clear()
    run(operator, kube, deployment(scaling={"maxReplicas": 3}))
    assert ("PATCH", ISVC) in kube.writes and ("PATCH", CATALOG) not in kube.writes
    assert kube.objects[ISVC]["spec"]["predictor"]["maxReplicas"] == 3
    assert kube.objects[ISVC]["metadata"]["uid"] == "uid-2"  # the same object, patched


def test_operator_reconcile_refuses_to_take_over_an_unmanaged_object() -> None:
    kube = FakeKube()
    kube.objects[CATALOG] = {"metadata": {"name": "up-loras", "labels": {"team": "a"}}, "data": {}}
    operator = reconciler(kube)
    with pytest.raises(ReconcileFailed, match="not managed by upscaler-operator"):
        run(operator, kube, deployment())
    assert kube.objects[CATALOG]["data"] == {}  # left alone
    reconciled = {c["type"]: c for c in kube.objects[CR]["status"]["conditions"]}["Reconciled"]
    assert (reconciled["status"], reconciled["reason"]) == ("False", "ReconcileFailed")
    assert "ConfigMap up-loras" in reconciled["message"]
    assert (
        operator.metrics.registry.get_sample_value(
            "upscaler_operator_reconciles_total", {"outcome": "error"}
        )
        == 1
    )


def test_operator_reconcile_reports_api_errors_and_raises_for_a_retry() -> None:
    kube = FakeKube()
    kube.failures[("POST", ISVC)] = KubeError(403, "Forbidden", "cannot create inferenceservices")
    operator = reconciler(kube)
    with pytest.raises(ReconcileFailed, match="403 Forbidden"):
        run(operator, kube, deployment())
    ready = {c["type"]: c for c in kube.objects[CR]["status"]["conditions"]}["Ready"]
    assert ready["reason"] == "ReconcileFailed" and "cannot create" in ready["message"]
    del kube.failures[("POST", ISVC)]
    assert run(operator, kube, deployment()).outcome == "ok"


def test_operator_invalid_spec_leaves_children_and_keeps_reporting_the_service() -> None:
    kube = FakeKube()
    operator = reconciler(kube)
    run(operator, kube, deployment())
    kube.objects[ISVC]["status"] = {
        "url": "http://up",
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    kube.writes.clear()
    result = run(operator, kube, deployment(engine="gpu"))
    assert result.outcome == "invalid"
    assert [w for w in kube.writes if not w[1].endswith("/status")] == []
    status = kube.objects[CR]["status"]
    assert status["url"] == "http://up"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["reason"] == "InvalidSpec"
    assert conditions["InferenceServiceReady"]["status"] == "True"


def test_operator_pod_monitor_follows_discovery_with_a_cache() -> None:
    kube = FakeKube(podmonitors=True)
    operator = reconciler(kube, discovery_ttl_s=3600)
    run(operator, kube, deployment())
    monitor = "/apis/monitoring.coreos.com/v1/namespaces/ns/podmonitors/up-predictor"
    assert monitor in kube.objects
    run(operator, kube, deployment())
    assert sorted(kube.discoveries) == [
        "keda.sh/v1alpha1",
        "monitoring.coreos.com/v1",
        "serving.kserve.io/v1alpha1",  # is KServe >= 0.18 (storageUris)?
    ]


def test_operator_patch_operations_keep_foreign_metadata_and_drop_stale_managed_keys() -> None:
    owner = Owner("up", "ns", "owner-uid")
    raw = {"engine": "chronoedit", "model": {"storageUri": "hf://a/b"}}
    desired = build_inference_service(owner, parse_spec(raw, name="up"), BuildOptions()).manifest
    current = {
        "metadata": {
            "labels": {"team": "a", "app.kubernetes.io/instance": "old"},
            "annotations": {
                "kserve.io/defaulted": "yes",
                AUTOSCALER_CLASS_ANNOTATION: "hpa",  # from an earlier RawDeployment spec
                SPEC_HASH_ANNOTATION: "old",
            },
            "ownerReferences": [{"uid": "someone-else", "name": "other"}],
        },
        "spec": {"predictor": {"stale": True}},
    }
    patched = jsonpatch.apply_patch(current, patch_operations(current, desired))
    meta = patched["metadata"]
    assert meta["labels"]["team"] == "a" and meta["labels"]["app.kubernetes.io/instance"] == "up"
    assert meta["annotations"]["kserve.io/defaulted"] == "yes"
    assert AUTOSCALER_CLASS_ANNOTATION not in meta["annotations"]
    assert (
        meta["annotations"][SPEC_HASH_ANNOTATION]
        == desired["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    )
    assert [r["uid"] for r in meta["ownerReferences"]] == ["someone-else", "owner-uid"]
    assert patched["spec"] == desired["spec"]
    assert is_up_to_date(
        patched, build_inference_service(owner, parse_spec(raw, name="up"), BuildOptions())
    )
    assert not is_up_to_date(
        current, build_inference_service(owner, parse_spec(raw, name="up"), BuildOptions())
    )


def test_operator_owner_of_a_child() -> None:
    child = {
        "metadata": {
            "namespace": "ns",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "controller": True},
                {"apiVersion": "serving.chrono-upscaler.dev/v1alpha1", "kind": "UpscalerDeployment",
                 "name": "up", "controller": True},
            ],
        }
    }  # fmt: skip
    assert owner_of(child) == ("ns", "up")
    assert owner_of({"metadata": {"namespace": "ns"}}) is None


def test_operator_reconcile_skips_deployments_gone_or_being_deleted() -> None:
    kube = FakeKube()
    operator = reconciler(kube)
    assert operator.reconcile("ns", "up") is None
    going = deployment()
    going["metadata"]["deletionTimestamp"] = "2026-11-25T00:00:00Z"
    assert run(operator, kube, going) is None
    assert kube.writes == []


SCALED_OBJECT = "/apis/keda.sh/v1alpha1/namespaces/ns/scaledobjects/up-predictor"
QUEUED = {
    "scaling": {"mode": "RawDeployment", "minReplicas": 0, "maxReplicas": 4},
    "queue": {"redis": {"url": "redis://redis.queue.svc:6379/0"}},
}


def conditions_of(kube: FakeKube) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in kube.objects[CR]["status"]["conditions"]}


def test_operator_reconcile_creates_a_scaled_object_after_the_inference_service() -> None:
    kube = FakeKube(keda=True)
    operator = reconciler(kube)
    run(operator, kube, deployment(**QUEUED))
    assert [w for w in kube.writes if not w[1].endswith("/status")] == [
        ("POST", CATALOG),
        ("POST", ISVC),
        ("POST", SCALED_OBJECT),
    ]
    isvc_annotations = kube.objects[ISVC]["metadata"]["annotations"]
    assert isvc_annotations[AUTOSCALER_CLASS_ANNOTATION] == "external"
    autoscaling = conditions_of(kube)["Autoscaling"]
    assert (autoscaling["status"], autoscaling["reason"]) == ("Unknown", "Pending")
    assert "ScaledObject" in conditions_of(kube)["Reconciled"]["message"]

    # KEDA reports: the condition follows at the next reconcile (a watch event on the child)
    kube.objects[SCALED_OBJECT]["status"] = {
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "ScaledObjectReady"},
            {"type": "Active", "status": "True"},
        ]
    }
    kube.writes.clear()
    run(operator, kube, deployment(**QUEUED))
    autoscaling = conditions_of(kube)["Autoscaling"]
    assert (autoscaling["status"], autoscaling["reason"]) == ("True", "KEDAScaling")
    assert "ns:up:waiting" in autoscaling["message"] and autoscaling["message"].endswith("active")
    assert kube.writes == [("PATCH", CR + "/status")]  # the status only: children unchanged


def test_operator_reconcile_deletes_the_scaled_object_the_spec_no_longer_wants() -> None:
    kube = FakeKube(keda=True)
    operator = reconciler(kube)
    run(operator, kube, deployment(**QUEUED))
    kube.writes.clear()
    plain = deployment(scaling={"mode": "RawDeployment", "minReplicas": 1, "maxReplicas": 4})
    run(operator, kube, plain)
    writes = [w for w in kube.writes if not w[1].endswith("/status")]
    # first the ScaledObject (KEDA restores the replicas), then KServe's HPA comes back
    assert writes == [("DELETE", SCALED_OBJECT), ("PATCH", ISVC)]
    assert kube.objects[ISVC]["metadata"]["annotations"][AUTOSCALER_CLASS_ANNOTATION] == "hpa"
    assert conditions_of(kube)["Autoscaling"]["reason"] == "HPA"
    kube.writes.clear()
    run(operator, kube, plain)
    assert kube.writes == []  # nothing left to delete


def test_operator_reconcile_leaves_a_scaled_object_it_did_not_make() -> None:
    kube = FakeKube(keda=True)
    theirs = {"metadata": {"name": "up-predictor", "labels": {"team": "a"}}, "spec": {}}
    kube.objects[SCALED_OBJECT] = copy.deepcopy(theirs)
    operator = reconciler(kube)
    run(operator, kube, deployment())  # Serverless: no ScaledObject wanted
    assert kube.objects[SCALED_OBJECT] == theirs
    assert ("DELETE", SCALED_OBJECT) not in kube.writes


def test_operator_reconcile_without_keda_reports_it_and_falls_back_to_hpa() -> None:
    kube = FakeKube(keda=False)
    operator = reconciler(kube)
    assert run(operator, kube, deployment(**QUEUED)).outcome == "ok"
    assert SCALED_OBJECT not in kube.objects
    assert kube.objects[ISVC]["spec"]["predictor"]["minReplicas"] == 1
    autoscaling = conditions_of(kube)["Autoscaling"]
    assert (autoscaling["status"], autoscaling["reason"]) == ("False", "KEDANotInstalled")
    assert conditions_of(kube)["Reconciled"]["status"] == "True"
    # KEDA installed later: the next reconcile (after the discovery cache) adds it
    kube.keda = True
    operator = reconciler(kube)
    run(operator, kube, deployment(**QUEUED))
    assert SCALED_OBJECT in kube.objects
    assert kube.objects[ISVC]["spec"]["predictor"]["minReplicas"] == 0


def test_operator_reconcile_failed_delete_is_reported_and_retried() -> None:
    kube = FakeKube(keda=True)
    operator = reconciler(kube)
    run(operator, kube, deployment(**QUEUED))
    kube.failures[("DELETE", SCALED_OBJECT)] = KubeError(403, "Forbidden", "cannot delete")
    with pytest.raises(ReconcileFailed, match="403 Forbidden"):
        run(operator, kube, deployment())
    reconciled = conditions_of(kube)["Reconciled"]
    assert "ScaledObject up-predictor" in reconciled["message"]
    assert conditions_of(kube)["Autoscaling"]["reason"] == "Pending"  # as it was


def test_operator_reconcile_uses_the_operators_default_redis() -> None:
    kube = FakeKube(keda=True)
    operator = reconciler(kube, default_redis_secret="shared-redis")
    run(operator, kube, deployment(queue={}, scaling=QUEUED["scaling"]))
    env = kube.objects[ISVC]["spec"]["predictor"]["containers"][0]["env"]
    assert env[0] == {
        "name": "UPSCALER_REDIS_URL",
        "valueFrom": {"secretKeyRef": {"name": "shared-redis", "key": "url"}},
    }
    trigger = kube.objects[SCALED_OBJECT]["spec"]["triggers"][0]["metadata"]
    assert trigger["addressFromEnv"] == "UPSCALER_REDIS_ADDRESS"
    # without a default the same spec is invalid, and says why
    other = FakeKube(keda=True)
    assert run(reconciler(other), other, deployment(queue={})).outcome == "invalid"
    assert "no default Redis" in conditions_of(other)["Ready"]["message"]
