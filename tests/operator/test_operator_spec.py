"""Spec parsing: the CRD's checks redone in Python, URI rules, and messages that name fields."""

from __future__ import annotations

from typing import Any

import pytest
from upscaler_operator import uris
from upscaler_operator.openapi import normalize
from upscaler_operator.spec import (
    DEFAULT_UPSCALER_LORA,
    InvalidSpec,
    OutputsSpec,
    RedisSpec,
    SecretKey,
    default_redis,
    parse_redis_url,
    parse_spec,
)

BASE = {"engine": "chronoedit", "model": {"storageUri": "hf://nvidia/ChronoEdit-14B-Diffusers"}}


def errors_of(spec: Any, name: str = "upscaler") -> list[str]:
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(spec, name=name)
    return caught.value.errors


def test_operator_spec_defaults_come_from_the_crd() -> None:
    spec = parse_spec(BASE, name="upscaler")
    assert spec.model.dtype == "bfloat16"
    assert spec.scaling.mode == "Serverless"
    assert (spec.scaling.min_replicas, spec.scaling.max_replicas) == (0, 1)
    assert spec.request_timeout_seconds == 300
    assert spec.gpu is None and spec.gpus is not None and spec.gpus.count == 1
    assert spec.model.upscaler_lora is None  # the builders fall back to DEFAULT_UPSCALER_LORA
    assert DEFAULT_UPSCALER_LORA.startswith("hf://nvidia/")


def test_operator_spec_prunes_nulls_like_the_api_server() -> None:
    spec = parse_spec({**BASE, "model": {**BASE["model"], "distillLora": None}}, name="x")
    assert spec.model.distill_lora is None


def test_operator_spec_error_for_an_unknown_lora_scheme_names_the_field() -> None:
    loras = [
        {"name": "ok", "uri": "hf://nvidia/Paint/paint.safetensors"},
        {"name": "old", "uri": "ftp://files.example.com/old.safetensors"},
    ]
    assert errors_of({**BASE, "loras": loras}) == [
        "spec.loras[1].uri: unsupported scheme 'ftp'; expected hf://owner/repo/file.safetensors "
        "or http(s)://"
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"engine": "chronoedit", "model": {"storageUri": "ftp://x/y"}},
         "spec.model.storageUri: unsupported scheme 'ftp'; expected hf://, s3://, gs://, "
         "http(s):// or pvc://"),
        ({"engine": "chronoedit", "model": {"storageUri": "hf://nvidia/a/b"}},
         "spec.model.storageUri: 'hf://nvidia/a/b' is not hf://owner/repo[:revision] "
         "(it names a repository)"),
        ({"engine": "chronoedit", "model": {"storageUri": "/models/chronoedit"}},
         "spec.model.storageUri: unsupported scheme '/models/chronoedit'; expected hf://, s3://, "
         "gs://, http(s):// or pvc://"),
        ({**BASE, "model": {**BASE["model"], "distillLora": "../../etc/passwd.safetensors"}},
         "spec.model.distillLora: '../../etc/passwd.safetensors' must stay inside the model "
         "directory (no '..')"),
        ({**BASE, "model": {**BASE["model"], "upscalerLora": "/abs/up.safetensors"}},
         "spec.model.upscalerLora: '/abs/up.safetensors' must be relative to the model directory"),
        ({**BASE, "model": {**BASE["model"], "upscalerLora": "lora/up.bin"}},
         "spec.model.upscalerLora: 'lora/up.bin' must name a .safetensors file"),
        ({**BASE, "loras": [{"name": "a", "uri": "hf://nvidia/repo-only"}]},
         "spec.loras[0].uri: 'hf://nvidia/repo-only' is not hf://owner/repo/path/file.safetensors"),
        ({**BASE, "loras": [{"name": "a", "uri": "s3://bucket/a.safetensors"}]},
         "spec.loras[0].uri: unsupported scheme 's3'; expected hf://owner/repo/file.safetensors "
         "or http(s)://"),
        ({**BASE, "loras": [{"name": "a", "uri": "hf://o/r/a.safetensors"},
                            {"name": "a", "uri": "hf://o/r/b.safetensors"}]},
         "spec.loras[1]: duplicate name 'a'"),
        ({**BASE, "loras": [{"name": "Bad Name", "uri": "hf://o/r/a.safetensors"}]},
         "spec.loras[0].name: 'Bad Name' does not match ^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$"),
        ({**BASE, "gpu": {"count": True}}, "spec.gpu.count: must be an integer, not bool"),
        ({**BASE, "scaling": "fast"}, "spec.scaling: must be an object, not str"),
        ({**BASE, "requestTimeoutSeconds": 0},
         "spec.requestTimeoutSeconds: must be at least 1 (got 0)"),
        ({**BASE, "predictor": {"env": [{"value": "1"}]}}, "spec.predictor.env[0].name: required"),
        ({**BASE, "predictor": {"nodeSelector": {"pool": 1}}},
         "spec.predictor.nodeSelector[pool]: must be a string, not int"),
        ({"model": {"storageUri": "hf://a/b"}}, "spec.engine: required"),
        ({**BASE, "modle": {}}, "spec.modle: unknown field"),
    ],
)  # fmt: skip
def test_operator_spec_rejects_with_a_message_naming_the_field(spec: Any, message: str) -> None:
    assert errors_of(spec) == [message]


