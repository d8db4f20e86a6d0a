"""Bounded, cancellable execution of engine jobs off the event loop.

At most ``max_inflight`` jobs run at once on their own threads, at most ``max_waiting`` wait for a
slot; past that the caller gets a 429 with a ``Retry-After`` estimated from recent job times. A job
keeps its slot until its thread really ends (a timed-out request does not free capacity that is
still busy), and a timed-out or abandoned job is asked to stop at its next progress tick.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from predictor.errors import queue_full, timed_out

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
    """Shared between the event loop (which cancels) and the worker thread (which checks)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise JobCancelled()


class Admission:
    """A place in the pool's waiting line; released once (when the job starts, or on failure)."""

    def __init__(self, pool: WorkerPool) -> None:
        self._pool: WorkerPool | None = pool

    def release(self) -> None:
        if self._pool is not None:
            self._pool.waiting -= 1
            self._pool = None


class WorkerPool:
    def __init__(self, max_inflight: int, max_waiting: int, initial_job_s: float = 5.0) -> None:
        if max_inflight < 1 or max_waiting < 0:
            raise ValueError("max_inflight must be ≥ 1 and max_waiting ≥ 0")
        self.max_inflight = max_inflight
        self.max_waiting = max_waiting
        self._executor = ThreadPoolExecutor(max_inflight, thread_name_prefix="engine")
        self._slots: asyncio.Semaphore | None = None
        self.inflight = 0
        self.waiting = 0
        self._mean_job_s = initial_job_s

    @property
    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:  # created lazily, inside the serving event loop
            self._slots = asyncio.Semaphore(self.max_inflight)
        return self._slots

    @property
    def mean_job_s(self) -> float:
        """Recent jobs' mean duration (an exponential average)."""
        return self._mean_job_s

    def idle_slots(self) -> int:
        """Workers that would start a new job at once (none are waited for)."""
        return self.max_inflight - self.inflight - self.waiting

    def retry_after_s(self) -> float:
        """Rough time until a new request would start: the queue ahead, at the recent job time."""
        return self._mean_job_s * (self.waiting / self.max_inflight + 1)

    def check_room(self) -> None:
        """Fail fast when a new request could neither start nor wait."""
        if self.waiting >= self.max_waiting + (self.max_inflight - self.inflight):
            raise queue_full(self.retry_after_s())

    def admit(self) -> Admission:
        """Reserve a place (429 when there is none) before fetching anything.

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
        """Run ``job(token)`` on a worker thread, answering by ``deadline``."""
        admission = admission or self.admit()
        try:
            await asyncio.wait_for(self.slots.acquire(), timeout=deadline.remaining())
        except TimeoutError:
            raise deadline.expired_error() from None
        finally:
            admission.release()
        self.inflight += 1
        token = CancelToken()
        started = time.monotonic()
        future = asyncio.get_running_loop().run_in_executor(self._executor, job, token)
        future.add_done_callback(lambda done: self._release(started, done))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=deadline.remaining())
        except TimeoutError:
            token.cancel()
            raise deadline.expired_error() from None
        except asyncio.CancelledError:
            token.cancel()
            raise

    def _release(self, started: float, done: asyncio.Future) -> None:
        if not done.cancelled():
            done.exception()  # retrieved here: an abandoned job's error was already answered
        self.inflight -= 1
        self._mean_job_s = 0.8 * self._mean_job_s + 0.2 * (time.monotonic() - started)
        self.slots.release()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
