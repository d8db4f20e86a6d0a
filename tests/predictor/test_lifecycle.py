"""Nothing wasted, nothing lost, on real server processes: a client that hangs up stops its job,
a KServe v1 request has one deadline, and SIGTERM ends every accepted request with a status.

Timings are compared with the abandoned work's own length (measured here), never with a fixed
number of seconds.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import data_uri, encode, photo_crop, start_server, stop_server
from tests.predictor.test_queue import SUBMIT, WebhookReceiver

FAL = "/fal-ai/chrono-edit-lora-gallery/upscaler"
V1 = "/v1/models/chrono-upscaler:predict"


def long_request(side: int = 896) -> dict:
    """Many 64 px tiles: seconds of engine work even on the bf16 path, cancellable between
    tiles, so a client hanging up half a second after admission is still waiting for it."""
    return {"image_url": data_uri(encode(photo_crop(side, side))), "sync_mode": True}


def wait_for_lines(srv, count: int, timeout_s: float = 30) -> list[dict]:
    """The server's request log once it holds ``count`` lines."""
    deadline = time.monotonic() + timeout_s
    while len(lines := srv.request_lines()) < count:
        assert time.monotonic() < deadline, lines
        time.sleep(0.1)
    return lines


def tiny_request() -> dict:
    return {"image_url": data_uri(encode(photo_crop(16, 16))), "sync_mode": True}


def metric(srv, name: str, **labels: str) -> float:
    """One sample of ``name`` from the server's /metrics (0 when absent)."""
    text = httpx.get(f"{srv.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def send_and_hang_up(
    srv, payload: dict, after_admitted: int, linger_s: float, path: str = FAL
) -> None:
    """POST ``payload`` on a raw socket, wait until the job runs, then close the connection."""
    parts = urlsplit(srv.url)
    body = json.dumps(payload).encode()
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        srv.wait_admitted(after_admitted)
        time.sleep(linger_s)


@pytest.fixture(scope="module")
def tiled_server(tmp_path_factory):
    """One worker, 64 px tiles: a job's progress ticks come often."""
    srv = start_server(
        tmp_path_factory.mktemp("lifecycle"), "--max-inflight", "1", "--tile-size", "64"
    )
    yield srv
    stop_server(srv)


def test_a_client_that_hangs_up_frees_the_worker(tiled_server) -> None:
    srv = tiled_server
    started = time.monotonic()
    full = srv.post(long_request(), timeout=300)
    full_s = time.monotonic() - started
    assert full.status_code == 200, full.text

    send_and_hang_up(srv, long_request(), after_admitted=2, linger_s=0.5)
    started = time.monotonic()
    after = srv.post(tiny_request(), timeout=300)
    waited_s = time.monotonic() - started
    assert after.status_code == 200, after.text
    # the abandoned job stopped at its next tile instead of running to its end
    assert waited_s < full_s / 2, (waited_s, full_s)

    # full, hung-up, tiny: lines are written as handlers unwind, so the hung-up one may be last
    lines = wait_for_lines(srv, 3)
    assert sorted((line["status"], line["outcome"]) for line in lines) == [
        (200, "ok"),
        (200, "ok"),
        (499, "client_disconnected"),
    ], lines
    hung_up = next(line for line in lines if line["status"] == 499)
    assert hung_up["error_type"] == "client_disconnected"
    labels = {"engine": "sr", "reason": "client_disconnected"}
    assert metric(srv, "upscaler_requests_total", engine="sr", outcome="client_disconnected") == 1
    wasted = metric(srv, "upscaler_abandoned_engine_seconds_total", **labels)
    saved = metric(srv, "upscaler_saved_engine_seconds_total", **labels)
    assert 0 < wasted < full_s / 2, (wasted, full_s)
    assert saved > 0

    # KServe v1 alike: the hung-up request's job stops and the next request runs at once
    send_and_hang_up(srv, {"instances": [long_request()]}, 4, linger_s=0.5, path=V1)
    started = time.monotonic()
    assert srv.post(tiny_request(), timeout=300).status_code == 200
    assert time.monotonic() - started < full_s / 2
    # its log line is written when its handler unwinds, which may come after the next request's
    deadline = time.monotonic() + 30
    while not (v1_lines := [line for line in srv.request_lines() if line["route"] == V1]):
        assert time.monotonic() < deadline, "no request line for the hung-up v1 request"
        time.sleep(0.1)
    assert v1_lines[-1]["outcome"] == "client_disconnected", v1_lines[-1]


