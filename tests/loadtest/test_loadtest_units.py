"""The load test's pure parts: percentiles and summaries, profiles, scrapes and cost deltas, the
user's URL and log helpers, the overload rules, the report and the command line."""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loadtest import cli, overload, profiles, report, runner, scrape, stats, users
from tests.conftest import ROOT

# --- stats -------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 99.9, 100])
def test_percentile_matches_numpy(q: float) -> None:
    rng = random.Random(q)
    for size in (1, 2, 3, 10, 101):
        values = sorted(rng.uniform(0, 10) for _ in range(size))
        assert stats.percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        stats.percentile([], 50)
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_summary_is_ordered_and_empty_summaries_are_none() -> None:
    summary = stats.summarize([0.5, 0.1, 3.0, 0.2, 0.2, 9.0, 0.3])
    assert summary["count"] == 7
    assert summary["p50_s"] <= summary["p95_s"] <= summary["p99_s"] <= summary["max_s"] == 9.0
    assert summary["p50_s"] == 0.3
    empty = stats.summarize([])
    assert empty["count"] == 0
    assert all(empty[k] is None for k in ("mean_s", "p50_s", "p95_s", "p99_s", "max_s"))


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("200", "accepted"),
        ("202", "accepted"),
        ("429", "shed"),
        ("503", "shed"),
        ("500", "failed"),
        ("504", "failed"),
        ("400", "failed"),
        ("timeout", "failed"),
        ("connection_error", "failed"),
        ("gave_up", "gave_up"),
    ],
)
def test_status_classes(status: str, kind: str) -> None:
    assert stats.status_class(status) == kind


def _request(status: str, started: float, latency: float, **fields) -> stats.RequestRecord:
    return stats.RequestRecord("sync", status, started, latency, **fields)


def _recorder() -> stats.Recorder:
    recorder = stats.Recorder()
    for index, (status, latency) in enumerate(
        [("200", 1.0), ("200", 2.0), ("429", 0.01), ("503", 0.02), ("timeout", 5.0), ("200", 3.0)]
    ):
        recorder.begin()
        images = 1 if status == "200" else 0
        recorder.add_request(
            _request(
                status,
                index,
                latency,
                images=images,
                list_price_cents=2 * images,
                output_pixels=512 * 512 * images,
            )
        )
        route = users.ROUTE_SYNC
        recorder.add_http(stats.HttpRecord(route, status, index, latency))
        if images:
            recorder.add_http(stats.HttpRecord(users.ROUTE_FILE, "200", index + latency, 0.001))
    return recorder


def test_request_summary_counts_add_up() -> None:
    recorder = _recorder()
    summary = stats.summarize_requests(recorder.requests)
    assert summary["total"] == 6 == sum(summary["by_status"].values())
    assert list(summary["by_status"]) == ["200", "429", "503", "timeout"]  # codes first
    assert (summary["accepted"], summary["shed"], summary["failed"]) == (3, 2, 1)
    assert summary["images"] == 3
    assert summary["latency_accepted"]["max_s"] == 3.0
    assert summary["latency_shed"]["count"] == 2
    assert recorder.in_flight == 0
    routes = stats.summarize_routes(recorder.http)
    assert routes[users.ROUTE_SYNC]["count"] == 6
    assert routes[users.ROUTE_FILE]["by_status"] == {"200": 3}
    rates = stats.throughput(recorder, 2.0)
    assert rates["requests_per_s"] == 3.0
    assert rates["images_per_s"] == 1.5
    assert rates["http_requests_per_s"] == 4.5
    assert rates["output_megapixels_per_s"] == pytest.approx(3 * 512 * 512 / 1e6 / 2)
    assert stats.client_list_price_usd(recorder.requests) == pytest.approx(0.06)


def test_queue_summary_uses_accepted_queue_requests_only() -> None:
    records = [
        stats.RequestRecord("queue", "200", 0, 2.0, 1, 2, 1, 0.5, 1.4, 1.3),
        stats.RequestRecord("queue", "200", 1, 3.0, 1, 2, 1, 1.5, 1.4, 1.35),
        stats.RequestRecord("queue", "429", 2, 0.01),
    ]
    queue = stats.summarize_queue(records)
    assert queue["wait"]["count"] == 2
    assert queue["wait"]["max_s"] == 1.5
    assert queue["inference"]["p50_s"] == pytest.approx(1.325)
    assert stats.summarize_queue(records[2:]) is None


