"""Several predictor processes sharing one real redis-server, and outputs in S3 (moto's server).

Any replica answers for any request; a replica killed mid-request loses nothing; a burst spread
over two replicas ends with every request accounted for.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    ServerProcess,
    data_uri,
    encode,
    free_port,
    photo_crop,
    start_server,
    stop_server,
)

SUBMIT = "/queue/fal-ai/chrono-edit-lora-gallery/upscaler"
REQUESTS = "/queue/fal-ai/chrono-edit-lora-gallery/requests"


def replica(tmp: Path, redis_url: str, prefix: str, *flags: str) -> ServerProcess:
    return start_server(
        tmp,
        "--redis-url",
        redis_url,
        "--redis-prefix",
        prefix,
        "--output-store",
        "redis",
        "--queue-lease",
        "2",
        "--tile-size",
        "64",
        "--max-inflight",
        "1",
        *flags,
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory, redis_url):
    tmp = tmp_path_factory.mktemp("pair")
    a = replica(tmp, redis_url, "pair", "--default-output-format", "png")
    b = replica(tmp, redis_url, "pair", "--default-output-format", "png")
    yield a, b
    stop_server(a)
    stop_server(b)


def submit(srv: ServerProcess, payload: dict) -> dict:
    answer = httpx.post(f"{srv.url}{SUBMIT}", json=payload, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def status(srv: ServerProcess, request_id: str) -> dict:
    return httpx.get(f"{srv.url}{REQUESTS}/{request_id}/status?logs=1", timeout=10).json()


def wait_status(srv: ServerProcess, request_id: str, wanted: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while (found := status(srv, request_id))["status"] != wanted:
        assert time.monotonic() < deadline, found
        time.sleep(0.05)
    return found


def wait_logged(srv: ServerProcess, request_id: str, prefix: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(line["message"].startswith(prefix) for line in status(srv, request_id)["logs"]):
        assert time.monotonic() < deadline, status(srv, request_id)
        time.sleep(0.05)


def small(**fields) -> dict:
    return {"image_url": data_uri(encode(photo_crop(48, 32))), **fields}


def long(side: int = 960) -> dict:
    """Many 64 px tiles: seconds of engine work even on the bf16 path, cancellable between
    tiles."""
    return {"image_url": data_uri(encode(photo_crop(side, side))), "sync_mode": True}


def messages(found: dict) -> list[str]:
    return [line["message"] for line in found["logs"]]


def test_replicas_answer_for_each_other(pair) -> None:
    a, b = pair
    handle = submit(a, small(seed=3))
    found = wait_status(b, handle["request_id"], "COMPLETED")
    assert "completed" in messages(found)
    result = httpx.get(f"{b.url}{REQUESTS}/{handle['request_id']}", timeout=10)
    assert result.status_code == 200
    body = result.json()
    assert body["seed"] == 3
    # URL-mode output in the shared store: either replica serves the file
    file_name = body["images"][0]["file_name"]
    for srv in (a, b):
        image = httpx.get(f"{srv.url}/files/{file_name}", timeout=10)
        assert image.status_code == 200
        # left out of the request: the deployment's default, applied where the request ran
        assert image.headers["content-type"] == "image/png"


def test_cancel_across_replicas(pair) -> None:
    a, b = pair
    running = [submit(a, long()), submit(b, long())]
    for handle in running:  # one on each replica, each past its first tile
        wait_logged(a, handle["request_id"], "tile ")
    queued = submit(a, small())
    assert status(b, queued["request_id"])["status"] == "IN_QUEUE"
    for srv, handle in ((b, queued), (a, running[0]), (a, running[1])):
        answer = httpx.put(f"{srv.url}{REQUESTS}/{handle['request_id']}/cancel", timeout=10)
        assert answer.json() == {"status": "CANCELLATION_REQUESTED"}
    for handle in (queued, *running):
        found = wait_status(b, handle["request_id"], "COMPLETED")
        assert found["error_type"] == "request_cancelled", found
    for handle in running:
        tiles = [m for m in messages(status(a, handle["request_id"])) if m.startswith("tile ")]
        total = int(tiles[0].split("/")[1])
        assert len(tiles) < total, "a running request stops at its next tile, on any replica"
    again = httpx.put(f"{b.url}{REQUESTS}/{queued['request_id']}/cancel", timeout=10)
    assert again.status_code == 400


def test_burst_over_two_replicas_loses_nothing(pair) -> None:
    a, b = pair
    handles = [submit((a, b)[i % 2], small(seed=i)) for i in range(12)]
    for i, handle in enumerate(handles):
        found = wait_status((b, a)[i % 2], handle["request_id"], "COMPLETED")
        assert "error" not in found, found
        result = httpx.get(f"{a.url}{REQUESTS}/{handle['request_id']}", timeout=10).json()
        assert result["seed"] == i
    ran_on = [
        {line["request_id"] for line in srv.request_lines() if line["route"] == "queue"}
        for srv in (a, b)
    ]
    ids = {handle["request_id"] for handle in handles}
    assert ids <= ran_on[0] | ran_on[1]
    assert not ran_on[0] & ran_on[1] & ids, "each request ran once"
    assert ran_on[0] & ids and ran_on[1] & ids, "both replicas worked the shared queue"


def test_a_killed_replica_loses_nothing(tmp_path, redis_url) -> None:
    doomed = replica(tmp_path, redis_url, "kill", "--max-queued", "1")
    try:
        handle = submit(doomed, long(1024))  # 256 tiles: still running when it is killed
        wait_logged(doomed, handle["request_id"], "tile ")
        waiting = submit(doomed, small())  # the shared queue holds one
        full = httpx.post(f"{doomed.url}{SUBMIT}", json=small(), timeout=30)
        assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
        os.kill(doomed.process.pid, signal.SIGKILL)
        doomed.process.wait(timeout=10)
    finally:
        stop_server(doomed)
    survivor = replica(tmp_path, redis_url, "kill")
    try:
        found = wait_status(survivor, handle["request_id"], "COMPLETED")
        assert "error" not in found, found
        log = messages(found)
        assert "requeued: the replica running it stopped" in log
        assert "attempt 2 of 3" in log
        result = httpx.get(f"{survivor.url}{REQUESTS}/{handle['request_id']}", timeout=10)
        assert result.json()["images"][0]["width"] == 2048
        assert "error" not in wait_status(survivor, waiting["request_id"], "COMPLETED")
    finally:
        stop_server(survivor)


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_outputs_in_s3_are_fetched_from_the_bucket(tmp_path, s3_endpoint, monkeypatch) -> None:
    import boto3

    credentials = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="outputs")
    srv = start_server(
        tmp_path, "--output-store", "s3://outputs/upscaled", "--s3-endpoint-url", s3_endpoint
    )
    try:
        answer = srv.post(small(output_format="png"))
        assert answer.status_code == 200, answer.text
        image = answer.json()["images"][0]
        assert image["url"].startswith(f"{s3_endpoint}/outputs/upscaled/")
        assert "X-Amz-Signature=" in image["url"]  # presigned
        download = httpx.get(image["url"], timeout=10)
        assert download.status_code == 200
        assert download.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(download.content) == image["file_size"]
    finally:
        stop_server(srv)


def test_outputs_are_shared_with_redis_url_alone(tmp_path, redis_url) -> None:
    """Without --output-store, --redis-url keeps outputs in Redis too: any replica serves them."""
    a, b = (
        start_server(tmp_path, "--redis-url", redis_url, "--redis-prefix", "alone")
        for _ in range(2)
    )
    try:
        for srv in (a, b):
            info = httpx.get(f"{srv.url}/info", timeout=10).json()
            assert (info["queue"], info["output_store"]) == ("redis", "redis"), info
            assert "serves one replica only" not in srv.log()
        answer = a.post(small(output_format="png"))
        assert answer.status_code == 200, answer.text
        image = answer.json()["images"][0]
        download = httpx.get(f"{b.url}/files/{image['file_name']}", timeout=10)
        assert download.status_code == 200
        assert len(download.content) == image["file_size"]
    finally:
        stop_server(a)
        stop_server(b)


def test_a_stopping_replica_hands_its_running_request_back(tmp_path, redis_url) -> None:
    # no grace: the running request is handed back at once (with a grace, only if unfinished)
    leaving = replica(tmp_path, redis_url, "term", "--shutdown-grace", "0")
    try:
        handle = submit(leaving, long(768))
        wait_logged(leaving, handle["request_id"], "tile ")
        leaving.process.send_signal(signal.SIGTERM)
        assert leaving.process.wait(timeout=30) is not None
    finally:
        stop_server(leaving)
    # no other replica runs yet: the request waits in the queue, its lease given up at once
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    job = client.hgetall(f"term:job:{handle['request_id']}")
    assert job["status"] == "IN_QUEUE", job
    assert client.lrange("term:waiting", 0, -1) == [handle["request_id"]]
    logs = client.lrange(f"term:logs:{handle['request_id']}", 0, -1)
    assert "handed back: the replica running it is stopping" in logs[-1]
    successor = replica(tmp_path, redis_url, "term")
    try:
        found = wait_status(successor, handle["request_id"], "COMPLETED")
        assert "error" not in found, found
    finally:
        stop_server(successor)
