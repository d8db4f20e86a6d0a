"""spec.model.cache against KServe's own rules (v0.20.0) for its node-local model cache.

KServe serves a cached model only through the predictor's single storage URI (never beside
storageUris), attaches a LocalModelNamespaceCache whose sourceModelUri matches it and whose node
groups hold the InferenceService's ``serving.kserve.io/nodegroup``, and mounts its PVC at
/mnt/models. The rules are in ``tests/operator/conformance.py``; the cache object is validated
against KServe's CRD (``tests/operator/kserve/``). Where the cluster lacks the node group, or
KServe does not attach the cache, the storage initializer downloads as before and the status
says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from upscaler_operator.builders import (
    MODELS_ROOT,
    NODE_GROUP_ANNOTATION,
    STARTUP_CACHE_DIR,
    BuildOptions,
    Owner,
    build_children,
    model_cache_name,
)
from upscaler_operator.kube import Ref
from upscaler_operator.spec import CACHE_LORA_MESSAGE, CACHE_NODE_GROUP_MESSAGE

from tests.operator import conformance as c
from tests.operator.conftest import strict_schema

CACHE_CRD = Path(__file__).parent / "kserve" / "serving.kserve.io_localmodelnamespacecaches.yaml"
CACHES = Ref("serving.kserve.io/v1alpha1", "localmodelnamespacecaches", "ns")


def cached_spec(storage: str = "hf://nvidia/ChronoEdit-14B-Diffusers", **model: Any) -> dict:
    return {
        "engine": "chronoedit",
        "model": {
            "storageUri": storage,
            "upscalerLora": "upsample_lora_diffusers.safetensors",
            "cache": {"enabled": True, "nodeGroup": "h200", **model.pop("cache", {})},
            **model,
        },
    }


@pytest.fixture(scope="module")
def cache_validator() -> jsonschema.Validator:
    crd = yaml.safe_load(CACHE_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return jsonschema.Draft7Validator(strict_schema(version["schema"]["openAPIV3Schema"]))


def children(raw: dict[str, Any], local_model_cache: bool = True) -> dict[str, dict[str, Any]]:
    spec = c.parse_or_refusal("up", raw)
    assert not isinstance(spec, list), spec
    options = BuildOptions(local_model_cache=local_model_cache)
    built = build_children(Owner("up", "ns", "owner-uid"), spec, options)
    return {child.kind: child.manifest for child in built}


STORAGES = [
    "hf://nvidia/ChronoEdit-14B-Diffusers",
    "s3://models/chronoedit",
    "gs://models/chronoedit/",
    "pvc://weights/models/chronoedit",
]


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
def test_cached_children_pass_kserve_and_kserve_attaches_the_cache(
    storage: str, mode: str, cache_validator: jsonschema.Validator
) -> None:
    raw = cached_spec(storage, distillLora="lora/chronoedit_distill_lora.safetensors")
    raw["scaling"] = {"mode": mode, "minReplicas": 0 if mode == "Serverless" else 1}
    built = children(raw)
    cache, isvc = built["LocalModelNamespaceCache"], built["InferenceService"]
    assert list(cache_validator.iter_errors(cache)) == []
    assert c.local_model_cache_errors(cache, {"h200"}) == []
    assert c.local_model_cache_errors(cache, set()) == ["NodeGroup h200 not found"]
    assert c.child_errors(list(_as_children(built))) == []
    # KServe's defaulting attaches it, and its injector mounts the node's copy at /mnt/models
    attached = c.kserve_local_model(isvc, [cache])
    assert attached is not None
    name, pvc, source = attached
    assert name == cache["metadata"]["name"] == model_cache_name("up", storage)
    assert pvc == f"{name}-h200"
    assert source == f"pvc://{pvc}/models/{c.storage_key(storage)}/"
    predictor = c.predictor_of(isvc)
    assert "storageUris" not in predictor
    assert isvc["metadata"]["annotations"][NODE_GROUP_ANNOTATION] == "h200"
    container = c.container_of(isvc)
    assert c.arg(container, "--model-dir") == MODELS_ROOT  # KServe's single-URI mount
    assert (
        c.arg(container, "--upscaler-lora") == f"{MODELS_ROOT}/upsample_lora_diffusers.safetensors"
    )
    assert c.arg(container, "--distill-lora").startswith(f"{MODELS_ROOT}/lora/")
    # the cache belongs to the deployment: garbage-collected with it
    assert cache["metadata"]["ownerReferences"][0]["uid"] == "owner-uid"


def _as_children(built: dict[str, dict[str, Any]]):
    from upscaler_operator.builders import Child

    for manifest in built.values():
        meta = manifest["metadata"]
        yield Child(Ref(manifest["apiVersion"], "x", meta.get("namespace"), meta["name"]), manifest)


def test_storage_uri_beside_storage_uris_is_what_kserve_refuses() -> None:
    """The rule that makes the LoRAs live inside the model when it is cached."""
    isvc = children(cached_spec())["InferenceService"]
    c.predictor_of(isvc)["storageUris"] = [{"uri": "hf://a/b", "mountPath": "/mnt/models/x"}]
    assert "Setting both StorageURI and StorageURIs is not supported." in (
        c.kserve_validation_errors(isvc)
    )


def test_the_operator_refuses_what_kserve_could_not_serve_by_field() -> None:
    without_group = cached_spec()
    del without_group["model"]["cache"]["nodeGroup"]
    assert c.parse_or_refusal("up", without_group) == [CACHE_NODE_GROUP_MESSAGE]
    lora_uri = cached_spec(upscalerLora="hf://nvidia/ChronoEdit-14B-Diffusers-Upscaler-Lora")
    assert c.parse_or_refusal("up", lora_uri) == [CACHE_LORA_MESSAGE]
    default_lora = cached_spec()
    del default_lora["model"]["upscalerLora"]  # the default is a repository URI
    assert c.parse_or_refusal("up", default_lora) == [CACHE_LORA_MESSAGE]
    sr = {"engine": "sr", "model": {"cache": {"claimName": "kernels"}}}
    assert c.parse_or_refusal("up", sr) == [
        "spec.model.cache applies to the chronoedit engine only"
    ]


def test_without_the_cluster_cache_the_storage_initializer_downloads_as_before() -> None:
    built = children(cached_spec(), local_model_cache=False)
    assert "LocalModelNamespaceCache" not in built
    predictor = c.predictor_of(built["InferenceService"])
    assert predictor["storageUris"][0]["uri"] == "hf://nvidia/ChronoEdit-14B-Diffusers"
    assert c.kserve_validation_errors(built["InferenceService"]) == []


def test_the_startup_cache_claim_is_mounted_and_passed_as_cache_dir() -> None:
    built = children(cached_spec(cache={"claimName": "chronoedit-kernels"}))
    isvc = built["InferenceService"]
    container = c.container_of(isvc)
    assert c.arg(container, "--cache-dir") == STARTUP_CACHE_DIR
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == STARTUP_CACHE_DIR]
    (volume,) = [v for v in c.predictor_of(isvc)["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"] == {"claimName": "chronoedit-kernels"}
    assert c.knative_podspec_errors(c.predictor_of(isvc)) == []


# --- through the reconcile, on the fake cluster with KServe's webhooks ------------------------


def _reconciled_message(cluster: c.Cluster) -> str:
    """The Reconciled condition's message: where the notes on the cluster go."""
    return c.conditions(cluster, "up")["Reconciled"]["message"]


