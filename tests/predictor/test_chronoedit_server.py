"""The chronoedit engine behind the real KServe server, on the tiny random model."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from predictor.cli import build_parser, main, settings_from_args
from predictor.engines.blend import plan_pass_tiles
from predictor.engines.chronoedit.model import UPSCALER_PROMPT
from predictor.engines.options import ChronoEditOptions, SROptions
from tests.conftest import ServerProcess, data_uri, encode, photo_crop, start_server, stop_server
from tests.predictor.chronoedit_helpers import decode_data_uri, seam_ratio

AREA = 64 * 64  # 64×48 outputs are one pass; 192×128 outputs are 12 blended tiles


@pytest.fixture(scope="module")
def chrono_server(tmp_path_factory, tiny_model_dir: Path) -> Iterator[ServerProcess]:
    server = start_server(
        tmp_path_factory.mktemp("chrono-server"),
        "--engine",
        "chronoedit",
        "--model-dir",
        str(tiny_model_dir),
        "--max-pass-area",
        str(AREA),
        "--threads",
        "2",
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def flagging_server(tmp_path_factory, tiny_model_dir: Path, flagging_checker_dir: Path):
    server = start_server(
        tmp_path_factory.mktemp("chrono-flagging"),
        "--engine",
        "chronoedit",
        "--model-dir",
        str(tiny_model_dir),
        "--safety-checker-dir",
        str(flagging_checker_dir),
        "--threads",
        "2",
    )
    yield server
    stop_server(server)


def _request(width: int = 32, height: int = 24, **fields) -> dict:
    return {
        "image_url": data_uri(encode(photo_crop(width, height))),
        "upscale_factor": 2,
        "num_inference_steps": 2,
        "seed": 11,
        "output_format": "png",
        "sync_mode": True,
        **fields,
    }


def _upscale(server: ServerProcess, **fields):
    response = server.post(_request(**fields))
    assert response.status_code == 200, response.text
    body = response.json()
    (image,) = body["images"]
    return body, image, decode_data_uri(image["url"])


def test_reports_true_size_and_echoes_prompt(chrono_server: ServerProcess) -> None:
    body, meta, image = _upscale(chrono_server)
    assert body["prompt"] == UPSCALER_PROMPT and body["seed"] == 11
    assert (meta["width"], meta["height"]) == image.size == (64, 48)
    # 30×20 × 1.5 = 45×30: rounded to the 16 grid, and the response says what came back
    _, meta, image = _upscale(chrono_server, width=30, height=20, upscale_factor=1.5)
    assert (meta["width"], meta["height"]) == image.size == (48, 32)
    assert "chronoedit safety_checker=none" in chrono_server.log()  # the start-up warning


def test_same_seed_same_bytes(chrono_server: ServerProcess) -> None:
    first = _upscale(chrono_server)[1]["url"]
    assert _upscale(chrono_server)[1]["url"] == first
    assert _upscale(chrono_server, seed=12)[1]["url"] != first


def test_lora_scale_changes_the_output(chrono_server: ServerProcess) -> None:
    with_lora = _upscale(chrono_server, lora_scale=1)[1]["url"]
    assert _upscale(chrono_server, lora_scale=0)[1]["url"] != with_lora
    assert _upscale(chrono_server, lora_scale=1)[1]["url"] == with_lora  # and back again


@pytest.mark.parametrize("factor", [0.5, 4.5])
def test_factor_outside_one_to_four_is_422(chrono_server: ServerProcess, factor: float) -> None:
    response = chrono_server.post(_request(upscale_factor=factor))
    assert response.status_code == 422
    assert any(error["loc"][-1] == "upscale_factor" for error in response.json()["detail"])


def test_large_output_is_tiled_without_seams(chrono_server: ServerProcess) -> None:
    _, meta, image = _upscale(chrono_server, width=96, height=64, seed=1)
    assert (meta["width"], meta["height"]) == image.size == (192, 128)
    tiles = plan_pass_tiles(192, 128, AREA)
    assert f"width=192 height=128 tiles={len(tiles)} " in chrono_server.log()
    assert seam_ratio(image.convert("RGB"), tiles) < 1.3


def test_flagged_output_is_black(flagging_server: ServerProcess) -> None:
    _, _, flagged = _upscale(flagging_server)
    assert flagged.size == (64, 48) and not np.asarray(flagged).any()
    assert "chronoedit safety_checker flagged=1" in flagging_server.log()
    _, _, unchecked = _upscale(flagging_server, enable_safety_checker=False)
    assert np.asarray(unchecked).any()
    # the journey counts what the engine withheld (upscaler_safety_flagged_total)
    metrics = httpx.get(f"{flagging_server.url}/metrics", timeout=10).text
    counted = re.search(
        r'^upscaler_safety_flagged_total\{engine="chronoedit"\} (\S+)$', metrics, re.M
    )
    assert counted is not None and float(counted.group(1)) == 1.0


def test_cli_flags_reach_the_engine() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--engine",
            "chronoedit",
            "--model-dir",
            "/models/chrono",
            "--upscaler-lora",
            "/models/up.safetensors",
            "--distill-lora",
            "/models/distill.safetensors",
            "--dtype",
            "bfloat16",
            "--device",
            "cuda",
            "--max-pass-area",
            "1000000",
            "--compile",
            "--safety-checker-dir",
            "/models/checker",
        ]
    )
    assert settings_from_args(args).engine_options == ChronoEditOptions(
        model_dir="/models/chrono",
        upscaler_lora="/models/up.safetensors",
        distill_lora="/models/distill.safetensors",
        dtype="bfloat16",
        device="cuda",
        max_pass_area=1000000,
        compile=True,
        safety_checker_dir="/models/checker",
    )
    sr = settings_from_args(build_parser().parse_args(["serve", "--sr-model", "realesrgan"]))
    assert sr.engine_options == SROptions(model="realesrgan")


def test_upscale_command_runs_chronoedit(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    source, target = tmp_path / "in.png", tmp_path / "out.png"
    photo_crop(32, 24).save(source)
    flags = ["--engine", "chronoedit", "--model-dir", str(tiny_model_dir), "--seed", "3"]
    assert main(["upscale", str(source), "-o", str(target), *flags]) == 0
    out = capsys.readouterr().out
    assert "32×24" in out and "64×48" in out
    with Image.open(target) as result:
        assert result.size == (64, 48)
