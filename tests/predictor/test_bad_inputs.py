"""A corpus of bad inputs: each gets its 4xx with a useful detail, and the server keeps serving."""

from __future__ import annotations

import httpx
import pytest
from PIL import Image

from tests.conftest import data_uri, encode, photo_crop
from tests.predictor.test_codec import png_with_header_size

FAL = "/fal-ai/chrono-edit-lora-gallery/upscaler"
GOOD = data_uri(encode(photo_crop(16, 16)))


def _post_raw(server, content: bytes, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(
        server.url + FAL, content=content, headers={"content-type": content_type}, timeout=60
    )


@pytest.mark.parametrize(
    ("content", "loc_part"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b"", "body"),
        (b'"just a string"', "body"),
    ],
)
def test_malformed_bodies_are_422(server, content: bytes, loc_part: str) -> None:
    response = _post_raw(server, content)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == loc_part
    server.assert_alive()


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"image_url": None}, ["body", "image_url"]),
        ({"image_url": ""}, ["body", "image_url"]),
        ({"upscale_factor": "big"}, ["body", "upscale_factor"]),
        ({"upscale_factor": 0.5}, ["body", "upscale_factor"]),
        ({"upscale_factor": 4.01}, ["body", "upscale_factor"]),
        ({"guidance_scale": -1}, ["body", "guidance_scale"]),
        ({"guidance_scale": 10.5}, ["body", "guidance_scale"]),
        ({"num_inference_steps": 1}, ["body", "num_inference_steps"]),
        ({"num_inference_steps": 51}, ["body", "num_inference_steps"]),
        ({"num_inference_steps": 2.5}, ["body", "num_inference_steps"]),
        ({"lora_scale": 2.5}, ["body", "lora_scale"]),
        ({"seed": -1}, ["body", "seed"]),
        ({"seed": 2**64}, ["body", "seed"]),
        ({"seed": 1.5}, ["body", "seed"]),
        ({"seed": "12"}, ["body", "seed"]),
        ({"output_format": "gif"}, ["body", "output_format"]),
        ({"sync_mode": "perhaps"}, ["body", "sync_mode"]),
        ({"enable_safety_checker": [1]}, ["body", "enable_safety_checker"]),
        ({"loras": [{"path": "a"}] * 4}, ["body", "loras"]),
        ({"loras": [{"path": "a", "scale": 5}]}, ["body", "loras", 0, "scale"]),
        ({"loras": [{"scale": 1}]}, ["body", "loras", 0, "path"]),
        ({"loras": "a"}, ["body", "loras"]),
        ({"upscale_facter": 2}, ["body", "upscale_facter"]),
    ],
)
def test_schema_and_range_errors_are_422_naming_the_field(server, fields, loc) -> None:
    payload = {"image_url": GOOD, **fields}
    if fields.get("image_url", "") is None:
        del payload["image_url"]
    response = server.post(payload)
    assert response.status_code == 422, response.text
    locations = [error["loc"] for error in response.json()["detail"]]
    assert loc in locations
    server.assert_alive()


def test_missing_image_url(server) -> None:
    response = server.post({"upscale_factor": 2})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "image_url"]
    assert response.json()["detail"][0]["type"] == "missing"


def test_422_does_not_echo_huge_inputs(server) -> None:
    response = server.post({"image_url": GOOD, "seed": "x" * 100_000})
    assert response.status_code == 422
    assert len(response.content) < 2000


@pytest.mark.parametrize(
    ("image_url", "status", "error_type"),
    [
        (data_uri(b"this is not an image", "image/png"), 400, "image_load_error"),
        (data_uri(encode(photo_crop(32, 32), "JPEG")[:300], "image/jpeg"), 400, "image_load_error"),
        (data_uri(encode(photo_crop(8, 8), "ICO"), "image/x-icon"), 400, "image_load_error"),
        (data_uri(encode(photo_crop(8, 8), "PPM"), "image/x-ppm"), 400, "image_load_error"),
        ("data:image/png;base64,!!!notbase64!!!", 400, "image_load_error"),
        ("data:image/png;base64", 400, "image_load_error"),
        (data_uri(png_with_header_size(50_000, 50_000)), 413, "image_too_large"),
        ("file:///etc/passwd", 400, "url_not_allowed"),
        ("ftp://127.0.0.1/x.png", 400, "url_not_allowed"),
        ("javascript:alert(1)", 400, "url_not_allowed"),
        ("not a url at all", 400, "url_not_allowed"),
        ("http://no-such-host.invalid/x.png", 400, "file_download_error"),
    ],
)
def test_bad_images_and_urls(server, image_url: str, status: int, error_type: str) -> None:
    response = server.post({"image_url": image_url})
    assert response.status_code == status, response.text
    body = response.json()
    assert body["detail"][0]["type"] == error_type
    assert body["detail"][0]["loc"] == ["body", "image_url"]
    assert response.headers["x-fal-error-type"] == error_type
    server.assert_alive()


