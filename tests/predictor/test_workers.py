"""Admission, timeouts and cancellation of engine jobs."""

from __future__ import annotations

import asyncio
import contextlib
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


def _ticking(ticks: list[int], total: int = 400):
    """A job that reports progress every 10 ms (as an engine does per tile) and checks its token."""

    def job(token: CancelToken) -> str:
        for i in range(total):
            token.check(i, total)
            ticks.append(i)
            time.sleep(0.01)
        return "finished"

    return job


def test_closing_refuses_new_and_waiting_work_and_lets_running_work_finish() -> None:
    async def main() -> None:
        pool = WorkerPool(max_inflight=1, max_waiting=2)
        release = threading.Event()
        running = asyncio.create_task(pool.run(lambda t: release.wait(5), Deadline.after(5)))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(pool.run(lambda t: "never", Deadline.after(5)))
        await asyncio.sleep(0.05)
        pool.close("closing for the test")
        with pytest.raises(RequestFailed) as err:
            await waiting
        assert (err.value.status_code, err.value.error_type) == (503, "server_shutting_down")
        assert err.value.detail == "closing for the test"
        assert int(err.value.headers()["Retry-After"]) >= 1
        with pytest.raises(RequestFailed) as err:
            pool.admit()
        assert err.value.error_type == "server_shutting_down"
        assert "accepts no new requests" in err.value.detail
        release.set()
        assert await running is True  # the running job keeps its grace
        assert await pool.wait_idle(5)
        pool.shutdown()

    asyncio.run(main())


def test_stopping_stops_running_jobs_and_reports_what_they_cost_and_saved() -> None:
    async def main() -> None:
        abandoned: list[tuple[str, float, float]] = []
        pool = WorkerPool(1, 1, on_abandoned=lambda *args: abandoned.append(args))
        ticks: list[int] = []
        running = asyncio.create_task(pool.run(_ticking(ticks), Deadline.after(30)))
        while len(ticks) < 5:
            await asyncio.sleep(0.01)
        pool.stop("stopped for the test")
        with pytest.raises(RequestFailed) as err:
            await running
        assert (err.value.status_code, err.value.detail) == (503, "stopped for the test")
        assert await pool.wait_idle(5)
        assert len(ticks) < 400
        ((reason, wasted, saved),) = abandoned
        assert reason == "shutdown"
        assert wasted >= 0 and saved > 0
        pool.shutdown()

    asyncio.run(main())


def test_a_cancelled_request_names_its_reason() -> None:
    async def main() -> None:
        abandoned: list[tuple[str, float, float]] = []
        pool = WorkerPool(1, 1, on_abandoned=lambda *args: abandoned.append(args))
        ticks: list[int] = []
        running = asyncio.create_task(pool.run(_ticking(ticks), Deadline.after(30)))
        while len(ticks) < 5:
            await asyncio.sleep(0.01)
        running.cancel("client_disconnected")
        with pytest.raises(asyncio.CancelledError):
            await running
        assert await pool.wait_idle(5)
        assert len(ticks) < 400
        assert [reason for reason, _, _ in abandoned] == ["client_disconnected"]
        pool.shutdown()

    asyncio.run(main())


def test_request_cancelled_as_its_slot_is_granted_gives_the_slot_back() -> None:
    """The wedge: cancelled in the loop iteration its acquire completed, a request kept the slot."""

    async def main() -> None:
        for spins in range(6):  # cancel at every point around the grant
            pool = WorkerPool(1, 16)
            task = asyncio.ensure_future(pool.run(lambda token: "done", Deadline.after(30)))
            for _ in range(spins):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for _ in range(100):
                if pool.slots._value == 1 and pool.inflight == 0:
                    break
                await asyncio.sleep(0.01)
            assert (pool.slots._value, pool.inflight, pool.waiting) == (1, 0, 0), spins
            assert await pool.run(lambda token: "next", Deadline.after(1)) == "next"
            pool.shutdown()

    asyncio.run(main())
