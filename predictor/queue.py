"""fal's queue protocol: submit now, poll status and logs, fetch the result, cancel.

:class:`QueueBackend` is the interface the routes speak; :class:`LocalQueue` keeps requests in
this process (one replica, ``make run``) and :class:`predictor.redis_queue.RedisQueue` shares them
between replicas. Either way a request runs through the same journey and worker pool as a sync
one (:func:`run_job`), timed and counted as its own request when it finishes. Finished requests
are kept for ``result_ttl_s``, then forgotten (404).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from predictor.errors import UpscaleError, error_message, internal_error
from predictor.journey import JobObserver, Upscaler, check_supported
from predictor.schema import APP_ID, UpscaleRequest
from predictor.telemetry import RequestRecord
from predictor.workers import Admission

log = logging.getLogger("predictor.queue")

#: how many log lines one request keeps (a 4× tiled render reports many steps)
MAX_LOGS = 500
OWNER_ALIAS = "/".join(APP_ID.split("/")[:2])  # fal-ai/chrono-edit-lora-gallery
CANCELLED = {
    "detail": "The request was cancelled before it finished.",
    "error_type": "request_cancelled",
}


class Status(StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class CancelOutcome(StrEnum):
    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"
    ALREADY_COMPLETED = "ALREADY_COMPLETED"
    NOT_FOUND = "NOT_FOUND"


def log_line(message: str, level: str = "INFO") -> dict[str, str]:
    timestamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"message": message, "level": level, "timestamp": timestamp}


def queue_urls(base_url: str, request_id: str) -> dict[str, str]:
    """Where a request is polled: fal's short form (the app's owner and alias)."""
    base = f"{base_url.rstrip('/')}/queue/{OWNER_ALIAS}/requests/{request_id}"
    return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}


@dataclass(frozen=True)
class Outcome:
    """How a request ended: a fal response body, or an error body with its HTTP status."""

    body: dict[str, Any]
    error_status: int | None = None
    error_headers: dict[str, str] = field(default_factory=dict)
    inference_time: float | None = None

    @property
    def failed(self) -> bool:
        return self.error_status is not None

    @classmethod
    def from_error(cls, exc: UpscaleError, inference_time: float | None = None) -> Outcome:
        return cls(exc.body(), exc.status_code, exc.headers(), inference_time)


CANCELLED_OUTCOME = Outcome(CANCELLED, 400, {"X-Fal-Error-Type": "request_cancelled"})


@dataclass(frozen=True)
class QueueState:
    """A request as the status and result routes see it."""

    request_id: str
    status: Status
    base_url: str
    position: int | None = None
    logs: list[dict[str, str]] = field(default_factory=list)
    outcome: Outcome | None = None

    def status_document(self, with_logs: bool) -> dict[str, Any]:
        """The document fal's clients parse."""
        urls = queue_urls(self.base_url, self.request_id)
        body: dict[str, Any] = {
            "status": self.status.value,
            "request_id": self.request_id,
            "response_url": urls["response_url"],
            "status_url": urls["status_url"],
        }
        if self.status is Status.IN_QUEUE:
            body["queue_position"] = self.position or 0
        body["logs"] = list(self.logs) if with_logs else None
        if self.status is Status.COMPLETED and self.outcome is not None:
            inference = self.outcome.inference_time
            body["metrics"] = {"inference_time": inference} if inference else {}
            if self.outcome.failed:
                body["error"] = error_message(self.outcome.body)
                body["error_type"] = self.outcome.body.get("error_type")
        return body


