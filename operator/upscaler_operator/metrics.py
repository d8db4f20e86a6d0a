"""The operator's own Prometheus metrics, on a registry of their own so tests can read them."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

OUTCOMES = ("ok", "invalid", "error")


class Metrics:
    """Reconcile counts and durations, and each deployment's estimated hourly cost."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reconciles = Counter(
            "upscaler_operator_reconciles_total",
            "Reconciles of UpscalerDeployments by outcome (ok, invalid spec, API error).",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in OUTCOMES:  # export zeros, so rate() and alerts see every series
            self.reconciles.labels(outcome)
        self.duration = Histogram(
            "upscaler_operator_reconcile_duration_seconds",
            "Time one reconcile takes, API calls included.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.hourly_cost = Gauge(
            "upscaler_deployment_hourly_cost_usd",
            "Estimated cost per hour of a deployment's ready replicas.",
            ["namespace", "deployment"],
            registry=self.registry,
        )

    def observe(self, outcome: str, seconds: float) -> None:
        self.reconciles.labels(outcome).inc()
        self.duration.observe(seconds)

    def set_cost(self, namespace: str, deployment: str, usd_per_hour: float) -> None:
        self.hourly_cost.labels(namespace, deployment).set(usd_per_hour)

    def forget(self, namespace: str, deployment: str) -> None:
        """Drop a deleted deployment's series, so dashboards do not sum stale costs."""
        with contextlib.suppress(KeyError):  # never set, or already gone
            self.hourly_cost.remove(namespace, deployment)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Expose /metrics on a background thread."""
        start_http_server(port, addr=address, registry=self.registry)
