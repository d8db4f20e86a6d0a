"""Status: the InferenceService mirrored into conditions, URL, replicas and cost."""

from __future__ import annotations

from typing import Any

import pytest
from upscaler_operator.spec import parse_spec
from upscaler_operator.status import (
    Outcome,
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
