"""A simulation's numbers: latency percentiles (wait, engine, end to end), throughput, replicas,
GPU-hours, cost per image against fal's list price, cold starts and client timeouts.

Percentiles are the load test's (:func:`loadtest.stats.summarize`), and fal's list price is the
predictor's own (:func:`predictor.metrics.list_price_cents`), so the simulated figures read like
a load test's and a deployment's ``/metrics``.
"""

from __future__ import annotations

import numpy as np

from loadtest.capacity.simulate import Outcome
from loadtest.stats import summarize
from predictor.metrics import LIST_PRICE_CENTS_LARGE, LIST_PRICE_CENTS_SMALL, list_price_cents


def list_price_usd(pixels: np.ndarray) -> float:
    """fal's price for images of these output pixel counts (its tier depends on pixels only)."""
    values, counts = np.unique(pixels, return_counts=True)
    cents = sum(list_price_cents(int(p), 1) * int(n) for p, n in zip(values, counts, strict=True))
    return cents / 100.0


def summarize_outcome(outcome: Outcome, client_timeout_s: float) -> dict:
    """The ``results.json`` document of one simulation (seconds and US dollars)."""
    d = outcome.settings.deployment
    served = ~np.isnan(outcome.end)
    wait = (outcome.start - outcome.arrival)[served]
    engine = (outcome.end - outcome.start)[served]
    total = wait + engine + outcome.overhead_s
    images = int(served.sum())
    replica_hours = outcome.replica_seconds / 3600.0
    gpu_hours = replica_hours * d.gpus if d.gpus else None
    hourly = d.replica_hourly_usd
    cost = replica_hours * hourly if hourly is not None else None
    list_price = list_price_usd(outcome.pixels[served])
    timeline = outcome.timeline
    duration = outcome.duration_s
    return {
        "deployment": {
            "name": d.name,
            "engine": d.engine,
            "autoscaler": d.autoscaler,
            "min_replicas": d.min_replicas,
            "max_replicas": d.max_replicas,
            "target_concurrency": d.target_concurrency,
            "target_queue_length": d.target_queue_length,
            "target_cpu_utilization": d.target_cpu_utilization,
            "scale_to_zero_grace_s": d.scale_to_zero_grace_s,
            "gpus_per_replica": d.gpus,
            "replica_hourly_usd": hourly,
        },
        "duration_s": duration,
        "elapsed_s": outcome.elapsed_s,
        "requests": {
            "total": len(outcome.arrival),
            "served": images,
            "refused": int(outcome.refused.sum()),
            "unfinished": int(len(outcome.arrival) - images - outcome.refused.sum()),
            "cold_start": int(outcome.cold.sum()),
            "cold_start_share": float(outcome.cold.mean()) if len(outcome.cold) else 0.0,
            "over_client_timeout": int((total > client_timeout_s).sum()),
            "client_timeout_s": client_timeout_s,
        },
        "latency": {
            "wait": summarize(wait.tolist()),
            "engine": summarize(engine.tolist()),
            "total": summarize(total.tolist()),
        },
        "throughput": {
            "offered_per_s": len(outcome.arrival) / duration if duration else None,
            "images_per_s": images / duration if duration else None,
        },
        "replicas": {
            "mean": outcome.replica_seconds / outcome.elapsed_s if outcome.elapsed_s else 0.0,
            "max": int(timeline[:, 1].max()) if len(timeline) else 0,
            "starts_cold": outcome.starts_cold,
            "starts_cached": outcome.starts_cached,
            "replica_hours": replica_hours,
            "gpu_hours": gpu_hours,
        },
        "cost": {
            "usd": cost,
            "per_image_usd": cost / images if cost is not None and images else None,
            "list_price_usd": list_price,
            "list_price_per_image_usd": list_price / images if images else None,
            "cost_to_list_price": cost / list_price if cost is not None and list_price else None,
            "list_price_cents": {"small": LIST_PRICE_CENTS_SMALL, "large": LIST_PRICE_CENTS_LARGE},
        },
    }
