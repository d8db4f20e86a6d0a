"""The official fal clients, unchanged, against this server over TLS with API keys.

Python: ``fal-client`` pointed at the server by FAL_RUN_HOST / FAL_QUEUE_RUN_HOST (it reads them
at import, so it runs in a subprocess, tests/support/fal_python_driver.py). JavaScript:
``@fal-ai/client`` from npm under node, configured only with ``proxyUrl``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, data_uri, encode, photo_crop, start_server, stop_server
from tests.support.tls import make_tls_files

KEY = "test-key-0123456789"
SUPPORT = ROOT / "tests" / "support"
JS_DIR = SUPPORT / "js"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    tls = make_tls_files(directory)
    keys = directory / "keys.txt"
    keys.write_text(f"# API keys\n{KEY}\nsecond-key\n")
    srv = start_server(
        directory,
        "--tls-cert",
        str(tls.cert),
        "--tls-key",
        str(tls.key),
        "--keys-file",
        str(keys),
        "--max-inflight",
        "1",
        "--max-waiting",
        "4",
        "--tile-size",
        "64",
        ca_file=tls.ca,
    )
    srv.ca = tls.ca
    yield srv
    stop_server(srv)


def python_client(srv, scenario: str, arguments: dict, key: str = KEY) -> dict:
    host = srv.url.removeprefix("https://")
    env = {
        **os.environ,
        "FAL_RUN_HOST": host,
        "FAL_QUEUE_RUN_HOST": f"{host}/queue",
        "FAL_KEY": key,
        "SSL_CERT_FILE": str(srv.ca),
    }
    done = subprocess.run(
        [sys.executable, str(SUPPORT / "fal_python_driver.py"), scenario],
        input=json.dumps(arguments),
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def photo(width: int, height: int) -> dict:
    return {"image_url": data_uri(encode(photo_crop(width, height))), "sync_mode": True}


def test_https_and_keys_guard_every_inference_route(tls_server) -> None:
    url = f"{tls_server.url}/fal-ai/chrono-edit-lora-gallery/upscaler"
    no_key = httpx.post(url, json=photo(32, 32), verify=tls_server.verify, timeout=30)
    assert no_key.status_code == 401
    assert no_key.json()["error_type"] == "unauthorized"
    assert no_key.headers["www-authenticate"] == "Key"
    for route in (
        "/queue/fal-ai/chrono-edit-lora-gallery/upscaler",
        "/queue/fal-ai/chrono-edit-lora-gallery/requests/x/status",
        "/v1/models/chrono-upscaler:predict",
        "/api/fal/proxy",
    ):
        method = "GET" if route.endswith("/status") else "POST"
        headers = {"Authorization": "Key wrong"}
        if route == "/api/fal/proxy":
            headers["x-fal-target-url"] = "https://fal.run/fal-ai/chrono-edit-lora-gallery/upscaler"
        answer = httpx.request(
            method, tls_server.url + route, headers=headers, verify=tls_server.verify
        )
        assert answer.status_code == 401, route
    second = httpx.post(
        url,
        json=photo(32, 32),
        headers={"Authorization": "Key second-key"},
        verify=tls_server.verify,
        timeout=60,
    )
    assert second.status_code == 200
    for open_route in ("/", "/v1/models/chrono-upscaler", "/metrics"):
        assert httpx.get(tls_server.url + open_route, verify=tls_server.verify).status_code == 200
    plain = tls_server.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(plain + "/v1/models/chrono-upscaler", timeout=5)


def test_fal_client_run(tls_server) -> None:
    result = python_client(tls_server, "run", {**photo(40, 30), "upscale_factor": 2})["result"]
    image = result["images"][0]
    assert (image["width"], image["height"]) == (80, 60)
    assert image["url"].startswith("data:image/jpeg;base64,")


def test_fal_client_submit_status_get(tls_server) -> None:
    out = python_client(tls_server, "submit_status_get", photo(40, 30))
    assert out["statuses"][-1] == "Completed"
    assert out["by_id"] == "Completed"
    assert "tile 1/1" in out["logs"] and out["logs"][-1] == "completed"
    assert out["metrics"]["inference_time"] > 0
    assert out["result"] == out["result_by_id"]
    assert out["result"]["images"][0]["width"] == 80


def test_fal_client_subscribe_sees_queue_progress_and_logs(tls_server) -> None:
    # keep the only worker busy so the subscribed request is seen waiting first (seconds of
    # work even on the bf16 path, longer than the client takes to start)
    busy_payload, before = photo(960, 960), tls_server.admitted_count()
    busy = threading.Thread(target=lambda: tls_server_post(tls_server, busy_payload))
    busy.start()
    try:
        tls_server.wait_admitted(before + 1)
        out = python_client(tls_server, "subscribe", photo(256, 256))
    finally:
        busy.join(timeout=120)
    kinds = [update["type"] for update in out["updates"]]
    assert kinds[0] == "Queued"
    assert "InProgress" in kinds
    assert kinds[-1] == "Completed"
    step_logs = {m for u in out["updates"] for m in u["logs"] if m.startswith("tile ")}
    assert "tile 16/16" in step_logs
    assert out["result"]["images"][0]["width"] == 512


def tls_server_post(srv, payload: dict) -> None:
    httpx.post(
        f"{srv.url}/fal-ai/chrono-edit-lora-gallery/upscaler",
        json=payload,
        headers={"Authorization": f"Key {KEY}"},
        verify=srv.verify,
        timeout=120,
    )


def test_fal_client_cancel_waiting_and_running(tls_server) -> None:
    # ×4 of 1024², 256 tiles: seconds of work, so the client's next calls land while it runs
    # (×2 once finished, tile and PNG encode included, before a loaded machine sent the cancel)
    long = {**photo(1024, 1024), "upscale_factor": 4}
    out = python_client(tls_server, "cancel", {"long": long, "short": photo(32, 32)})
    assert out["waiting_before"] == ["Queued", 0]
    for name in ("waiting", "running"):
        assert out[name]["status"] == "Completed", name
        assert out[name]["error_type"] == "request_cancelled", (name, out[name]["logs"][-3:])
        assert out[name]["get"] == {"status": 400, "error_type": "request_cancelled"}
    tiles = [m for m in out["running"]["logs"] if m.startswith("tile ")]
    done, total = map(int, tiles[-1].removeprefix("tile ").split("/"))
    assert done < total, "the running request stopped early"
    assert out["after"]["images"][0]["width"] == 64
    assert out["cancel_again"] == 400


def test_fal_client_errors(tls_server) -> None:
    invalid = python_client(tls_server, "http_error", {**photo(32, 32), "upscale_factor": 9})
    assert invalid["status"] == 422
    assert invalid["message"][0]["loc"] == ["body", "upscale_factor"]
    unauthorized = python_client(tls_server, "http_error", photo(32, 32), key="wrong-key")
    assert (unauthorized["status"], unauthorized["error_type"]) == (401, "unauthorized")


def js_client_ready() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "node and npm are needed for the JavaScript client test (.ci/run installs them)"
        )
    if not (JS_DIR / "node_modules" / "@fal-ai" / "client").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, timeout=300)
    return Path(node)


def test_fal_js_client_through_the_proxy_route(tls_server) -> None:
    node = js_client_ready()
    done = subprocess.run(
        [
            str(node),
            "fal_js_driver.mjs",
            f"{tls_server.url}/api/fal/proxy",
        ],
        input=json.dumps(photo(48, 32)),
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        env={**os.environ, "FAL_KEY": KEY, "NODE_EXTRA_CA_CERTS": str(tls_server.ca)},
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["subscribed"]["data"]["images"][0]["width"] == 96
    assert out["subscribed"]["requestId"]
    assert out["updates"][-1]["status"] == "COMPLETED"
    assert "completed" in out["updates"][-1]["logs"]
    queued = out["queued"]
    assert queued["status"]["status"] == "COMPLETED"
    assert queued["data"]["images"][0]["height"] == 64
    assert queued["resultRequestId"] == queued["requestId"]
    assert out["validation"]["status"] == 422
    assert out["validation"]["name"] == "ValidationError"
