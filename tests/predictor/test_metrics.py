"""Metrics, cost and the per-request log line: pure rules, then a scripted mix on a real server."""

from __future__ import annotations

import json
import logging
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from predictor import metrics
from predictor.telemetry import JsonLineFormatter
from tests.conftest import data_uri, encode, photo_crop, start_server, stop_server

HOURLY_USD = 36.0  # cost = device seconds / 100


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "ok"),
        (400, "client_error"),
        (413, "client_error"),
        (422, "client_error"),
        (429, "rejected"),
        (503, "rejected"),
        (504, "timeout"),
        (499, "cancelled"),
        (500, "server_error"),
    ],
)
def test_outcome_classes(status: int, outcome: str) -> None:
    assert metrics.outcome_for_status(status) == outcome
    assert outcome in metrics.OUTCOMES


def test_a_client_that_hung_up_is_an_outcome_of_its_own() -> None:
    assert metrics.outcome_for_status(499, "client_disconnected") == "client_disconnected"
    assert metrics.outcome_for_status(499, "request_cancelled") == "cancelled"
    assert "client_disconnected" in metrics.OUTCOMES


def test_list_price_tiers() -> None:
    assert metrics.list_price_cents(854, 480) == 2  # the 480p tier itself
    assert metrics.list_price_cents(640, 640) == 2  # 409,600 pixels: still within the tier
    assert metrics.list_price_cents(855, 480) == 3
    assert metrics.list_price_cents(2048, 2048) == 3


def test_list_price_sums_are_exact() -> None:
    collector = metrics.ListPriceCollector()
    for _ in range(3):
        collector.add("test", metrics.list_price_cents(128, 128))
    (family,) = collector.collect()
    assert family.samples[0].value == 0.06  # exactly: summed in cents, not in floats
    assert metrics.device_cost_usd(3600, 2.5) == 2.5


def test_request_log_line_is_one_json_object() -> None:
    record = logging.LogRecord(
        "predictor.requests", logging.INFO, __file__, 1, "request", None, None
    )
    record.args = {"event": "request", "request_id": "abc", "timings_ms": {"total": 1.5}}
    line = JsonLineFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["request_id"] == "abc"
    assert parsed["level"] == "INFO"
    assert parsed["timings_ms"] == {"total": 1.5}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on ``/metrics`` by (name, sorted labels)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture(scope="module")
def metered_server(tmp_path_factory):
    srv = start_server(
        tmp_path_factory.mktemp("metered"),
        "--gpu-hourly-usd",
        str(HOURLY_USD),
        "--max-inflight",
        "1",
        "--max-waiting",
        "0",
        "--max-download-mb",
        "1",
        "--default-output-format",
        "png",
    )
    yield srv
    stop_server(srv)


