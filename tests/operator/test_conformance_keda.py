"""KEDA's admission rules (v2.20.0) over the operator's ScaledObjects, and the HPA handover.

The rules live in ``tests/operator/conformance.py``, each written from the KEDA source file its
docstring names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.operator import conformance as c

REPO = Path(__file__).resolve().parents[2]
KEDA_CASES = [case for case in c.cases() if "RawDeployment" in case[0] and "-queue-" in case[0]]
KEDA_CASES += [case for case in c.cases() if case[0] == "upscaler-queue.yaml"]


@pytest.mark.parametrize(
    ("case", "namespace", "name", "raw"), KEDA_CASES, ids=[x[0] for x in KEDA_CASES]
)
def test_conformance_keda_accepts_the_scaled_object_names(
    case: str, namespace: str, name: str, raw: dict[str, Any]
) -> None:
    """KEDA v2.20.0, apis/keda/v1alpha1/scaledobject_webhook.go: the ScaledObject's name is a
    label value (at most 63 characters, verifyName) and so is the HPA it makes, keda-hpa-<name>
    unless spec.advanced.horizontalPodAutoscalerConfig.name says otherwise (getHpaName)."""
    spec = c.parse_or_refusal(name, raw)
    if isinstance(spec, list):
        return
    (scaled_object,) = [
        x.manifest for x in c.build(namespace, name, spec) if x.kind == "ScaledObject"
    ]
    assert c.keda_validation_errors(scaled_object) == []
    assert len(c.keda_hpa_name(scaled_object)) <= 63


def test_conformance_keda_handover_waits_for_kserves_hpa() -> None:
    """KEDA v2.20.0, apis/keda/v1alpha1/scaledobject_webhook.go (verifyHpas) refuses a
    ScaledObject while an HPA it does not own targets the same Deployment; KServe v0.20.0 removes
    its own HPA only on a later reconcile once autoscalerClass is external
    (pkg/controller/v1beta1/inferenceservice/reconcilers/hpa/). The operator waits, and says so."""
    cluster = c.Cluster()
    raw: dict[str, Any] = {
        "engine": "sr",
        "scaling": {"mode": "RawDeployment", "minReplicas": 1, "maxReplicas": 4},
    }
    c.reconcile(cluster, "up", raw)
    cluster.kserve_reconcile()
    assert cluster.hpas("ns")  # KServe's HPA on up-predictor
    queued = {**raw, "queue": {"redis": {"url": "redis://redis.queue.svc:6379/0"}}}
    result = c.reconcile(cluster, "up", queued)  # KServe's HPA is still there: no ScaledObject yet
    assert result.retry  # the handler runs it again after --retry-delay
    scaled_object = "/apis/keda.sh/v1alpha1/namespaces/ns/scaledobjects/up-predictor"
    assert scaled_object not in cluster.objects
    autoscaling = c.conditions(cluster, "up")["Autoscaling"]
    assert autoscaling["reason"] == "WaitingForHPARemoval", autoscaling
    cluster.kserve_reconcile()  # class external: KServe deletes its HPA
    assert not cluster.hpas("ns")
    assert not c.reconcile(cluster, "up", queued).retry
    assert scaled_object in cluster.objects
    assert c.conditions(cluster, "up")["Autoscaling"]["reason"] != "WaitingForHPARemoval"


def test_conformance_chart_rbac_says_what_the_operator_deletes() -> None:
    """The operator deletes ScaledObjects the spec no longer wants (KEDA v2.20.0 restores the
    Deployment's replicas then, restoreToOriginalReplicaCount) and InferenceServices whose
    deployment mode changed; the chart's RBAC comment must not say it never deletes."""
    rbac = (REPO / "charts" / "chrono-upscaler" / "templates" / "rbac.yaml").read_text()
    assert "never deletes anything" not in rbac
    assert "ScaledObject" in rbac and "mode" in rbac
