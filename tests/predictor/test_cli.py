"""The command line: in-process upscale, and the example request ``make run`` prints."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
from PIL import Image

from predictor.cli import main
from predictor.dev.example import curl_command, write_example
from tests.conftest import ROOT, encode, photo_crop


def test_upscale_command_writes_the_planned_size(tmp_path, capsys) -> None:
    source = tmp_path / "in.jpg"
    source.write_bytes(encode(photo_crop(41, 23), "JPEG"))
    target = tmp_path / "out.webp"
    assert main(["upscale", str(source), "-o", str(target), "--factor", "1.5"]) == 0
    with Image.open(target) as result:
        assert result.format == "WEBP" and result.size == (62, 34)
    assert "41×23" in capsys.readouterr().out
    png = tmp_path / "out.bin"
    assert main(["upscale", str(source), "-o", str(png), "--format", "png"]) == 0
    with Image.open(png) as result:
        assert result.format == "PNG" and result.size == (82, 46)


def test_upscale_command_errors(tmp_path, capsys) -> None:
    source = tmp_path / "in.txt"
    source.write_text("not an image")
    assert main(["upscale", str(source), "-o", str(tmp_path / "o.png")]) == 2
    assert "JPEG, PNG, WebP" in capsys.readouterr().err
    assert main(["upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png")]) == 2
    image = tmp_path / "in.png"
    image.write_bytes(encode(photo_crop(8, 8)))
    assert main(["upscale", str(image), "-o", str(tmp_path / "o.png"), "--factor", "9"]) == 2


def test_upscale_refuses_what_the_engine_cannot_honour(tmp_path, capsys) -> None:
    """The same check as the server's: ``--lora`` on ``sr`` is an error, not silently ignored."""
    source, target = tmp_path / "in.png", tmp_path / "out.png"
    source.write_bytes(encode(photo_crop(16, 16)))
    assert main(["upscale", str(source), "-o", str(target), "--lora", "x.safetensors"]) == 2
    assert "'sr' engine does not support extra LoRAs" in capsys.readouterr().err
    assert not target.exists()


def test_upscale_progress_bar_opens_once_the_total_is_known(tmp_path, capsys) -> None:
    source = tmp_path / "in.png"
    source.write_bytes(encode(photo_crop(16, 16)))
    assert main(["upscale", str(source), "-o", str(tmp_path / "out.png")]) == 0
    err = capsys.readouterr().err
    assert "1/1" in err
    assert ": 0tile [" not in err  # a bar opened without its total prints this stray line


def test_bad_engine_option_names_its_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "predictor", "upscale", "x.png", "-o", "y.png", "--tile-size", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--tile-size: tile_size must be at least 1, got 0" in result.stderr


def test_module_entry_point_matches_console_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "predictor", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0 and "serve" in result.stdout and "upscale" in result.stdout


def test_example_request_is_accepted(server, tmp_path) -> None:
    request_path = write_example(tmp_path, size=64)
    assert f"-d @{request_path}" in curl_command(server.url, request_path)
    response = httpx.post(
        f"{server.url}/fal-ai/chrono-edit-lora-gallery/upscaler",
        content=request_path.read_bytes(),
        headers={"content-type": "application/json"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    image = response.json()["images"][0]
    assert (image["width"], image["height"]) == (128, 128)
    assert json.loads(request_path.read_text())["output_format"] == "png"
