"""A request's journey: parse → fetch → decode → plan → engine → encode → deliver.

Each step is a function of its own; :class:`Upscaler` strings them together with the limits,
the worker pool and the output store. Nothing here knows about HTTP: the edge (``routes``,
``model``) hands in a validated :class:`UpscaleRequest` and the base URL for output links.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from predictor.codec import Encoded, decode_image, encode_image
from predictor.config import Settings
from predictor.engines.base import Engine, EngineJob, LoraRequest, ProgressFn
from predictor.errors import (
    UpscaleError,
    ValidationFailed,
    feature_not_supported,
    internal_error,
)
from predictor.fetch import fetch_image_bytes
from predictor.plan import plan_output_size, resolve_seed
from predictor.schema import ImageOut, UpscaleRequest, UpscaleResponse
from predictor.store import OutputStore
from predictor.workers import CancelToken, Deadline, WorkerPool

log = logging.getLogger("predictor.journey")
T = TypeVar("T")


def parse_request(payload: object, loc_prefix: tuple[str | int, ...] = ("body",)) -> UpscaleRequest:
    """Validate a decoded JSON payload; error locations are FastAPI-style, under ``loc_prefix``."""
    try:
        return UpscaleRequest.model_validate(payload)
    except ValidationError as exc:
        raise ValidationFailed(
            [public_error(error, loc_prefix) for error in exc.errors(include_url=False)]
        ) from None


def public_error(error: Any, loc_prefix: tuple[str | int, ...] = ()) -> dict[str, Any]:
    """A pydantic error as FastAPI shows it, made JSON-safe, with long inputs (data: URIs) cut."""
    item: dict[str, Any] = {
        "type": error["type"],
        "loc": [*loc_prefix, *error["loc"]],
        "msg": error["msg"],
        "input": _short(error.get("input")),
    }
    if error.get("ctx"):
        item["ctx"] = {
            key: value if isinstance(value, int | float | str | bool) else str(value)
            for key, value in error["ctx"].items()
        }
    return item


def _short(value: Any, limit: int = 200) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"… ({len(value)} characters)"
    if isinstance(value, dict):
        return {key: _short(item, limit) for key, item in value.items()}
    if isinstance(value, list):
        return [_short(item, limit) for item in value[:20]]
    return value


def check_supported(request: UpscaleRequest, engine: Engine) -> None:
    """Refuse what the engine cannot honour instead of silently ignoring it."""
    if request.loras and not engine.supports_loras:
        raise feature_not_supported(
            f"The '{engine.name}' engine does not support extra LoRAs; send an empty 'loras' "
            "list or use a deployment running the 'chronoedit' engine.",
            ("body", "loras"),
        )


def build_job(request: UpscaleRequest, seed: int, width: int, height: int) -> EngineJob:
    return EngineJob(
        width=width,
        height=height,
        seed=seed,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        lora_scale=request.lora_scale,
        enable_safety_checker=request.enable_safety_checker,
        loras=tuple(LoraRequest(lora.path, lora.scale) for lora in request.loras),
    )


@dataclass
class Processed:
    """What the worker thread hands back: the encoded output and where its time went."""

    encoded: Encoded
    input_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)


def process_image(
    data: bytes,
    request: UpscaleRequest,
    seed: int,
    engine: Engine,
    settings: Settings,
    progress: ProgressFn | None = None,
) -> Processed:
    """The CPU/GPU-bound middle of the journey (decode → plan → engine → encode), run off-loop."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    image = decode_image(data, settings.max_input_pixels)
    timings["decode"] = _lap(started)
    width, height = plan_output_size(
        image.width,
        image.height,
        request.upscale_factor,
        engine.size_multiple,
        settings.max_output_pixels,
    )
    started = time.perf_counter()
    result = engine.upscale(image, build_job(request, seed, width, height), progress)
    timings["inference"] = _lap(started)
    started = time.perf_counter()
    encoded = encode_image(result, request.output_format)
    timings["encode"] = _lap(started)
    return Processed(encoded, image.size, timings)


def deliver(encoded: Encoded, sync_mode: bool, store: OutputStore, base_url: str) -> ImageOut:
    """``sync_mode``: a data: URI; otherwise a URL under ``/files/`` on this server."""
    if sync_mode:
        file_name = f"{uuid.uuid4().hex}.{encoded.extension}"
        url = f"data:{encoded.content_type};base64,{base64.b64encode(encoded.data).decode()}"
    else:
        file_name = store.put(encoded.data, encoded.content_type, encoded.extension)
        url = f"{base_url.rstrip('/')}/files/{file_name}"
    return ImageOut(
        url=url,
        width=encoded.width,
        height=encoded.height,
        content_type=encoded.content_type,
        file_name=file_name,
        file_size=len(encoded.data),
    )


class Upscaler:
    """The service: one engine, its limits, a worker pool and an output store."""

    def __init__(self, engine: Engine, settings: Settings, store: OutputStore) -> None:
        self.engine = engine
        self.settings = settings
        self.store = store
        self.pool = WorkerPool(settings.max_inflight, settings.max_waiting)

    async def upscale(self, request: UpscaleRequest, base_url: str) -> UpscaleResponse:
        """Run one request end to end; ``base_url`` is where ``/files/`` links point."""
        request_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        deadline = Deadline.after(self.settings.request_timeout_s)
        outcome = "error"
        timings: dict[str, float] = {}
        try:
            check_supported(request, self.engine)
            self.pool.check_room()
            seed = resolve_seed(request.seed)
            fetch_started = time.perf_counter()
            data = await _within(
                deadline, fetch_image_bytes(request.image_url, self.settings.fetch)
            )
            timings["fetch"] = _lap(fetch_started)

            queued = time.perf_counter()

            def job(token: CancelToken) -> Processed:
                timings["queue"] = _lap(queued)
                log.info(
                    "upscale request_id=%s admitted queue_ms=%.1f",
                    request_id,
                    timings["queue"] * 1000,
                )

                # the engine reports each tile/step; a cancelled job stops at the next one
                def progress(done: int, total: int, unit: str) -> None:
                    token.check()

                return process_image(data, request, seed, self.engine, self.settings, progress)

            processed = await self.pool.run(job, deadline)
            timings.update(processed.timings)
            image = deliver(
                processed.encoded,
                request.sync_mode,
                self.store,
                self.settings.public_url or base_url,
            )
            outcome = "ok"
            return UpscaleResponse(images=[image], prompt=self.engine.prompt, seed=seed)
        except UpscaleError as exc:
            outcome = exc.error_type
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception:
            outcome = "internal_error"
            log.exception("upscale request_id=%s failed unexpectedly", request_id)
            raise internal_error() from None
        finally:
            timings["total"] = _lap(started)
            log.info(
                "upscale request_id=%s engine=%s outcome=%s factor=%g format=%s %s",
                request_id,
                self.engine.name,
                outcome,
                request.upscale_factor,
                request.output_format.value,
                " ".join(f"{stage}_ms={seconds * 1000:.1f}" for stage, seconds in timings.items()),
            )

    def close(self) -> None:
        self.pool.shutdown()
        self.engine.close()


async def _within(deadline: Deadline, awaitable: Awaitable[T]) -> T:
    try:
        return await asyncio.wait_for(awaitable, timeout=deadline.remaining())
    except TimeoutError:
        raise deadline.expired_error() from None


def _lap(started: float) -> float:
    return time.perf_counter() - started
