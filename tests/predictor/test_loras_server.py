"""Request LoRAs through the real KServe server (``serve --engine chronoedit`` on the tiny model):
a catalog with a file, a Hub file (a pre-populated Hugging Face cache, offline) and a URL."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import ServerProcess, data_uri, encode, photo_crop, start_server, stop_server
from tests.predictor.chronoedit_helpers import decode_data_uri

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_URI = "hf://acme/upscale-styles/styles/a.safetensors"


def hub_cache(root: Path, source: Path) -> Path:
    """A Hugging Face cache holding ``acme/upscale-styles`` at ``main`` with one file."""
    repo = root / "models--acme--upscale-styles"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    target = repo / "snapshots" / COMMIT / "styles" / "a.safetensors"
    target.parent.mkdir(parents=True)
    shutil.copy(source, target)
    return root


@pytest.fixture(scope="module")
def lora_server(
    tmp_path_factory, tiny_model_dir: Path, lora_files: dict[str, Path], image_host
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("lora-server")
    web = image_host.add("/catalog/a.safetensors", lora_files["a"].read_bytes(), "x/y")
    catalog = root / "catalog.json"  # as the operator's ConfigMap writes it: name → URI
    catalog.write_text(json.dumps({"paint": "a.safetensors", "hub": HUB_URI, "web": web}))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_CACHE", str(hub_cache(root / "hf", lora_files["a_wan"])))
        env.setenv("HF_HUB_OFFLINE", "1")  # the Hub is never asked: only the cache
        server = start_server(
            root,
            "--engine",
            "chronoedit",
            "--model-dir",
            str(tiny_model_dir),
            "--threads",
            "2",
            "--lora-dir",
            str(lora_files["dir"]),
            "--lora-catalog",
            str(catalog),
            "--lora-cache-dir",
            str(root / "lora-cache"),
            "--lora-max-rank",
            "8",
            "--allow-lora-urls",
            "--allow-private-urls",
        )
    yield server
    stop_server(server)


def _body(*loras: tuple[str, float]) -> dict:
    return {
        "image_url": data_uri(encode(photo_crop(16, 16))),
        "num_inference_steps": 2,
        "seed": 21,
        "output_format": "png",
        "sync_mode": True,
        "loras": [{"path": path, "scale": scale} for path, scale in loras],
    }


def _pixels(server: ServerProcess, *loras: tuple[str, float]) -> np.ndarray:
    response = server.post(_body(*loras))
    assert response.status_code == 200, response.text
    return np.asarray(decode_data_uri(response.json()["images"][0]["url"]), dtype=np.int16)


def test_info_lists_the_catalog_names(lora_server: ServerProcess) -> None:
    info = httpx.get(f"{lora_server.url}/info", timeout=10).json()
    assert info["loras_catalog"] == ["hub", "paint", "web"]  # names only, for the playground
    assert info["engine"]["supports_loras"] is True
    assert info["engine"]["loras"]["slots"] == 3 and info["engine"]["loras"]["urls"] is True
    assert "upscale-styles" not in json.dumps(info)  # no URIs


def test_catalog_hub_url_and_file_loras_over_http(lora_server, lora_files, image_host) -> None:
    none = _pixels(lora_server)
    paint = _pixels(lora_server, ("paint", 1.0))
    assert np.abs(paint - none).max() > 8
    # the same weights from the Hub cache (Wan keys), a catalog URL and a request URL (kohya)
    assert np.array_equal(_pixels(lora_server, ("hub", 1.0)), paint)
    assert np.array_equal(_pixels(lora_server, (HUB_URI, 1.0)), paint)
    assert np.array_equal(_pixels(lora_server, ("web", 1.0)), paint)
    url = image_host.add("/request/a.safetensors", lora_files["a_kohya"].read_bytes(), "x/y")
    assert np.array_equal(_pixels(lora_server, (url, 1.0)), paint)
    # order-independent, scale 0 is none, and none after all of it is none
    two = _pixels(lora_server, ("paint", 1.0), ("b.safetensors", 0.5))
    assert np.array_equal(_pixels(lora_server, ("b.safetensors", 0.5), ("paint", 1.0)), two)
    assert np.array_equal(_pixels(lora_server, ("paint", 0.0)), none)
    assert np.array_equal(_pixels(lora_server), none)


def test_lora_errors_have_fals_input_error_shape(lora_server: ServerProcess) -> None:
    for path, status, error_type, text in (
        ("../outside/secret.safetensors", 400, "lora_load_error", "outside the LoRA directory"),
        ("link.safetensors", 400, "lora_load_error", "outside the LoRA directory"),
        ("weights.bin", 400, "lora_load_error", "pickle"),
        ("keyless.safetensors", 400, "lora_load_error", "No key of LoRA"),
        ("rank16.safetensors", 400, "lora_load_error", "--lora-max-rank"),
        ("hf://acme/upscale-styles/none.safetensors", 400, "file_download_error", "Hub"),
    ):
        response = lora_server.post(_body(("paint", 1.0), (path, 1.0)))
        assert response.status_code == status, response.text
        body = response.json()
        assert body["error_type"] == error_type == response.headers["x-fal-error-type"]
        (detail,) = body["detail"]
        assert detail["loc"] == ["body", "loras", 1, "path"] and detail["type"] == error_type
        assert text in detail["msg"], detail["msg"]
    four = lora_server.post(_body(*[("paint", 1.0)] * 4))
    assert four.status_code == 422 and four.json()["detail"][0]["loc"] == ["body", "loras"]
    lora_server.assert_alive()


def test_queued_request_logs_its_loras_and_metrics_count_them(lora_server) -> None:
    submit = httpx.post(
        f"{lora_server.url}/queue/fal-ai/chrono-edit-lora-gallery/upscaler",
        json=_body(("paint", 1.0), ("nested/c.safetensors", 1.0)),
        timeout=30,
    ).json()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = httpx.get(submit["status_url"], params={"logs": 1}, timeout=10).json()
        if status["status"] == "COMPLETED":
            break
        time.sleep(0.2)
    assert status["status"] == "COMPLETED" and "error" not in status
    messages = [line["message"] for line in status["logs"]]
    assert "lora 0/2" in messages and "lora 2/2" in messages
    text = httpx.get(f"{lora_server.url}/metrics", timeout=10).text

    def value(name: str) -> float:
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert match, name
        return float(match.group(1))

    assert value("upscaler_lora_cache_hits_total") >= 1
    assert value("upscaler_lora_cache_misses_total") >= 4  # a, a_wan, a_kohya, b, c …
    assert value("upscaler_lora_load_seconds_count") >= 5
    assert "lora_load_ms=" in lora_server.log()
