"""fal's queue protocol, in process: submit now, poll status and logs, fetch the result, cancel.

A queued request runs through the same journey, admission check and worker pool as a sync one
(so overload behaves the same on both); it is an asyncio task of its own, started in a fresh
context so that it is timed and counted as its own request when it finishes. Finished requests
are kept for ``result_ttl_s``, then forgotten (404).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from predictor.errors import UpscaleError, internal_error
from predictor.journey import JobObserver, Upscaler, check_supported
from predictor.schema import UpscaleRequest
from predictor.telemetry import RequestRecord
from predictor.workers import Admission

log = logging.getLogger("predictor.queue")

#: how many log lines one request keeps (a 4× tiled render reports many steps)
MAX_LOGS = 500


class Status(StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class CancelOutcome(StrEnum):
    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"
    ALREADY_COMPLETED = "ALREADY_COMPLETED"
    NOT_FOUND = "NOT_FOUND"


def _timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class QueuedRequest:
    """One submitted request: its state, logs and, once finished, its answer."""

    request_id: str
    request: UpscaleRequest
    base_url: str
    webhook_url: str | None = None
    submitted: float = field(default_factory=time.monotonic)
    status: Status = Status.IN_QUEUE
    logs: list[dict[str, str]] = field(default_factory=list)
    #: the answer: a fal response body, or an error body with its HTTP status
    result: dict[str, Any] | None = None
    error_status: int | None = None
    error_headers: dict[str, str] = field(default_factory=dict)
    inference_time: float | None = None
    finished_at: float | None = None
    cancel_requested: bool = False
    task: asyncio.Task | None = None
    #: set whenever status or logs change (the SSE stream waits on it)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_log(self, message: str, level: str = "INFO") -> None:
        with self._lock:
            if len(self.logs) < MAX_LOGS:
                self.logs.append({"message": message, "level": level, "timestamp": _timestamp()})

    @property
    def failed(self) -> bool:
        return self.error_status is not None


class _Observer(JobObserver):
    """Turns the journey's events into the request's status and fal-style log lines.

    Its methods run on the engine's worker thread; ``changed`` is set on the event loop.
    """

    def __init__(self, entry: QueuedRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.entry = entry
        self.loop = loop

    def _changed(self) -> None:
        self.loop.call_soon_threadsafe(self.entry.changed.set)

    def started(self) -> None:
        self.entry.status = Status.IN_PROGRESS
        self.entry.add_log("started on an engine worker")
        self._changed()

    def progress(self, done: int, total: int, unit: str) -> None:
        self.entry.add_log(f"{unit} {done}/{total}")
        self._changed()

    def log(self, message: str) -> None:
        self.entry.add_log(message)
        self._changed()


class RequestQueue:
    """The queue of one server: submitted requests by id, each an asyncio task."""

    def __init__(
        self,
        upscaler: Upscaler,
        result_ttl_s: float = 3600.0,
        on_finished: Callable[[QueuedRequest], Awaitable[None]] | None = None,
    ) -> None:
        self.upscaler = upscaler
        self.result_ttl_s = result_ttl_s
        self.on_finished = on_finished
        self._requests: dict[str, QueuedRequest] = {}
        self._background: set[asyncio.Task] = set()

    def submit(
        self,
        request_id: str,
        request: UpscaleRequest,
        base_url: str,
        webhook_url: str | None = None,
    ) -> QueuedRequest:
        """Accept a request (or raise the same 429 a sync request would get)."""
        self.forget_expired()
        check_supported(request, self.upscaler.engine)
        admission = self.upscaler.pool.admit()
        entry = QueuedRequest(request_id, request, base_url, webhook_url)
        entry.add_log("queued")
        self._requests[request_id] = entry
        # a fresh context: the submit's HTTP record must not become this job's record
        entry.task = asyncio.get_running_loop().create_task(
            self._run(entry, admission), context=contextvars.Context()
        )
        # a task cancelled before its first step never runs _run's own clean-up
        entry.task.add_done_callback(lambda _: self._cancelled_before_start(entry, admission))
        return entry

    def get(self, request_id: str) -> QueuedRequest | None:
        self.forget_expired()
        return self._requests.get(request_id)

    def position(self, entry: QueuedRequest) -> int:
        """0-based place among requests still waiting, as fal reports it."""
        return sum(
            1
            for other in self._requests.values()
            if other.status is Status.IN_QUEUE and other.submitted < entry.submitted
        )

    def cancel(self, request_id: str) -> CancelOutcome:
        entry = self.get(request_id)
        if entry is None:
            return CancelOutcome.NOT_FOUND
        if entry.status is Status.COMPLETED:
            return CancelOutcome.ALREADY_COMPLETED
        if not entry.cancel_requested:
            entry.cancel_requested = True
            entry.add_log("cancellation requested", "WARNING")
            assert entry.task is not None
            entry.task.cancel()  # a waiting job leaves the queue; a running one stops next step
        return CancelOutcome.CANCELLATION_REQUESTED

    def forget_expired(self) -> None:
        now = time.monotonic()
        for request_id, entry in list(self._requests.items()):
            if entry.finished_at is not None and now - entry.finished_at > self.result_ttl_s:
                del self._requests[request_id]

    async def _run(self, entry: QueuedRequest, admission: Admission) -> None:
        record = RequestRecord(request_id=entry.request_id, route="queue")
        observer = _Observer(entry, asyncio.get_running_loop())
        try:
            response = await self.upscaler.upscale(
                entry.request,
                entry.base_url,
                record=record,
                observer=observer,
                admission=admission,
            )
            entry.result = response.model_dump(mode="json")
        except UpscaleError as exc:
            self._fail(entry, exc)
        except asyncio.CancelledError:
            self._mark_cancelled(entry)
        except Exception:  # the journey turns these into UpscaleError already; belt and braces
            log.exception("queued request %s failed", entry.request_id)
            self._fail(entry, internal_error())
        entry.inference_time = record.timings.get("inference")
        self._complete(entry)

    def _cancelled_before_start(self, entry: QueuedRequest, admission: Admission) -> None:
        if entry.status is Status.COMPLETED:
            return
        admission.release()
        self.upscaler.telemetry.finish(RequestRecord(entry.request_id, route="queue"), 499)
        self._mark_cancelled(entry)
        self._complete(entry)

    @staticmethod
    def _mark_cancelled(entry: QueuedRequest) -> None:
        entry.result = {
            "detail": "The request was cancelled before it finished.",
            "error_type": "request_cancelled",
        }
        entry.error_status = 400

    def _complete(self, entry: QueuedRequest) -> None:
        entry.finished_at = time.monotonic()
        entry.status = Status.COMPLETED
        entry.add_log(
            "completed" if not entry.failed else f"failed: {entry.result.get('error_type')}",
            "INFO" if not entry.failed else "ERROR",
        )
        entry.changed.set()
        if self.on_finished is not None:
            task = asyncio.create_task(self.on_finished(entry))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    @staticmethod
    def _fail(entry: QueuedRequest, exc: UpscaleError) -> None:
        entry.result = exc.body()
        entry.error_status = exc.status_code
        entry.error_headers = exc.headers()

    def status_body(self, entry: QueuedRequest, with_logs: bool) -> dict[str, Any]:
        """The status document fal's clients parse."""
        urls = self.urls(entry)
        body: dict[str, Any] = {"status": entry.status.value, "request_id": entry.request_id}
        body.update(response_url=urls["response_url"], status_url=urls["status_url"])
        if entry.status is Status.IN_QUEUE:
            body["queue_position"] = self.position(entry)
        body["logs"] = list(entry.logs) if with_logs else None
        if entry.status is Status.COMPLETED:
            body["metrics"] = (
                {"inference_time": entry.inference_time} if entry.inference_time else {}
            )
            if entry.failed:
                assert entry.result is not None
                detail = entry.result.get("detail")
                body["error"] = detail if isinstance(detail, str) else _first_message(detail)
                body["error_type"] = entry.result.get("error_type")
        return body

    @staticmethod
    def urls(entry: QueuedRequest) -> dict[str, str]:
        """Where the request can be polled: fal's short form (app owner and alias)."""
        from predictor.schema import APP_ID

        owner_alias = "/".join(APP_ID.split("/")[:2])
        base = f"{entry.base_url.rstrip('/')}/queue/{owner_alias}/requests/{entry.request_id}"
        return {
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    async def shutdown(self) -> None:
        for entry in self._requests.values():
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()


def _first_message(detail: Any) -> str:
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        item = detail[0]
        loc = ".".join(str(part) for part in item.get("loc", []))
        return f"{loc}: {item.get('msg')}" if loc else str(item.get("msg"))
    return str(detail)