def test_scripted_mix_is_counted_exactly_once_by_outcome(metered_server) -> None:
    srv = metered_server
    small = data_uri(encode(photo_crop(64, 48)))
    before = scrape(srv.url)
    answers: list[httpx.Response] = []

    # a large-tier image (800×600 out) keeps the only worker busy; a request meanwhile is shed
    large: list[httpx.Response] = []
    worker = threading.Thread(
        target=lambda: large.append(
            srv.post({"image_url": data_uri(encode(photo_crop(400, 300))), "sync_mode": True})
        )
    )
    admitted = srv.admitted_count()
    worker.start()
    srv.wait_admitted(admitted + 1)
    busy = scrape(srv.url)
    assert busy[("upscaler_inflight_requests", ())] == 1
    assert busy[("upscaler_worker_slots", ())] == 1
    assert busy[("upscaler_worker_slots_free", ())] == 0  # held by the running job
    answers.append(srv.post({"image_url": small}))  # 429: no room to wait
    worker.join(timeout=120)
    answers += large

    for seed in (1, 2, 3):  # three small-tier images
        answers.append(srv.post({"image_url": small, "seed": seed, "sync_mode": True}))
    answers.append(srv.post({"image_url": small, "upscale_factor": 9}))  # 422 range
    answers.append(srv.post({"upscale_factor": 2}))  # 422 missing field
    answers.append(srv.post({"image_url": "data:image/png;base64,AAAA"}))  # 400 undecodable
    answers.append(srv.post({"image_url": "data:image/png;base64," + "A" * (2 << 20)}))  # 413
    v1 = f"{srv.url}/v1/models/chrono-upscaler:predict"
    answers.append(httpx.post(v1, json={"instances": [{"image_url": small}]}, timeout=60))
    answers.append(httpx.post(v1, json={"wrong": []}, timeout=60))  # 400
    httpx.get(f"{srv.url}/v1/models/chrono-upscaler", timeout=10)  # not an upscale request
    after = scrape(srv.url)
    assert after[("upscaler_worker_slots_free", ())] == 1  # every slot back, whatever happened

    statuses = [answer.status_code for answer in answers]
    assert statuses == [429, 200, 200, 200, 200, 422, 422, 400, 413, 200, 400], [
        answer.text[:200] for answer in answers
    ]
    expected = {"ok": 5, "client_error": 5, "rejected": 1, "server_error": 0, "timeout": 0}
    for outcome, count in expected.items():
        assert delta(before, after, "upscaler_requests_total", engine="sr", outcome=outcome) == (
            count
        ), outcome
        total_count = delta(
            before,
            after,
            "upscaler_request_duration_seconds_count",
            stage="total",
            engine="sr",
            outcome=outcome,
        )
        assert total_count == count, outcome
    inference_ok = delta(
        before,
        after,
        "upscaler_request_duration_seconds_count",
        stage="inference",
        engine="sr",
        outcome="ok",
    )
    assert inference_ok == 5

    # fal's list price: four small-tier images at $0.02 and one large at $0.03, exactly
    assert delta(before, after, "upscaler_list_price_usd_total", engine="sr") == pytest.approx(
        0.11, abs=1e-12
    )
    megapixels = (3 * 128 * 96 + 800 * 600 + 128 * 96) / 1e6
    assert delta(before, after, "upscaler_output_megapixels_total", engine="sr") == (
        pytest.approx(megapixels)
    )
    device_s = delta(before, after, "upscaler_gpu_seconds_total", engine="sr")
    assert device_s > 0
    cost = delta(before, after, "upscaler_cost_usd_total", engine="sr")
    assert cost == pytest.approx(device_s * HOURLY_USD / 3600)

    # one JSON line per request, with the id the client got back
    ids = [answer.headers["x-fal-request-id"] for answer in answers]
    assert len(set(ids)) == len(ids)
    lines = {line["request_id"]: line for line in srv.request_lines()}
    for answer, request_id in zip(answers, ids, strict=True):
        line = lines[request_id]
        assert line["status"] == answer.status_code
        assert line["outcome"] == metrics.outcome_for_status(answer.status_code)
        assert line["timings_ms"]["total"] > 0
    assert lines[ids[1]]["images"][0]["width"] == 800
    assert lines[ids[1]]["timings_ms"]["inference"] > 0
    assert lines[ids[0]]["error_type"] == "queue_full"
    logged_device_s = sum(lines[i]["device_s"] for i in ids)
    assert logged_device_s == pytest.approx(device_s, rel=1e-3, abs=1e-3)


def test_deployment_defaults_fill_only_omitted_fields(metered_server) -> None:
    small = data_uri(encode(photo_crop(32, 32)))
    default = metered_server.post({"image_url": small, "sync_mode": True})
    assert default.json()["images"][0]["content_type"] == "image/png"  # --default-output-format
    explicit = metered_server.post({"image_url": small, "sync_mode": True, "output_format": "jpeg"})
    assert explicit.json()["images"][0]["content_type"] == "image/jpeg"
    # a queued request gets the same defaults, applied once, by the journey
    submit = f"{metered_server.url}/queue/fal-ai/chrono-edit-lora-gallery/upscaler"
    for payload, content_type in (
        ({"image_url": small}, "image/png"),
        ({"image_url": small, "output_format": "jpeg"}, "image/jpeg"),
    ):
        handle = httpx.post(submit, json=payload, timeout=30).json()
        result = httpx.get(handle["response_url"], timeout=10)
        deadline = time.monotonic() + 60
        while result.status_code == 400 and result.json().get("status") != "COMPLETED":
            assert time.monotonic() < deadline, result.text
            time.sleep(0.05)
            result = httpx.get(handle["response_url"], timeout=10)
        assert result.json()["images"][0]["content_type"] == content_type


def test_metrics_route_exposes_every_design_name(metered_server) -> None:
    names = {
        family.name
        for family in text_string_to_metric_families(
            httpx.get(f"{metered_server.url}/metrics", timeout=10).text
        )
    }
    for name in EXPORTED_FAMILIES:
        assert name in names, name


#: docs/observability.md's names, as prometheus_client families (counters drop their ``_total``)
EXPORTED_FAMILIES = (
    "upscaler_request_duration_seconds",
    "upscaler_requests",
    "upscaler_queue_depth",
    "upscaler_inflight_requests",
    "upscaler_worker_slots",
    "upscaler_worker_slots_free",
    "upscaler_output_megapixels",
    "upscaler_gpu_seconds",
    "upscaler_cost_usd",
    "upscaler_list_price_usd",
    "upscaler_lora_load_seconds",
    "upscaler_lora_cache_hits",
    "upscaler_lora_cache_misses",
)


def test_bad_flag_values_are_refused(tmp_path) -> None:
    import subprocess
    import sys

    for flags, expected in (
        (["--gpu-hourly-usd", "-1"], "--gpu-hourly-usd must be ≥ 0"),
        (["--default-num-inference-steps", "99"], "--default-num-inference-steps"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "predictor", "serve", *flags],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        assert expected in result.stderr, result.stderr
