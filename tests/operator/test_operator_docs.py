"""docs/operator.md stays true to the CRD and the metrics: every field and series is described."""

from __future__ import annotations

from typing import Any

from upscaler_operator.crd import openapi_schema
from upscaler_operator.metrics import Metrics

from tests.operator.conftest import ROOT

DOC = (ROOT / "docs" / "operator.md").read_text()
#: rows that describe their sub-fields inline
SUMMARISED = ("spec.predictor.tolerations[]", "spec.predictor.env[]", "spec.predictor.resources.")


def field_paths(schema: dict[str, Any], path: str) -> list[str]:
    paths = [path]
    for key, sub in (schema.get("properties") or {}).items():
        paths += field_paths(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        paths += field_paths(schema["items"], f"{path}[]")[1:]
    return paths


def test_operator_docs_describe_every_spec_field() -> None:
    missing = [
        path
        for path in field_paths(openapi_schema()["properties"]["spec"], "spec")[1:]
        if not path.startswith(SUMMARISED) and f"`{path}`" not in DOC
    ]
    assert missing == []


def test_operator_docs_describe_every_status_field() -> None:
    status = openapi_schema()["properties"]["status"]["properties"]
    assert [key for key in status if f"`{key}`" not in DOC and f"`{key}[]`" not in DOC] == []


def test_operator_docs_describe_every_metric() -> None:
    names = {metric.name for metric in Metrics().registry.collect()}
    names = {name.removesuffix("_total") for name in names}
    assert names and [name for name in names if name not in DOC] == []
