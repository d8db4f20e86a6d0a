"""An UpscalerDeployment YAML into what the simulation needs: who scales, within which bounds.

The file is the one a user applies. Its spec is checked and defaulted by the operator's own parser
(``upscaler_operator.spec.parse_spec``), and the autoscaler is chosen by the operator's own rule
(``upscaler_operator.builders.autoscaler``, with KEDA installed), so the defaults here are the
ones the operator builds. What the operator leaves to the predictor (engine workers per replica,
waiting requests per replica) comes from the predictor's own defaults (``predictor.config``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from upscaler_operator import KIND
from upscaler_operator.builders import HPA, KEDA, KNATIVE, BuildOptions, autoscaler
from upscaler_operator.spec import DeploymentSpec, InvalidSpec, duration_exact, parse_spec

from predictor.config import Settings

_PREDICTOR = Settings()


class DeploymentError(ValueError):
    """The YAML is not an UpscalerDeployment the operator would deploy; says which field."""


@dataclass(frozen=True)
class Deployment:
    """The scaling-relevant part of one UpscalerDeployment, defaulted as the operator does."""

    name: str
    engine: str
    #: ``knative`` (Serverless: KPA), ``keda`` (RawDeployment + queue), ``hpa`` (CPU)
    autoscaler: str
    min_replicas: int
    max_replicas: int
    target_concurrency: int
    target_cpu_utilization: int
    target_queue_length: int
    #: spec.scaling.scaleToZeroGracePeriod in seconds; None: the autoscaler's own default
    scale_to_zero_grace_s: float | None
    request_timeout_s: float
    #: GPUs per replica (0 for the CPU ``sr`` engine)
    gpus: int
    #: price of one replica-hour: gpu.count × pricing.gpuHourlyUsd, or pricing.cpuHourlyUsd (sr)
    replica_hourly_usd: float | None
    #: engine jobs at once per replica, and requests that may wait on one (predictor defaults)
    slots: int = _PREDICTOR.max_inflight
    max_waiting: int = _PREDICTOR.max_waiting
    #: the shared queue's bound (spec.queue.maxQueued, else the predictor's default)
    max_queued: int = _PREDICTOR.max_queued

    @property
    def shared_queue(self) -> bool:
        """Work waits in one shared (Redis) queue, not per replica."""
        return self.autoscaler == KEDA

    def with_scaling(self, **changes: Any) -> Deployment:
        return replace(self, **changes)


def from_spec(name: str, spec: DeploymentSpec) -> Deployment:
    scaling = spec.scaling
    scaler = autoscaler(spec, BuildOptions(keda=True))
    gpus = spec.gpus.count if spec.gpus is not None else 0
    if spec.engine == "sr":
        hourly = spec.pricing.cpu_hourly_usd
    else:
        hourly = None if spec.pricing.gpu_hourly_usd is None else spec.pricing.gpu_hourly_usd * gpus
    grace = scaling.scale_to_zero_grace_period
    queue = spec.queue
    return Deployment(
        name=name,
        engine=spec.engine,
        autoscaler=scaler,
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        target_concurrency=scaling.target_concurrency,
        target_cpu_utilization=scaling.target_cpu_utilization,
        target_queue_length=scaling.target_queue_length,
        scale_to_zero_grace_s=None if grace is None else float(duration_exact(grace)),
        request_timeout_s=float(spec.request_timeout_seconds),
        gpus=gpus,
        replica_hourly_usd=hourly,
        max_queued=queue.max_queued
        if queue is not None and queue.max_queued is not None
        else _PREDICTOR.max_queued,
    )


def parse_document(document: Any) -> Deployment:
    """One UpscalerDeployment object (already loaded from YAML) → :class:`Deployment`."""
    if not isinstance(document, dict) or document.get("kind") != KIND:
        raise DeploymentError(f"kind: expected {KIND}")
    name = (document.get("metadata") or {}).get("name")
    try:
        # the operator's default Redis stands in for a spec.queue that names none
        spec = parse_spec(document.get("spec"), name=name, default_redis=_placeholder_redis())
    except InvalidSpec as exc:
        raise DeploymentError("; ".join(exc.errors)) from exc
    return from_spec(name, spec)


def load(path: Path) -> tuple[Deployment, dict]:
    """The first UpscalerDeployment in a YAML file, and the raw document (for patches)."""
    try:
        documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise DeploymentError(f"{path}: {exc}") from exc
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == KIND:
            return parse_document(document), document
    raise DeploymentError(f"{path}: no {KIND} in the file")


def _placeholder_redis():
    from upscaler_operator.spec import RedisSpec

    return RedisSpec(url="redis://operator-default:6379/0")


__all__ = ["HPA", "KEDA", "KNATIVE", "Deployment", "DeploymentError", "load", "parse_document"]