def test_list_price_rule_is_the_servers() -> None:
    from predictor.metrics import list_price_cents

    for width, height in [(854, 480), (855, 480), (640, 640), (641, 640), (256, 256), (4096, 4096)]:
        assert stats.list_price_cents(width, height) == list_price_cents(width, height)


# --- profiles ----------------------------------------------------------------------------------


def test_pools_are_reproducible_and_stay_within_their_profile() -> None:
    for profile in profiles.PROFILES.values():
        specs = profiles.plan_pool(profile, 200, seed=3)
        assert specs == profiles.plan_pool(profile, 200, seed=3)
        sides = {side for shape in profile.shapes for side in shape.long_sides}
        factors = {factor for shape in profile.shapes for factor in shape.factors}
        assert {spec.long_side for spec in specs} <= sides
        assert {spec.factor for spec in specs} <= factors
        assert {spec.photo for spec in specs} == set(profiles.PHOTOS)
    small = profiles.plan_pool(profiles.PROFILES["small"], 50)
    assert all(128 <= s.long_side <= 256 and s.factor == 2 for s in small)
    large = profiles.plan_pool(profiles.PROFILES["large"], 50)
    assert all(512 <= s.long_side <= 1024 and 2 <= s.factor <= 4 for s in large)
    mixed = profiles.plan_pool(profiles.PROFILES["mixed"], 1000, seed=1)
    share_small = sum(s.long_side <= 256 for s in mixed) / len(mixed)
    assert 0.5 < share_small < 0.7  # weighted 60%
    with pytest.raises(ValueError):
        profiles.plan_pool(profiles.PROFILES["small"], 0)


def test_impatient_clients_give_up_on_the_large_requests_only() -> None:
    specs = profiles.plan_pool(profiles.PROFILES["impatient"], 200, seed=2)
    assert {s.give_up_s for s in specs if s.long_side <= 256} == {None}
    assert {s.give_up_s for s in specs if s.long_side >= 512} == {1.5}
    sooner = profiles.plan_pool(profiles.PROFILES["impatient"], 200, seed=2, give_up_s=0.2)
    assert {s.give_up_s for s in sooner} == {None, 0.2}
    assert all(s.give_up_s is None for s in profiles.plan_pool(profiles.PROFILES["small"], 20))


def test_fit_long_side_keeps_the_aspect_ratio() -> None:
    assert profiles.fit_long_side(451, 300, 256) == (256, 170)
    assert profiles.fit_long_side(300, 451, 128) == (85, 128)
    assert profiles.fit_long_side(512, 512, 1024) == (1024, 1024)


def test_payload_is_a_fal_request_with_a_real_photo() -> None:
    spec = profiles.Spec("chelsea", 200, 2, seed=42)
    payload = profiles.encode_payload(spec, sync_mode=False)
    body = json.loads(payload.body)
    assert set(body) == {"image_url", "upscale_factor", "output_format", "sync_mode", "seed"}
    assert (body["upscale_factor"], body["seed"], body["sync_mode"]) == (2, 42, False)
    header, data = body["image_url"].split(",", 1)
    assert header == "data:image/jpeg;base64"
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == "JPEG"
    assert image.size == (payload.width, payload.height) == (200, 133)
    assert payload.expected_output == (400, 266)
    assert np.asarray(image).std() > 20  # a photo, not a flat square


# --- scrape ------------------------------------------------------------------------------------

METRICS_BEFORE = """\
# TYPE upscaler_cost_usd counter
upscaler_cost_usd_total{engine="sr"} 0.5
# TYPE upscaler_list_price_usd counter
upscaler_list_price_usd_total{engine="sr"} 1.0
# TYPE upscaler_requests counter
upscaler_requests_total{engine="sr",outcome="ok"} 10.0
upscaler_requests_total{engine="sr",outcome="rejected"} 4.0
# TYPE upscaler_gpu_seconds counter
upscaler_gpu_seconds_total{engine="sr"} 500.0
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 4.0e+08
# TYPE upscaler_queue_depth gauge
upscaler_queue_depth 0.0
"""

