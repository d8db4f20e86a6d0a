"""Requests whose cost is out of proportion to their size: the body's JSON shape is bounded
before parsing, error bodies are bounded whatever the input, every error has fal's shape, and
booleans are as strict as numbers (issue 25)."""

from __future__ import annotations

import json

import httpx
import pytest

from predictor.api.json_shape import JsonLimits, check_json_shape
from predictor.errors import ValidationFailed
from tests.conftest import data_uri, encode, photo_crop

FAL = "/fal-ai/chrono-edit-lora-gallery/upscaler"
QUEUE = f"/queue{FAL}"
V1 = "/v1/models/chrono-upscaler:predict"
GOOD = data_uri(encode(photo_crop(8, 8)))
LIMITS = JsonLimits(max_depth=4, max_values=50, max_number_chars=10)
MAX_ERROR_BODY = 64 * 1024


def refusal(body: bytes, limits: JsonLimits = LIMITS) -> str | None:
    try:
        check_json_shape(body, limits)
    except ValidationFailed as exc:
        (error,) = exc.errors
        assert error["loc"] == ["body"]
        return error["type"]
    return None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"image_url": "x", "loras": [{"path": "a", "scale": 1.5}]}', None),
        (b'{"a": {"b": {"c": {"d": 1}}}}', None),  # depth 4
        (b'{"a": {"b": {"c": {"d": {"e": 1}}}}}', "json_too_deep"),
        (b"[" * 100_000 + b"]" * 100_000, "json_too_deep"),
        (b'{"seed": 1234567890}', None),
        (b'{"seed": 12345678901}', "json_number_too_long"),
        (b'{"seed": ' + b"9" * 5000 + b"}", "json_number_too_long"),
        (("{" + ",".join(f'"f{i}": 0' for i in range(25)) + "}").encode(), "json_too_many_values"),
        (b"[" + b"null," * 60 + b"null]", "json_too_many_values"),
        (b'{"image_url": "\xff\xfe"}', "json_invalid"),
        # brackets, quotes and digits inside strings are not structure
        (json.dumps({"image_url": "[{" * 1000 + '\\"' * 1000 + "9" * 1000}).encode(), None),
        (b"not json at all", None),  # left to the parser, which says where
    ],
)
def test_the_shape_check_counts_structure_not_bytes(body: bytes, expected: str | None) -> None:
    assert refusal(body) == expected


def test_a_large_valid_body_passes_the_default_limits() -> None:
    body = json.dumps({"image_url": "data:image/png;base64," + "A" * 40_000_000}).encode()
    assert refusal(body, JsonLimits()) is None


def _post(server, content: bytes, path: str = FAL) -> httpx.Response:
    return httpx.post(
        server.url + path,
        content=content,
        headers={"content-type": "application/json"},
        timeout=60,
    )


