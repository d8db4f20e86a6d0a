"""Bounded, cancellable execution of engine jobs off the event loop.

At most ``max_inflight`` jobs run at once on their own threads, at most ``max_waiting`` wait for a
slot; past that the caller gets a 429 with a ``Retry-After`` estimated from recent job times. A job
keeps its slot until its thread really ends (a timed-out request does not free capacity that is
still busy), and a timed-out or abandoned job is asked to stop at its next progress tick; the
engine seconds it still spent, and those it saved, are reported (``on_abandoned``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from predictor.errors import SHUTTING_DOWN, RequestFailed, queue_full, shutting_down, timed_out

T = TypeVar("T")


@dataclass(frozen=True)
class Deadline:
    """When a request must be answered by, and the budget it was given (for the 504 message)."""

    at: float
    budget_s: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds, seconds)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expired_error(self) -> Exception:
        return timed_out(self.budget_s)


class JobCancelled(Exception):
    """Raised inside a job (from its progress callback) once it has been cancelled."""


class CancelToken:
    """Shared between the event loop (which cancels) and the worker thread (which checks).

    It also keeps the job's last progress, so a stopped job's remaining work can be estimated.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.fraction_done = 0.0

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self, done: int = 0, total: int = 0) -> None:
        if total > 0:
            self.fraction_done = done / total
        if self._event.is_set():
            raise JobCancelled()


#: abandon reasons (the label of the abandoned/saved engine-seconds counters)
TIMEOUT, CANCELLED, SHUTDOWN = "timeout", "cancelled", "shutdown"
#: ``on_abandoned(reason, wasted_s, saved_s)``: a given-up job has ended
AbandonedFn = Callable[[str, float, float], None]


@dataclass(eq=False)
class _Running:
    """A job on a worker thread, and when (and why) its request gave it up."""

    token: CancelToken
    started: float
    abandoned_at: float | None = None
    reason: str = CANCELLED
    fraction_at_abandon: float = 0.0

    def abandon(self, reason: str) -> None:
        if self.abandoned_at is None:
            self.abandoned_at = time.monotonic()
            self.reason = reason
            self.fraction_at_abandon = self.token.fraction_done
        self.token.cancel()


class Admission:
    """A place in the pool's waiting line; released once (when the job starts, or on failure)."""

    def __init__(self, pool: WorkerPool) -> None:
        self._pool: WorkerPool | None = pool

    def release(self) -> None:
        if self._pool is not None:
            self._pool.waiting -= 1
            self._pool = None


