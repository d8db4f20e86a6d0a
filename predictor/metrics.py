"""Prometheus metrics of the predictor (docs/observability.md), served by KServe's own ``/metrics``.

The metric objects live in prometheus_client's default registry, which KServe's ``/metrics``
route exposes. The pure parts (outcome classes, fal's list price) are functions so they are
tested without a server; :mod:`predictor.telemetry` records one finished request at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from predictor.errors import CLIENT_DISCONNECTED
from predictor.workers import CANCELLED, SHUTDOWN, TIMEOUT

#: stages a request's time is split into; ``total`` is the whole HTTP request (or queue job)
STAGES = ("fetch", "decode", "inference", "encode", "total")
#: the fixed outcome set; every request lands in exactly one
OUTCOMES = (
    "ok", "client_error", "server_error", "rejected", "timeout", "cancelled", "client_disconnected"
)  # fmt: skip
#: why a job was stopped before it finished (the labels of the abandoned-work counters)
ABANDON_REASONS = (CLIENT_DISCONNECTED, TIMEOUT, CANCELLED, SHUTDOWN)

#: fal's list price for this endpoint, in cents per image: up to the 480p tier, and above it.
#: The tier is defined by output pixels: 854×480 (480p at 16:9) = 409,920 pixels or fewer.
LIST_PRICE_TIER_PIXELS = 854 * 480
LIST_PRICE_CENTS_SMALL = 2
LIST_PRICE_CENTS_LARGE = 3

#: seconds; codecs and fetches take milliseconds, a GPU denoise tens of seconds, a 4× tiled
#: render minutes: one bucket set that resolves all of them
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0,
    90.0, 120.0, 180.0, 300.0, 600.0,
)  # fmt: skip


def outcome_for_status(status: int, error_type: str | None = None) -> str:
    """The outcome class of an HTTP status code (2xx ok; 429/503 shed; 504 timed out); a 499
    is ``client_disconnected`` when the client hung up, ``cancelled`` when it asked to cancel."""
    if status == 499 and error_type == "client_disconnected":
        return "client_disconnected"
    if status < 400:
        return "ok"
    if status in (429, 503):
        return "rejected"
    if status == 504:
        return "timeout"
    if status == 499:  # the client went away (nginx's convention)
        return "cancelled"
    return "client_error" if status < 500 else "server_error"


def list_price_cents(width: int, height: int) -> int:
    """What fal charges for one output image of ``width``×``height``."""
    if width * height <= LIST_PRICE_TIER_PIXELS:
        return LIST_PRICE_CENTS_SMALL
    return LIST_PRICE_CENTS_LARGE


def device_cost_usd(device_seconds: float, hourly_usd: float) -> float:
    return device_seconds * hourly_usd / 3600.0


REQUEST_DURATION = Histogram(
    "upscaler_request_duration_seconds",
    "Time spent per request stage (total: the whole request), by outcome.",
    ("stage", "engine", "outcome"),
    buckets=DURATION_BUCKETS,
)
REQUESTS = Counter(
    "upscaler_requests",
    "Requests answered, by outcome; each request is counted once.",
    ("engine", "outcome"),
)
QUEUE_DEPTH = Gauge("upscaler_queue_depth", "Requests waiting for an engine worker.")
INFLIGHT = Gauge("upscaler_inflight_requests", "Requests running on an engine worker now.")
WORKER_SLOTS = Gauge("upscaler_worker_slots", "Engine workers (--max-inflight).")
WORKER_SLOTS_FREE = Gauge(
    "upscaler_worker_slots_free",
    "Engine workers no job holds. Slots minus free minus running above 0 is a leaked slot.",
)
OUTPUT_MEGAPIXELS = Counter(
    "upscaler_output_megapixels", "Output megapixels delivered.", ("engine",)
)
DEVICE_SECONDS = Counter(
    "upscaler_gpu_seconds",
    "Seconds the engine's device (GPU; the CPU for CPU engines) spent on requests.",
    ("engine",),
)
COST_USD = Counter(
    "upscaler_cost_usd",
    "Device seconds times the deployment's hourly price (--gpu-hourly-usd) / 3600.",
    ("engine",),
)
ABANDONED_ENGINE_SECONDS = Counter(
    "upscaler_abandoned_engine_seconds",
    "Engine seconds spent on jobs after their request was given up (client gone, deadline, "
    "cancel, shutdown): work nobody receives. A job stops at its next step or tile.",
    ("engine", "reason"),
)
SAVED_ENGINE_SECONDS = Counter(
    "upscaler_saved_engine_seconds",
    "Engine seconds not spent because a given-up job stopped early (estimated from its progress "
    "when it was stopped).",
    ("engine", "reason"),
)
COMPILED_GRAPHS = Counter(
    "upscaler_compiled_graphs",
    "Graphs torch.compile built while serving, after the warm-up: each is a request that paid "
    "for compiling its shape bucket or graph variant (docs/chronoedit.md).",
    ("engine",),
)
SAFETY_FLAGGED = Counter(
    "upscaler_safety_flagged",
    "Outputs the safety checker flagged and replaced with a black image.",
    ("engine",),
)

#: seconds: a cache hit takes microseconds, reading a 14B LoRA from disk seconds, a download minutes
LORA_LOAD_BUCKETS = (
    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0, 600.0,
)  # fmt: skip
LORA_LOAD_SECONDS = Histogram(
    "upscaler_lora_load_seconds",
    "Time to get one request LoRA ready for its slot: resolve, fetch or read, check, convert "
    "(a host-cache hit is only the lookup).",
    buckets=LORA_LOAD_BUCKETS,
)
LORA_CACHE_HITS = Counter(
    "upscaler_lora_cache_hits", "Request LoRAs found in the host-memory cache (--lora-cache-mb)."
)
LORA_CACHE_MISSES = Counter(
    "upscaler_lora_cache_misses",
    "Request LoRAs not in the host-memory cache: read from disk or downloaded.",
)


class ListPriceCollector(Collector):
    """``upscaler_list_price_usd_total``: counted in whole cents so that sums stay exact."""

    def __init__(self) -> None:
        self._cents: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, engine: str, cents: int) -> None:
        with self._lock:
            self._cents[engine] = self._cents.get(engine, 0) + cents

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "upscaler_list_price_usd",
            "What fal's list price would have charged for the images delivered.",
            labels=("engine",),
        )
        with self._lock:
            for engine, cents in sorted(self._cents.items()):
                family.add_metric((engine,), cents / 100)
        yield family


LIST_PRICE = ListPriceCollector()
REGISTRY.register(LIST_PRICE)


def start_series(engine: str) -> None:
    """Create every series of ``engine`` at zero, so rates work from the first scrape."""
    for outcome in OUTCOMES:
        REQUESTS.labels(engine, outcome)
    for counter in (OUTPUT_MEGAPIXELS, DEVICE_SECONDS, COST_USD, SAFETY_FLAGGED, COMPILED_GRAPHS):
        counter.labels(engine)
    LIST_PRICE.add(engine, 0)
    for reason in ABANDON_REASONS:
        ABANDONED_ENGINE_SECONDS.labels(engine, reason)
        SAVED_ENGINE_SECONDS.labels(engine, reason)


def watch_pool(
    size: int,
    waiting: Callable[[], float],
    inflight: Callable[[], float],
    free: Callable[[], float],
) -> None:
    """Read the queue and slot gauges from the live worker pool at scrape time."""
    WORKER_SLOTS.set(size)
    QUEUE_DEPTH.set_function(waiting)
    INFLIGHT.set_function(inflight)
    WORKER_SLOTS_FREE.set_function(free)


# Faults of the shared parts (docs/replicas.md): what the fault suite checks replicas surface.
REDIS_UP = Gauge(
    "upscaler_queue_redis_up",
    "1 while this replica reaches the shared queue's Redis, 0 during an outage (or before it "
    "first connected; the replica is not ready then). Only with --redis-url; by --redis-prefix.",
    ("prefix",),
)
REDIS_DATA_LOST = Counter(
    "upscaler_queue_redis_data_lost",
    "Times this replica found Redis had lost its data (restarted without persistence, or "
    "flushed): waiting requests and finished results were lost.",
)
WEBHOOKS = Counter(
    "upscaler_webhooks",
    "Webhook deliveries that ended: delivered (a 2xx), given_up (every attempt failed) or "
    "refused (an address the guard refuses; never retried).",
    ("outcome",),
)
OUTPUT_STORE_FAILURES = Counter(
    "upscaler_output_store_failures",
    "Outputs that could not be stored after the store client's retries (the request ended 503 "
    "store_unavailable).",
    ("store",),
)