def test_operator_spec_that_is_not_an_object() -> None:
    assert errors_of(None) == ["spec: must be an object, not NoneType"]


def test_operator_spec_collects_every_error_at_once() -> None:
    errors = errors_of({**BASE, "scaling": {"minReplicas": -2}, "engine": "gpu"}, name="Bad")
    assert len(errors) == 3
    assert errors[0].startswith("metadata.name")


@pytest.mark.parametrize(
    "uri",
    [
        "hf://nvidia/ChronoEdit-14B-Diffusers",
        "hf://nvidia/ChronoEdit-14B-Diffusers:abc123",
        "s3://bucket/models/chronoedit",
        "gs://bucket/chronoedit/",
        "https://models.example.com/chronoedit.tar.gz",
        "pvc://weights/chronoedit",
    ],
)
def test_operator_storage_uris_accepted(uri: str) -> None:
    assert uris.storage_uri_errors(uri, "f") == []


@pytest.mark.parametrize(
    "uri",
    [
        "hf://nvidia/Paint/paint.safetensors",
        "hf://nvidia/Paint/sub/dir/paint.safetensors",
        "https://loras.example.com/ink.safetensors",
        "http://10.0.0.5:8000/ink.safetensors",
    ],
)
def test_operator_catalog_uris_accepted(uri: str) -> None:
    assert uris.catalog_uri_errors(uri, "f") == []


@pytest.mark.parametrize(
    "uri",
    ["hf://nvidia", "hf:///repo", "s3:///key", "pvc://Not_A_Claim/x", "https:///path", "gs://"],
)
def test_operator_storage_uris_rejected(uri: str) -> None:
    assert uris.storage_uri_errors(uri, "f")