METRICS_AFTER = (
    METRICS_BEFORE.replace("0.5\n", "0.56\n")
    .replace("} 1.0\n", "} 1.08\n")
    .replace('outcome="ok"} 10.0', 'outcome="ok"} 14.0')
    .replace('outcome="rejected"} 4.0', 'outcome="rejected"} 9.0')
    .replace("} 500.0", "} 560.0")
    .replace("4.0e+08", "5.0e+08")
    .replace("upscaler_queue_depth 0.0", "upscaler_queue_depth 3.0")
)


def test_cost_delta_from_two_scrapes() -> None:
    before, after = scrape.parse_metrics(METRICS_BEFORE), scrape.parse_metrics(METRICS_AFTER)
    cost = scrape.cost_delta(before, after)
    assert cost["images"] == 4
    assert cost["cost_usd"] == pytest.approx(0.06)
    assert cost["list_price_usd"] == pytest.approx(0.08)
    assert cost["cost_per_image_usd"] == pytest.approx(0.015)
    assert cost["list_price_per_image_usd"] == pytest.approx(0.02)
    assert cost["device_seconds_per_image"] == pytest.approx(15)
    assert cost["cost_to_list_price"] == pytest.approx(0.75)
    assert scrape.delta(before, after, scrape.REQUESTS) == 9  # every outcome
    assert scrape.delta(before, after, scrape.REQUESTS, outcome="rejected") == 5
    assert scrape.gauges(after) == {"rss_bytes": 5e8, "queue_depth": 3.0, "inflight": None}
    # a server without cost counters, or a run that delivered nothing
    assert scrape.cost_delta({}, {}) is None
    idle = scrape.cost_delta(before, before)
    assert idle["images"] == 0 and idle["cost_per_image_usd"] is None


def test_capacity_and_tls_context() -> None:
    assert scrape.capacity({"limits": {"max_inflight": 2, "max_waiting": 16}}) == 18
    import ssl

    assert scrape.ssl_context(insecure=True).verify_mode == ssl.CERT_NONE
    assert scrape.ssl_context().verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ValueError):
        scrape.get("file:///etc/passwd")


# --- users -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "inside"),
    [
        ("http://127.0.0.1:8080/queue/fal-ai/x/requests/1/status", True),
        ("http://127.0.0.1:8080", True),
        ("HTTP://127.0.0.1:8080/files/a.jpg", True),
        ("http://127.0.0.1:8081/files/a.jpg", False),
        ("https://127.0.0.1:8080/files/a.jpg", False),
        ("http://example.com:8080/files/a.jpg", False),
        ("http://127.0.0.1.example.com:8080/files/a.jpg", False),
        ("http://user@127.0.0.1:8080/files/a.jpg", False),
        ("http://127.0.0.1:99999/x", False),
        ("data:image/png;base64,AAAA", False),
    ],
)
def test_only_urls_under_the_target_are_followed(url: str, inside: bool) -> None:
    assert users.under_base(url, "http://127.0.0.1:8080") is inside


def test_under_base_respects_a_path_prefix_and_default_ports() -> None:
    base = "https://upscaler.example.com/team-a"
    assert users.under_base("https://upscaler.example.com:443/team-a/files/x", base)
    assert not users.under_base("https://upscaler.example.com/team-ab/files/x", base)
    assert not users.under_base("https://upscaler.example.com/files/x", base)


def test_queue_phases_from_status_logs() -> None:
    logs = [
        {"message": "queued", "level": "INFO", "timestamp": "2026-11-25T10:00:00.000Z"},
        {"message": "input fetched: 10 bytes in 1 ms", "timestamp": "2026-11-25T10:00:00.010Z"},
        {"message": "started on an engine worker", "timestamp": "2026-11-25T10:00:01.500Z"},
        {"message": "tile 1/1", "timestamp": "2026-11-25T10:00:02.000Z"},
        {"message": "completed", "timestamp": "2026-11-25T10:00:03.750Z"},
    ]
    assert users.queue_phases(logs) == (1.5, 2.25)
    failed = [*logs[:3], {"message": "failed: request_timeout", "timestamp": logs[4]["timestamp"]}]
    assert users.queue_phases(failed) == (1.5, 2.25)
    assert users.queue_phases(logs[:1]) == (None, None)
    assert users.queue_phases([]) == (None, None)