def test_reconcile_creates_the_cache_and_kserve_serves_the_model_from_it() -> None:
    cluster = c.Cluster(node_groups=("h200",))
    c.reconcile(cluster, "up", cached_spec())
    (cache,) = cluster.list_items(CACHES)
    isvc = cluster.get(Ref("serving.kserve.io/v1beta1", "inferenceservices", "ns", "up"))
    assert isvc["metadata"]["labels"][c.LOCAL_MODEL_LABEL] == cache["metadata"]["name"]
    c.reconcile(cluster, "up", cached_spec())  # the label KServe adds is no drift
    assert "weights from KServe's node cache on node group h200" in _reconciled_message(cluster)


def test_a_new_storage_uri_gets_a_new_cache_and_the_old_one_goes() -> None:
    """sourceModelUri is immutable: a patch would be refused forever."""
    cluster = c.Cluster(node_groups=("h200",))
    c.reconcile(cluster, "up", cached_spec("s3://models/v1"))
    c.reconcile(cluster, "up", cached_spec("s3://models/v2"))
    c.reconcile(cluster, "up", cached_spec("s3://models/v2"))
    names = [cache["metadata"]["name"] for cache in cluster.list_items(CACHES)]
    assert names == [model_cache_name("up", "s3://models/v2")]


def test_turning_the_cache_off_removes_it() -> None:
    cluster = c.Cluster(node_groups=("h200",))
    c.reconcile(cluster, "up", cached_spec())
    off = cached_spec()
    off["model"]["cache"]["enabled"] = False
    c.reconcile(cluster, "up", off)
    assert cluster.list_items(CACHES) == []
    isvc = cluster.get(Ref("serving.kserve.io/v1beta1", "inferenceservices", "ns", "up"))
    assert NODE_GROUP_ANNOTATION not in isvc["metadata"]["annotations"]
    assert c.predictor_of(isvc)["storageUris"]


def test_a_missing_node_group_falls_back_with_a_status_message() -> None:
    cluster = c.Cluster(node_groups=())
    c.reconcile(cluster, "up", cached_spec())
    assert cluster.list_items(CACHES) == []
    isvc = cluster.get(Ref("serving.kserve.io/v1beta1", "inferenceservices", "ns", "up"))
    assert c.predictor_of(isvc)["storageUris"]
    message = _reconciled_message(cluster)
    assert "spec.model.cache.nodeGroup: LocalModelNodeGroup h200 not found" in message
    assert "the storage initializer downloads the weights at every start" in message


def test_kserve_not_attaching_the_cache_is_reported() -> None:
    """inferenceservice-config's localModel.enabled off: KServe ignores the cache."""
    cluster = c.Cluster(node_groups=("h200",), local_model_enabled=False)
    c.reconcile(cluster, "up", cached_spec())
    assert "KServe has not attached the node cache" in _reconciled_message(cluster)
