"""The server's own view: ``GET /metrics`` (cost counters, memory, queue gauges) and ``GET /info``.

A run scrapes ``/metrics`` before and after; the differences of the server's counters are what the
run cost by the server's own accounting (docs/observability.md). The counters belong to the one
process that answered the scrape: behind a Service with several replicas, read cost from
Prometheus instead.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

#: every sample of one scrape, by (sample name, sorted label pairs)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

COST = "upscaler_cost_usd_total"
LIST_PRICE = "upscaler_list_price_usd_total"
REQUESTS = "upscaler_requests_total"
DEVICE_SECONDS = "upscaler_gpu_seconds_total"
ABANDONED_SECONDS = "upscaler_abandoned_engine_seconds_total"
SAVED_SECONDS = "upscaler_saved_engine_seconds_total"
RSS = "process_resident_memory_bytes"
QUEUE_DEPTH = "upscaler_queue_depth"
INFLIGHT = "upscaler_inflight_requests"


def parse_metrics(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float | None:
    """The sum of ``name`` over every series whose labels include ``labels``; None if none."""
    values = [
        value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and set(labels.items()) <= set(sample_labels)
    ]
    return sum(values) if values else None


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float | None:
    first, last = total(before, name, **labels), total(after, name, **labels)
    if last is None:
        return None
    return last - (first or 0.0)


def cost_delta(before: Samples, after: Samples) -> dict[str, float | None] | None:
    """What the run cost by the server's counters, per delivered image, and fal's list price.

    None when the server exports no cost counters (an older server, or ``/metrics`` unreachable).
    """
    cost = delta(before, after, COST)
    list_price = delta(before, after, LIST_PRICE)
    images = delta(before, after, REQUESTS, outcome="ok")
    if cost is None or list_price is None or images is None:
        return None
    device_s = delta(before, after, DEVICE_SECONDS)

    def per_image(value: float | None) -> float | None:
        return value / images if value is not None and images > 0 else None

    return {
        "images": images,
        "cost_usd": cost,
        "list_price_usd": list_price,
        "device_seconds": device_s,
        "cost_per_image_usd": per_image(cost),
        "list_price_per_image_usd": per_image(list_price),
        "device_seconds_per_image": per_image(device_s),
        "cost_to_list_price": cost / list_price if list_price > 0 else None,
    }


def abandoned_work(before: Samples, after: Samples) -> dict[str, float | None]:
    """Engine seconds the server spent on jobs after their request was given up, and those it
    saved by stopping them (None: a server that does not count them)."""
    return {
        "engine_seconds": delta(before, after, ABANDONED_SECONDS),
        "saved_engine_seconds": delta(before, after, SAVED_SECONDS),
        "client_disconnected": delta(before, after, REQUESTS, outcome="client_disconnected"),
    }


def gauges(samples: Samples) -> dict[str, float | None]:
    """The server's memory and queue right now."""
    return {
        "rss_bytes": total(samples, RSS),
        "queue_depth": total(samples, QUEUE_DEPTH),
        "inflight": total(samples, INFLIGHT),
    }


def capacity(info: Mapping) -> int:
    """How many requests the server takes on at once: running plus allowed to wait."""
    limits = info["limits"]
    return int(limits["max_inflight"]) + int(limits["max_waiting"])


def ssl_context(ca_file: str | None = None, insecure: bool = False) -> ssl.SSLContext:
    """How https targets are verified: the system's CAs, ``ca_file``, or not at all."""
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=ca_file)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as an error: the load test never leaves the URL it was given."""

    def redirect_request(self, *args, **kwargs) -> None:
        return None


def get(
    url: str,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 10,
) -> bytes:
    """One GET of the target (http or https only), the body or an ``OSError``."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url}")
    opener = urllib.request.build_opener(_NoRedirects, urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, headers=dict(headers or {}))
    with opener.open(request, timeout=timeout) as response:
        return response.read()


def scrape(base_url: str, context: ssl.SSLContext | None = None) -> Samples:
    return parse_metrics(get(f"{base_url}/metrics", context=context).decode())


def server_info(
    base_url: str, headers: Mapping[str, str] | None = None, context: ssl.SSLContext | None = None
) -> dict:
    return json.loads(get(f"{base_url}/info", headers, context))
