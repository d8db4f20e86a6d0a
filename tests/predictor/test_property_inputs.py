"""Arbitrary JSON at each field and as whole bodies (hypothesis): the edge either takes it or
answers an error that names the field, renders as strict JSON, and never a 5xx from the server.

In process, many examples check the parse and the error body; against the real server, fewer
examples check the whole path (parse, error handler, response) on the sync route, the queue and
KServe's v1 predict over one keep-alive connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from predictor.api.errors import error_response, parse_request
from predictor.errors import ValidationFailed
from predictor.schema import UpscaleRequest
from tests.conftest import data_uri, encode, photo_crop

GOOD = data_uri(encode(photo_crop(8, 8)))
FIELDS = sorted(UpscaleRequest.model_fields)

#: any JSON value Python's json writes, NaN and ±Infinity included
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def check_parse(payload: object) -> None:
    """Valid, or a 422 whose body is strict JSON and whose every error names a location."""
    try:
        parse_request(payload)
    except ValidationFailed as exc:
        response = error_response(exc)
        body = json.loads(response.body)  # strict JSON: no NaN, no lone surrogates
        assert response.status_code == 422
        assert body["detail"] and all(item["loc"][0] == "body" for item in body["detail"])


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(FIELDS), value=json_values)
def test_any_value_in_any_field_parses_or_names_the_field(field: str, value: object) -> None:
    payload = {"image_url": GOOD, field: value}
    try:
        parse_request(payload)
    except ValidationFailed as exc:
        body = json.loads(error_response(exc).body)
        locations = [item["loc"] for item in body["detail"]]
        assert any(loc[:2] == ["body", field] for loc in locations), locations


@settings(max_examples=300, deadline=None)
@given(payload=json_values)
def test_any_whole_body_parses_or_is_a_named_422(payload: object) -> None:
    check_parse(payload)


@pytest.fixture(scope="module")
def client(guarded_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=guarded_server.url, timeout=60) as client:
        yield client


ROUTES = st.sampled_from(
    ["/fal-ai/chrono-edit-lora-gallery/upscaler", "/queue/fal-ai/chrono-edit-lora-gallery/upscaler"]
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(route=ROUTES, field=st.sampled_from(FIELDS), value=json_values, whole=json_values)
def test_the_server_never_fails_on_arbitrary_json(
    client: httpx.Client, route: str, field: str, value: object, whole: object
) -> None:
    for path, payload in (
        (route, {"image_url": GOOD, field: value, "output_format": "png"}),
        (route, whole),
        ("/v1/models/chrono-upscaler:predict", {"instances": [{"image_url": GOOD, field: value}]}),
    ):
        content = json.dumps(payload).encode()  # NaN and Infinity written as Python writes them
        response = client.post(path, content=content, headers={"content-type": "application/json"})
        assert response.status_code < 500, response.text[:300]
        assert isinstance(response.json(), dict)
