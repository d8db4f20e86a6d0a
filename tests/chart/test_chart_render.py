"""helm template over several value sets: every object valid, every container locked down."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from upscaler_operator.crd import openapi_schema

from tests.chart.conftest import CHART, ROOT, containers, render
from tests.operator.conftest import strict_schema, validation_errors
from tests.operator.schema_tools import apply_defaults, cel_errors

#: the chart's minimum (Chart.yaml kubeVersion) and a recent release
KUBE_VERSIONS = ("1.29", "1.33")
MONITORING_API = ("monitoring.coreos.com/v1",)
#: API groups of custom resources: checked against their CRDs' schemas (kubernetes-validate knows
#: only built-in kinds)
CUSTOM_GROUPS = {"serving.chrono-upscaler.dev", "monitoring.coreos.com"}
EXAMPLES = {
    path.stem: yaml.safe_load(path.read_text())
    for path in sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
}

#: name -> (values, helm template keyword arguments)
VALUE_SETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "defaults": ({}, {}),
    "namespaced": (
        {"rbac": {"namespaced": True}, "config": {"watchNamespaces": ["team-a", "team-b"]}},
        {"namespace": "team-a"},
    ),
    "monitoring": (
        {
            "metrics": {
                "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
                "dashboard": {"enabled": True, "namespace": "grafana"},
            }
        },
        {"api_versions": MONITORING_API},
    ),
    "other-namespace-and-tag": (
        {
            "image": {"repository": "registry.example/ml/operator", "tag": "1.2.3"},
            "config": {
                "predictorImage": {"repository": "registry.example/ml/predictor", "tag": "9.9"},
                "logLevel": "DEBUG",
            },
            "imagePullSecrets": [{"name": "registry"}],
        },
        {"namespace": "ml-serving", "release": "upscale"},
    ),
    "deployments": (
        {
            "deployments": [
                {
                    "name": example["metadata"]["name"],
                    "namespace": example["metadata"]["namespace"],
                    "spec": example["spec"],
                }
                for example in EXAMPLES.values()
            ]
            + [{"name": "minimal-sr", "labels": {"team": "imaging"}, "spec": {"engine": "sr"}}]
        },
        {},
    ),
    "redis": ({"redis": {"enabled": True}}, {}),
    "redis-secret": ({"redis": {"existingSecret": "upscaler-redis"}}, {}),
}


def objects(name: str) -> list[dict[str, Any]]:
    values, kwargs = VALUE_SETS[name]
    return render(values, **kwargs)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for doc in by_kind(docs, kind)
        if component is None
        or doc["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, (kind, component, [d["metadata"]["name"] for d in found])
    return found[0]


def operator_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = containers(one(docs, "Deployment", "operator"))
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


# Structural subsets of the Prometheus Operator's CRDs (monitoring.coreos.com/v1): the fields the
# chart writes, with unknown ones rejected, so a misspelt field fails here rather than being pruned.
_DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(y|w|d|h|m|s|ms))+)$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": _STRING_MAP, "matchExpressions": {"type": "array"}},
}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "labels": _STRING_MAP},
}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "selector": _SELECTOR,
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                        },
                    },
                },
            },
        },
    },
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["expr"],
                                    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                                    "properties": {
                                        "record": {"type": "string"},
                                        "alert": {"type": "string"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": _DURATION,
                                        "keep_firing_for": _DURATION,
                                        "labels": _STRING_MAP,
                                        "annotations": _STRING_MAP,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def custom_object_errors(doc: dict[str, Any]) -> list[str]:
    api, kind = doc["apiVersion"], doc["kind"]
    if api == "serving.chrono-upscaler.dev/v1alpha1" and kind == "UpscalerDeployment":
        schema = openapi_schema()
        errors = validation_errors(jsonschema.Draft7Validator(strict_schema(schema)), doc)
        return errors + cel_errors(schema, apply_defaults(schema, doc))
    schemas = {"ServiceMonitor": SERVICE_MONITOR_SCHEMA, "PrometheusRule": PROMETHEUS_RULE_SCHEMA}
    assert api == "monitoring.coreos.com/v1" and kind in schemas, f"unexpected {api} {kind}"
    return validation_errors(jsonschema.Draft7Validator(schemas[kind]), doc)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_chart_objects_are_valid_kubernetes(name: str) -> None:
    docs = objects(name)
    assert docs
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].split("/")[0] in CUSTOM_GROUPS:
            assert custom_object_errors(doc) == [], where
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{where} (Kubernetes {version}): {error.message}")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_chart_every_container_is_non_root_read_only_and_has_requests(name: str) -> None:
    workloads = [doc for doc in objects(name) if containers(doc)]
    assert workloads
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert "memory" in container["resources"]["limits"], where
            assert container["livenessProbe"] and container["readinessProbe"], where
            assert container["imagePullPolicy"] in ("IfNotPresent", "Always"), where


def test_chart_defaults_are_cluster_wide_and_the_operator_alone() -> None:
    docs = objects("defaults")
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ServiceAccount",
    ]  # no monitoring, Redis, Namespace or UpscalerDeployment unless asked for
    env = operator_env(docs)
    assert env["WATCH_NAMESPACE"] == ""
    assert env["PREDICTOR_IMAGE"] == "ghcr.io/chrono-upscaler/predictor:0.1.0"
    assert not {"UPSCALER_REDIS_URL", "UPSCALER_REDIS_SECRET"} & set(env)
    deployment = one(docs, "Deployment", "operator")
    (container,) = containers(deployment)
    assert container["image"] == "ghcr.io/chrono-upscaler/operator:0.1.0"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": int(env["METRICS_PORT"]), "health": int(env["LIVENESS_PORT"])}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    binding = one(docs, "ClusterRoleBinding")
    account = one(docs, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole")["metadata"]["name"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["name"]
    service = one(docs, "Service", "operator")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8000, "targetPort": "metrics", "protocol": "TCP"}
    ]


def rule_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, frozenset[str]]]:
    return {
        (group, resource, frozenset(rule["verbs"]))
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def test_chart_rbac_grants_keda_and_namespaced_mode_nothing_cluster_wide() -> None:
    cluster_rules = rule_set(one(objects("defaults"), "ClusterRole")["rules"])
    child_verbs = frozenset({"get", "list", "watch", "create", "patch", "delete"})
    assert ("keda.sh", "scaledobjects", child_verbs) in cluster_rules
    cluster_scoped = {
        ("apiextensions.k8s.io", "customresourcedefinitions", frozenset({"list", "watch"})),
        ("", "namespaces", frozenset({"list", "watch"})),
        # spec.model.cache: does the LocalModelNodeGroup exist? (without it, KServe's webhook
        # says so when the cache is created)
        ("serving.kserve.io", "localmodelnodegroups", frozenset({"get"})),
    }
    assert cluster_scoped <= cluster_rules

    docs = objects("namespaced")
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    roles = {role["metadata"]["namespace"]: role for role in by_kind(docs, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(docs, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    account = one(docs, "ServiceAccount")["metadata"]
    assert account["namespace"] == "team-a"
    for namespace, role in roles.items():
        # the same rules, less what only a ClusterRole can grant (kopf then logs a warning)
        assert rule_set(role["rules"]) == cluster_rules - cluster_scoped
        assert bindings[namespace]["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert bindings[namespace]["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": "team-a"}
        ]
    assert operator_env(docs)["WATCH_NAMESPACE"] == "team-a,team-b"


def test_chart_namespaced_rbac_defaults_to_the_release_namespace() -> None:
    docs = render({"rbac": {"namespaced": True}}, namespace="solo")
    assert [role["metadata"]["namespace"] for role in by_kind(docs, "Role")] == ["solo"]
    assert operator_env(docs)["WATCH_NAMESPACE"] == "solo"
    # watchNamespaces alone narrows a cluster-wide operator
    docs = render({"config": {"watchNamespaces": ["a", "b"]}})
    assert operator_env(docs)["WATCH_NAMESPACE"] == "a,b"
    assert by_kind(docs, "ClusterRole") and not by_kind(docs, "Role")


def test_chart_monitoring_wraps_the_same_rules_and_dashboard() -> None:
    docs = objects("monitoring")
    service, monitor = one(docs, "Service", "operator"), one(docs, "ServiceMonitor")
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["namespaceSelector"] == {
        "matchNames": [service["metadata"]["namespace"]]
    }
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"

    rule = one(docs, "PrometheusRule")
    source = yaml.safe_load((ROOT / "manifests" / "monitoring" / "upscaler-rules.yaml").read_text())
    assert rule["spec"] == source
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert "{{ $labels.engine }}" in alerts[0]["annotations"]["summary"]  # not templated by Helm

    dashboard = one(docs, "ConfigMap", "monitoring")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "grafana"
    (text,) = dashboard["data"].values()
    source_dashboard = ROOT / "manifests" / "monitoring" / "upscaler-dashboard.json"
    assert json.loads(text) == json.loads(source_dashboard.read_text())


def test_chart_other_namespace_release_and_image_tags() -> None:
    docs = objects("other-namespace-and-tag")
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "ml-serving", doc["kind"]
        assert doc["metadata"]["name"].startswith("upscale-chrono-upscaler-"), doc["kind"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == "upscale"
    (container,) = containers(one(docs, "Deployment", "operator"))
    assert container["image"] == "registry.example/ml/operator:1.2.3"
    env = operator_env(docs)
    assert env["PREDICTOR_IMAGE"] == "registry.example/ml/predictor:9.9"
    assert env["LOG_LEVEL"] == "DEBUG"
    pod = one(docs, "Deployment", "operator")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["namespace"] == "ml-serving"


def test_chart_deployments_become_valid_upscalerdeployments() -> None:
    docs = by_kind(objects("deployments"), "UpscalerDeployment")
    assert {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs} == {
        *((e["metadata"]["namespace"], e["metadata"]["name"]) for e in EXAMPLES.values()),
        ("chrono-upscaler-system", "minimal-sr"),
    }
    examples = {example["metadata"]["name"]: example for example in EXAMPLES.values()}
    for doc in docs:
        if doc["metadata"]["name"] == "minimal-sr":
            assert doc["metadata"]["labels"]["team"] == "imaging"
        else:  # as JSON: 2 and 2.0 differ there (an integer field rendered as 2.0 is refused)
            expected = examples[doc["metadata"]["name"]]["spec"]
            assert json.dumps(doc["spec"], sort_keys=True) == json.dumps(expected, sort_keys=True)
    # the CRD lives in crds/: Helm installs it before these objects on the first install
    assert (CHART / "crds").is_dir()


def test_chart_redis_bundled_or_from_a_secret() -> None:
    docs = objects("redis")
    deployment, service = one(docs, "Deployment", "redis"), one(docs, "Service", "redis")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    (container,) = containers(deployment)
    assert "--maxmemory" in container["args"]
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    (port,) = service["spec"]["ports"]
    assert operator_env(docs)["UPSCALER_REDIS_URL"] == (
        f"redis://{name}.{namespace}.svc.cluster.local:{port['port']}/0"
    )

    docs = objects("redis-secret")
    components = {doc["metadata"]["labels"]["app.kubernetes.io/component"] for doc in docs}
    assert "redis" not in components
    env = operator_env(docs)
    assert env["UPSCALER_REDIS_SECRET"] == "upscaler-redis"
    assert "UPSCALER_REDIS_URL" not in env

    env = operator_env(render({"redis": {"url": "rediss://redis.infra:6380/1"}}))
    assert env["UPSCALER_REDIS_URL"] == "rediss://redis.infra:6380/1"