def test_operator_openapi_normalize_applies_nested_defaults_and_keeps_preserved_fields() -> None:
    schema = {
        "type": "object",
        "properties": {
            "outer": {
                "type": "object",
                "default": {},
                "properties": {"inner": {"type": "integer", "default": 7}},
            },
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    value, errors = normalize({"free": {"anything": [1, {"x": None}]}}, schema, "spec")
    assert errors == []
    assert value == {"free": {"anything": [1, {"x": None}]}, "outer": {"inner": 7}}


QUEUE = {
    **BASE,
    "scaling": {"mode": "RawDeployment", "minReplicas": 0, "maxReplicas": 4},
    "queue": {"redis": {"secretRef": {"name": "redis"}}},
}


def test_operator_spec_queue_and_outputs_typed_with_defaults() -> None:
    spec = parse_spec(QUEUE, name="upscaler")
    assert spec.queue is not None
    assert spec.queue.redis.secret == SecretKey(name="redis", key="url")
    assert spec.queue.redis.url is None and spec.queue.redis.address() is None
    assert (spec.queue.prefix, spec.queue.max_queued, spec.queue.lease_seconds) == (None,) * 3
    assert spec.outputs == OutputsSpec(store="redis")  # shared outputs with a shared queue
    assert spec.scaling.target_queue_length == 2
    without = parse_spec(BASE, name="upscaler")
    assert without.queue is None and without.outputs == OutputsSpec(store="memory")
    memory = parse_spec({**QUEUE, "outputs": {"store": "memory"}}, name="upscaler")
    assert memory.outputs.store == "memory"  # allowed: sync_mode=true clients need no store


def test_operator_spec_queue_falls_back_to_the_operators_redis() -> None:
    spec = {**BASE, "queue": {}}
    assert errors_of(spec) == [
        "spec.queue.redis: required: this operator has no default Redis "
        "(UPSCALER_REDIS_URL or UPSCALER_REDIS_SECRET)"
    ]
    default = default_redis(None, "shared-redis")
    parsed = parse_spec(spec, name="upscaler", default_redis=default)
    assert parsed.queue is not None and parsed.queue.redis == default
    assert default == RedisSpec(secret=SecretKey(name="shared-redis", key="url"))
    own = parse_spec({**BASE, "queue": {"redis": {"url": "redis://mine"}}}, name="x",
                     default_redis=default)  # fmt: skip
    assert own.queue is not None and own.queue.redis.url == "redis://mine"  # the CR's wins


@pytest.mark.parametrize(
    ("url", "secret", "expected"),
    [
        (None, None, None),
        ("redis://redis.upscaler.svc:6379/0", None, RedisSpec(url="redis://redis.upscaler.svc:6379/0")),
        (None, "redis", RedisSpec(secret=SecretKey("redis", "url"))),
    ],
)  # fmt: skip
def test_operator_default_redis(url, secret, expected) -> None:
    assert default_redis(url, secret) == expected


@pytest.mark.parametrize(
    ("url", "secret", "message"),
    [
        ("redis://r", "s", "not both"),
        ("redis://:pw@redis:6379", None, "carries credentials"),
        ("http://redis", None, "expected redis:// or rediss://"),
    ],
)
def test_operator_default_redis_refuses(url, secret, message) -> None:
    with pytest.raises(ValueError, match=message):
        default_redis(url, secret)


@pytest.mark.parametrize(
    ("url", "address", "database", "tls"),
    [
        ("redis://redis", "redis:6379", 0, False),
        ("redis://redis.queue.svc:6380/3", "redis.queue.svc:6380", 3, False),
        ("rediss://10.0.0.7/1/", "10.0.0.7:6379", 1, True),
        ("redis://[fd00::1]:7000", "[fd00::1]:7000", 0, False),
    ],
)
def test_operator_redis_urls_parsed_for_keda(url, address, database, tls) -> None:
    parsed = parse_redis_url(url)
    assert (parsed.address, parsed.database_index, parsed.tls) == (address, database, tls)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://redis:99999", "spec.queue.redis.url: 'redis://redis:99999': bad port"),
        ("redis://redis:0", "spec.queue.redis.url: 'redis://redis:0': bad port"),
    ],
)
def test_operator_spec_rejects_redis_urls_the_schema_let_through(url: str, message: str) -> None:
    assert errors_of({**BASE, "queue": {"redis": {"url": url}}}) == [message]


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ({**QUEUE, "predictor": {"env": [{"name": "UPSCALER_REDIS_URL", "value": "x"}]}},
         "UPSCALER_REDIS_URL"),
        ({**BASE, "outputs": {"store": "s3", "s3": {"bucket": "bkt", "region": "eu-west-1"}},
          "predictor": {"env": [{"name": "AWS_DEFAULT_REGION", "value": "x"}]}},
         "AWS_DEFAULT_REGION"),
        ({**BASE, "outputs": {"store": "s3", "s3": {"bucket": "bkt",
                                                    "credentialsSecret": {"name": "s"}}},
          "predictor": {"env": [{"name": "A", "value": "1"},
                                {"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}},
         "AWS_SECRET_ACCESS_KEY"),
    ],
)  # fmt: skip
def test_operator_spec_env_may_not_shadow_what_the_operator_sets(spec: Any, name: str) -> None:
    (error,) = errors_of(spec)
    assert error.startswith("spec.predictor.env[") and f": {name} is set by the operator" in error
    # without the queue or outputs that set it, the name is the user's to use
    plain = {**BASE, "predictor": spec["predictor"]}
    parse_spec(plain, name="upscaler")


def test_operator_spec_s3_outputs() -> None:
    spec = parse_spec(
        {**BASE, "outputs": {"store": "s3", "s3": {
            "bucket": "outs", "prefix": "a/b/", "credentialsSecret": {"name": "keys"}}}},
        name="upscaler",
    )  # fmt: skip
    s3 = spec.outputs.s3
    assert s3 is not None and s3.url == "s3://outs/a/b"
    assert s3.credentials is not None and s3.credentials.access_key_id_key == "AWS_ACCESS_KEY_ID"
    assert spec.queue is None  # S3 outputs need no shared queue


def test_operator_spec_refuses_a_request_above_its_limit_and_non_quantities() -> None:
    raw = {
        "engine": "sr",
        "predictor": {
            "resources": {
                "requests": {"cpu": "1500m", "memory": "3Gi"},
                "limits": {"cpu": "1", "memory": "3072Mi"},
            }
        },
    }
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(raw, name="up")
    assert caught.value.errors == [
        "spec.predictor.resources.requests.cpu must not exceed spec.predictor.resources.limits.cpu"
    ]  # 3Gi == 3072Mi is fine


@pytest.mark.parametrize(
    ("text", "value"),
    [("8", "8"), ("500m", "0.5"), ("96Gi", str(96 * 2**30)), ("2G", "2000000000"), ("1e3", "1E+3")],
)
def test_operator_spec_reads_kubernetes_quantities(text: str, value: str) -> None:
    from decimal import Decimal

    from upscaler_operator.spec import quantity

    assert quantity(text) == Decimal(value)


def test_operator_spec_shutdown_grace_defaults_to_a_whole_request() -> None:
    spec = parse_spec({"engine": "sr", "requestTimeoutSeconds": 120}, name="up")
    assert spec.shutdown_grace == 120
    spec = parse_spec({"engine": "sr", "shutdownGraceSeconds": 25}, name="up")
    assert spec.shutdown_grace == 25


def test_operator_spec_retention_cap_is_serverless_only() -> None:
    queued = {
        "engine": "sr",
        "scaling": {"mode": "RawDeployment", "scaleToZeroGracePeriod": "2h"},
        "queue": {"redis": {"url": "redis://r:6379/0"}},
    }
    assert parse_spec(queued, name="up").scaling.scale_to_zero_grace_period == "2h"  # KEDA's
    with pytest.raises(InvalidSpec) as caught:
        parse_spec({"engine": "sr", "scaling": {"scaleToZeroGracePeriod": "61m"}}, name="up")
    assert caught.value.errors[0].startswith("spec.scaling.scaleToZeroGracePeriod must not exceed")
