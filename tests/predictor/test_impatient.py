"""Hundreds of impatient clients and instant cancels over HTTP leave no worker slot held.

Clients that send a whole sync request and hang up 0–30 ms later, and queue submits cancelled at
once, used to wedge a fresh one-worker server within a few dozen requests (a slot granted in the
very loop iteration its request was given up was never handed back).
"""

from __future__ import annotations

import asyncio

import pytest

from predictor.dev.impatient import drive
from tests.conftest import start_server, stop_server


@pytest.fixture(scope="module")
def one_worker_server(tmp_path_factory):
    srv = start_server(
        tmp_path_factory.mktemp("impatient"), "--max-inflight", "1", "--max-waiting", "64"
    )
    yield srv
    stop_server(srv)


def test_impatient_clients_and_instant_cancels_wedge_nothing(one_worker_server) -> None:
    result = asyncio.run(
        drive(one_worker_server.url, 300, 300, concurrency=48, seed=1, next_timeout=30)
    )
    assert sum(result.answers.values()) == 300
    assert result.wedged == 0, result
    assert (result.slots, result.slots_free, result.inflight) == (1, 1, 0)
    assert result.next_status == 200, result
    one_worker_server.assert_alive()
