"""values.yaml is documented and checked: helm lint, the schema, and clear template failures."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from tests.chart.conftest import CHART, HelmError, render, run_helm, template

VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
#: maps documented as a whole (their keys are Kubernetes' or free-form, not the chart's)
FREE_FORM = {
    "resources",
    "podSecurityContext",
    "securityContext",
    "podAnnotations",
    "podLabels",
    "nodeSelector",
    "tolerations",
    "affinity",
    "labels",
    "annotations",
}
KEY = re.compile(r"^( *)([A-Za-z_][\w-]*):")


def value_at(path: list[str]) -> Any:
    node: Any = VALUES
    for key in path:
        node = node[key]
    return node


def undocumented_values() -> list[str]:
    """Keys of values.yaml that are a value (not a section of values) without a `# --` comment."""
    lines = VALUES_TEXT.splitlines()
    stack: list[tuple[int, str]] = []
    missing = []
    for number, line in enumerate(lines):
        match = KEY.match(line)
        if not match:
            continue
        indent = len(match[1])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [key for _, key in stack] + [match[2]]
        stack.append((indent, match[2]))
        if FREE_FORM & set(path[:-1]):
            continue  # inside a map documented as a whole
        value = value_at(path)
        if isinstance(value, dict) and value and path[-1] not in FREE_FORM:
            continue  # a section: its values carry the comments
        above = number - 1
        while above >= 0 and lines[above].strip().startswith("#"):
            above -= 1
        comment = [text.strip() for text in lines[above + 1 : number]]
        if not comment or not comment[0].startswith("# -- "):
            missing.append(".".join(path))
    return missing


def test_chart_lint_strict_passes_for_several_value_sets(helm_path: object) -> None:
    for extra in (
        [],
        ["--set", "rbac.namespaced=true"],
        ["--set", "redis.enabled=true", "--set", "metrics.dashboard.enabled=true"],
    ):
        result = run_helm("lint", "--strict", str(CHART), *extra)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 chart(s) failed" in result.stdout


def test_chart_every_value_has_a_doc_comment() -> None:
    assert undocumented_values() == []


def test_chart_schema_accepts_the_defaults_and_knows_every_value() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.validate(VALUES, SCHEMA)
    assert set(VALUES) <= set(SCHEMA["properties"])
    assert SCHEMA["additionalProperties"] is False


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"metrics": {"port": "8000"}}, "/metrics/port"),
        ({"rbac": {"namespaced": "yes"}}, "/rbac/namespaced"),
        ({"image": {"tag": 1.2}}, "/image/tag"),
        ({"config": {"watchNamespaces": "team-a"}}, "/config/watchNamespaces"),
        ({"config": {"logLevel": "TRACE"}}, "/config/logLevel"),
        ({"resources": {"requests": {"cpu": "lots"}}}, "/resources/requests/cpu"),
        ({"resources": {"requests": None}}, "/resources"),  # requests are required
        ({"redis": {"enabled": "true"}}, "/redis/enabled"),
        ({"redis": {"url": "http://redis:6379"}}, "/redis/url"),
        ({"metrics": {"serviceMonitor": {"interval": 30}}}, "/metrics/serviceMonitor/interval"),
        ({"deployments": {"name": "x"}}, "/deployments"),
        ({"deployments": [{"name": "Bad_Name", "spec": {"engine": "sr"}}]}, "/deployments/0/name"),
        ({"deployments": [{"name": "x", "spec": {"engine": "gpu"}}]}, "/deployments/0/spec/engine"),
        ({"deployments": [{"name": "x"}]}, "/deployments/0"),
        ({"serviceMonitor": {"enabled": True}}, "serviceMonitor"),  # misplaced: metrics.*
    ],
)
def test_chart_schema_rejects_bad_values(values: dict[str, Any], error: str) -> None:
    with pytest.raises(HelmError, match=re.escape(error)):
        template(values)


@pytest.mark.parametrize(
    ("values", "kwargs", "error"),
    [
        (
            {"redis": {"enabled": True, "url": "redis://r:6379/0"}},
            {},
            "choose at most one of redis.enabled, redis.url and redis.existingSecret",
        ),
        ({"redis": {"url": "redis://:hunter2@r:6379/0"}}, {}, "redis.url holds credentials"),
        (
            {"metrics": {"serviceMonitor": {"enabled": True}}},
            {},
            "needs the Prometheus Operator's monitoring.coreos.com/v1 API",
        ),
        (
            {"metrics": {"prometheusRule": {"enabled": True}}},
            {},
            "needs the Prometheus Operator's monitoring.coreos.com/v1 API",
        ),
        (
            {
                "rbac": {"namespaced": True},
                "deployments": [{"name": "x", "namespace": "other", "spec": {"engine": "sr"}}],
            },
            {"namespace": "mine"},
            "deployments[0] is in namespace other, which the operator does not serve",
        ),
        (
            {"serviceAccount": {"create": False}},
            {},
            "serviceAccount.name is required when serviceAccount.create is false",
        ),
    ],
)
def test_chart_templates_fail_with_a_clear_message(
    values: dict[str, Any], kwargs: dict[str, Any], error: str
) -> None:
    with pytest.raises(HelmError, match=re.escape(error)):
        template(values, **kwargs)


def test_chart_existing_service_account_is_used_not_created() -> None:
    docs = render({"serviceAccount": {"create": False, "name": "platform-operator"}})
    assert not [doc for doc in docs if doc["kind"] == "ServiceAccount"]
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "platform-operator"
    (binding,) = [doc for doc in docs if doc["kind"] == "ClusterRoleBinding"]
    assert binding["subjects"][0]["name"] == "platform-operator"


def test_chart_notes_tell_how_to_reach_the_endpoint(helm_path: object) -> None:
    result = run_helm(
        "install", "demo", str(CHART), "--dry-run=client", "--namespace", "upscaling",
        "--set-json", 'deployments=[{"name": "sr-upscaler", "spec": {"engine": "sr"}}]',
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "rollout status deployment/demo-chrono-upscaler-operator" in notes
    assert "wait --for=condition=Ready upscalerdeployment/sr-upscaler" in notes
    assert "/fal-ai/chrono-edit-lora-gallery/upscaler" in notes
    assert "{.status.url}" in notes
    assert "port-forward service/NAME-predictor" in notes
