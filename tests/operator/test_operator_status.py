"""Status: the InferenceService mirrored into conditions, URL, replicas and cost."""

from __future__ import annotations

from typing import Any

import pytest
from upscaler_operator.builders import HPA, HPA_WITHOUT_KEDA, KEDA, KNATIVE
from upscaler_operator.spec import parse_spec
from upscaler_operator.status import (
    ConditionState,
    Outcome,
    autoscaling_state,
    build_status,
    hourly_cost,
    isvc_state,
    status_patch,
)

CHRONOEDIT = parse_spec(
    {
        "engine": "chronoedit",
        "model": {"storageUri": "hf://nvidia/ChronoEdit-14B-Diffusers"},
        "gpu": {"count": 2},
        "pricing": {"gpuHourlyUsd": 2.5},
    },
    name="x",
)


def isvc(ready: str | None, url: str | None = None, copies: int = 0, **condition: str) -> dict:
    status: dict[str, Any] = {"modelStatus": {"copies": {"failedCopies": 0, "totalCopies": copies}}}
    if url:
        status["url"] = url
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": ready, **condition}]
    return {"status": status}


def by_type(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status["conditions"]}


def test_operator_status_ready_when_reconciled_and_kserve_ready() -> None:
    status = build_status(
        generation=4,
        previous=None,
        spec=CHRONOEDIT,
        outcome=Outcome(applied=("ConfigMap", "InferenceService")),
        isvc=isvc("True", "http://x.team.example.com", copies=3),
        isvc_name="x",
        now="2026-11-25T10:00:00Z",
    )
    assert status["observedGeneration"] == 4
    assert status["url"] == "http://x.team.example.com"
    assert status["replicas"] == 3
    assert status["estimatedHourlyCostUsd"] == 15.0  # 3 replicas × 2 GPUs × $2.50
    conditions = by_type(status)
    assert [c["type"] for c in status["conditions"]] == [
        "Ready",
        "InferenceServiceReady",
        "Reconciled",
    ]
    assert conditions["Ready"] == {
        "type": "Ready",
        "status": "True",
        "reason": "Ready",
        "message": "serving at http://x.team.example.com",
        "lastTransitionTime": "2026-11-25T10:00:00Z",
    }
    assert conditions["Reconciled"]["message"] == "ConfigMap, InferenceService up to date"


