"""Hostile inputs against the real server, on every route: never a 5xx, never a dropped
connection, always a JSON error body, and the server healthy after.

Each case goes over one keep-alive connection per server, so a connection the server drops
fails the next case too. Non-finite numbers are sent as raw JSON text (Python's ``json`` writes
``NaN`` and ``Infinity``; 1e309 overflows to infinity when parsed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.conftest import data_uri, encode, photo_crop

APP = "fal-ai/chrono-edit-lora-gallery/upscaler"
FAL = f"/{APP}"
QUEUE = f"/queue/{APP}"
REQUESTS = "/queue/fal-ai/chrono-edit-lora-gallery/requests"
V1 = "/v1/models/chrono-upscaler:predict"
PROXY = "/api/fal/proxy"
GOOD = data_uri(encode(photo_crop(8, 8)))

NUMERIC_FIELDS = (
    "upscale_factor",
    "guidance_scale",
    "num_inference_steps",
    "lora_scale",
    "seed",
)
#: JSON text of values no numeric field may take
JSON_HEADERS = {"content-type": "application/json"}
BAD_NUMBERS = ("NaN", "Infinity", "-Infinity", "1e309", "-1e309", "true", '"2"', "1e308")


@dataclass
class Case:
    id: str
    method: str
    path: str
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: expected status (or statuses), or None for "any 4xx"
    status: int | tuple[int, ...] | None = None
    #: a location the 422 must name
    loc: list | None = None


def body_with(field_name: str, raw_value: str) -> bytes:
    """A request body whose ``field_name`` holds ``raw_value`` (raw JSON text)."""
    if field_name == "loras.scale":
        return (
            f'{{"image_url": "{GOOD}", "loras": [{{"path": "a", "scale": {raw_value}}}]}}'.encode()
        )
    return f'{{"image_url": "{GOOD}", "{field_name}": {raw_value}}}'.encode()


def number_cases() -> Iterator[Case]:
    json_headers = {"content-type": "application/json"}
    for name in (*NUMERIC_FIELDS, "loras.scale"):
        loc = ["loras", 0, "scale"] if name == "loras.scale" else [name]
        for raw in BAD_NUMBERS:
            body = body_with(name, raw)
            yield Case(f"sync-{name}-{raw}", "POST", FAL, body, json_headers, 422, ["body", *loc])
            yield Case(
                f"queue-{name}-{raw}", "POST", QUEUE, body, json_headers, 422, ["body", *loc]
            )
        for raw in ("NaN", "Infinity", "1e309", "true"):
            instance = body_with(name, raw).decode()
            v1_body = f'{{"instances": [{instance}]}}'.encode()
            yield Case(
                f"v1-{name}-{raw}",
                "POST",
                V1,
                v1_body,
                json_headers,
                422,
                ["body", "instances", 0, *loc],
            )
        for raw in ("NaN", "-Infinity", "false"):
            proxy_headers = {**json_headers, "x-fal-target-url": f"https://fal.run/{APP}"}
            body = body_with(name, raw)
            yield Case(
                f"proxy-{name}-{raw}", "POST", PROXY, body, proxy_headers, 422, ["body", *loc]
            )


def body_cases() -> Iterator[Case]:
    json_headers = {"content-type": "application/json"}
    bodies = {
        "nan-body": b"NaN",
        "deep-nesting": b"[" * 100_000 + b"]" * 100_000,
        "deep-object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "invalid-utf8": b'{"image_url": "\xff\xfe"}',
        "nul-bytes": b'{"image_url": "\x00\x00"}',
        "huge-int": b'{"image_url": "x", "seed": ' + b"9" * 5000 + b"}",
        "dup-keys": b'{"image_url": "x", "image_url": 1}',
        "array-body": b"[]",
        "number-body": b"1e309",
        "null-body": b"null",
        "lone-surrogate": b'{"image_url": "\\u202e\\ud83d\\ude00\\udfff"}',
        "not-json": b"<xml/>",
    }
    for name, content in bodies.items():
        for route in (FAL, QUEUE, V1):
            yield Case(f"{name}-{route}", "POST", route, content, json_headers)
    for content_type in ("text/plain", "multipart/form-data; boundary=x", "application/xml"):
        for route in (FAL, QUEUE, V1):
            yield Case(
                f"type-{content_type}-{route}",
                "POST",
                route,
                b"x=1",
                {"content-type": content_type},
            )
    yield Case("v1-instances-nan", "POST", V1, b'{"instances": NaN}', json_headers, 400)
    yield Case("v1-instances-empty", "POST", V1, b'{"instances": []}', json_headers, 400)
    yield Case(
        "v1-other-model",
        "POST",
        "/v1/models/other:predict",
        b'{"instances": [{}]}',
        json_headers,
        404,
    )


def queue_and_file_cases() -> Iterator[Case]:
    ids = ["..%2F..%2Fetc%2Fpasswd", "%00", "x" * 5000, "%E2%80%AE", "' OR 1=1 --", "NaN", "-1"]
    for index, request_id in enumerate(ids):
        for method, tail in (
            ("GET", "/status"),
            ("GET", ""),
            ("PUT", "/cancel"),
            ("GET", "/status/stream"),
        ):
            yield Case(
                f"queue-{index}-{method}{tail}",
                method,
                f"{REQUESTS}/{request_id}{tail}",
                status=404,
            )
    yield Case("status-logs-nan", "GET", f"{REQUESTS}/nope/status?logs=NaN", status=404)
    for index, name in enumerate(["..%2Fsecret", "%00.png", "x" * 5000, "NaN", "a.png?x=%ff"]):
        yield Case(f"files-{index}", "GET", f"/files/{name}", status=404)


def webhook_cases() -> Iterator[Case]:
    body = json.dumps({"image_url": GOOD}).encode()
    headers = {"content-type": "application/json"}
    webhooks = {
        "loopback": "http://127.0.0.1:9/hook",
        "localhost": "http://localhost:9/hook",
        "metadata": "http://169.254.169.254/latest",
        "nat64-metadata": "http://[64:ff9b::a9fe:a9fe]/",
        "6to4-loopback": "http://[2002:7f00:1::]/",
        "mapped-private": "http://[::ffff:10.0.0.1]/",
        "port-0": "http://example.com:0/hook",
        "port-high": "http://example.com:70000/hook",
        "data": "data:text/plain,hi",
        "javascript": "javascript:alert(1)",
        "mailto": "mailto:a@example.com",
        "no-host": "http:///hook",
    }
    for name, url in webhooks.items():
        path = f"{QUEUE}?{httpx.QueryParams({'fal_webhook': url})}"
        yield Case(f"webhook-{name}", "POST", path, body, headers, 422, ["query", "fal_webhook"])


def control_cases() -> Iterator[Case]:
    for path in (
        "/v2/repository/models/chrono-upscaler/unload",
        "/v2/repository/models/chrono-upscaler/load",
        "/v1/models/chrono-upscaler:explain",
        "/v2/models/chrono-upscaler/infer",
        "/v2/models/chrono-upscaler/versions/1/infer",
    ):
        # not served (a POST to ``…:explain`` meets the readiness route's GET: 405)
        body = b'{"inputs": [{"data": [NaN]}]}'
        yield Case(f"control-{path}", "POST", path, body, JSON_HEADERS, (404, 405))
    yield Case("v2-metadata", "GET", "/v2/models/chrono-upscaler", status=404)
    yield Case(
        "proxy-elsewhere",
        "POST",
        PROXY,
        b"{}",
        {"x-fal-target-url": "http://169.254.169.254/"},
        400,
    )
    yield Case("proxy-no-target", "POST", PROXY, b"{}", {}, 400)
    yield Case(
        "proxy-traversal",
        "POST",
        PROXY,
        b"{}",
        {
            "x-fal-target-url": f"https://fal.run/{APP}/../../v2/repository/models/chrono-upscaler/unload"
        },
        400,
    )


CASES = [
    *number_cases(),
    *body_cases(),
    *queue_and_file_cases(),
    *webhook_cases(),
    *control_cases(),
]


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 80


@pytest.fixture(scope="module")
def client(guarded_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=guarded_server.url, timeout=60) as client:
        yield client


@pytest.mark.parametrize("case", CASES, ids=[case.id[:80] for case in CASES])
def test_hostile_input(client: httpx.Client, case: Case) -> None:
    response = client.request(case.method, case.path, content=case.content, headers=case.headers)
    assert response.status_code < 500, response.text[:500]
    if case.status is not None:
        expected = case.status if isinstance(case.status, tuple) else (case.status,)
        assert response.status_code in expected, response.text[:500]
    else:
        assert 400 <= response.status_code < 500, response.text[:500]
    if not case.path.endswith("/status/stream") or response.status_code != 200:
        body = response.json()  # always valid JSON
        assert isinstance(body, dict)
        if "detail" in body:  # fal's shape (KServe's routes keep {"error"}, cancel {"status"})
            assert body["error_type"] == response.headers["x-fal-error-type"], body
            assert response.headers["x-fal-retryable"] in ("true", "false")
    if case.loc is not None:
        locations = [item["loc"] for item in body["detail"]]
        assert case.loc in locations, body
        assert all(item["loc"][-1] != "body" or len(item["loc"]) > 1 for item in body["detail"])
    assert response.headers.get("connection", "").lower() != "close", "connection dropped"


def test_server_is_healthy_after_the_corpus(client: httpx.Client, guarded_server) -> None:
    guarded_server.assert_alive()
    assert "Traceback" not in guarded_server.log()
    answer = client.post(FAL, json={"image_url": GOOD, "sync_mode": True})
    assert answer.status_code == 200, answer.text