class WorkerPool:
    """The engine's workers and the line in front of them, shared by every route and the queue.

    Shutting down is two steps: :meth:`close` refuses new work and fails what has not started
    (it can retry elsewhere at once), :meth:`stop` (after the grace period) stops what runs.
    """

    def __init__(
        self,
        max_inflight: int,
        max_waiting: int,
        initial_job_s: float = 5.0,
        on_abandoned: AbandonedFn | None = None,
    ) -> None:
        if max_inflight < 1 or max_waiting < 0:
            raise ValueError("max_inflight must be ≥ 1 and max_waiting ≥ 0")
        self.max_inflight = max_inflight
        self.max_waiting = max_waiting
        self.on_abandoned = on_abandoned
        self._executor = ThreadPoolExecutor(max_inflight, thread_name_prefix="engine")
        self._slots: asyncio.Semaphore | None = None
        self.inflight = 0
        self.waiting = 0
        self._mean_job_s = initial_job_s
        #: set by close() and stop(): the error waiting (then running) requests end in
        self._closed_error: Exception | None = None
        self._stopped_error: Exception | None = None
        self._closed: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:  # created lazily, inside the serving event loop
            self._slots = asyncio.Semaphore(self.max_inflight)
            self._closed, self._stopped = asyncio.Event(), asyncio.Event()
        return self._slots

    @property
    def closing(self) -> bool:
        """Shutting down: no new work is admitted."""
        return self._closed_error is not None

    @property
    def mean_job_s(self) -> float:
        """Recent jobs' mean duration (an exponential average)."""
        return self._mean_job_s

    def free_slots(self) -> int:
        """Slots no job holds (the semaphore's own count): with nothing running, the pool size.

        A slot held with no job running is a leak; the ``UpscalerWorkerSlotLeak`` alert watches
        ``max_inflight - free_slots() - inflight``.
        """
        return self.max_inflight if self._slots is None else self._slots._value

    def idle_slots(self) -> int:
        """Workers that would start a new job at once (none are waited for)."""
        return self.max_inflight - self.inflight - self.waiting

    def retry_after_s(self) -> float:
        """Rough time until a new request would start: the queue ahead, at the recent job time."""
        return self._mean_job_s * (self.waiting / self.max_inflight + 1)

    def check_open(self) -> None:
        """503 (``Retry-After``) once shutting down: another replica should take the request."""
        if self._closed_error is not None:
            raise shutting_down(
                "The server is shutting down and accepts no new requests; retry the request."
            )

    def check_room(self) -> None:
        """Fail fast when a new request could neither start nor wait."""
        self.check_open()
        if self.waiting >= self.max_waiting + (self.max_inflight - self.inflight):
            raise queue_full(self.retry_after_s())

    def admit(self) -> Admission:
        """Reserve a place (429 when there is none, 503 when shutting down) before fetching
        anything.

        The place counts as waiting from now until the job gets a slot or the admission is
        released, so requests still downloading their input are not over-admitted.
        """
        self.check_room()
        self.waiting += 1
        return Admission(self)

    async def run(
        self,
        job: Callable[[CancelToken], T],
        deadline: Deadline,
        admission: Admission | None = None,
    ) -> T:
        """Run ``job(token)`` on a worker thread, answering by ``deadline``.

        A request given up (its deadline, its task cancelled, the pool stopped) stops its job at
        the next progress tick; the cancelling task may name the reason (``task.cancel(reason)``).
        """
        admission = admission or self.admit()
        try:
            await self._take_slot(deadline)
        finally:
            admission.release()
        self.inflight += 1
        running = _Running(CancelToken(), time.monotonic())
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, job, running.token)
        except BaseException:  # the executor is shut down: nothing will run, the slot goes back
            self.inflight -= 1
            self.slots.release()
            raise
        future.add_done_callback(lambda done: self._release(running, done))
        try:
            return await self._race(
                asyncio.shield(future), deadline, self._stopped, "_stopped_error"
            )
        except asyncio.CancelledError as exc:
            running.abandon(str(exc.args[0]) if exc.args and exc.args[0] else CANCELLED)
            raise
        except RequestFailed as exc:
            running.abandon(SHUTDOWN if exc.error_type == SHUTTING_DOWN else TIMEOUT)
            raise

    async def _take_slot(self, deadline: Deadline) -> None:
        """Wait for a free worker; a request given up meanwhile never keeps one.

        The acquire may complete in the very loop iteration in which the request is cancelled,
        times out or the pool closes: the waiting side then never sees the slot it got, so the
        acquire's own completion hands it back. Without this a hung-up client leaked a slot.
        """
        acquire = asyncio.ensure_future(self.slots.acquire())
        try:
            await self._race(acquire, deadline, self._closed, "_closed_error")
        except BaseException:  # (acquire is cancelled: a grant not yet seen is undone by asyncio)
            acquire.add_done_callback(self._return_unused_slot)
            raise

    def _return_unused_slot(self, acquire: asyncio.Future) -> None:
        if not acquire.cancelled() and acquire.exception() is None:
            self.slots.release()

    async def _race(
        self, task: asyncio.Future[T], deadline: Deadline, abort: asyncio.Event | None, error: str
    ) -> T:
        """``task``'s result, or the deadline's 504, or ``self.<error>`` once ``abort`` is set
        (the pool closing or stopping). ``task`` is cancelled whenever its result is not returned.
        """
        if getattr(self, error) is not None:
            task.cancel()
            raise getattr(self, error)
        assert abort is not None
        aborted = asyncio.ensure_future(abort.wait())
        try:
            done, _ = await asyncio.wait(
                {task, aborted}, timeout=deadline.remaining(), return_when=FIRST_COMPLETED
            )
        except BaseException:
            task.cancel()
            raise
        finally:
            aborted.cancel()
        if task in done:
            return task.result()
        task.cancel()
        if aborted in done:
            raise getattr(self, error)
        raise deadline.expired_error()

    def _release(self, running: _Running, done: asyncio.Future) -> None:
        if not done.cancelled():
            done.exception()  # retrieved here: an abandoned job's error was already answered
        ended = time.monotonic()
        self.inflight -= 1
        self._mean_job_s = 0.8 * self._mean_job_s + 0.2 * (ended - running.started)
        self.slots.release()
        if running.abandoned_at is not None and self.on_abandoned is not None:
            wasted = ended - running.abandoned_at
            saved = 0.0
            if 0 < running.fraction_at_abandon < 1:  # the job's full length, from its progress
                ran = running.abandoned_at - running.started
                saved = max(0.0, ran / running.fraction_at_abandon - (ended - running.started))
            self.on_abandoned(running.reason, wasted, saved)

    def close(self, detail: str) -> None:
        """Admit nothing more; requests not yet on a worker end now with a 503 (``detail``)."""
        if self._closed_error is None:
            self._closed_error = shutting_down(detail)
            self.slots  # noqa: B018 - the events exist from here on
            assert self._closed is not None
            self._closed.set()

    def stop(self, detail: str) -> None:
        """Stop the running jobs (at their next step or tile); their requests get a 503."""
        self.close(detail)
        if self._stopped_error is None:
            self._stopped_error = shutting_down(detail)
            assert self._stopped is not None
            self._stopped.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True once no job runs or waits, False if that takes longer than ``timeout``."""
        until = time.monotonic() + timeout
        while self.inflight or self.waiting:
            if time.monotonic() >= until:
                return False
            await asyncio.sleep(0.05)
        return True

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
