"""Operator settings: one frozen dataclass, filled from flags whose defaults come from the env."""

from __future__ import annotations

from dataclasses import dataclass

from upscaler_operator.builders import DEFAULT_PREDICTOR_CPU_IMAGE, DEFAULT_PREDICTOR_IMAGE


@dataclass(frozen=True)
class OperatorConfig:
    #: predictor image for deployments with GPUs that name none: CUDA (env PREDICTOR_IMAGE)
    predictor_image: str = DEFAULT_PREDICTOR_IMAGE
    #: predictor image for deployments without GPUs (sr) that name none (env PREDICTOR_CPU_IMAGE)
    predictor_cpu_image: str = DEFAULT_PREDICTOR_CPU_IMAGE
    #: namespaces to serve; empty means the whole cluster
    namespaces: tuple[str, ...] = ()
    #: Prometheus /metrics port; 0 turns the endpoint off
    metrics_port: int = 8000
    #: kopf's liveness endpoint port (/healthz); 0 turns it off
    liveness_port: int = 8080
    #: seconds a watch request lasts on the server before kopf renews it (silent watches end)
    watch_timeout_s: float = 300.0
    #: seconds before a reconcile that hit an API error runs again
    retry_delay_s: float = 30.0
    #: seconds an API discovery answer (are PodMonitors, ScaledObjects served?) is trusted
    discovery_ttl_s: float = 60.0
    #: the Redis for a spec.queue that names none: a URL without credentials (env
    #: UPSCALER_REDIS_URL) or a Secret in the deployment's namespace (env UPSCALER_REDIS_SECRET)
    default_redis_url: str | None = None
    default_redis_secret: str | None = None
    #: threads that run reconciles (they block on API calls)
    workers: int = 8