def test_unsupported_format_names_the_supported_ones(server) -> None:
    response = server.post({"image_url": data_uri(encode(photo_crop(8, 8), "TGA"))})
    assert "JPEG, PNG, WebP, GIF, BMP, TIFF" in response.json()["detail"][0]["msg"]


def test_http_errors_from_the_image_host(server, image_host) -> None:
    missing = server.post({"image_url": f"{image_host.url}/missing.png"})
    assert missing.status_code == 400 and "HTTP 404" in missing.json()["detail"][0]["msg"]
    loop = server.post({"image_url": f"{image_host.url}/loop"})
    assert loop.status_code == 400 and "redirected" in loop.json()["detail"][0]["msg"]
    truncated = image_host.add("/truncated.jpg", encode(photo_crop(64, 64), "JPEG")[:500])
    assert server.post({"image_url": truncated}).status_code == 400
    server.assert_alive()


def test_loras_on_sr_engine_are_refused_not_ignored(server) -> None:
    response = server.post({"image_url": GOOD, "loras": [{"path": "paint-brush", "scale": 1}]})
    assert response.status_code == 400
    detail = response.json()["detail"][0]
    assert detail["type"] == "feature_not_supported" and detail["loc"] == ["body", "loras"]
    assert "'sr' engine" in detail["msg"]


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "[::1]", "127.0.0.2", "0.0.0.0", "[::ffff:127.0.0.1]"]
)
def test_guarded_server_refuses_loopback_urls(guarded_server, image_host, host: str) -> None:
    port = image_host.url.rsplit(":", 1)[1]
    url = image_host.add("/guarded.png", encode(photo_crop(16, 16)))
    response = guarded_server.post({"image_url": url.replace("127.0.0.1", host)})
    assert response.status_code == 400, response.text
    assert response.json()["detail"][0]["type"] == "url_not_allowed"
    assert port  # the image exists and would be served: only the guard stops it
    guarded_server.assert_alive()


def test_guarded_server_size_limits(guarded_server) -> None:
    limit = 1024 * 1024
    # a body over the HTTP limit is cut off before it is buffered
    huge = guarded_server.post({"image_url": "data:image/png;base64," + "A" * (2 * limit)})
    assert huge.status_code == 413 and huge.json()["detail"][0]["type"] == "file_too_large"
    # a data: URI under the body limit but over the download limit
    over = guarded_server.post({"image_url": "data:image/png;base64," + "A" * (limit * 4 // 3 + 8)})
    assert over.status_code == 413, over.text
    assert over.json()["detail"][0]["ctx"] == {"max_bytes": limit}
    # decoded pixels over the input limit (1 MP) and planned output over the output limit (4 MP)
    too_many_pixels = Image.new("RGB", (1200, 1000))
    response = guarded_server.post({"image_url": data_uri(encode(too_many_pixels, "JPEG"))})
    assert response.status_code == 413 and response.json()["detail"][0]["type"] == "image_too_large"
    big_output = guarded_server.post(
        {"image_url": data_uri(encode(Image.new("RGB", (800, 800)), "JPEG")), "upscale_factor": 4}
    )
    assert big_output.status_code == 413
    assert big_output.json()["detail"][0]["loc"] == ["body", "upscale_factor"]
    guarded_server.assert_alive()


def test_chunked_body_over_limit(guarded_server) -> None:
    def chunks():
        yield b'{"image_url": "data:image/png;base64,'
        for _ in range(40):
            yield b"A" * 65536
        yield b'"}'

    response = httpx.post(
        guarded_server.url + FAL,
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413
    guarded_server.assert_alive()
