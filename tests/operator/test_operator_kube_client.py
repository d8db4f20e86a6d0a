"""kube.py against the realistic emulator, which doubles as a check of the emulator itself."""

from __future__ import annotations

import asyncio

import kmock
import pytest
from upscaler_operator.kube import MERGE_PATCH, Kube, KubeError, Ref

from tests.operator.conftest import CR_RESOURCE, new_emulator

pytestmark = [
    pytest.mark.asyncio(loop_scope="function"),
    pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning"),
]

CR = Ref("serving.chrono-upscaler.dev/v1alpha1", "upscalerdeployments", "ns", "up")
CM = Ref("v1", "configmaps", "ns", "cm")


def body() -> dict:
    return {
        "metadata": {"name": "up", "namespace": "ns"},
        "spec": {"engine": "sr"},
        "status": {"x": 1},
    }


async def test_operator_kube_client_and_a_realistic_api() -> None:
    emulator = new_emulator(pod_monitors=True)
    async with emulator, kmock.Server(emulator) as server:
        kube = Kube.for_server(str(server.url).rstrip("/"), token="t")

        def scenario() -> None:
            created = kube.create(CR, body())  # the official client sees 201 and a body
            meta = created["metadata"]
            assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
            assert meta["generation"] == 1
            assert "status" not in created  # the status subresource ignores it on create
            with pytest.raises(KubeError) as conflict:
                kube.create(CR, body())
            assert conflict.value.status == 409

            # a failed JSON-patch test is a 422, as kopf expects
            with pytest.raises(KubeError) as failed:
                kube.json_patch(CR, [{"op": "test", "path": "/metadata/resourceVersion",
                                      "value": "0"}])  # fmt: skip
            assert failed.value.status == 422

            patched = kube.json_patch(CR, [{"op": "add", "path": "/spec/engine", "value": "x"}])
            assert patched["metadata"]["generation"] == 2  # spec changed
            assert patched["metadata"]["resourceVersion"] != meta["resourceVersion"]
            labelled = kube.json_patch(CR, [{"op": "add", "path": "/metadata/labels",
                                             "value": {"a": "b"}}])  # fmt: skip
            assert labelled["metadata"]["generation"] == 2  # metadata is not the spec

            status = kube.merge_patch_status(CR, {"url": "http://up"})
            assert status["status"] == {"url": "http://up"}
            # /status changes only the status; the object's endpoint never changes the status
            both = {"status": {"url": "http://other"}, "spec": {"engine": "ignored"}}
            kube.request("PATCH", f"{CR.path}/status", both, MERGE_PATCH)
            kube.request("PATCH", CR.path, {"status": {"url": "http://ignored"}}, MERGE_PATCH)
            current = kube.get(CR)
            assert current["spec"]["engine"] == "x" and current["status"]["url"] == "http://other"
            assert current["metadata"]["generation"] == 2
            same = kube.merge_patch_status(CR, {"url": "http://other"})  # a no-op write
            assert same["metadata"]["resourceVersion"] == current["metadata"]["resourceVersion"]

            assert kube.get(Ref(CR.api_version, CR.plural, "ns", "missing")) is None
            listing = kube.request("GET", CR.collection_path)
            assert (listing["kind"], listing["apiVersion"]) == (
                "UpscalerDeploymentList",
                "serving.chrono-upscaler.dev/v1alpha1",
            )
            assert kube.create(CM, {"metadata": {"name": "cm"}, "data": {}})["metadata"]["uid"]
            assert "podmonitors" in (kube.resources("monitoring.coreos.com/v1") or set())
            assert kube.resources("nothing.example.com/v1") is None

        await asyncio.to_thread(scenario)
        (request,) = [r for r in emulator._requests if r.method == "POST"][:1]
        assert request.headers.get("Authorization") == "Bearer t"
        assert [key for key in emulator.objects if key[0] == CR_RESOURCE]
