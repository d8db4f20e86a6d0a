"""The UpscalerDeployment's status: its InferenceService's state, its own reconcile, the cost.

Four conditions, each with type, status, reason, message and lastTransitionTime (kept while the
status stays the same, as Kubernetes conditions do):
- ``Reconciled``: the spec was valid and every child was applied;
- ``InferenceServiceReady``: KServe's Ready condition, mirrored;
- ``Ready``: both of the above; its message says what is missing;
- ``Autoscaling``: who scales the predictor on what (Knative, KServe's HPA, or KEDA on the shared
  queue, with KEDA's own Ready condition mirrored); False when KEDA should but cannot.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from upscaler_operator.builders import (
    HPA,
    HPA_WITHOUT_KEDA,
    KEDA,
    KEDA_API_VERSION,
    KNATIVE,
    RUNNING_SUFFIX,
    WAITING_SUFFIX,
)
from upscaler_operator.spec import DeploymentSpec

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"


@dataclass(frozen=True)
class ConditionState:
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """What a reconcile found: None for ``invalid``/``failure`` means that did not happen."""

    invalid: list[str] | None = None  # spec errors, each naming its field
    failure: str | None = None  # an API error while applying children
    #: the cluster keeps the operator from applying (KServe too old, a mode change under way)
    blocked: ConditionState | None = None
    applied: tuple[str, ...] = ()  # kinds of the children now up to date
    autoscaling: ConditionState | None = None  # None: the Autoscaling condition stays as it was
    notes: tuple[str, ...] = ()  # what the cluster must allow for these children


@dataclass(frozen=True)
class IsvcState:
    status: str
    reason: str
    message: str
    url: str | None
    replicas: int
    image: str | None = None  # what the InferenceService's predictor container runs


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def isvc_state(isvc: Mapping[str, Any] | None) -> IsvcState:
    """KServe's view: its Ready condition, URL, ready predictor copies and predictor image."""
    if isvc is None:
        return IsvcState(UNKNOWN, "InferenceServiceMissing", "not created yet", None, 0)
    containers = ((isvc.get("spec") or {}).get("predictor") or {}).get("containers") or [{}]
    image = containers[0].get("image") if isinstance(containers[0], dict) else None
    status = isvc.get("status") or {}
    replicas = ((status.get("modelStatus") or {}).get("copies") or {}).get("totalCopies") or 0
    url = status.get("url") or None
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None:
        return IsvcState(UNKNOWN, "Pending", "waiting for KServe to report", url, replicas, image)
    value = ready.get("status") if ready.get("status") in (TRUE, FALSE) else UNKNOWN
    reason = ready.get("reason") or (
        "InferenceServiceReady" if value == TRUE else "InferenceServiceNotReady"
    )
    message = ready.get("message") or ("ready" if value == TRUE else "not ready")
    return IsvcState(value, reason, message, url, int(replicas), image)


def autoscaling_state(
    spec: DeploymentSpec,
    scaler: str,
    *,
    prefix: str | None = None,
    scaled_object: Mapping[str, Any] | None = None,
) -> ConditionState:
    """The Autoscaling condition: who scales the predictor, and (KEDA) whether it can."""
    scaling = spec.scaling
    span = f"{scaling.min_replicas}–{scaling.max_replicas} replicas"
    if scaler == KNATIVE:
        message = (
            f"Knative scales {span} on in-flight requests "
            f"(target {scaling.target_concurrency} per replica)"
        )
        if spec.queue is not None:
            message += (
                "; queued requests are shared through Redis but add no replicas "
                "(RawDeployment scales on the queue)"
            )
        return ConditionState(TRUE, "Knative", message + _unshared_warning(spec))
    if scaler == HPA:
        message = f"KServe's HPA scales {span} on CPU (target {scaling.target_cpu_utilization}%)"
        return ConditionState(TRUE, "HPA", message + _unshared_warning(spec))
    if scaler == HPA_WITHOUT_KEDA:
        low = max(1, scaling.min_replicas)
        return ConditionState(
            FALSE,
            "KEDANotInstalled",
            f"{KEDA_API_VERSION} scaledobjects is not served (KEDA is not installed), so nothing "
            f"scales on the queue: KServe's HPA scales {low}–{scaling.max_replicas} replicas on "
            "CPU instead; once KEDA is installed the next reconcile adds the ScaledObject",
        )
    assert scaler == KEDA
    return _keda_state(spec, prefix or "", scaled_object)


def _unshared_warning(spec: DeploymentSpec) -> str:
    if spec.queue is not None or spec.scaling.max_replicas < 2:
        return ""
    return (
        "; without spec.queue each replica keeps its own queue, so a queued request's status "
        "or result asked of another replica is not found"
    )