def _assert_fal_error(response: httpx.Response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.text[:500]
    assert len(response.content) <= MAX_ERROR_BODY
    body = response.json()
    assert body["error_type"] == error_type
    assert response.headers["x-fal-error-type"] == error_type
    assert response.headers["x-fal-retryable"] in ("true", "false")
    return body


@pytest.mark.parametrize("path", [FAL, QUEUE, V1])
def test_a_body_of_a_million_unknown_fields_is_refused_before_parsing(server, path) -> None:
    fields = ",".join(f'"field_{i}": "{i}"' for i in range(1_000_000))
    content = ('{"image_url": "x", ' + fields + "}").encode()
    if path == V1:
        content = b'{"instances": [' + content + b"]}"
    body = _assert_fal_error(_post(server, content, path), 422, "validation_error")
    (item,) = body["detail"]
    assert item["type"] == "json_too_many_values"
    assert item["loc"] == ["body"]
    server.assert_alive()


def test_thousands_of_unknown_fields_list_twenty_and_count_the_rest(server) -> None:
    fields = {
        f"field_{i}": "v" * 3000 for i in range(1000)
    }  # 2002 keys and values: under the bound
    response = server.post({"image_url": GOOD, **fields})
    body = _assert_fal_error(response, 422, "validation_error")
    listed = body["detail"]
    assert len(listed) == 21
    assert all(item["type"] == "extra_forbidden" for item in listed[:20])
    assert len(listed[0]["input"]) < 300  # an excerpt, not the 3000 characters
    assert listed[-1]["type"] == "too_many_errors"
    assert listed[-1]["ctx"] == {"left_out": 980}


def test_a_huge_unknown_key_is_echoed_as_an_excerpt(server) -> None:
    response = server.post({"image_url": GOOD, "k" * 5_000_000: 1})
    body = _assert_fal_error(response, 422, "validation_error")
    (item,) = body["detail"]
    assert item["type"] == "extra_forbidden"
    assert item["loc"][0] == "body" and len(item["loc"][1]) < 200


def test_a_missing_field_does_not_echo_the_whole_body(server) -> None:
    response = server.post({"other": "x" * 10_000_000, **{f"f{i}": i for i in range(500)}})
    body = _assert_fal_error(response, 422, "validation_error")
    missing = next(item for item in body["detail"] if item["type"] == "missing")
    assert len(json.dumps(missing["input"])) < 1200


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "json_too_deep"),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "json_too_deep"),
        (b'{"image_url": "x", "seed": ' + b"9" * 5000 + b"}", "json_number_too_long"),
        (b'{"image_url": "\xff\xfe"}', "json_invalid"),
        (b"{not json", "json_invalid"),
    ],
)
@pytest.mark.parametrize("path", [FAL, QUEUE, V1])
def test_bodies_that_do_not_parse_get_fal_s_422(server, content, kind, path) -> None:
    body = _assert_fal_error(_post(server, content, path), 422, "validation_error")
    assert body["detail"][0]["type"] == kind
    assert body["detail"][0]["loc"][0] == "body"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sync_mode", "true"),
        ("sync_mode", 1),
        ("sync_mode", "false"),
        ("enable_safety_checker", "no"),
        ("enable_safety_checker", 0),
        ("enable_safety_checker", "yes"),
    ],
)
def test_booleans_are_as_strict_as_numbers(server, field, value) -> None:
    response = server.post({"image_url": GOOD, field: value})
    body = _assert_fal_error(response, 422, "validation_error")
    assert ["body", field] in [item["loc"] for item in body["detail"]]


def test_true_booleans_still_work(server) -> None:
    response = server.post({"image_url": GOOD, "sync_mode": True, "enable_safety_checker": False})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("method", "path", "status", "error_type"),
    [
        ("GET", "/no/such/route", 404, "not_found"),
        ("DELETE", FAL, 405, "method_not_allowed"),
        ("GET", "/files/nope.png", 404, "file_not_found"),
        ("GET", "/queue/fal-ai/chrono-edit-lora-gallery/requests/nope", 404, "request_not_found"),
    ],
)
def test_framework_and_lookup_errors_have_fal_s_shape(server, method, path, status, error_type):
    response = httpx.request(method, server.url + path, timeout=30)
    body = _assert_fal_error(response, status, error_type)
    assert isinstance(body["detail"], str)


def test_an_error_body_stays_under_64_kb_whatever_its_items_carry() -> None:
    from predictor.api.errors import error_response

    huge = {"type": "x", "loc": ["body", "k" * 10_000], "msg": "m" * 100_000, "input": "i" * 10**6}
    response = error_response(ValidationFailed([huge] * 500))
    body = json.loads(response.body)
    assert len(response.body) <= MAX_ERROR_BODY
    assert 1 < len(body["detail"]) <= 21
    listed, summary = body["detail"][:-1], body["detail"][-1]
    assert summary["type"] == "too_many_errors"  # the count survives the cut, and is right
    assert len(listed) + summary["ctx"]["left_out"] == 500
    assert all(len(item["msg"]) < 2100 for item in body["detail"])


def test_info_names_the_request_limits(server) -> None:
    limits = httpx.get(server.url + "/info", timeout=30).json()["limits"]
    assert limits["max_header_bytes"] == 64 * 1024
    assert limits["max_json_depth"] == JsonLimits().max_depth
    assert limits["max_json_values"] == JsonLimits().max_values
    assert limits["max_body_bytes"] > limits["max_download_bytes"]  # a data: URI's base64 fits
