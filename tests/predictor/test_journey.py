"""The journey's glue: unexpected engine failures, refusals before any fetch, progress."""

from __future__ import annotations

import asyncio

import pytest
from PIL import Image

from predictor.api.errors import parse_request
from predictor.config import Settings
from predictor.engines.base import Engine, EngineJob, ProgressFn
from predictor.errors import InputError, RequestFailed
from predictor.journey import Upscaler, process_image
from predictor.storage.memory import MemoryOutputStore
from tests.conftest import data_uri, encode, photo_crop


class BrokenEngine(Engine):
    name = "broken"

    def upscale(self, image: Image.Image, job: EngineJob, progress: ProgressFn | None = None):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def make_upscaler(engine: Engine) -> Upscaler:
    return Upscaler(engine, Settings(), MemoryOutputStore(1 << 20, 60))


def test_unexpected_engine_failure_is_a_fal_shaped_500(caplog) -> None:
    upscaler = make_upscaler(BrokenEngine())
    request = parse_request({"image_url": data_uri(encode(photo_crop(8, 8)))})
    with pytest.raises(RequestFailed) as err:
        asyncio.run(upscaler.upscale(request, "http://test"))
    assert err.value.status_code == 500 and err.value.error_type == "internal_error"
    assert "illegal memory access" not in err.value.detail  # internals stay in the log
    assert "illegal memory access" in caplog.text
    upscaler.close()


def test_loras_refused_before_anything_is_fetched() -> None:
    upscaler = make_upscaler(BrokenEngine())
    request = parse_request(
        {"image_url": "http://192.0.2.1/never-fetched.png", "loras": [{"path": "x"}]}
    )
    with pytest.raises(InputError) as err:
        asyncio.run(upscaler.upscale(request, "http://test"))
    assert err.value.error_type == "feature_not_supported"
    upscaler.close()


def test_process_image_reports_stage_timings_and_sizes() -> None:
    from predictor.engines import SROptions, load_engine

    ticks: list[tuple[int, int, str]] = []
    request = parse_request({"image_url": "unused", "upscale_factor": 2.5, "output_format": "webp"})
    processed = process_image(
        encode(photo_crop(20, 12)),
        request,
        1,
        load_engine(SROptions()),
        Settings(),
        lambda *tick: ticks.append(tick),
    )
    assert processed.input_size == (20, 12)
    assert (processed.encoded.width, processed.encoded.height) == (50, 30)
    assert set(processed.timings) == {"decode", "inference", "encode"}
    assert ticks and ticks[-1][0] == ticks[-1][1] and ticks[-1][2] == "tile"
