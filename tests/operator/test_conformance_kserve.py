"""KServe's admission and defaulting rules (v0.20.0) over every example and the spec matrix.

The rules live in ``tests/operator/conformance.py``, each written from the KServe source file its
docstring names. A spec is either refused by the operator with messages naming the field, or its
children pass every rule of KServe, Knative Serving and KEDA.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator import conformance as c

CASES = c.cases()
IDS = [case[0] for case in CASES]
REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("case", "namespace", "name", "raw"), CASES, ids=IDS)
def test_conformance_every_spec_is_refused_by_field_or_accepted_by_every_rule(
    case: str, namespace: str, name: str, raw: dict[str, Any]
) -> None:
    """KServe v0.20.0 (pkg/apis/serving/v1beta1/inference_service_validation.go,
    inference_service_defaults.go), Knative Serving v1.23.0
    (pkg/apis/autoscaling/annotation_validation.go, pkg/apis/serving/fieldmask.go) and KEDA v2.20.0
    (apis/keda/v1alpha1/scaledobject_webhook.go), all at once, with KEDA installed and not."""
    spec = c.parse_or_refusal(name, raw)
    if isinstance(spec, list):
        assert not case.endswith(".yaml"), f"an example is refused: {spec}"
        assert all(e.startswith(("spec.", "metadata.name")) for e in spec), spec
        return
    for keda in (True, False):
        assert c.child_errors(c.build(namespace, name, spec, keda=keda)) == []


@pytest.mark.parametrize(("case", "namespace", "name", "raw"), CASES, ids=IDS)
def test_conformance_kserve_defaulting_leaves_cpu_and_memory_as_built(
    case: str, namespace: str, name: str, raw: dict[str, Any]
) -> None:
    """KServe v0.20.0, pkg/apis/serving/v1beta1/inference_service_defaults.go
    (setResourceRequirementDefaults) fills each missing CPU/memory request and limit from
    inferenceservice-config (config/configmap/inferenceservice.yaml: cpu 1, memory 2Gi): a
    request of 8 CPUs without a limit becomes an invalid pod, a missing memory limit a 2 GiB cap.
    """
    spec = c.parse_or_refusal(name, raw)
    if isinstance(spec, list):
        return
    container = c.container_of(c.isvc_of(c.build(namespace, name, spec)))
    resources = container.get("resources") or {}
    assert c.kserve_defaulted_resources(container) == resources
    assert c.pod_resource_errors(resources) == []


def test_conformance_kserve_refuses_a_request_above_its_limit_by_field() -> None:
    """Kubernetes core validation (requests ≤ limits), after KServe v0.20.0's defaulting
    (pkg/apis/serving/v1beta1/inference_service_defaults.go)."""
    raw = {
        "engine": "sr",
        "predictor": {"resources": {"requests": {"cpu": "4"}, "limits": {"cpu": "2"}}},
    }
    refusal = c.parse_or_refusal("up", raw)
    assert isinstance(refusal, list)
    assert any(e.startswith("spec.predictor.resources.requests.cpu") for e in refusal)


PVC_CASES = [case for case in CASES if "-pvc-" in case[0]]


@pytest.mark.parametrize(
    ("case", "namespace", "name", "raw"), PVC_CASES, ids=[case[0] for case in PVC_CASES]
)
def test_conformance_kserve_pvc_sub_paths_survive_the_storage_uris_mount(
    case: str, namespace: str, name: str, raw: dict[str, Any]
) -> None:
    """KServe v0.20.0, pkg/webhook/admission/pod/storage_initializer_injector.go: a pvc://
    entry of storageUris is mounted as the whole claim at its mountPath (SubPath ""), so the
    predictor must look below the mount for pvc://claim/sub/path."""
    spec = c.parse_or_refusal(name, raw)
    if isinstance(spec, list):
        return
    isvc = c.isvc_of(c.build(namespace, name, spec))
    predictor, container = c.predictor_of(isvc), c.container_of(isvc)
    model_dir = c.arg(container, "--model-dir")
    assert model_dir is not None
    assert c.resolve_in_pod(model_dir, predictor) == raw["model"]["storageUri"]
    lora = c.arg(container, "--upscaler-lora")
    assert lora is not None
    assert c.resolve_in_pod(lora, predictor) == raw["model"]["upscalerLora"]


def test_conformance_kserve_refuses_pythonpath_in_the_predictor_env() -> None:
    """KServe v0.20.0, pkg/validation/env_policy.go (DefaultBlockedEnvVars) and
    pkg/apis/serving/v1beta1/inference_service_validation.go (validateBlockedEnvVars): PYTHONPATH
    in any predictor container is refused (since KServe 0.18)."""
    raw = {
        "engine": "sr",
        "scaling": {"mode": "RawDeployment", "minReplicas": 1},
        "predictor": {"env": [{"name": "PYTHONPATH", "value": "/extra"}]},
    }
    spec = c.parse_or_refusal("up", raw)
    if isinstance(spec, list):
        assert any(e.startswith("spec.predictor.env") and "PYTHONPATH" in e for e in spec)
        return
    isvc = c.isvc_of(c.build("ns", "up", spec))
    assert c.kserve_validation_errors(isvc) == []


def test_conformance_kserve_before_0_18_is_reported_not_deployed() -> None:
    """KServe v0.20.0, pkg/webhook/admission/pod/storage_initializer_injector.go: storageUris
    need a storage container with supportsMultiModelDownload, which the default
    ClusterStorageContainer has from 0.18 on (config/storagecontainers/default.yaml); before it
    Standard mode fails and Knative mode starts with an empty model directory. 0.18 also first
    serves localmodelnamespacecaches (config/crd/full/), which the operator can discover."""
    cluster = c.Cluster(kserve_resources={"servingruntimes", "localmodelcaches"})  # KServe 0.17
    raw = {"engine": "chronoedit", "model": {"storageUri": c.STORAGE["hf"]}}
    c.reconcile(cluster, "up", raw)
    assert not [path for path in cluster.objects if "/inferenceservices/" in path]
    reconciled = c.conditions(cluster, "up")["Reconciled"]
    assert reconciled["status"] == "False" and "0.18" in reconciled["message"]
    install = (REPO / "docs" / "install.md").read_text()
    assert "KServe ≥ 0.18" in install or "KServe >= 0.18" in install


def test_conformance_kserve_mode_change_recreates_the_inference_service() -> None:
    """KServe v0.20.0, pkg/apis/serving/v1beta1/inference_service_validation.go
    (validateDeploymentMode): once the status records a deployment mode, an update naming another
    is refused; the operator must delete and recreate, and say so."""
    cluster = c.Cluster()
    raw: dict[str, Any] = {"engine": "sr", "scaling": {"mode": "Serverless"}}
    c.reconcile(cluster, "up", raw)
    cluster.kserve_reconcile()  # KServe records deploymentMode Knative
    raw = {"engine": "sr", "scaling": {"mode": "RawDeployment", "minReplicas": 1}}
    c.reconcile(cluster, "up", raw)  # must not patch into the webhook's refusal
    reconciled = c.conditions(cluster, "up")["Reconciled"]
    assert reconciled["reason"] == "RecreatingInferenceService", reconciled
    assert any(e["reason"] == "RecreatingInferenceService" for e in cluster.events)
    c.reconcile(cluster, "up", raw)  # the old one is gone: created in the new mode
    isvc = cluster.objects["/apis/serving.kserve.io/v1beta1/namespaces/ns/inferenceservices/up"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert c.conditions(cluster, "up")["Reconciled"]["status"] == "True"