def test_a_v1_request_has_one_deadline_for_all_its_instances(tmp_path) -> None:
    srv = start_server(
        tmp_path, "--max-inflight", "1", "--tile-size", "64", "--request-timeout", "2"
    )
    try:
        started = time.monotonic()
        one = httpx.post(f"{srv.url}{V1}", json={"instances": [long_request(192)]}, timeout=300)
        one_s = time.monotonic() - started
        assert one.status_code == 200, one.text
        instances = 6 * max(1, round(2 / max(one_s, 0.1)))  # together well past the deadline
        started = time.monotonic()
        many = httpx.post(
            f"{srv.url}{V1}", json={"instances": [long_request(192)] * instances}, timeout=300
        )
        many_s = time.monotonic() - started
        assert many.status_code == 504, many.text
        assert many.json()["error_type"] == "request_timeout"
        assert many_s < instances * one_s / 2, (many_s, instances, one_s)
        srv.assert_alive()
    finally:
        stop_server(srv)


def test_sigterm_ends_running_and_waiting_queued_requests_with_webhooks(tmp_path) -> None:
    grace = 1.0
    srv = start_server(
        tmp_path,
        "--allow-private-urls",
        "--max-inflight",
        "1",
        "--tile-size",
        "64",
        "--shutdown-grace",
        str(grace),
        "--webhook-backoff",
        "0.1",
    )
    receiver = WebhookReceiver()
    try:
        handles = []
        for payload in (long_request(), tiny_request()):  # one runs, one waits
            answer = httpx.post(
                f"{srv.url}{SUBMIT}",
                json=payload,
                params={"fal_webhook": receiver.url},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            handles.append(answer.json())
        srv.wait_admitted(1)
        signalled = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        late = httpx.post(f"{srv.url}{SUBMIT}", json=tiny_request(), timeout=30)
        assert late.status_code == 503, late.text
        assert late.json()["error_type"] == "server_shutting_down"
        assert int(late.headers["retry-after"]) >= 1
        srv.process.wait(timeout=60)
        exited_s = time.monotonic() - signalled
        # the grace, then one tile and the webhooks: far less than the running job's length
        assert exited_s < grace + 10, exited_s
        receiver.wait_for(2, timeout=1)
        bodies = {
            (hook := json.loads(body))["request_id"]: hook for _, body, _ in receiver.received
        }
        for handle in handles:
            hook = bodies[handle["request_id"]]
            assert hook["status"] == "ERROR", hook
            assert hook["payload"]["error_type"] == "server_shutting_down", hook
        running, waiting = (bodies[h["request_id"]]["payload"]["detail"] for h in handles)
        assert "before the request finished" in running and f"{grace:g} s" in running
        assert "had not started" in waiting
        outcomes = {line["request_id"]: line["status"] for line in srv.request_lines()}
        assert all(outcomes.get(h["request_id"]) == 503 for h in handles), outcomes
    finally:
        receiver.close()
        stop_server(srv)


def test_sigterm_gives_a_sync_request_past_the_grace_a_clean_error(tmp_path) -> None:
    srv = start_server(tmp_path, "--tile-size", "64", "--shutdown-grace", "0.5")
    try:
        results: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: results.append(srv.post(long_request())))
        worker.start()
        srv.wait_admitted(1)
        srv.process.send_signal(signal.SIGTERM)
        worker.join(timeout=60)
        (answer,) = results
        assert answer.status_code == 503, answer.text
        assert answer.json()["error_type"] == "server_shutting_down"
        assert "shutdown grace period is 0.5 s" in answer.json()["detail"]
        assert int(answer.headers["retry-after"]) >= 1
        assert srv.process.wait(timeout=30) is not None
    finally:
        stop_server(srv)