def test_client_failures_and_small_helpers() -> None:
    assert users.error_status(TimeoutError()) == stats.TIMEOUT
    assert users.error_status(OSError("The read operation timed out")) == stats.TIMEOUT
    wrapped = ConnectionError("retries exceeded")
    wrapped.original = TimeoutError()
    assert users.error_status(wrapped) == stats.TIMEOUT
    assert users.error_status(ConnectionRefusedError()) == stats.CONNECTION_ERROR
    assert users.error_status(None) == stats.CONNECTION_ERROR
    assert users.with_logs("http://h/s") == "http://h/s?logs=1"
    assert users.with_logs("http://h/s?a=1") == "http://h/s?a=1&logs=1"
    body = {"images": [{"url": "http://h/files/a.jpg", "width": 10, "height": 20}], "seed": 1}
    assert users.delivered(body) == [("http://h/files/a.jpg", 10, 20)]
    with pytest.raises(ValueError):
        users.delivered({"detail": "no"})


# --- overload rules ----------------------------------------------------------------------------


def _results(**changes) -> dict:
    results = {
        "routes": {users.ROUTE_SYNC: {"by_status": {"200": 5, "429": 40}}},
        "requests": {
            "by_status": {"200": 5, "429": 40},
            "accepted": 5,
            "shed": 40,
            "latency_accepted": {"p99_s": 12.0},
        },
        "abandoned": 0,
        "server": {"rss_bytes": {"peak": 900 * 2**20}},
    }
    for key, value in changes.items():
        results[key] = value
    return results


DEFAULT_LIMITS = overload.OverloadLimits()


def _failed(results: dict, limits: overload.OverloadLimits = DEFAULT_LIMITS) -> list[str]:
    return [c.name for c in overload.check_overload(results, limits) if not c.passed]


def test_overload_passes_when_the_server_sheds_cleanly() -> None:
    checks = overload.check_overload(_results(), overload.OverloadLimits())
    assert all(check.passed for check in checks)
    assert overload.verdict(checks)["passed"] is True


def test_overload_fails_on_other_errors_timeouts_hangs_latency_and_memory() -> None:
    server_error = _results(routes={users.ROUTE_SYNC: {"by_status": {"200": 5, "500": 1}}})
    assert _failed(server_error) == ["every HTTP answer is 2xx, 429 or 503"]
    timeouts = _results()
    timeouts["requests"] = {**timeouts["requests"], "by_status": {"200": 5, "timeout": 2}}
    assert _failed(timeouts) == ["no timeouts, connection errors or hangs"]
    assert _failed(_results(abandoned=1)) == ["no timeouts, connection errors or hangs"]
    assert _failed(_results(), overload.OverloadLimits(max_p99_s=10)) == [
        "accepted requests' p99 latency"
    ]
    assert _failed(_results(), overload.OverloadLimits(max_rss_mb=512)) == [
        "server memory (RSS) peak"
    ]
    no_rss = _results(server={"rss_bytes": {"peak": None}})
    assert _failed(no_rss) == ["server memory (RSS) peak"]
    assert _failed(no_rss, overload.OverloadLimits(max_rss_mb=0)) == []
    nothing = _results()
    nothing["requests"] = {
        **nothing["requests"],
        "accepted": 0,
        "latency_accepted": {"p99_s": None},
    }
    assert _failed(nothing) == ["some requests accepted", "accepted requests' p99 latency"]


# --- runner and report -------------------------------------------------------------------------


def _settings(**changes) -> runner.RunSettings:
    fields = {"command": "run", "url": "http://127.0.0.1:1", "out": Path("out"), "duration_s": 5}
    return runner.RunSettings(**{**fields, "users": 2, **changes})


INFO = {
    "engine": {"engine": "sr"},
    "gpu_hourly_usd": 3.6,
    "limits": {"max_inflight": 1, "max_waiting": 3, "request_timeout_s": 60.0},
}


def test_plan_takes_capacity_and_timeout_from_the_server() -> None:
    over = runner.plan(_settings(command="overload", users=None), INFO)
    assert (over.users, over.capacity, over.timeout_s, over.stop_grace_s) == (16, 4, 90.0, 90.0)
    assert over.spawn_rate == 16
    explicit = runner.plan(
        _settings(command="overload", users=None, capacity=10, multiplier=2, timeout_s=5), None
    )
    assert (explicit.users, explicit.timeout_s) == (20, 5)
    run = runner.plan(_settings(spawn_rate=1, stop_grace_s=0), None)
    assert (run.users, run.spawn_rate, run.timeout_s, run.stop_grace_s) == (2, 1, 330.0, 0)
    with pytest.raises(runner.SetupError):
        runner.plan(_settings(command="overload", users=None), None)


