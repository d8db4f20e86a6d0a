"""The real KServe ModelServer over real HTTP: fal route, v1 predict, delivery, health."""

from __future__ import annotations

import base64
import io
import threading

import httpx
import pytest
from PIL import Image

from tests.conftest import data_uri, encode, photo_crop, start_server, stop_server

FAL = "/fal-ai/chrono-edit-lora-gallery/upscaler"


def decode_result_image(url: str) -> Image.Image:
    if url.startswith("data:"):
        return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    image.load()
    image.info["content_type"] = response.headers["content-type"]
    return image


@pytest.mark.parametrize(
    ("output_format", "content_type", "pil_format"),
    [("jpeg", "image/jpeg", "JPEG"), ("png", "image/png", "PNG"), ("webp", "image/webp", "WEBP")],
)
def test_sync_mode_returns_data_uri(server, output_format, content_type, pil_format) -> None:
    source = photo_crop(48, 32)
    response = server.post(
        {
            "image_url": data_uri(encode(source)),
            "upscale_factor": 2,
            "output_format": output_format,
            "sync_mode": True,
            "seed": 7,
        }
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seed"] == 7 and body["prompt"] == ""
    (image,) = body["images"]
    assert image["url"].startswith(f"data:{content_type};base64,")
    assert (image["width"], image["height"], image["content_type"]) == (96, 64, content_type)
    assert image["file_name"].endswith("." + {"jpeg": "jpg"}.get(output_format, output_format))
    decoded = decode_result_image(image["url"])
    assert decoded.format == pil_format and decoded.size == (96, 64)
    assert image["file_size"] == len(base64.b64decode(image["url"].split(",", 1)[1]))


def test_url_mode_output_is_served_and_decodes(server, image_host) -> None:
    url = image_host.add("/photo.jpg", encode(photo_crop(60, 40), "JPEG"), "image/jpeg")
    response = server.post({"image_url": url, "upscale_factor": 1.5, "output_format": "png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["seed"], int)
    (image,) = body["images"]
    assert image["url"].startswith(f"{server.url}/files/") and image["url"].endswith(".png")
    decoded = decode_result_image(image["url"])
    assert decoded.size == (90, 60) == (image["width"], image["height"])
    assert decoded.info["content_type"] == "image/png"
    assert httpx.get(f"{server.url}/files/does-not-exist.png").status_code == 404


def test_upscale_is_learned_not_just_resized(server) -> None:
    """The served output is the sr engine's, visibly different from a plain bicubic resize."""
    source = photo_crop(64, 64)
    response = server.post(
        {"image_url": data_uri(encode(source)), "output_format": "png", "sync_mode": True}
    )
    served = decode_result_image(response.json()["images"][0]["url"]).convert("RGB")
    bicubic = source.resize((128, 128), Image.BICUBIC)
    difference = sum(abs(a - b) for a, b in zip(served.tobytes(), bicubic.tobytes(), strict=True))
    assert difference / (128 * 128 * 3) > 1.0


def test_seed_echo_and_exif_orientation(server) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    photo_crop(40, 24).save(buffer, format="JPEG", exif=exif.tobytes())
    response = server.post(
        {"image_url": data_uri(buffer.getvalue(), "image/jpeg"), "seed": 2**64 - 1}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seed"] == 2**64 - 1
    assert (body["images"][0]["width"], body["images"][0]["height"]) == (48, 80)


def test_v1_predict(server) -> None:
    instance = {"image_url": data_uri(encode(photo_crop(30, 20))), "upscale_factor": 3}
    response = httpx.post(
        f"{server.url}/v1/models/chrono-upscaler:predict",
        json={"instances": [instance, {**instance, "upscale_factor": 1, "sync_mode": True}]},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    first, second = response.json()["predictions"]
    assert (first["images"][0]["width"], first["images"][0]["height"]) == (90, 60)
    assert first["images"][0]["url"].startswith("http://127.0.0.1:")
    assert decode_result_image(first["images"][0]["url"]).size == (90, 60)
    assert (second["images"][0]["width"], second["images"][0]["height"]) == (30, 20)


def test_v1_predict_errors(server) -> None:
    predict = f"{server.url}/v1/models/chrono-upscaler:predict"
    bad = httpx.post(predict, json={"instances": [{"image_url": "x", "upscale_factor": 9}]})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "instances", 0, "upscale_factor"]
    assert httpx.post(predict, json={"inputs": []}).status_code == 400
    assert httpx.post(predict, json={"instances": []}).status_code == 400
    server.assert_alive()


def test_health_routes(server) -> None:
    assert httpx.get(f"{server.url}/").status_code == 200
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    server.assert_alive()
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.status_code == 200 and "# TYPE" in metrics.text
    openapi = httpx.get(f"{server.url}/openapi.json").json()
    assert FAL in openapi["paths"]


def test_info_describes_the_deployment(server) -> None:
    info = httpx.get(f"{server.url}/info").json()
    assert info["app_id"] == "fal-ai/chrono-edit-lora-gallery/upscaler"
    assert info["engine"]["engine"] == "sr"
    assert info["engine"]["supports_loras"] is False
    assert info["auth_required"] is False
    assert info["limits"]["max_inflight"] == 1
    assert info["limits"]["shutdown_grace_s"] == 25
    # the defaults keep queue and outputs in this process, and the start-up log says so
    assert (info["queue"], info["output_store"]) == ("in_process", "memory")
    assert "this configuration serves one replica only" in server.log()


def test_queue_full_and_health_while_busy(busy_server) -> None:
    """One job at a time and nobody waits: a second request gets 429 while health answers."""
    # 1024² × 4 (80 waifu2x tiles) takes 6 s or more on 2 cores even on the bf16 path (512² × 4
    # took ~10 s in float32, but ~2 s in bf16), far past the 3 s request budget
    slow_request = {"image_url": data_uri(encode(photo_crop(1024, 1024))), "upscale_factor": 4}
    results: list[httpx.Response] = []
    before = busy_server.admitted_count()
    worker = threading.Thread(target=lambda: results.append(busy_server.post(slow_request)))
    worker.start()
    try:
        busy_server.wait_admitted(before + 1)  # the slow job holds the only worker now
        busy = busy_server.post({"image_url": data_uri(encode(photo_crop(8, 8)))})
        assert busy.status_code == 429, busy.text
        assert busy.json()["error_type"] == "queue_full"
        assert int(busy.headers["retry-after"]) >= 1
        ready = httpx.get(f"{busy_server.url}/v1/models/chrono-upscaler", timeout=2)
        assert ready.status_code == 200
        assert httpx.get(f"{busy_server.url}/metrics", timeout=2).status_code == 200
    finally:
        worker.join(timeout=60)
    (slow,) = results
    assert slow.status_code == 504, slow.text
    assert slow.json()["error_type"] == "request_timeout"
    assert slow.headers["x-fal-error-type"] == "request_timeout"
    busy_server.assert_alive()
    # the timed-out job stops at its next tile and frees the worker for the next request
    for _ in range(40):
        after = busy_server.post({"image_url": data_uri(encode(photo_crop(8, 8)))})
        if after.status_code != 429:
            break
        threading.Event().wait(0.25)
    assert after.status_code == 200, after.text


def test_slow_download_gives_400_not_a_hang(busy_server, image_host) -> None:
    response = busy_server.post({"image_url": f"{image_host.url}/slow"}, timeout=30)
    assert response.status_code == 400
    assert response.json()["detail"][0]["type"] == "file_download_error"
    busy_server.assert_alive()


def test_sigterm_drains_the_request_in_flight(tmp_path) -> None:
    """A rolling update sends SIGTERM: the request being upscaled still gets its answer."""
    srv = start_server(tmp_path)
    try:
        results: list[httpx.Response] = []
        # 512² × 2 keeps the engine busy for ~2.5 s on 2 cores; SIGTERM lands 0.5 s into it
        request = {"image_url": data_uri(encode(photo_crop(512, 512))), "upscale_factor": 2}
        worker = threading.Thread(target=lambda: results.append(srv.post(request)))
        worker.start()
        srv.wait_admitted(1)
        threading.Event().wait(0.5)
        srv.process.terminate()
        worker.join(timeout=60)
        assert results and results[0].status_code == 200, srv.log()[-2000:]
        assert srv.process.wait(timeout=30) is not None
        assert [line["outcome"] for line in srv.request_lines()] == ["ok"]
    finally:
        stop_server(srv)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_gif_bmp_and_tiff_inputs(server, fmt: str) -> None:
    response = server.post(
        {"image_url": data_uri(encode(photo_crop(20, 16), fmt)), "sync_mode": True}
    )
    assert response.status_code == 200, response.text
    assert decode_result_image(response.json()["images"][0]["url"]).size == (40, 32)


def test_alpha_is_kept_by_png_and_webp_and_flattened_by_jpeg(server) -> None:
    logo = Image.new("RGBA", (24, 24), (0, 0, 0, 0))
    logo.paste((30, 90, 200, 255), (6, 6, 18, 18))
    for output_format, keeps in (("png", True), ("webp", True), ("jpeg", False)):
        response = server.post(
            {"image_url": data_uri(encode(logo)), "output_format": output_format, "sync_mode": True}
        )
        assert response.status_code == 200, response.text
        image = decode_result_image(response.json()["images"][0]["url"])
        assert image.size == (48, 48)
        if keeps:
            assert image.mode == "RGBA", output_format
            assert image.getpixel((1, 1))[3] == 0 and image.getpixel((24, 24))[3] == 255
        else:
            assert image.mode == "RGB" and min(image.getpixel((1, 1))) > 240  # flattened on white


def test_an_output_the_format_cannot_hold_is_refused_before_the_engine(server) -> None:
    wide = data_uri(encode(Image.new("RGB", (4100, 4)), "PNG"))
    response = server.post({"image_url": wide, "upscale_factor": 4, "output_format": "webp"})
    assert response.status_code == 413, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "output_format"] and detail["ctx"]["max_side"] == 16383
    assert "output_format jpeg or png" in detail["msg"]
    server.assert_alive()