class QueueBackend(ABC):
    """Where queued requests live and who runs them."""

    def __init__(
        self,
        upscaler: Upscaler,
        result_ttl_s: float,
        on_finished: Callable[[str, str | None, Outcome], Awaitable[None]] | None = None,
    ) -> None:
        self.upscaler = upscaler
        self.result_ttl_s = result_ttl_s
        #: ``on_finished(request_id, webhook_url, outcome)``: webhooks
        self.on_finished = on_finished
        self._background: set[asyncio.Task] = set()

    @abstractmethod
    async def submit(
        self, request_id: str, request: UpscaleRequest, base_url: str, webhook_url: str | None
    ) -> QueueState:
        """Accept a request, or raise 429 when the queue is full (400 for what cannot run)."""

    @abstractmethod
    async def state(self, request_id: str) -> QueueState | None:
        """The request now, or None when unknown or expired."""

    @abstractmethod
    async def cancel(self, request_id: str) -> CancelOutcome: ...

    def change_marker(self, request_id: str) -> Any:
        """Taken before reading a state; :meth:`wait_changed` returns at once if it is stale."""
        return None

    @abstractmethod
    async def wait_changed(self, request_id: str, marker: Any, timeout: float) -> bool:
        """Return True when the request may have changed since ``marker``, False on timeout."""

    async def start(self) -> None:  # noqa: B027 - backends with consumers override it
        """Start consuming (inside the serving event loop)."""

    async def stop(self) -> None:  # noqa: B027
        """Stop consuming; hand running work back where the backend can."""

    def _count_unrun(self, request_id: str, outcome: Outcome) -> None:
        """Count, once, a request that ended without a run here (cancelled while waiting, or
        given up after its replicas died); a run counts itself, in the journey."""
        error_type = outcome.body.get("error_type")
        cancelled = error_type == CANCELLED["error_type"]
        status = 499 if cancelled else outcome.error_status or 500
        record = RequestRecord(request_id, route="queue")
        self.upscaler.telemetry.finish(record, status, error_type)

    def _finished(self, request_id: str, webhook_url: str | None, outcome: Outcome) -> None:
        if self.on_finished is None:
            return
        task = asyncio.create_task(self.on_finished(request_id, webhook_url, outcome))
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def run_job(
    upscaler: Upscaler,
    request_id: str,
    request: UpscaleRequest,
    base_url: str,
    observer: JobObserver,
    admission: Admission | None = None,
) -> Outcome:
    """Run a queued request through the journey; its record is its own (counted once, here).

    Cancellation (``asyncio.CancelledError``) propagates: the caller decides what it means.
    """
    record = RequestRecord(request_id=request_id, route="queue")
    try:
        response = await upscaler.upscale(
            request, base_url, record=record, observer=observer, admission=admission
        )
        return Outcome(
            response.model_dump(mode="json"), inference_time=record.timings.get("inference")
        )
    except UpscaleError as exc:
        return Outcome.from_error(exc, record.timings.get("inference"))
    except asyncio.CancelledError:
        raise
    except Exception:  # the journey turns these into UpscaleError already; belt and braces
        log.exception("queued request %s failed", request_id)
        return Outcome.from_error(internal_error())


def outcome_log(outcome: Outcome) -> dict[str, str]:
    if outcome.failed:
        return log_line(f"failed: {outcome.body.get('error_type')}", "ERROR")
    return log_line("completed")


@dataclass
class _Entry:
    """One request of a :class:`LocalQueue`."""

    request_id: str
    request: UpscaleRequest
    base_url: str
    webhook_url: str | None
    submitted: float = field(default_factory=time.monotonic)
    status: Status = Status.IN_QUEUE
    logs: list[dict[str, str]] = field(default_factory=list)
    outcome: Outcome | None = None
    finished_at: float | None = None
    cancel_requested: bool = False
    task: asyncio.Task | None = None
    #: set (and replaced by a fresh one) whenever status or logs change; SSE streams wait on it
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_log(self, line: dict[str, str]) -> None:
        with self._lock:
            if len(self.logs) < MAX_LOGS:
                self.logs.append(line)

    def notify(self) -> None:
        """Wake every waiter (on the event loop's thread)."""
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class LogLineObserver(JobObserver):
    """The journey's events as fal-style log lines; subclasses decide where a line goes.

    Called on the engine's worker thread, so :meth:`add` must be thread-safe.
    """

    def add(self, line: dict[str, str]) -> None:
        raise NotImplementedError

    def started(self) -> None:
        self.add(log_line("started on an engine worker"))

    def progress(self, done: int, total: int, unit: str) -> None:
        self.add(log_line(f"{unit} {done}/{total}"))

    def log(self, message: str) -> None:
        self.add(log_line(message))