def test_results_and_report_from_a_recorded_run(tmp_path: Path) -> None:
    recorder = _recorder()
    before, after = scrape.parse_metrics(METRICS_BEFORE), scrape.parse_metrics(METRICS_AFTER)
    samples = [
        {"t": 0.0, "rss_bytes": 4.1e8, "queue_depth": 0.0, "inflight": 0.0},
        {"t": 1.0, "rss_bytes": 6.0e8, "queue_depth": 2.0, "inflight": 1.0},
    ]
    settings = _settings(command="overload", users=None)
    run_plan = runner.plan(settings, INFO)
    started = datetime(2026, 11, 25, 12, tzinfo=UTC)
    results = runner.build_results(
        settings, run_plan, recorder, 6.0, started, INFO, before, after, samples
    )
    assert results["started_at"] == "2026-11-25T12:00:00Z"
    assert results["server"]["rss_bytes"] == {"start": 4e8, "peak": 6e8, "end": 5e8}
    assert results["server"]["queue_depth_max"] == 2.0
    assert results["server"]["engine"] == "sr"
    assert results["cost"]["server"]["cost_per_image_usd"] == pytest.approx(0.015)
    assert results["cost"]["client"]["list_price_usd"] == pytest.approx(0.06)
    assert results["overload"]["passed"] is False  # a client timeout
    json.dumps(results)  # serialisable as is

    paths = report.write_outputs(tmp_path, results, recorder.requests, samples)
    assert json.loads(paths["results"].read_text()) == results
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the images received, as a trace the capacity planner reads back
    from loadtest.capacity.traffic import load_trace

    trace = load_trace(paths["trace"])
    delivered = sorted((r for r in recorder.requests if r.output_pixels), key=lambda r: r.started)
    assert trace.pixels.tolist() == [r.output_pixels for r in delivered]
    assert trace.times[0] == 0.0 and len(trace.times) == len(delivered)
    text = paths["report"].read_text()
    for heading in ("## Requests", "## Latency", "## Throughput", "## Cost", "## Server"):
        assert heading in text
    assert "| 429 | 1 |" in text
    assert "**FAILED**" in text
    assert "$0.015" in text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60s", 60), ("90", 90), ("2m", 120), ("1m30s", 90), ("1h", 3600), ("2.5s", 2.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert cli.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "5ms", "m", "-3s", "1d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_duration(text)


def test_command_line(monkeypatch) -> None:
    monkeypatch.setenv("FAL_KEY", "from-env")
    parser = cli.build_parser()
    args = parser.parse_args(
        ["run", "--url", "http://127.0.0.1:8080/", "--users", "3", "--out", "o", "--mode", "queue"]
    )
    settings = cli.settings_from_args(args)
    assert (settings.url, settings.users, settings.mode, settings.key) == (
        "http://127.0.0.1:8080",
        3,
        "queue",
        "from-env",
    )
    assert (settings.duration_s, settings.profile, settings.spawn_rate) == (60, "small", 1.0)
    over = cli.settings_from_args(
        parser.parse_args(["overload", "--url", "http://h", "--out", "o", "--max-p99", "30"])
    )
    assert (over.users, over.spawn_rate, over.limits.max_p99_s) == (None, None, 30)
    for bad in (
        ["run", "--url", "ftp://h", "--users", "1", "--out", "o"],
        ["run", "--url", "http://h?x=1", "--users", "1", "--out", "o"],
        ["run", "--url", "http://h", "--out", "o"],  # --users is required
        ["run", "--url", "http://h", "--users", "0", "--out", "o"],
        ["run", "--url", "https://h", "--users", "1", "--out", "o", "--insecure", "--ca-file", "c"],
        ["run", "--url", "http://h", "--users", "1", "--out", "o", "--profile", "huge"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_importing_the_package_leaves_gevent_alone() -> None:
    """Only ``python -m loadtest`` imports locust (and so gevent's monkey-patching)."""
    code = (
        "import sys, loadtest, loadtest.cli, loadtest.runner, loadtest.report, loadtest.users\n"
        "assert 'locust' not in sys.modules and 'gevent' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
