"""The UpscalerDeployment CRD: read once from ``crd.yaml``, the single source of its schema."""

from __future__ import annotations

import functools
import importlib.resources
from typing import Any

import yaml

from upscaler_operator import VERSION


@functools.cache
def crd_text() -> str:
    """The CRD exactly as shipped (manifests/crd.yaml must be byte-identical)."""
    return (importlib.resources.files("upscaler_operator") / "crd.yaml").read_text("utf-8")


@functools.cache
def _crd() -> dict[str, Any]:
    return yaml.safe_load(crd_text())


def load_crd() -> dict[str, Any]:
    """A fresh copy of the CRD object, safe to mutate."""
    import copy

    return copy.deepcopy(_crd())


def openapi_schema(version: str = VERSION) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of one served version (shared, do not mutate)."""
    for entry in _crd()["spec"]["versions"]:
        if entry["name"] == version:
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(f"the CRD serves no version {version!r}")


def spec_schema(version: str = VERSION) -> dict[str, Any]:
    """The schema of ``.spec``."""
    return openapi_schema(version)["properties"]["spec"]