class _LocalObserver(LogLineObserver):
    """Lines into the entry, and the entry marked in progress once a worker has it."""

    def __init__(self, entry: _Entry, loop: asyncio.AbstractEventLoop) -> None:
        self.entry = entry
        self.loop = loop

    def add(self, line: dict[str, str]) -> None:
        self.entry.add_log(line)
        self.loop.call_soon_threadsafe(self.entry.notify)

    def started(self) -> None:
        self.entry.status = Status.IN_PROGRESS
        super().started()


class LocalQueue(QueueBackend):
    """Requests in this process: each an asyncio task waiting in the shared worker pool.

    Admission is the pool's own, so a submit is refused exactly when a sync request would be.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._entries: dict[str, _Entry] = {}

    async def submit(
        self, request_id: str, request: UpscaleRequest, base_url: str, webhook_url: str | None
    ) -> QueueState:
        self._forget_expired()
        check_supported(request, self.upscaler.engine)
        admission = self.upscaler.pool.admit()
        entry = _Entry(request_id, request, base_url, webhook_url)
        entry.add_log(log_line("queued"))
        self._entries[request_id] = entry
        # a fresh context: the submit's HTTP record must not become this job's record
        entry.task = asyncio.get_running_loop().create_task(
            self._run(entry, admission), context=contextvars.Context()
        )
        # a task cancelled before its first step never runs _run's own clean-up
        entry.task.add_done_callback(lambda _: self._cancelled_before_start(entry, admission))
        return self._state(entry)

    async def state(self, request_id: str) -> QueueState | None:
        self._forget_expired()
        entry = self._entries.get(request_id)
        return self._state(entry) if entry is not None else None

    def _state(self, entry: _Entry) -> QueueState:
        position = None
        if entry.status is Status.IN_QUEUE:
            position = sum(
                1
                for other in self._entries.values()
                if other.status is Status.IN_QUEUE and other.submitted < entry.submitted
            )
        with entry._lock:
            logs = list(entry.logs)
        return QueueState(
            entry.request_id, entry.status, entry.base_url, position, logs, entry.outcome
        )

    async def cancel(self, request_id: str) -> CancelOutcome:
        entry = self._entries.get(request_id)
        if entry is None:
            return CancelOutcome.NOT_FOUND
        if entry.status is Status.COMPLETED:
            return CancelOutcome.ALREADY_COMPLETED
        if not entry.cancel_requested:
            entry.cancel_requested = True
            entry.add_log(log_line("cancellation requested", "WARNING"))
            entry.notify()
            assert entry.task is not None
            entry.task.cancel()  # a waiting job leaves the queue; a running one stops next step
        return CancelOutcome.CANCELLATION_REQUESTED

    def change_marker(self, request_id: str) -> asyncio.Event | None:
        entry = self._entries.get(request_id)
        return entry.changed if entry is not None else None

    async def wait_changed(self, request_id: str, marker: Any, timeout: float) -> bool:
        if not isinstance(marker, asyncio.Event):
            return True
        try:
            await asyncio.wait_for(marker.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        for entry in self._entries.values():
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for request_id, entry in list(self._entries.items()):
            if entry.finished_at is not None and now - entry.finished_at > self.result_ttl_s:
                del self._entries[request_id]

    async def _run(self, entry: _Entry, admission: Admission) -> None:
        observer = _LocalObserver(entry, asyncio.get_running_loop())
        try:
            outcome = await run_job(
                self.upscaler,
                entry.request_id,
                entry.request,
                entry.base_url,
                observer,
                admission,
            )
        except asyncio.CancelledError:
            outcome = CANCELLED_OUTCOME
        self._complete(entry, outcome)

    def _cancelled_before_start(self, entry: _Entry, admission: Admission) -> None:
        if entry.status is Status.COMPLETED:
            return
        admission.release()
        self._count_unrun(entry.request_id, CANCELLED_OUTCOME)
        self._complete(entry, CANCELLED_OUTCOME)

    def _complete(self, entry: _Entry, outcome: Outcome) -> None:
        entry.outcome = outcome
        entry.finished_at = time.monotonic()
        entry.status = Status.COMPLETED
        entry.add_log(outcome_log(outcome))
        entry.notify()
        self._finished(entry.request_id, entry.webhook_url, outcome)