@pytest.mark.parametrize(
    ("outcome", "kserve", "reason", "text"),
    [
        (Outcome(invalid=["spec.a: bad", "spec.b: worse"]), isvc("True"), "InvalidSpec",
         "spec.a: bad; spec.b: worse"),
        (Outcome(failure="InferenceService x: 403 Forbidden: no"), isvc("True"), "ReconcileFailed",
         "403 Forbidden"),
        (Outcome(applied=("InferenceService",)), isvc("False", reason="RevisionMissing",
                                                      message="revision x failed"),
         "InferenceServiceNotReady", "revision x failed"),
        (Outcome(applied=("InferenceService",)), isvc(None), "InferenceServiceNotReady",
         "waiting for KServe"),
        (Outcome(applied=("InferenceService",)), None, "InferenceServiceNotReady", "not created"),
    ],
)  # fmt: skip
def test_operator_status_not_ready_says_why(
    outcome: Outcome, kserve: dict | None, reason: str, text: str
) -> None:
    status = build_status(
        generation=1, previous=None, spec=CHRONOEDIT, outcome=outcome, isvc=kserve, isvc_name="x"
    )
    ready = by_type(status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert text in ready["message"]


def test_operator_status_mirrors_kserve_reason_and_unknown_states() -> None:
    state = isvc_state(isvc("False", reason="RevisionFailed", message="probe failed"))
    assert (state.status, state.reason, state.message) == (
        "False",
        "RevisionFailed",
        "probe failed",
    )
    assert isvc_state(isvc("Maybe")).status == "Unknown"
    assert isvc_state(None).reason == "InferenceServiceMissing"
    assert isvc_state({"status": None}).replicas == 0


def test_operator_status_keeps_transition_times_while_a_condition_holds() -> None:
    args = dict(generation=1, spec=CHRONOEDIT, outcome=Outcome(applied=()), isvc_name="x")
    first = build_status(previous=None, isvc=isvc("False"), now="2026-01-01T00:00:00Z", **args)
    same = build_status(previous=first, isvc=isvc("False"), now="2026-01-01T00:05:00Z", **args)
    assert same == first
    flipped = build_status(previous=same, isvc=isvc("True", "http://u"), now="2026-01-01T00:09:00Z",
                           **args)  # fmt: skip
    times = {c["type"]: c["lastTransitionTime"] for c in flipped["conditions"]}
    assert times == {
        "Ready": "2026-01-01T00:09:00Z",
        "InferenceServiceReady": "2026-01-01T00:09:00Z",
        "Reconciled": "2026-01-01T00:00:00Z",
    }


def test_operator_hourly_cost_per_engine() -> None:
    assert hourly_cost(CHRONOEDIT, 0) == 0
    assert hourly_cost(CHRONOEDIT, 1) == 5.0
    no_price = parse_spec({"engine": "chronoedit", "model": {"storageUri": "hf://a/b"}}, name="x")
    assert hourly_cost(no_price, 4) == 0
    sr = parse_spec({"engine": "sr", "pricing": {"cpuHourlyUsd": 0.12}}, name="x")
    assert hourly_cost(sr, 3) == pytest.approx(0.36)
    sr_free = parse_spec({"engine": "sr", "pricing": {"gpuHourlyUsd": 9}}, name="x")
    assert hourly_cost(sr_free, 3) == 0  # the sr engine uses no GPU
    assert hourly_cost(None, 3) == 0


def test_operator_status_patch_removes_what_went_away() -> None:
    previous = {"url": "http://old", "replicas": 2, "conditions": []}
    new = {"replicas": 0, "conditions": [{"type": "Ready"}]}
    assert status_patch(previous, new) == {
        "url": None,
        "replicas": 0,
        "conditions": [{"type": "Ready"}],
    }
    assert status_patch(None, new) == new


QUEUED = parse_spec(
    {
        "engine": "sr",
        "scaling": {"mode": "RawDeployment", "minReplicas": 0, "maxReplicas": 6},
        "queue": {"redis": {"url": "redis://redis"}},
    },
    name="x",
)


def scaled_object(*conditions: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": "x-predictor"}}
    if conditions:
        body["status"] = {"conditions": list(conditions)}
    return body


@pytest.mark.parametrize(
    ("spec", "scaler", "so", "status", "reason", "text"),
    [
        (CHRONOEDIT, KNATIVE, None, "True", "Knative", "Knative scales 0–1 replicas on in-flight"),
        (parse_spec({"engine": "sr", "queue": {"redis": {"url": "redis://r"}}}, name="x"),
         KNATIVE, None, "True", "Knative",
         "queued requests are shared through Redis but add no replicas"),
        (parse_spec({"engine": "sr", "scaling": {"mode": "RawDeployment", "minReplicas": 2,
                                                 "maxReplicas": 3}}, name="x"),
         HPA, None, "True", "HPA", "KServe's HPA scales 2–3 replicas on CPU (target 80%)"),
        (QUEUED, HPA_WITHOUT_KEDA, None, "False", "KEDANotInstalled",
         "KServe's HPA scales 1–6 replicas on CPU instead"),
        (QUEUED, KEDA, scaled_object(), "Unknown", "Pending",
         "waiting for KEDA to report on x-predictor"),
        (QUEUED, KEDA, scaled_object(
            {"type": "Ready", "status": "False", "reason": "ScaledObjectCheckFailed",
             "message": "error parsing redis metadata: no addresses or hosts given"}),
         "False", "ScaledObjectCheckFailed", "KEDA, x-predictor: error parsing redis metadata"),
        (QUEUED, KEDA, scaled_object(
            {"type": "Ready", "status": "True", "reason": "ScaledObjectReady"},
            {"type": "Active", "status": "False"}),
         "True", "KEDAScaling",
         "KEDA scales 0–6 replicas on Redis ns:x:waiting and ns:x:running: one per running "
         "request plus one per 2 waiting; idle"),
        (QUEUED, KEDA, scaled_object(
            {"type": "Ready", "status": "True"}, {"type": "Active", "status": "True"}),
         "True", "KEDAScaling", "; active"),
    ],
)  # fmt: skip
def test_operator_autoscaling_condition_says_who_scales_on_what(
    spec, scaler: str, so, status: str, reason: str, text: str
) -> None:
    state = autoscaling_state(spec, scaler, prefix="ns:x", scaled_object=so)
    assert (state.status, state.reason) == (status, reason)
    assert text in state.message


def test_operator_autoscaling_condition_warns_of_many_replicas_without_a_shared_queue() -> None:
    many = parse_spec({"engine": "sr", "scaling": {"maxReplicas": 3}}, name="x")
    assert "each replica keeps its own queue" in autoscaling_state(many, KNATIVE).message
    assert "own queue" not in autoscaling_state(CHRONOEDIT, KNATIVE).message  # one replica
    shared = parse_spec(
        {"engine": "sr", "scaling": {"maxReplicas": 3}, "queue": {"redis": {"url": "redis://r"}}},
        name="x",
    )
    assert "own queue" not in autoscaling_state(shared, KNATIVE).message


def test_operator_autoscaling_condition_is_kept_while_children_are_left_alone() -> None:
    keda = ConditionState("False", "KEDANotInstalled", "not served")
    args = dict(generation=1, spec=QUEUED, isvc=isvc("True"), isvc_name="x")
    first = build_status(
        previous=None,
        outcome=Outcome(applied=("InferenceService",), autoscaling=keda),
        now="2026-01-01T00:00:00Z",
        **args,
    )
    autoscaling = by_type(first)["Autoscaling"]
    assert autoscaling == {
        "type": "Autoscaling",
        "status": "False",
        "reason": "KEDANotInstalled",
        "message": "not served",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    assert by_type(first)["Ready"]["status"] == "True"  # it serves; only scaling is degraded
    # an invalid spec (or an API error) leaves the children, and so the autoscaling, as they were
    invalid = build_status(
        previous=first, outcome=Outcome(invalid=["spec.x: bad"]), now="2026-01-02T00:00:00Z",
        **args,
    )  # fmt: skip
    assert by_type(invalid)["Autoscaling"] == autoscaling
    fixed = build_status(
        previous=invalid,
        outcome=Outcome(autoscaling=ConditionState("True", "KEDAScaling", "KEDA scales")),
        now="2026-01-03T00:00:00Z",
        **args,
    )
    assert by_type(fixed)["Autoscaling"]["lastTransitionTime"] == "2026-01-03T00:00:00Z"
    assert [c["type"] for c in fixed["conditions"]] == [
        "Ready", "InferenceServiceReady", "Reconciled", "Autoscaling"
    ]  # fmt: skip
