"""fal's queue protocol over real HTTP: submit, status and logs, SSE, result, cancel, expiry,
shared admission with the sync route, webhooks (retry, signature) and the proxy route."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from predictor.api.queue_routes import map_proxy_target
from predictor.queue.webhooks import verify_signature
from tests.conftest import data_uri, encode, photo_crop, serve_in_thread, start_server, stop_server

SUBMIT = "/queue/fal-ai/chrono-edit-lora-gallery/upscaler"
SHORT = "/queue/fal-ai/chrono-edit-lora-gallery/requests"
SECRET = "webhook-test-secret"


class WebhookReceiver:
    """Records POSTs; answers the first ``failures`` of them with a 500."""

    def __init__(self, failures: int = 0) -> None:
        self.received: list[tuple[dict[str, str], bytes, int]] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if len(receiver.received) < receiver.failures else 200
                receiver.received.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd, base = serve_in_thread(Handler)
        self.url = f"{base}/hook"

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"only {len(self.received)} webhook calls"
            time.sleep(0.05)

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def queue_server(tmp_path_factory):
    srv = start_server(
        tmp_path_factory.mktemp("queue"),
        "--allow-private-urls",
        "--max-inflight",
        "1",
        "--max-waiting",
        "1",
        "--tile-size",
        "64",
        "--queue-result-ttl",
        "2",
        "--webhook-secret",
        SECRET,
        "--webhook-backoff",
        "0.1",
        "--webhook-attempts",
        "3",
    )
    yield srv
    stop_server(srv)


def submit(srv, payload: dict, **params) -> httpx.Response:
    return httpx.post(f"{srv.url}{SUBMIT}", json=payload, params=params, timeout=30)


def wait_completed(srv, status_url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(status_url, params={"logs": 1}, timeout=10).json()
        if status["status"] == "COMPLETED":
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def small_request(**fields) -> dict:
    return {"image_url": data_uri(encode(photo_crop(48, 40))), "sync_mode": True, **fields}


def long_request() -> dict:
    """About 200 tiles of 64 px: seconds of engine work even on the bf16 path, cancellable
    between tiles."""
    return {"image_url": data_uri(encode(photo_crop(900, 900))), "sync_mode": True}


def test_queue_submit_status_logs_result(queue_server) -> None:
    answer = submit(queue_server, small_request(seed=7))
    assert answer.status_code == 200, answer.text
    handle = answer.json()
    request_id = handle["request_id"]
    assert answer.headers["x-fal-request-id"] == request_id
    assert handle["status_url"].endswith(f"{SHORT}/{request_id}/status")
    assert handle["queue_position"] == 0
    status = wait_completed(queue_server, handle["status_url"])
    messages = [line["message"] for line in status["logs"]]
    assert messages[0] == "queued"
    assert "tile 1/1" in messages
    assert any(m.startswith("upscaled 48×40 → 96×80") for m in messages)
    assert messages[-1] == "completed"
    assert status["metrics"]["inference_time"] > 0
    assert "error" not in status
    result = httpx.get(handle["response_url"], timeout=10)
    assert result.status_code == 200
    assert result.json()["seed"] == 7
    assert result.json()["images"][0]["width"] == 96
    # the full app path serves the same request
    full = httpx.get(f"{queue_server.url}{SUBMIT}/requests/{request_id}", timeout=10)
    assert full.json() == result.json()
    # without ?logs=1 the logs are left out, as on fal
    assert httpx.get(handle["status_url"], timeout=10).json()["logs"] is None


def test_queue_failed_request_reports_its_error(queue_server) -> None:
    handle = submit(queue_server, {"image_url": "data:image/png;base64,AAAA"}).json()
    status = wait_completed(queue_server, handle["status_url"])
    assert status["error_type"] == "image_load_error"
    assert "image_url" in status["error"]
    result = httpx.get(handle["response_url"], timeout=10)
    assert result.status_code == 400
    assert result.headers["x-fal-error-type"] == "image_load_error"
    assert result.json()["detail"][0]["loc"] == ["body", "image_url"]


def test_queue_validation_errors_are_immediate(queue_server) -> None:
    answer = submit(queue_server, small_request(upscale_factor=9))
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "upscale_factor"]
    bad_hook = submit(queue_server, small_request(), fal_webhook="ftp://example.com/x")
    assert bad_hook.status_code == 422
    assert bad_hook.json()["detail"][0]["loc"][:2] == ["query", "fal_webhook"]
    unknown = httpx.get(f"{queue_server.url}{SHORT}/nope/status", timeout=10)
    assert unknown.status_code == 404


def test_queue_cancel_waiting_and_running_and_shared_admission(queue_server) -> None:
    running = submit(queue_server, long_request()).json()
    deadline = time.monotonic() + 30
    while httpx.get(running["status_url"], timeout=10).json()["status"] != "IN_PROGRESS":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    waiting = submit(queue_server, small_request()).json()
    assert waiting["queue_position"] == 0
    status = httpx.get(waiting["status_url"], timeout=10).json()
    assert (status["status"], status["queue_position"]) == ("IN_QUEUE", 0)
    # one job runs and one waits: the queue and the sync route are full alike
    full = submit(queue_server, small_request())
    assert full.status_code == 429, full.text
    assert int(full.headers["retry-after"]) >= 1
    assert queue_server.post(small_request()).status_code == 429

    for handle in (waiting, running):
        cancelled = httpx.put(handle["cancel_url"], timeout=10)
        assert cancelled.status_code == 202
        assert cancelled.json() == {"status": "CANCELLATION_REQUESTED"}
    for handle in (waiting, running):
        status = wait_completed(queue_server, handle["status_url"])
        assert status["error_type"] == "request_cancelled"
        result = httpx.get(handle["response_url"], timeout=10)
        assert result.status_code == 400
    running_logs = [line["message"] for line in status["logs"]]
    tiles = [m for m in running_logs if m.startswith("tile ")]
    total = int(tiles[0].split("/")[1])
    assert 0 < len(tiles) < total, "the running job stopped before its last tile"
    again = httpx.put(running["cancel_url"], timeout=10)
    assert (again.status_code, again.json()["status"]) == (400, "ALREADY_COMPLETED")
    # the worker is free again
    assert queue_server.post(small_request()).status_code == 200


def test_queue_results_expire(queue_server) -> None:
    handle = submit(queue_server, small_request()).json()
    wait_completed(queue_server, handle["status_url"])
    assert httpx.get(handle["response_url"], timeout=10).status_code == 200
    time.sleep(2.5)  # --queue-result-ttl 2
    gone = httpx.get(handle["response_url"], timeout=10)
    assert gone.status_code == 404
    assert "expired" in gone.json()["detail"]


def test_queue_status_stream_sends_new_logs_until_completed(queue_server) -> None:
    handle = submit(queue_server, small_request()).json()
    events = []
    with httpx.stream("GET", handle["status_url"] + "/stream?logs=1", timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events[-1]["status"] == "COMPLETED"
    messages = [line["message"] for event in events for line in event["logs"]]
    assert messages.count("queued") == 1 and messages.count("completed") == 1
    assert len(messages) == len(set(messages))


def test_queue_webhook_is_signed_and_retried(queue_server) -> None:
    receiver = WebhookReceiver(failures=1)
    try:
        handle = submit(queue_server, small_request(), fal_webhook=receiver.url).json()
        receiver.wait_for(2)
        (_, first, first_status), (headers, body, status) = receiver.received
        assert (first_status, status) == (500, 200)
        assert first == body
        assert verify_signature(SECRET, headers, body)
        assert not verify_signature("another-secret", headers, body)
        assert not verify_signature(SECRET, headers, body.replace(b"OK", b"KO"))
        delivered = json.loads(body)
        assert delivered["request_id"] == handle["request_id"]
        assert delivered["status"] == "OK"
        result = httpx.get(handle["response_url"], timeout=10).json()
        assert delivered["payload"] == result

        failing = submit(
            queue_server, {"image_url": "data:image/png;base64,AAAA"}, fal_webhook=receiver.url
        ).json()
        receiver.wait_for(3)
        error = json.loads(receiver.received[2][1])
        assert (error["request_id"], error["status"]) == (failing["request_id"], "ERROR")
        assert error["payload"]["error_type"] == "image_load_error"
        status = httpx.get(failing["status_url"], timeout=10).json()
        assert error["error"] == status["error"]  # one message, as the status shows it
        assert error["error"].startswith("body.image_url: ")
    finally:
        receiver.close()


def test_queue_webhook_gives_up_after_its_attempts(queue_server) -> None:
    receiver = WebhookReceiver(failures=10)
    try:
        submit(queue_server, small_request(), fal_webhook=receiver.url)
        receiver.wait_for(3)
        time.sleep(0.5)
        assert len(receiver.received) == 3  # --webhook-attempts 3
        assert "gave up after 3 attempts" in queue_server.log()
    finally:
        receiver.close()


APP = "fal-ai/chrono-edit-lora-gallery"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (f"https://fal.run/{APP}/upscaler", f"/{APP}/upscaler"),
        (f"https://queue.fal.run/{APP}/upscaler?fal_webhook=x", f"/queue/{APP}/upscaler"),
        (
            f"https://queue.fal.run/{APP}/requests/a/status?logs=1",
            f"/queue/{APP}/requests/a/status",
        ),
        (f"https://my.host/queue/{APP}/requests/a", f"/queue/{APP}/requests/a"),
        ("https://fal.run/fal-ai/flux/dev", None),
        (f"https://queue.fal.run/{APP}/../../v1/models", None),
        ("file:///etc/passwd", None),
    ],
)
def test_proxy_target_mapping(target: str, expected: str | None) -> None:
    mapped = map_proxy_target(target)
    assert (mapped[0] if mapped else None) == expected


def test_proxy_route_serves_fal_urls_locally(queue_server) -> None:
    proxy = f"{queue_server.url}/api/fal/proxy"
    run_target = "https://fal.run/fal-ai/chrono-edit-lora-gallery/upscaler"
    answer = httpx.post(
        proxy, json=small_request(), headers={"x-fal-target-url": run_target}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["images"][0]["width"] == 96
    refused = httpx.post(
        proxy,
        json={},
        headers={"x-fal-target-url": "https://fal.run/fal-ai/flux/dev"},
        timeout=10,
    )
    assert refused.status_code == 400
    assert "not a URL of this app" in refused.json()["detail"]
    missing = httpx.post(proxy, json={}, timeout=10)
    assert missing.status_code == 400
