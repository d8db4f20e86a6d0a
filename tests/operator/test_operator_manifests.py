"""manifests/: RBAC is exactly what the operator uses; the Deployment is locked down."""

from __future__ import annotations

from typing import Any

import yaml
from upscaler_operator import GROUP, PLURAL
from upscaler_operator.handlers import CHILD_RESOURCES

from tests.operator.conftest import ROOT

MANIFESTS = ROOT / "manifests"


def documents(name: str) -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]
    return {d["kind"]: d for d in docs}


def rules() -> dict[tuple[str, str], set[str]]:
    role = documents("rbac.yaml")["ClusterRole"]
    found: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                found.setdefault((group, resource), set()).update(rule["verbs"])
    return found


def test_operator_rbac_is_least_privilege() -> None:
    child_verbs = {"get", "list", "watch", "create", "patch", "delete"}
    assert rules() == {
        # kopf
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        ("", "namespaces"): {"list", "watch"},
        ("", "events"): {"create"},
        # the custom resource and its status
        (GROUP, PLURAL): {"get", "list", "watch", "patch"},
        (GROUP, f"{PLURAL}/status"): {"get", "patch"},
        (GROUP, f"{PLURAL}/finalizers"): {"update"},  # blockOwnerDeletion
        # children; delete because setting ownerReferences requires it under the
        # OwnerReferencesPermissionEnforcement admission plugin, and (used) for a ScaledObject the
        # spec no longer wants and an InferenceService whose deployment mode changed
        ("serving.kserve.io", "inferenceservices"): child_verbs,
        ("", "configmaps"): child_verbs,
        ("monitoring.coreos.com", "podmonitors"): child_verbs,
        ("keda.sh", "scaledobjects"): child_verbs,  # RawDeployment's queue-length autoscaler
        ("autoscaling", "horizontalpodautoscalers"): {"list"},  # KServe's HPA gone before KEDA?
        # spec.model.cache: KServe's node cache, and whether its node group exists
        ("serving.kserve.io", "localmodelnamespacecaches"): child_verbs,
        ("serving.kserve.io", "localmodelnodegroups"): {"get"},
    }


def test_operator_rbac_covers_every_watched_child() -> None:
    found = rules()
    for group, _version, plural, _events in CHILD_RESOURCES:
        assert {"list", "watch", "get", "create", "patch"} <= found[(group, plural)], plural


def test_operator_rbac_binds_the_service_account_the_deployment_uses() -> None:
    rbac, operator = documents("rbac.yaml"), documents("operator.yaml")
    account = operator["ServiceAccount"]["metadata"]
    binding = rbac["ClusterRoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": rbac["ClusterRole"]["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]
    deployment = operator["Deployment"]
    assert (
        deployment["metadata"]["namespace"]
        == account["namespace"]
        == operator["Namespace"]["metadata"]["name"]
    )
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["name"]


def test_operator_deployment_is_locked_down_and_probed() -> None:
    operator = documents("operator.yaml")
    deployment, service = operator["Deployment"], operator["Service"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/chrono-upscaler/operator:0.1.0"
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["PREDICTOR_IMAGE"] == "ghcr.io/chrono-upscaler/predictor:0.1.0"
    assert env["PREDICTOR_CPU_IMAGE"] == "ghcr.io/chrono-upscaler/predictor:0.1.0-cpu"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": int(env["METRICS_PORT"]), "health": int(env["LIVENESS_PORT"])}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["metadata"]["namespace"] == deployment["metadata"]["namespace"]
