"""The real operator (kopf) against a Kubernetes API mock (kmock) over real HTTP."""

from __future__ import annotations

import asyncio

import pytest

from tests.operator.conftest import (
    CONFIGMAP_RESOURCE,
    CR_RESOURCE,
    ISVC_RESOURCE,
    configmap_path,
    cr_path,
    isvc_path,
    running_operator,
    wait_until,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")

NS = "demo"


def deployment(name: str = "upscaler", **spec: object) -> dict:
    body = {
        "engine": "chronoedit",
        "model": {"storageUri": "hf://nvidia/ChronoEdit-14B-Diffusers"},
        "gpu": {"count": 1, "productSelector": "NVIDIA-H100-80GB-HBM3"},
        "pricing": {"gpuHourlyUsd": 2.5},
        "scaling": {"minReplicas": 0, "maxReplicas": 4},
        "loras": [{"name": "paint", "uri": "hf://nvidia/Paint-Lora/paint.safetensors"}],
    }
    body.update(spec)
    return {
        "apiVersion": "serving.chrono-upscaler.dev/v1alpha1",
        "kind": "UpscalerDeployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": body,
    }


async def test_operator_creates_owned_children() -> None:
    async with running_operator() as cluster:
        created = await cluster.call("POST", cr_path(NS), deployment(), status=201)
        isvc = await wait_until(lambda: cluster.get(ISVC_RESOURCE, NS, "upscaler"), message="isvc")
        catalog = cluster.get(CONFIGMAP_RESOURCE, NS, "upscaler-loras")
        assert catalog is not None
        for child in (isvc, catalog):
            (ref,) = child["metadata"]["ownerReferences"]
            assert ref["uid"] == created["metadata"]["uid"]
            assert ref["kind"] == "UpscalerDeployment" and ref["controller"] is True
        status = await wait_until(
            lambda: (cluster.get(CR_RESOURCE, NS, "upscaler") or {}).get("status"),
            message="status",
        )
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Reconciled"]["status"] == "True"
        assert conditions["Ready"]["status"] == "False"
        assert status["observedGeneration"] == 1
