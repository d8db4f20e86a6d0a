"""fal's queue protocol: submit now, poll status and logs, fetch the result, cancel.

:class:`QueueBackend` is the interface the routes speak; :class:`~predictor.queue.local.LocalQueue`
keeps requests in this process (one replica, ``make run``) and
:class:`~predictor.queue.redis.RedisQueue` shares them between replicas. Either way a request
runs through the same journey and worker pool as a sync one (:func:`run_job`), timed and counted
as its own request when it finishes. Finished requests are kept for ``result_ttl_s``, then
forgotten (404).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from predictor.errors import SHUTTING_DOWN, UpscaleError, error_message, internal_error
from predictor.journey import JobObserver, Upscaler, check_supported
from predictor.schema import OWNER_ALIAS, UpscaleRequest
from predictor.telemetry import RequestRecord
from predictor.workers import Admission

log = logging.getLogger("predictor.queue")

#: how many log lines one request keeps (a 4× tiled render reports many steps)
MAX_LOGS = 500
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

    async def submit(
        self, request_id: str, request: UpscaleRequest, base_url: str, webhook_url: str | None
    ) -> QueueState:
        """Accept a request, or raise 429 when the queue is full (400 for what cannot run, 503
        once this replica is shutting down)."""
        self.upscaler.pool.check_open()
        check_supported(request, self.upscaler.engine)  # refused now, not after its wait
        return await self._enqueue(request_id, request, base_url, webhook_url)

    @abstractmethod
    async def _enqueue(
        self, request_id: str, request: UpscaleRequest, base_url: str, webhook_url: str | None
    ) -> QueueState:
        """Keep an accepted request until a worker runs it (429 when the queue is full)."""

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

    @property
    def ready(self) -> bool:
        """Whether the backend can take requests (a shared one: once its store first answered)."""
        return True

    async def start(self) -> None:  # noqa: B027 - backends with consumers override it
        """Start consuming (inside the serving event loop)."""

    async def stop(self) -> None:  # noqa: B027
        """Stop consuming; hand running work back where the backend can."""

    async def wait_delivered(self, timeout: float) -> bool:
        """Wait (up to ``timeout``) for the webhooks of finished requests to be delivered."""
        pending = [task for task in self._background if not task.done()]
        if not pending:
            return True
        _, late = await asyncio.wait(pending, timeout=timeout)
        return not late

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


def stopped_by_shutdown(outcome: Outcome) -> bool:
    """The request was refused or stopped because this replica is shutting down."""
    return outcome.body.get("error_type") == SHUTTING_DOWN


def outcome_log(outcome: Outcome) -> dict[str, str]:
    if outcome.failed:
        return log_line(f"failed: {outcome.body.get('error_type')}", "ERROR")
    return log_line("completed")


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
