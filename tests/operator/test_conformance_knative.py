"""Knative Serving's admission rules (v1.23.0) over what the operator emits in Serverless mode.

The rules live in ``tests/operator/conformance.py``, each written from the Knative source file its
docstring names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.operator import conformance as c
from tests.operator.schema_tools import cel_errors

REPO = Path(__file__).resolve().parents[2]
SERVERLESS = [
    case
    for case in c.cases()
    if (case[3].get("scaling") or {}).get("mode", "Serverless") == "Serverless"
]
PVC_FLAGS = (
    "kubernetes.podspec-persistent-volume-claim",
    "kubernetes.podspec-persistent-volume-write",
)


def test_conformance_knative_retention_period_is_capped_at_one_hour() -> None:
    """Knative Serving v1.23.0, pkg/apis/autoscaling/annotation_validation.go
    (validateLastPodRetention) refuses a scale-to-zero-pod-retention-period above WindowMax (1h,
    pkg/apis/autoscaling/register.go): the CRD and the operator refuse it first, by field."""
    raw = {"engine": "sr", "scaling": {"scaleToZeroGracePeriod": "90m"}}
    spec = c.parse_or_refusal("up", raw)
    if isinstance(spec, list):
        assert any(e.startswith("spec.scaling.scaleToZeroGracePeriod") for e in spec), spec
    else:
        predictor = c.predictor_of(c.isvc_of(c.build("ns", "up", spec)))
        assert c.knative_annotation_errors(predictor.get("annotations") or {}) == []
    from upscaler_operator.crd import load_crd

    schema = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec_schema = schema["properties"]["spec"]
    defaulted = {**raw, "scaling": {"mode": "Serverless", "minReplicas": 0, "maxReplicas": 1,
                                    "scaleToZeroGracePeriod": "90m"}}  # fmt: skip
    assert any("1h" in error for error in cel_errors(spec_schema, defaulted))
    ok = {**defaulted, "scaling": {**defaulted["scaling"], "scaleToZeroGracePeriod": "1h"}}
    assert not any("1h" in error for error in cel_errors(spec_schema, ok))


PVC_SERVERLESS = [case for case in SERVERLESS if "-pvc-" in case[0]]


@pytest.mark.parametrize(
    ("case", "namespace", "name", "raw"), PVC_SERVERLESS, ids=[x[0] for x in PVC_SERVERLESS]
)
def test_conformance_knative_pvc_volumes_need_features_the_operator_names(
    case: str, namespace: str, name: str, raw: dict[str, Any]
) -> None:
    """Knative Serving v1.23.0, pkg/apis/serving/k8s_validation.go
    (validatePersistentVolumeClaims) refuses PVC volumes unless
    kubernetes.podspec-persistent-volume-claim is enabled, and writable ones unless
    kubernetes.podspec-persistent-volume-write is (both off in pkg/apis/config/features.go); KServe
    v0.20.0 mounts the claim writable (pkg/utils/storage.go). The operator cannot read Knative's
    config-features, so its status and docs/install.md name both."""
    spec = c.parse_or_refusal(name, raw)
    if isinstance(spec, list):
        return
    predictor = c.predictor_of(c.isvc_of(c.build(namespace, name, spec)))
    assert c.knative_pvc_errors(predictor)  # a default Knative refuses it
    assert c.knative_pvc_errors(predictor, dict.fromkeys(PVC_FLAGS, True)) == []
    cluster = c.Cluster()
    c.reconcile(cluster, name, raw, namespace)
    message = c.conditions(cluster, name, namespace)["Reconciled"]["message"]
    install = (REPO / "docs" / "install.md").read_text()
    for flag in PVC_FLAGS:
        assert flag in message and flag in install


@pytest.mark.parametrize(
    ("case", "namespace", "name", "raw"), SERVERLESS, ids=[x[0] for x in SERVERLESS]
)
def test_conformance_knative_grace_period_covers_the_predictors_shutdown_grace(
    case: str, namespace: str, name: str, raw: dict[str, Any]
) -> None:
    """Knative Serving v1.23.0: pkg/apis/serving/fieldmask.go (PodSpecMask) refuses
    terminationGracePeriodSeconds in a revision, and pkg/reconciler/revision/resources/deploy.go
    sets the pod's grace period to the revision's timeoutSeconds; so the timeout must cover the
    predictor's --shutdown-grace plus a margin."""
    spec = c.parse_or_refusal(name, raw)
    if isinstance(spec, list):
        return
    isvc = c.isvc_of(c.build(namespace, name, spec))
    predictor = c.predictor_of(isvc)
    assert c.knative_podspec_errors(predictor) == []
    grace = c.arg(c.container_of(isvc), "--shutdown-grace")
    assert grace is not None
    assert c.knative_termination_grace_s(predictor) >= int(grace) + 5


@pytest.mark.parametrize(
    ("case", "namespace", "name", "raw"), SERVERLESS, ids=[x[0] for x in SERVERLESS]
)
def test_conformance_knative_concurrency_is_a_soft_target(
    case: str, namespace: str, name: str, raw: dict[str, Any]
) -> None:
    """Knative Serving v1.23.0, pkg/apis/serving/v1/revision_defaults.go: containerConcurrency 0
    (the default) puts no hard limit in the queue-proxy; the autoscaler still aims at the
    revision's target (KServe's scaleMetric concurrency / scaleTarget). A hard limit of 1 would
    queue fal's status polls behind a running request on the same route, so the operator sets
    none and docs/operator.md says why."""
    spec = c.parse_or_refusal(name, raw)
    if isinstance(spec, list):
        return
    predictor = c.predictor_of(c.isvc_of(c.build(namespace, name, spec)))
    assert predictor.get("containerConcurrency", 0) == 0
    assert predictor["scaleMetric"] == "concurrency" and predictor["scaleTarget"] >= 1
    operator_doc = (REPO / "docs" / "operator.md").read_text()
    assert "containerConcurrency" in operator_doc
