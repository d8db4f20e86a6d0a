"""Spec parsing: the CRD's checks redone in Python, URI rules, and messages that name fields."""

from __future__ import annotations

from typing import Any

import pytest
from upscaler_operator import uris
from upscaler_operator.openapi import normalize
from upscaler_operator.spec import DEFAULT_UPSCALER_LORA, InvalidSpec, parse_spec

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
