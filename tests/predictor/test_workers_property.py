"""The worker pool's invariant under random interleavings (hypothesis).

Whatever is cancelled, wherever — before the slot, during the acquire, while running, while the
slot is handed back — and whatever times out or shuts down: no slot is ever counted twice (free
plus running never exceeds the pool size), and once everything has ended every slot is free again
and an open pool serves the next request at once.
"""

from __future__ import annotations

import asyncio
import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from predictor.errors import RequestFailed
from predictor.workers import CancelToken, Deadline, WorkerPool

#: one step of the script: (op, a, b)
#: submit(held?, short deadline?), cancel(which of the latest tasks, loop spins first),
#: release(job index),
#: spin(loop iterations), close, stop
OPS = st.one_of(
    st.tuples(st.just("submit"), st.booleans(), st.booleans()),
    st.tuples(st.just("cancel"), st.integers(0, 3), st.integers(0, 4)),
    st.tuples(st.just("hangup"), st.integers(0, 3), st.integers(0, 4)),
    st.tuples(st.just("release"), st.integers(0, 30), st.just(0)),
    st.tuples(st.just("spin"), st.integers(0, 5), st.just(0)),
    st.tuples(st.just("close"), st.just(0), st.just(0)),
    st.tuples(st.just("stop"), st.just(0), st.just(0)),
)


def held_job(release: threading.Event):
    """A job that runs until the script releases it (or its request is given up)."""

    def job(token: CancelToken) -> str:
        while not release.wait(0.002):
            token.check()
        return "held"

    return job


def assert_never_counted_twice(pool: WorkerPool) -> None:
    free = pool.free_slots()
    assert 0 <= free <= pool.max_inflight
    assert pool.inflight >= 0 and pool.waiting >= 0
    assert free + pool.inflight <= pool.max_inflight, (free, pool.inflight)


async def run_script(size: int, max_waiting: int, script: list[tuple]) -> None:
    abandoned: list[str] = []
    pool = WorkerPool(size, max_waiting, on_abandoned=lambda reason, *_: abandoned.append(reason))
    tasks: list[asyncio.Task] = []
    releases: list[threading.Event] = []
    started: list[int] = []

    def counted(job):
        def run(token: CancelToken):
            started.append(1)
            return job(token)

        return run

    for op, a, b in script:
        if op == "submit":
            release = threading.Event()
            releases.append(release)
            job = held_job(release) if a else (lambda token: "quick")
            deadline = Deadline.after(0.02 if b else 30)
            tasks.append(asyncio.ensure_future(pool.run(counted(job), deadline)))
        elif op in ("cancel", "hangup") and tasks:
            for _ in range(b):
                await asyncio.sleep(0)
            tasks[-1 - a % len(tasks)].cancel("client_disconnected" if op == "hangup" else None)
        elif op == "release" and releases:
            releases[a % len(releases)].set()
        elif op == "spin":
            for _ in range(a):
                await asyncio.sleep(0)
        elif op == "close":
            pool.close("closing")
        elif op == "stop":
            pool.stop("stopping")
        assert_never_counted_twice(pool)

    for release in releases:
        release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:  # every request ends in a result or an answer, nothing else
        if isinstance(outcome, RequestFailed):
            assert outcome.status_code in (429, 503, 504), outcome
        elif isinstance(outcome, BaseException):
            assert isinstance(outcome, asyncio.CancelledError), repr(outcome)
        else:
            assert outcome in ("held", "quick")

    for _ in range(400):  # the given-up jobs' threads end at their next check
        if (pool.free_slots(), pool.inflight, pool.waiting) == (size, 0, 0):
            break
        await asyncio.sleep(0.005)
    assert (pool.free_slots(), pool.inflight, pool.waiting) == (size, 0, 0)
    assert len(abandoned) <= len(started)  # each given-up job is reported at most once
    if not pool.closing:
        assert await pool.run(lambda token: "next", Deadline.after(2)) == "next"
    pool.shutdown()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(
    size=st.integers(1, 3),
    max_waiting=st.integers(0, 4),
    script=st.lists(OPS, min_size=1, max_size=25),
)
def test_slots_return_whatever_is_cancelled_where(size: int, max_waiting: int, script) -> None:
    asyncio.run(run_script(size, max_waiting, script))
