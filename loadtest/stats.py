"""What a run records, and the numbers made from it (percentiles, counts, throughput).

Two kinds of record:

* an :class:`HttpRecord` for every HTTP call (a sync POST, a queue submit, a status poll, a result,
  an output download), grouped by route;
* a :class:`RequestRecord` for every image request a user made, from its first byte sent to its
  result in hand: one sync call (plus the output's download), or a whole queue journey (submit,
  polls, result, download). Its ``status`` is the answer that decided it: the HTTP status code
  (``"200"``, ``"429"``, …) or a client-side failure (``"timeout"``, ``"connection_error"``, …).

Statuses are classed as *accepted* (2xx), *shed* (429 and 503: the server refused to take the
work on), *gave_up* (an impatient client hung up at its deadline) or *failed* (everything else,
client-side failures included).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

SHED_STATUSES = frozenset({"429", "503"})
#: client-side outcomes that are not HTTP status codes
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
BAD_RESPONSE = "bad_response"
FOREIGN_URL = "foreign_url"
CLIENT_EXCEPTION = "client_exception"
#: an impatient client hung up at its own deadline (the ``impatient`` profile)
GAVE_UP = "gave_up"


def status_class(status: str) -> str:
    """``accepted``, ``shed``, ``gave_up`` (the client hung up on purpose) or ``failed``."""
    if status.isdigit() and 200 <= int(status) < 300:
        return "accepted"
    if status in SHED_STATUSES:
        return "shed"
    if status == GAVE_UP:
        return "gave_up"
    return "failed"


@dataclass(frozen=True)
class HttpRecord:
    route: str
    status: str
    #: seconds since the run started
    started: float
    latency_s: float


@dataclass(frozen=True)
class RequestRecord:
    mode: str
    status: str
    started: float
    latency_s: float
    images: int = 0
    #: fal's list price for the delivered images, from their sizes (cents)
    list_price_cents: int = 0
    output_pixels: int = 0
    #: queue mode: time between ``queued`` and ``started on an engine worker``, and from there to
    #: ``completed``, from the server's status log; the engine's own ``inference_time``
    queue_wait_s: float | None = None
    queue_run_s: float | None = None
    inference_s: float | None = None

    @property
    def outcome(self) -> str:
        return status_class(self.status)


@dataclass
class Recorder:
    """Everything one run saw; users append to it from their greenlets."""

    #: ``time.perf_counter()`` when the run started; records keep their start relative to it
    t0: float = field(default_factory=time.perf_counter)
    http: list[HttpRecord] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)
    #: image requests started and not yet recorded (after the stop: abandoned)
    in_flight: int = 0
    #: set when the duration is over: users start no new request
    stopping: bool = False
    #: output URLs that pointed away from the target and were not downloaded
    skipped_downloads: int = 0

    def add_http(self, record: HttpRecord) -> None:
        self.http.append(record)

    def begin(self) -> None:
        self.in_flight += 1

    def add_request(self, record: RequestRecord) -> None:
        self.in_flight -= 1
        self.requests.append(record)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of already sorted values, interpolating linearly between
    the closest ranks (numpy's default)."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0–100")
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def summarize(values: Iterable[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p95, p99 and max, in the values' unit (seconds here); None when empty."""
    ordered = sorted(values)
    if not ordered:
        return {
            "count": 0,
            "mean_s": None,
            "p50_s": None,
            "p95_s": None,
            "p99_s": None,
            "max_s": None,
        }
    return {
        "count": len(ordered),
        "mean_s": sum(ordered) / len(ordered),
        "p50_s": percentile(ordered, 50),
        "p95_s": percentile(ordered, 95),
        "p99_s": percentile(ordered, 99),
        "max_s": ordered[-1],
    }


def count_statuses(statuses: Iterable[str]) -> dict[str, int]:
    """Counts by status, numeric codes first, in order."""
    counts = Counter(statuses)
    return dict(sorted(counts.items(), key=lambda item: (not item[0].isdigit(), item[0])))


def summarize_requests(records: Sequence[RequestRecord]) -> dict:
    by_class: dict[str, list[RequestRecord]] = {
        "accepted": [],
        "shed": [],
        "gave_up": [],
        "failed": [],
    }
    for record in records:
        by_class[record.outcome].append(record)
    return {
        "total": len(records),
        "by_status": count_statuses(record.status for record in records),
        **{name: len(group) for name, group in by_class.items()},
        "images": sum(record.images for record in records),
        "latency": summarize(record.latency_s for record in records),
        "latency_accepted": summarize(record.latency_s for record in by_class["accepted"]),
        "latency_shed": summarize(record.latency_s for record in by_class["shed"]),
    }


def summarize_routes(records: Sequence[HttpRecord]) -> dict[str, dict]:
    routes: dict[str, list[HttpRecord]] = {}
    for record in records:
        routes.setdefault(record.route, []).append(record)
    return {
        route: {
            "count": len(group),
            "by_status": count_statuses(record.status for record in group),
            "latency": summarize(record.latency_s for record in group),
        }
        for route, group in routes.items()
    }


def summarize_queue(records: Sequence[RequestRecord]) -> dict | None:
    """Queue wait vs run time of the accepted queue requests, from the server's status logs."""
    queued = [r for r in records if r.mode == "queue" and r.outcome == "accepted"]
    if not queued:
        return None
    return {
        "wait": summarize(r.queue_wait_s for r in queued if r.queue_wait_s is not None),
        "run": summarize(r.queue_run_s for r in queued if r.queue_run_s is not None),
        "inference": summarize(r.inference_s for r in queued if r.inference_s is not None),
        "end_to_end": summarize(r.latency_s for r in queued),
    }


def throughput(recorder: Recorder, elapsed_s: float) -> dict[str, float]:
    if elapsed_s <= 0:
        raise ValueError("elapsed time must be positive")
    accepted = [r for r in recorder.requests if r.outcome == "accepted"]
    return {
        "requests_per_s": len(recorder.requests) / elapsed_s,
        "accepted_per_s": len(accepted) / elapsed_s,
        "images_per_s": sum(r.images for r in accepted) / elapsed_s,
        "output_megapixels_per_s": sum(r.output_pixels for r in accepted) / 1e6 / elapsed_s,
        "http_requests_per_s": len(recorder.http) / elapsed_s,
    }


#: fal's list price for this endpoint (docs/observability.md): 2 cents per image of at most
#: 854×480 output pixels, 3 cents above; ``tests/loadtest`` checks it against the server's rule
LIST_PRICE_TIER_PIXELS = 854 * 480


def list_price_cents(width: int, height: int) -> int:
    return 2 if width * height <= LIST_PRICE_TIER_PIXELS else 3


def client_list_price_usd(records: Iterable[RequestRecord]) -> float:
    """fal's list price for the images the client received (summed in cents, like the server)."""
    return sum(r.list_price_cents for r in records if r.outcome == "accepted") / 100
