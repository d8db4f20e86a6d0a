"""Admission, timeouts and cancellation of engine jobs."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from predictor.errors import RequestFailed
from predictor.workers import CancelToken, Deadline, JobCancelled, WorkerPool


def test_runs_job_off_the_event_loop() -> None:
    async def main() -> None:
        pool = WorkerPool(1, 1)
        loop_thread = threading.get_ident()
        worker_thread = await pool.run(lambda token: threading.get_ident(), Deadline.after(5))
        assert worker_thread != loop_thread
        pool.shutdown()

    asyncio.run(main())


def test_queue_full_gives_429_with_retry_after() -> None:
    async def main() -> None:
        pool = WorkerPool(max_inflight=1, max_waiting=1)
        release = threading.Event()
        first = asyncio.create_task(pool.run(lambda t: release.wait(5), Deadline.after(5)))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(pool.run(lambda t: "second", Deadline.after(5)))
        await asyncio.sleep(0.05)
        assert (pool.inflight, pool.waiting) == (1, 1)
        with pytest.raises(RequestFailed) as err:
            await pool.run(lambda t: "third", Deadline.after(5))
        assert err.value.status_code == 429
        assert int(err.value.headers()["Retry-After"]) >= 1
        release.set()
        assert await first is True
        assert await second == "second"
        pool.shutdown()

    asyncio.run(main())


def test_timeout_cancels_job_and_keeps_slot_until_thread_ends() -> None:
    async def main() -> None:
        pool = WorkerPool(max_inflight=1, max_waiting=0)
        ticks: list[int] = []

        def slow(token: CancelToken) -> None:
            for i in range(200):
                token.check()
                ticks.append(i)
                time.sleep(0.01)

        with pytest.raises(RequestFailed) as err:
            await pool.run(slow, Deadline.after(0.2))
        assert err.value.status_code == 504 and err.value.error_type == "request_timeout"
        assert "0.2 s" in err.value.detail
        # the slot is released only once the job saw the cancellation and stopped
        for _ in range(100):
            if pool.inflight == 0:
                break
            await asyncio.sleep(0.01)
        assert pool.inflight == 0
        assert len(ticks) < 100
        assert await pool.run(lambda t: "next", Deadline.after(5)) == "next"
        pool.shutdown()

    asyncio.run(main())


def test_waiting_request_times_out_in_queue() -> None:
    async def main() -> None:
        pool = WorkerPool(max_inflight=1, max_waiting=1)
        release = threading.Event()
        first = asyncio.create_task(pool.run(lambda t: release.wait(5), Deadline.after(5)))
        await asyncio.sleep(0.05)
        with pytest.raises(RequestFailed) as err:
            await pool.run(lambda t: "late", Deadline.after(0.1))
        assert err.value.status_code == 504
        assert pool.waiting == 0
        release.set()
        await first
        pool.shutdown()

    asyncio.run(main())


def test_cancel_token() -> None:
    token = CancelToken()
    token.check()
    token.cancel()
    assert token.cancelled
    with pytest.raises(JobCancelled):
        token.check()
