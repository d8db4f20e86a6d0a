"""The in-process queue: requests wait in this process's worker pool (one replica, ``make run``)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from predictor.queue.base import (
    CANCELLED_OUTCOME,
    MAX_LOGS,
    CancelOutcome,
    LogLineObserver,
    Outcome,
    QueueBackend,
    QueueState,
    Status,
    log_line,
    outcome_log,
    run_job,
)
from predictor.schema import UpscaleRequest
from predictor.workers import Admission


@dataclass
class _Entry:
    """One request of a :class:`LocalQueue`: what its status and result need. Its input is not
    kept here but only by the task running it, so a finished request holds its output only."""

    request_id: str
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

    async def _enqueue(
        self, request_id: str, request: UpscaleRequest, base_url: str, webhook_url: str | None
    ) -> QueueState:
        self._forget_expired()
        admission = self.upscaler.pool.admit()
        entry = _Entry(request_id, base_url, webhook_url)
        entry.add_log(log_line("queued"))
        self._entries[request_id] = entry
        # a fresh context: the submit's HTTP record must not become this job's record
        entry.task = asyncio.get_running_loop().create_task(
            self._run(entry, request, admission), context=contextvars.Context()
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
        """Requests still unfinished (the server drains the pool first, so normally none) end
        as cancelled; none is left without a status and its webhook."""
        for entry in self._entries.values():
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for request_id, entry in list(self._entries.items()):
            if entry.finished_at is not None and now - entry.finished_at > self.result_ttl_s:
                del self._entries[request_id]

    async def _run(self, entry: _Entry, request: UpscaleRequest, admission: Admission) -> None:
        observer = _LocalObserver(entry, asyncio.get_running_loop())
        try:
            outcome = await run_job(
                self.upscaler,
                entry.request_id,
                request,
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
