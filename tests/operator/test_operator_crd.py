"""The UpscalerDeployment CRD: structural, one source, examples valid, bad specs rejected."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest
from upscaler_operator import spec as spec_module
from upscaler_operator.crd import crd_text, load_crd, openapi_schema, spec_schema
from upscaler_operator.spec import InvalidSpec, parse_spec
from upscaler_operator.status import ConditionState, Outcome, build_status

from tests.operator.conftest import ROOT, load_examples, strict_schema, validation_errors
from tests.operator.schema_tools import apply_defaults, cel_errors, compile_rule


def schema_nodes(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path, schema)]
    for key, sub in (schema.get("properties") or {}).items():
        nodes += schema_nodes(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        nodes += schema_nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        nodes += schema_nodes(schema["additionalProperties"], f"{path}{{}}")
    return nodes


def test_operator_crd_names_scope_and_status_subresource() -> None:
    crd = load_crd()
    assert crd["metadata"]["name"] == "upscalerdeployments.serving.chrono-upscaler.dev"
    assert crd["spec"]["group"] == "serving.chrono-upscaler.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"]) == ("UpscalerDeployment", "upscalerdeployments")
    assert {"ud", "upscaler"} <= set(names["shortNames"])
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert {"Ready", "URL", "Replicas", "Age"} <= set(columns)
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_operator_crd_schema_is_structural() -> None:
    """Every node has a type (or is int-or-string); no properties beside additionalProperties."""
    for path, node in schema_nodes(openapi_schema()):
        if node.get("x-kubernetes-int-or-string"):
            assert node.get("anyOf") == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, (
            path
        )
        assert not ("properties" in node and "additionalProperties" in node), path
        if node["type"] == "array":
            assert isinstance(node.get("items"), dict), path
        for forbidden in ("oneOf", "allOf", "not", "$ref", "definitions"):
            assert forbidden not in node, (path, forbidden)
        if "default" in node:  # defaults must themselves be valid
            jsonschema.validate(node["default"], strict_schema(node))
    metadata = openapi_schema()["properties"]["metadata"]
    assert metadata == {"type": "object"}  # the API server owns metadata's schema


def test_operator_crd_cel_rules_compile() -> None:
    rules = [
        rule["rule"]
        for _, node in schema_nodes(openapi_schema())
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert len(rules) >= 8
    for rule in rules:
        compile_rule(rule)


def test_operator_crd_manifest_copy_is_identical_to_the_source() -> None:
    copy_path = ROOT / "manifests" / "crd.yaml"
    assert copy_path.read_text() == crd_text(), (
        "manifests/crd.yaml differs from operator/upscaler_operator/crd.yaml; regenerate it: "
        "make manifests"
    )


def test_operator_crd_declares_every_status_field_the_operator_writes(crd_validator) -> None:
    """A structural CRD prunes undeclared status fields: the whole status must validate."""
    spec = parse_spec({"engine": "sr", "pricing": {"cpuHourlyUsd": 0.1}}, name="x")
    isvc = {
        "status": {
            "url": "http://x",
            "conditions": [{"type": "Ready", "status": "True"}],
            "modelStatus": {"copies": {"totalCopies": 2}},
        }
    }
    keda = ConditionState("False", "KEDANotInstalled", "not served")
    outcomes = (
        Outcome(applied=("ConfigMap",), autoscaling=keda),
        Outcome(invalid=["a"]),
        Outcome(failure="b"),
    )
    for outcome in outcomes:
        status = build_status(
            generation=3, previous=None, spec=spec, outcome=outcome, isvc=isvc, isvc_name="x"
        )
        body = {"apiVersion": "a/b", "kind": "K", "metadata": {}, "spec": {"engine": "sr"}}
        assert validation_errors(crd_validator, {**body, "status": status}) == []


@pytest.mark.parametrize(("filename", "body"), load_examples(), ids=lambda v: str(v)[:30])
def test_operator_examples_are_valid(filename: str, body: dict[str, Any], crd_validator) -> None:
    assert body["apiVersion"] == "serving.chrono-upscaler.dev/v1alpha1"
    assert body["kind"] == "UpscalerDeployment"
    assert validation_errors(crd_validator, body) == []
    assert cel_errors(openapi_schema(), body) == []
    parse_spec(body["spec"], name=body["metadata"]["name"])  # the operator accepts it too


#: the example each test case starts from
EXAMPLE_FILES = {
    "chronoedit": "upscaler.yaml",
    "sr": "upscaler-sr-cpu.yaml",
    "queue": "upscaler-queue.yaml",
}


def test_operator_examples_cover_gpu_chronoedit_cpu_sr_and_the_shared_queue() -> None:
    examples = dict(load_examples())
    assert set(EXAMPLE_FILES.values()) <= set(examples)
    assert examples["upscaler.yaml"]["spec"]["gpu"]["count"] >= 1
    assert "gpu" not in examples["upscaler-sr-cpu.yaml"]["spec"]
    queue = examples["upscaler-queue.yaml"]["spec"]
    assert queue["engine"] == "chronoedit" and queue["scaling"]["mode"] == "RawDeployment"
    assert queue["scaling"]["minReplicas"] == 0  # KEDA scales it from zero
    assert "secretRef" in queue["queue"]["redis"]  # the password stays in a Secret
    assert queue["outputs"]["store"] in ("s3", "redis")


def _example(which: str) -> dict[str, Any]:
    return copy.deepcopy(dict(load_examples())[EXAMPLE_FILES[which]])


def _with(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    *parents, last = path.split(".")
    node = body
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return body


# (example, field to set, value, where the schema catches it)
SCHEMA_REJECTS = [
    ("chronoedit", "spec.scaling.minReplicas", -1, "spec.scaling.minReplicas"),
    ("chronoedit", "spec.scaling.maxReplicas", 0, "spec.scaling.maxReplicas"),
    ("chronoedit", "spec.engine", "esrgan", "spec.engine"),
    ("chronoedit", "spec.scaling.mode", "Knative", "spec.scaling.mode"),
    ("chronoedit", "spec.model.dtype", "int8", "spec.model.dtype"),
    ("chronoedit", "spec.model.precision", "int4", "spec.model.precision"),
    ("chronoedit", "spec.model.compile", "yes", "spec.model.compile"),
    ("chronoedit", "spec.defaults.outputFormat", "gif", "spec.defaults.outputFormat"),
    ("chronoedit", "spec.gpu.count", 0, "spec.gpu.count"),
    ("chronoedit", "spec.gpu.count", 1.5, "spec.gpu.count"),
    ("chronoedit", "spec.pricing.gpuHourlyUsd", -0.5, "spec.pricing.gpuHourlyUsd"),
    ("chronoedit", "spec.scaling.scaleToZeroGracePeriod", "5 minutes", "spec.scaling"),
    ("chronoedit", "spec.scaling.maxReplica", 3, "spec.scaling"),  # a typo'd field
    ("sr", "spec.predictor.resources.limits.cpu", "two", "spec.predictor.resources.limits"),
    ("queue", "spec.scaling.targetQueueLength", 0, "spec.scaling.targetQueueLength"),
    ("queue", "spec.queue.maxQueued", 0, "spec.queue.maxQueued"),
    ("queue", "spec.queue.leaseSeconds", 0, "spec.queue.leaseSeconds"),
    ("queue", "spec.queue.prefix", "has space", "spec.queue.prefix"),
    ("queue", "spec.queue.redis.url", "http://redis:6379", "spec.queue.redis.url"),
    ("queue", "spec.queue.redis.secretRef.name", "Not_A_Name", "spec.queue.redis.secretRef.name"),
    ("queue", "spec.queue.redis.secretRef.namme", "x", "spec.queue.redis.secretRef"),  # typo
    ("queue", "spec.outputs.store", "gcs", "spec.outputs.store"),
    ("queue", "spec.outputs.s3.bucket", "Bad_Bucket", "spec.outputs.s3.bucket"),
    ("queue", "spec.outputs.s3.endpointUrl", "minio:9000", "spec.outputs.s3.endpointUrl"),
    ("queue", "spec.outputs.s3.prefix", "/abs", "spec.outputs.s3.prefix"),
]


@pytest.mark.parametrize(("which", "field", "value", "where"), SCHEMA_REJECTS)
def test_operator_crd_schema_rejects_bad_values(
    which: str, field: str, value: Any, where: str, crd_validator
) -> None:
    body = _with(_example(which), field, value)
    errors = validation_errors(crd_validator, body)
    assert errors, f"{field}={value!r} passed the schema"
    assert any(error.startswith(where) for error in errors), errors
    with pytest.raises(InvalidSpec) as caught:  # and the operator, when validation was skipped
        parse_spec(body["spec"], name=body["metadata"]["name"])
    assert any(message.startswith(where) for message in caught.value.errors), caught.value.errors


# (example, changes, the CEL message)
CEL_REJECTS = [
    (
        "chronoedit",
        {"spec.scaling.minReplicas": 5, "spec.scaling.maxReplicas": 2},
        "spec.scaling.minReplicas must not exceed spec.scaling.maxReplicas",
    ),
    (
        "sr",
        {"spec.scaling.minReplicas": 0},
        "spec.scaling.minReplicas must be at least 1 in RawDeployment mode without spec.queue "
        "(scale to zero needs Serverless, or KEDA on a shared queue)",
    ),
    (
        "sr",
        {"spec.scaling.scaleToZeroGracePeriod": "60s"},
        "spec.scaling.scaleToZeroGracePeriod applies to Serverless mode, or to RawDeployment "
        "with spec.queue (KEDA's cooldown)",
    ),
    (
        "chronoedit",
        {"spec.outputs": {"store": "redis"}},
        "spec.outputs.store redis keeps outputs in the queue's Redis: set spec.queue",
    ),
    (
        "queue",
        {"spec.queue.redis": {"url": "redis://r:6379", "secretRef": {"name": "r"}}},
        "spec.queue.redis: set exactly one of url and secretRef",
    ),
    (
        "queue",
        {"spec.queue.redis": {}},
        "spec.queue.redis: set exactly one of url and secretRef",
    ),
    (
        "queue",
        {"spec.queue.redis": {"url": "redis://:hunter2@redis:6379/0"}},
        "spec.queue.redis.url must not carry credentials; put the URL in a Secret and name it "
        "in spec.queue.redis.secretRef",
    ),
    (
        "queue",
        {"spec.queue.redis": {"url": "rediss://redis:6380/1", "databaseIndex": 1}},
        "spec.queue.redis: databaseIndex and tls go with secretRef only (a url carries its own: "
        "/<db>, rediss://)",
    ),
    (
        "queue",
        {"spec.outputs": {"store": "s3"}},
        "spec.outputs.s3 is required for store s3, and only for it",
    ),
    (
        "queue",
        {"spec.outputs.store": "redis"},
        "spec.outputs.s3 is required for store s3, and only for it",
    ),
    (
        "chronoedit",
        {"spec.model": {"dtype": "bfloat16"}},
        "spec.model.storageUri is required for the chronoedit engine",
    ),
    (
        "sr",
        {"spec.loras": [{"name": "a", "uri": "hf://o/r/a.safetensors"}]},
        "spec.loras: the sr engine takes no LoRAs",
    ),
    ("sr", {"spec.gpu": {"count": 1}}, "spec.gpu: the sr engine runs on CPU; remove spec.gpu"),
    (
        "sr",
        {"spec.model.storageUri": "hf://o/r"},
        "spec.model: storageUri, upscalerLora and distillLora apply to the chronoedit engine only",
    ),
    (
        "chronoedit",
        {"spec.model.srModel": "waifu2x"},
        "spec.model.srModel applies to the sr engine only",
    ),
    (
        "chronoedit",
        {"spec.scaling.scaleToZeroGracePeriod": "1h0m1s"},
        "spec.scaling.scaleToZeroGracePeriod must not exceed 1h in Serverless mode (Knative's "
        "cap on scale-to-zero-pod-retention-period)",
    ),
    (
        "chronoedit",
        {"spec.predictor.env": [{"name": "PYTHONPATH", "value": "/x"}]},
        spec_module.BLOCKED_ENV_MESSAGE,
    ),
    ("chronoedit", {"metadata.name": "Chrono_Edit"}, spec_module.NAME_MESSAGE),
    ("chronoedit", {"metadata.name": "x" * 46}, spec_module.NAME_MESSAGE),
]


@pytest.mark.parametrize(("which", "changes", "message"), CEL_REJECTS)
def test_operator_crd_cel_rules_reject_and_the_operator_agrees(
    which: str, changes: dict[str, Any], message: str, crd_validator
) -> None:
    body = _example(which)
    for field, value in changes.items():
        body = _with(body, field, value)
    assert validation_errors(crd_validator, body) == []  # only CEL catches these
    assert cel_errors(openapi_schema(), body) == [message]
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(body["spec"], name=body["metadata"]["name"])
    assert caught.value.errors == [message]  # the same words when the API server skipped them


# (example, changes) that only a shared queue makes valid: KEDA scales a RawDeployment from zero
QUEUE_ALLOWS = [
    ("queue", {"spec.scaling.minReplicas": 0, "spec.scaling.scaleToZeroGracePeriod": "90s"}),
    ("sr", {"spec.scaling.minReplicas": 0, "spec.queue": {"redis": {"url": "redis://r/2"}}}),
    ("sr", {"spec.queue": {}, "spec.outputs": {"store": "redis"}}),  # the operator's Redis
    ("queue", {"spec.queue.redis": {"url": "rediss://[fd00::1]:6380/3"}}),
    ("queue", {"spec.queue.redis.databaseIndex": 2, "spec.queue.redis.tls": True}),
]


@pytest.mark.parametrize(("which", "changes"), QUEUE_ALLOWS)
def test_operator_crd_accepts_what_a_shared_queue_allows(
    which: str, changes: dict[str, Any], crd_validator
) -> None:
    from upscaler_operator.spec import RedisSpec

    body = _example(which)
    for field, value in changes.items():
        body = _with(body, field, value)
    assert validation_errors(crd_validator, body) == []
    assert cel_errors(openapi_schema(), body) == []
    default = RedisSpec(url="redis://redis.upscaler.svc:6379/0")
    parse_spec(body["spec"], name=body["metadata"]["name"], default_redis=default)


def test_operator_crd_defaults_match_the_typed_model() -> None:
    """The dataclass defaults (used by builders in tests) are the CRD's defaults."""
    defaulted = apply_defaults(spec_schema(), {"engine": "sr"})
    scaling = spec_module.ScalingSpec()
    assert defaulted["scaling"] == {
        "mode": scaling.mode,
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "targetConcurrency": scaling.target_concurrency,
        "targetCpuUtilization": scaling.target_cpu_utilization,
        "targetQueueLength": scaling.target_queue_length,
    }
    assert (
        defaulted["requestTimeoutSeconds"]
        == spec_module.DeploymentSpec("sr").request_timeout_seconds
    )
    model = spec_schema()["properties"]["model"]["properties"]
    gpu = spec_schema()["properties"]["gpu"]["properties"]
    assert model["dtype"]["default"] == spec_module.ModelSpec().dtype
    assert model["compile"]["default"] is spec_module.ModelSpec().compile is True
    assert model["precision"]["default"] == spec_module.ModelSpec().precision
    assert gpu["count"]["default"] == spec_module.GpuSpec().count
    assert gpu["resourceName"]["default"] == spec_module.GpuSpec().resource_name
    assert parse_spec({"engine": "sr"}, name="x") == spec_module.DeploymentSpec("sr")
    redis = spec_schema()["properties"]["queue"]["properties"]["redis"]["properties"]
    assert redis["secretRef"]["properties"]["key"]["default"] == "url"
    s3 = spec_schema()["properties"]["outputs"]["properties"]["s3"]["properties"]
    secret, typed = s3["credentialsSecret"]["properties"], spec_module.S3Credentials("x")
    assert secret["accessKeyIdKey"]["default"] == typed.access_key_id_key
    assert secret["secretAccessKeyKey"]["default"] == typed.secret_access_key_key
