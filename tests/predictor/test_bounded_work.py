"""Work bounded by what the input costs (issue 25): a JPEG that repeats one scan is refused before
decoding, a decode past its request's deadline does not hold the engine worker, and a finished
queued request keeps its output, not its input."""

from __future__ import annotations

import asyncio
import gc
import io
import threading
import time

import pytest
from PIL import Image

from predictor import journey
from predictor.api.errors import parse_request
from predictor.codec import MAX_JPEG_SCANS, decode_image
from predictor.config import Settings
from predictor.dev.hostile import progressive_jpeg_repeating_scan
from predictor.engines import SROptions, load_engine
from predictor.errors import InputError, RequestFailed
from predictor.journey import Upscaler
from predictor.queue.base import Status
from predictor.queue.local import LocalQueue
from predictor.schema import UpscaleRequest
from predictor.storage.memory import MemoryOutputStore
from tests.conftest import data_uri, encode, photo_crop


def test_a_jpeg_repeating_one_scan_100_000_times_is_refused_before_decoding() -> None:
    hostile = progressive_jpeg_repeating_scan(4096, 100_000)
    assert len(hostile) < 8 * 1024 * 1024  # a few MB: well within the download limit
    with pytest.raises(InputError) as refused:
        decode_image(hostile, max_pixels=4096 * 4096)
    assert refused.value.error_type == "image_load_error"
    assert refused.value.ctx == {"max_scans": MAX_JPEG_SCANS}


def test_progressive_jpegs_with_thumbnails_still_decode() -> None:
    thumbnail = io.BytesIO()
    photo_crop(32, 24).save(thumbnail, "JPEG", progressive=True)
    exif = Image.Exif()
    exif[0x0201] = 0  # a thumbnail is JPEG bytes inside the EXIF: its scans count too
    image = photo_crop(96, 64)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", progressive=True, exif=exif.tobytes() + thumbnail.getvalue())
    assert decode_image(buffer.getvalue(), max_pixels=10_000).size == (96, 64)
    # the most scans allowed still decode
    assert decode_image(progressive_jpeg_repeating_scan(64, MAX_JPEG_SCANS - 6), 10_000).size == (
        64,
        64,
    )


def _upscaler(**settings) -> Upscaler:
    return Upscaler(
        load_engine(SROptions()),
        Settings(max_inflight=1, **settings),
        MemoryOutputStore(1 << 24, 60),
    )


def test_a_decode_past_the_deadline_frees_the_engine_worker(monkeypatch) -> None:
    """Whatever the input: a decode that never ends (here one that waits) costs its request a
    504 at the deadline, and the engine worker is free for the next request at once."""
    stuck = encode(photo_crop(8, 8), "PNG") + b"stuck"
    release = threading.Event()
    real_decode = journey.decode_image

    def decode(data: bytes, max_pixels: int, keep_alpha: bool = False) -> Image.Image:
        if data == stuck:
            release.wait(120)
        return real_decode(data, max_pixels, keep_alpha)

    monkeypatch.setattr(journey, "decode_image", decode)
    upscaler = _upscaler(request_timeout_s=1.0)

    async def scenario() -> tuple[RequestFailed, int, float]:
        with pytest.raises(RequestFailed) as timed_out:
            await upscaler.upscale(parse_request({"image_url": data_uri(stuck)}), "http://test")
        ended = time.monotonic()
        while upscaler.pool.inflight and time.monotonic() - ended < 30:
            await asyncio.sleep(0.01)
        freed_after = time.monotonic() - ended
        normal = parse_request({"image_url": data_uri(encode(photo_crop(8, 8)))})
        answer = await upscaler.upscale(normal, "http://test")
        return timed_out.value, answer.images[0].width, freed_after

    try:
        error, width, freed_after = asyncio.run(scenario())
        assert not release.is_set()  # the stuck decode is still going
        assert error.status_code == 504
        assert width == 16  # the next request was served by the freed worker
        print(f"worker freed {freed_after:.3f} s after the 504")
    finally:
        release.set()
        upscaler.close()


def test_a_finished_queued_request_keeps_its_output_not_its_input() -> None:
    upscaler = _upscaler()
    image_url = data_uri(encode(photo_crop(16, 16)))
    queue = LocalQueue(upscaler, 3600)

    def live_inputs() -> list[UpscaleRequest]:
        gc.collect()
        return [
            thing
            for thing in gc.get_objects()
            if isinstance(thing, UpscaleRequest) and thing.image_url == image_url
        ]

    async def scenario() -> None:
        state = await queue.submit(
            "kept", parse_request({"image_url": image_url}), "http://t", None
        )
        while (state := await queue.state("kept")).status is not Status.COMPLETED:
            await asyncio.sleep(0.01)
        assert state.outcome is not None and not state.outcome.failed
        assert live_inputs() == []  # the entry keeps the outcome, the request is gone

    try:
        asyncio.run(scenario())
    finally:
        upscaler.close()


def test_redis_drops_a_finished_request_s_input(redis_url) -> None:
    from predictor.queue.redis import RedisQueue

    upscaler = _upscaler()
    queue = RedisQueue(upscaler, 3600, redis_url=redis_url, prefix="bounded")
    request = parse_request({"image_url": data_uri(encode(photo_crop(16, 16)))})

    async def scenario() -> None:
        await queue.start()
        try:
            for request_id in ("done", "cancelled"):
                await queue.submit(request_id, request, "http://t", None)
                job = queue.key("job", request_id)
                assert await queue.redis.hexists(job, "request")  # kept until it is run
                if request_id == "cancelled":
                    await queue.cancel(request_id)
                while (await queue.state(request_id)).status is not Status.COMPLETED:
                    await asyncio.sleep(0.02)
                assert await queue.redis.hexists(job, "outcome")
                assert not await queue.redis.hexists(job, "request")
        finally:
            await queue.stop()

    try:
        asyncio.run(scenario())
    finally:
        upscaler.close()
