"""``python -m loadtest`` in a subprocess (locust's gevent patching stays out of pytest): short
runs against the real server in sync and queue mode, the overload scenario on a tiny capacity,
and two stand-in servers for what a real one never does (hang; hand out foreign URLs)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from loadtest import users
from tests.conftest import ROOT, ServerProcess, serve_in_thread, start_server, stop_server

HOURLY_USD = "3.6"


def run_loadtest(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadtest", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def summaries(node) -> Iterator[dict]:
    """Every latency summary anywhere in a results document."""
    if isinstance(node, dict):
        if "p50_s" in node:
            yield node
        for value in node.values():
            yield from summaries(value)


def assert_well_formed(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "latency.png").stat().st_size > 10_000
    text = (out / "report.md").read_text()
    for heading in ("# Load test", "## Requests", "## Latency", "## Throughput", "## Cost"):
        assert heading in text
    requests = results["requests"]
    assert requests["total"] > 0
    assert sum(requests["by_status"].values()) == requests["total"]
    classes = ("accepted", "shed", "gave_up", "failed")
    assert sum(requests[name] for name in classes) == requests["total"]
    for route in results["routes"].values():
        assert sum(route["by_status"].values()) == route["count"]
    checked = 0
    for summary in summaries(results):
        if summary["count"]:
            assert 0 <= summary["p50_s"] <= summary["p95_s"] <= summary["p99_s"]
            assert summary["p99_s"] <= summary["max_s"]
            checked += 1
    assert checked >= 3
    assert results["abandoned"] == 0
    assert results["elapsed_s"] >= results["config"]["duration_s"]
    return results


def assert_costs_positive(results: dict) -> None:
    server, client = results["cost"]["server"], results["cost"]["client"]
    accepted = results["requests"]["accepted"]
    assert accepted > 0
    # the server counted exactly the images this client received, and priced them the same
    assert server["images"] == accepted == client["images"]
    assert server["cost_usd"] > 0
    assert server["cost_per_image_usd"] > 0
    assert server["device_seconds_per_image"] > 0
    assert server["list_price_usd"] == pytest.approx(client["list_price_usd"])
    assert server["list_price_per_image_usd"] == pytest.approx(0.02)  # small profile: 480p tier
    assert server["cost_per_image_usd"] == pytest.approx(
        server["device_seconds_per_image"] * float(HOURLY_USD) / 3600
    )
    assert results["throughput"]["images_per_s"] > 0
    rss = results["server"]["rss_bytes"]
    assert 0 < rss["start"] <= rss["peak"]


@pytest.fixture(scope="module")
def small_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """One job at a time, one waiting: two users fill it, eight overload it."""
    srv = start_server(
        tmp_path_factory.mktemp("loadtest"),
        "--gpu-hourly-usd",
        HOURLY_USD,
        "--max-inflight",
        "1",
        "--max-waiting",
        "1",
    )
    yield srv
    stop_server(srv)


def test_loadtest_sync_run_reports_latency_throughput_and_cost(small_server, tmp_path) -> None:
    out = tmp_path / "sync"
    done = run_loadtest(
        "run", "--url", small_server.url, "--users", "2", "--spawn-rate", "2",
        "--duration", "3s", "--profile", "small", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = assert_well_formed(out)
    assert results["config"]["mode"] == "sync"
    assert set(results["routes"]) == {users.ROUTE_SYNC, users.ROUTE_FILE}
    assert results["requests"]["failed"] == 0
    assert results["queue"] is None
    assert_costs_positive(results)
    assert "# Load test: run — sync mode, small profile" in done.stdout  # the report, printed


def test_loadtest_impatient_clients_report_work_nobody_received(small_server, tmp_path) -> None:
    out = tmp_path / "impatient"
    done = run_loadtest(
        "run", "--url", small_server.url, "--users", "2", "--spawn-rate", "2",
        "--duration", "4s", "--profile", "impatient", "--give-up-after", "0.3",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = assert_well_formed(out)
    impatient = results["impatient"]
    assert impatient["given_up"] == results["requests"]["gave_up"] > 0
    assert results["requests"]["failed"] == 0
    # the server saw the hang-ups, stopped those jobs and counted what they still cost
    assert impatient["server_client_disconnected"] >= 1
    assert impatient["engine_seconds_after_give_up"] >= 0
    assert impatient["saved_engine_seconds"] >= 0
    assert "## Impatient clients: work nobody received" in done.stdout


def test_loadtest_queue_run_splits_waiting_from_running(small_server, tmp_path) -> None:
    out = tmp_path / "queue"
    done = run_loadtest(
        "run", "--url", small_server.url, "--users", "2", "--spawn-rate", "2",
        "--duration", "3s", "--profile", "small", "--mode", "queue", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = assert_well_formed(out)
    assert set(results["routes"]) == {
        users.ROUTE_SUBMIT,
        users.ROUTE_STATUS,
        users.ROUTE_RESULT,
        users.ROUTE_FILE,
    }
    accepted = results["requests"]["accepted"]
    assert results["requests"]["failed"] == 0
    queue = results["queue"]
    counts = {queue[phase]["count"] for phase in ("wait", "run", "inference", "end_to_end")}
    assert counts == {accepted}
    # on the worker the engine is most of the time; end to end includes the wait and the polls
    assert queue["inference"]["p50_s"] <= queue["run"]["p50_s"] + 0.01
    assert queue["end_to_end"]["max_s"] >= queue["run"]["max_s"]
    assert_costs_positive(results)
    assert "## Queue: waiting vs running" in (out / "report.md").read_text()


def test_loadtest_overload_sheds_with_429_and_passes(small_server, tmp_path) -> None:
    out = tmp_path / "overload"
    done = run_loadtest(
        "overload", "--url", small_server.url, "--duration", "3s", "--profile", "small",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    results = assert_well_formed(out)
    assert results["config"]["users"] == 8  # 4 × (1 running + 1 waiting)
    for route in results["routes"].values():
        assert set(route["by_status"]) <= {"200", "429", "503"}, route
    assert results["requests"]["by_status"].get("429", 0) > 0
    assert results["requests"]["accepted"] > 0
    verdict = results["overload"]
    assert verdict["passed"] is True
    assert [c["passed"] for c in verdict["checks"]] == [True] * 5
    assert "overload: PASSED" in done.stdout
    assert "**PASSED**" in (out / "report.md").read_text()


class StandIn:
    """A fake upscaler on loopback: answers fal's routes with foreign URLs, or hangs."""

    def __init__(self, hang: bool = False) -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                stand_in.seen.append(("GET", self.path, self.headers.get("Authorization")))
                self._json(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                stand_in.seen.append(("POST", self.path, self.headers.get("Authorization")))
                if hang:
                    time.sleep(10)
                    return
                elsewhere = "http://127.0.0.2:9"
                if self.path.startswith("/queue/"):
                    self._json(
                        200,
                        {
                            "request_id": "r1",
                            "status_url": f"{elsewhere}/queue/x/requests/r1/status",
                            "response_url": f"{elsewhere}/queue/x/requests/r1",
                        },
                    )
                else:
                    image = {"url": f"{elsewhere}/files/x.jpg", "width": 512, "height": 512}
                    self._json(200, {"images": [image], "prompt": "", "seed": 1})

        self.httpd, self.url = serve_in_thread(Handler)

    def close(self) -> None:
        self.httpd.shutdown()


def test_loadtest_sends_the_key_and_never_leaves_the_target(tmp_path) -> None:
    stand_in = StandIn()
    try:
        for mode in ("sync", "queue"):
            done = run_loadtest(
                "run", "--url", stand_in.url, "--users", "1", "--duration", "0.5s", "--mode", mode,
                "--key", "secret-key", "--out", str(tmp_path / mode), "--pool", "2",
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
    finally:
        stand_in.close()
    sync = json.loads((tmp_path / "sync" / "results.json").read_text())
    assert set(sync["requests"]["by_status"]) == {"200"}
    assert sync["skipped_downloads"] == sync["requests"]["images"] > 0  # output URLs elsewhere
    assert set(sync["routes"]) == {users.ROUTE_SYNC}  # never downloaded from 127.0.0.2
    assert sync["config"]["key_sent"] is True
    queue = json.loads((tmp_path / "queue" / "results.json").read_text())
    assert set(queue["requests"]["by_status"]) == {"foreign_url"}  # status_url elsewhere
    assert set(queue["routes"]) == {users.ROUTE_SUBMIT}
    posts = [(path, key) for method, path, key in stand_in.seen if method == "POST"]
    assert posts
    assert all(key == "Key secret-key" for _, key in posts)
    assert {path for path, _ in posts} == {users.SYNC_PATH, users.SUBMIT_PATH}
    assert "secret-key" not in (tmp_path / "sync" / "results.json").read_text()


def test_loadtest_overload_fails_when_the_server_hangs(tmp_path) -> None:
    stand_in = StandIn(hang=True)
    try:
        done = run_loadtest(
            "overload", "--url", stand_in.url, "--capacity", "1", "--duration", "0.5s",
            "--timeout", "0.5", "--max-rss-mb", "0", "--pool", "2", "--out", str(tmp_path),
        )  # fmt: skip
    finally:
        stand_in.close()
    assert done.returncode == 1, done.stdout + done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["requests"]["by_status"]) == {"timeout"}
    assert results["routes"][users.ROUTE_SYNC]["by_status"] == {
        "timeout": results["requests"]["total"]
    }
    failed = {c["name"] for c in results["overload"]["checks"] if not c["passed"]}
    assert "no timeouts, connection errors or hangs" in failed
    assert "overload: FAILED" in done.stdout


def test_loadtest_refuses_an_unreachable_target(tmp_path) -> None:
    from tests.conftest import free_port

    done = run_loadtest(
        "run", "--url", f"http://127.0.0.1:{free_port()}", "--users", "1", "--duration", "1s",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 2
    assert "cannot reach" in done.stderr
    assert not (tmp_path / "results.json").exists()