def _keda_state(
    spec: DeploymentSpec, prefix: str, scaled_object: Mapping[str, Any] | None
) -> ConditionState:
    name = ((scaled_object or {}).get("metadata") or {}).get("name", "ScaledObject")
    found = {
        c.get("type"): c
        for c in ((scaled_object or {}).get("status") or {}).get("conditions") or []
        if isinstance(c, dict)
    }
    ready = found.get("Ready")
    if ready is None or ready.get("status") not in (TRUE, FALSE):
        return ConditionState(UNKNOWN, "Pending", f"waiting for KEDA to report on {name}")
    if ready["status"] == FALSE:
        reason = ready.get("reason") or "ScaledObjectNotReady"
        return ConditionState(FALSE, reason, f"KEDA, {name}: {ready.get('message') or reason}")
    scaling = spec.scaling
    active = (found.get("Active") or {}).get("status") == TRUE
    message = (
        f"KEDA scales {scaling.min_replicas}–{scaling.max_replicas} replicas on Redis "
        f"{prefix}{WAITING_SUFFIX} and {prefix}{RUNNING_SUFFIX}: one per running request plus "
        f"one per {scaling.target_queue_length} waiting; {'active' if active else 'idle'}"
    )
    return ConditionState(TRUE, "KEDAScaling", message)


def replica_hourly_usd(spec: DeploymentSpec | None) -> float:
    """Price of one replica-hour: GPUs × GPU price (chronoedit) or the CPU replica price (sr)."""
    if spec is None:
        return 0.0
    gpus = spec.gpus
    if gpus is not None:
        return gpus.count * (spec.pricing.gpu_hourly_usd or 0.0)
    return spec.pricing.cpu_hourly_usd or 0.0


def hourly_cost(spec: DeploymentSpec | None, replicas: int) -> float:
    return round(replicas * replica_hourly_usd(spec), 6)


def _condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


def conditions(outcome: Outcome, isvc: IsvcState) -> list[dict[str, str]]:
    """The conditions, without transition times (Autoscaling only when the outcome knows it)."""
    if outcome.invalid is not None:
        reconciled = _condition("Reconciled", FALSE, "InvalidSpec", "; ".join(outcome.invalid))
    elif outcome.failure is not None:
        reconciled = _condition("Reconciled", FALSE, "ReconcileFailed", outcome.failure)
    elif outcome.blocked is not None:
        blocked = outcome.blocked
        reconciled = _condition("Reconciled", FALSE, blocked.reason, blocked.message)
    else:
        applied = ", ".join(outcome.applied) or "children"
        message = "; ".join([f"{applied} up to date", *outcome.notes])
        reconciled = _condition("Reconciled", TRUE, "ChildrenApplied", message)
    isvc_ready = _condition("InferenceServiceReady", isvc.status, isvc.reason, isvc.message)
    if reconciled["status"] != TRUE:
        ready = _condition("Ready", FALSE, reconciled["reason"], reconciled["message"])
    elif isvc.status != TRUE:
        ready = _condition(
            "Ready", FALSE, "InferenceServiceNotReady", f"InferenceService: {isvc.message}"
        )
    else:
        ready = _condition("Ready", TRUE, "Ready", f"serving at {isvc.url or '(no URL yet)'}")
    found = [ready, isvc_ready, reconciled]
    if outcome.autoscaling is not None:
        scaling = outcome.autoscaling
        found.append(_condition("Autoscaling", scaling.status, scaling.reason, scaling.message))
    return found


def build_status(
    *,
    generation: int | None,
    previous: Mapping[str, Any] | None,
    spec: DeploymentSpec | None,
    outcome: Outcome,
    isvc: Mapping[str, Any] | None,
    isvc_name: str,
    now: str | None = None,
) -> dict[str, Any]:
    """The whole status object, carrying over transition times that did not change."""
    state = isvc_state(isvc)
    previous_conditions = {
        c.get("type"): c for c in (previous or {}).get("conditions") or [] if isinstance(c, dict)
    }
    timestamp = now or now_rfc3339()
    stamped = []
    for condition in conditions(outcome, state):
        before = previous_conditions.get(condition["type"])
        same = before is not None and before.get("status") == condition["status"]
        since = before.get("lastTransitionTime") if same and before else None
        stamped.append({**condition, "lastTransitionTime": since or timestamp})
    kept = previous_conditions.get("Autoscaling")
    if outcome.autoscaling is None and kept is not None:  # children left as they were
        stamped.append(dict(kept))
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": stamped,
        "inferenceService": isvc_name,
        "replicas": state.replicas,
        "estimatedHourlyCostUsd": hourly_cost(spec, state.replicas),
    }
    if generation is None:
        del status["observedGeneration"]
    if state.url:
        status["url"] = state.url
    if state.image:
        status["predictorImage"] = state.image
    return status


def status_patch(previous: Mapping[str, Any] | None, status: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning ``previous`` into ``status`` (null removes keys that went away)."""
    patch: dict[str, Any] = {key: None for key in previous or {} if key not in status}
    patch.update(status)
    return patch
