"""A request's journey: parse → fetch → decode → plan → engine → encode → deliver.

Each step is a function of its own; :meth:`Upscaler._upscale` strings them together, numbered,
with the limits, the worker pool and the output store. Nothing here knows about HTTP: the edge
(:mod:`predictor.api`) parses the request (step 1) and hands in a validated
:class:`UpscaleRequest` and the base URL for output links.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeVar

from PIL import Image

from predictor import metrics
from predictor.codec import (
    ALPHA_FORMATS,
    Encoded,
    decode_image,
    encode_image,
    restore_alpha,
    split_alpha,
)
from predictor.config import Settings
from predictor.engines.base import SAFETY_FLAGGED_KEY, Engine, EngineJob, LoraRequest, ProgressFn
from predictor.errors import (
    UpscaleError,
    feature_not_supported,
    internal_error,
)
from predictor.fetch import fetch_image_bytes
from predictor.plan import plan_output_size, resolve_seed
from predictor.schema import ImageOut, UpscaleRequest, UpscaleResponse
from predictor.storage.base import OutputStore
from predictor.telemetry import RequestRecord, Telemetry, current_record
from predictor.workers import Admission, CancelToken, Deadline, WorkerPool

log = logging.getLogger("predictor.journey")
T = TypeVar("T")
#: how often an engine worker waiting for a decode checks whether its job was given up
DECODE_POLL_S = 0.05


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
    #: the engine's safety checker replaced the output (see ``SAFETY_FLAGGED_KEY``)
    safety_flagged: bool = False


#: ``decode(data, max_pixels, keep_alpha)``: :func:`decode_image`, or a wrapper around it
DecodeFn = Callable[[bytes, int, bool], Image.Image]


def process_image(
    data: bytes,
    request: UpscaleRequest,
    seed: int,
    engine: Engine,
    settings: Settings,
    progress: ProgressFn | None = None,
    timings: dict[str, float] | None = None,
    decode: DecodeFn = decode_image,
) -> Processed:
    """The CPU/GPU-bound middle of the journey (decode → plan → engine → encode), run off-loop.

    Stage times go into ``timings`` as each stage ends, so a failed job still reports its own.
    """
    timings = {} if timings is None else timings
    started = time.perf_counter()
    keep_alpha = request.output_format in ALPHA_FORMATS
    image, alpha = split_alpha(decode(data, settings.max_input_pixels, keep_alpha))
    timings["decode"] = _lap(started)
    width, height = plan_output_size(
        image.width,
        image.height,
        request.upscale_factor,
        engine.size_multiple,
        settings.max_output_pixels,
        request.output_format,
    )
    started = time.perf_counter()
    try:
        result = engine.upscale(image, build_job(request, seed, width, height), progress)
    finally:
        timings["inference"] = _lap(started)
    started = time.perf_counter()
    encoded = encode_image(restore_alpha(result, alpha), request.output_format)
    timings["encode"] = _lap(started)
    flagged = bool(result.info.get(SAFETY_FLAGGED_KEY))
    return Processed(encoded, image.size, timings, flagged)


def decode_abandonable(
    decoders: Executor, token: CancelToken, data: bytes, max_pixels: int, keep_alpha: bool
) -> Image.Image:
    """:func:`decode_image` on a decoder thread, waited for by the engine worker until its job is
    cancelled (its deadline, a hang-up, shutdown): the worker is then free at once, and the
    decode (bounded by the pixel and scan limits, but not cancellable) ends on its own."""
    decoding = decoders.submit(decode_image, data, max_pixels, keep_alpha)
    while True:
        try:
            return decoding.result(timeout=DECODE_POLL_S)
        except FutureTimeout:
            if token.cancelled:
                decoding.cancel()  # still waiting for a decoder thread: it never starts
            token.check()


def deliver(encoded: Encoded, sync_mode: bool, store: OutputStore, base_url: str) -> ImageOut:
    """``sync_mode``: a data: URI; otherwise a URL from the output store (``/files/`` here)."""
    if sync_mode:
        file_name = f"{uuid.uuid4().hex}.{encoded.extension}"
        url = f"data:{encoded.content_type};base64,{base64.b64encode(encoded.data).decode()}"
    else:
        file_name = store.put(encoded.data, encoded.content_type, encoded.extension)
        url = store.url(file_name, base_url)
    return ImageOut(
        url=url,
        width=encoded.width,
        height=encoded.height,
        content_type=encoded.content_type,
        file_name=file_name,
        file_size=len(encoded.data),
    )


class Upscaler:
    """The service: one engine, its limits, a worker pool, an output store and telemetry."""

    def __init__(self, engine: Engine, settings: Settings, store: OutputStore) -> None:
        self.engine = engine
        self.settings = settings
        self.store = store
        self.telemetry = Telemetry(engine.name, settings.gpu_hourly_usd)
        self.pool = WorkerPool(
            settings.max_inflight, settings.max_waiting, on_abandoned=self.telemetry.count_abandoned
        )
        metrics.watch_pool(
            self.pool.max_inflight,
            lambda: self.pool.waiting,
            lambda: self.pool.inflight,
            self.pool.free_slots,
        )
        #: decodes run here, not on the engine workers that wait for them (decode_abandonable)
        self.decoders = ThreadPoolExecutor(2 * settings.max_inflight, thread_name_prefix="decode")

    def deadline(self) -> Deadline:
        """``--request-timeout`` from now: one request's deadline, whatever it runs."""
        return Deadline.after(self.settings.request_timeout_s)

    async def upscale(
        self,
        request: UpscaleRequest,
        base_url: str,
        record: RequestRecord | None = None,
        observer: JobObserver | None = None,
        admission: Admission | None = None,
        deadline: Deadline | None = None,
    ) -> UpscaleResponse:
        """Run one request end to end; ``base_url`` is where ``/files/`` links point.

        The HTTP edge opens the request's record (:func:`current_record`) and finishes it; a
        record passed in (a queued job's) or opened here is finished here, exactly once.
        ``observer`` hears the job start, its progress and its stages (the queue's logs);
        ``admission``: a place already reserved in the worker pool (a queued request's);
        ``deadline``: one shared by several calls (a v1 request's instances), else
        ``--request-timeout`` from now.
        """
        owned = record is not None or current_record() is None
        record = record or current_record() or RequestRecord(route="in-process")
        status, error_type = 200, None
        try:
            return await self._upscale(
                request,
                base_url,
                record,
                observer or JobObserver(),
                admission,
                deadline or self.deadline(),
            )
        except UpscaleError as exc:
            status, error_type = exc.status_code, exc.error_type
            raise
        except asyncio.CancelledError:
            status = 499
            raise
        except Exception:
            status, error_type = 500, "internal_error"
            log.exception("upscale request_id=%s failed unexpectedly", record.request_id)
            raise internal_error() from None
        finally:
            if owned:
                self.telemetry.finish(record, status, error_type)

    async def _upscale(
        self,
        request: UpscaleRequest,
        base_url: str,
        record: RequestRecord,
        observer: JobObserver,
        admission: Admission | None,
        deadline: Deadline,
    ) -> UpscaleResponse:
        """The journey of one validated request, step by step (the edge did 1: parse)."""

        # 2. the deployment's defaults, then refuse what this engine cannot honour
        request = apply_defaults(request, self.settings)
        record.details.update(
            factor=request.upscale_factor,
            format=request.output_format.value,
            steps=request.num_inference_steps,
            loras=len(request.loras),
        )
        try:
            check_supported(request, self.engine)

            # 3. a place in the worker pool, reserved before anything is fetched (429 when full)
            admission = admission or self.pool.admit()
            seed = resolve_seed(request.seed)
            record.details["seed"] = seed

            # 4. fetch the input (guarded URL or data: URI), within the request's deadline
            data = await self._fetch(request, record, observer, deadline)

            # 5. decode → plan → engine → encode on a worker thread, cancellable at each step
            processed = await self._process(
                data, request, seed, record, observer, admission, deadline
            )

            # 6. deliver: a data: URI, or a link from the output store (uploads off the loop)
            image = await asyncio.to_thread(
                deliver,
                processed.encoded,
                request.sync_mode,
                self.store,
                self.settings.public_url or base_url,
            )
        finally:
            if admission is not None:
                admission.release()
        record.add_image(image.width, image.height, image.file_size or 0, processed.safety_flagged)
        return UpscaleResponse(images=[image], prompt=self.engine.prompt, seed=seed)

    async def _fetch(
        self,
        request: UpscaleRequest,
        record: RequestRecord,
        observer: JobObserver,
        deadline: Deadline,
    ) -> bytes:
        started = time.perf_counter()
        try:
            data = await _within(
                deadline, fetch_image_bytes(request.image_url, self.settings.fetch)
            )
        finally:
            record.add_time("fetch", _lap(started))
        observer.log(
            f"input fetched: {len(data):,} bytes in {record.timings['fetch'] * 1000:.0f} ms"
        )
        return data

    async def _process(
        self,
        data: bytes,
        request: UpscaleRequest,
        seed: int,
        record: RequestRecord,
        observer: JobObserver,
        admission: Admission,
        deadline: Deadline,
    ) -> Processed:
        queued = time.perf_counter()

        def job(token: CancelToken) -> Processed:
            record.add_time("queue", _lap(queued))
            log.info(
                "upscale request_id=%s admitted queue_ms=%.1f",
                record.request_id,
                record.timings["queue"] * 1000,
            )
            observer.started()

            # the engine reports each tile/step; a cancelled job stops at the next one
            def progress(done: int, total: int, unit: str) -> None:
                token.check(done, total)
                observer.progress(done, total, unit)

            def decode(data: bytes, max_pixels: int, keep_alpha: bool) -> Image.Image:
                return decode_abandonable(self.decoders, token, data, max_pixels, keep_alpha)

            timings: dict[str, float] = {}
            try:
                return process_image(
                    data, request, seed, self.engine, self.settings, progress, timings, decode
                )
            finally:
                record.add_device_time(timings.get("inference", 0.0), self.telemetry)
                for stage, seconds in timings.items():
                    record.add_time(stage, seconds)

        processed = await self.pool.run(job, deadline, admission)
        record.details["input"] = list(processed.input_size)
        encoded = processed.encoded
        observer.log(
            f"upscaled {processed.input_size[0]}×{processed.input_size[1]} → "
            f"{encoded.width}×{encoded.height} in {processed.timings['inference']:.2f} s; "
            f"{encoded.extension} {len(encoded.data):,} bytes"
        )
        return processed

    def close(self) -> None:
        self.pool.shutdown()
        self.decoders.shutdown(wait=False, cancel_futures=True)
        self.engine.close()


class JobObserver:
    """Hears a job's life (the queue turns it into status and logs); the default ignores it.

    ``started`` and ``progress`` are called from the engine's worker thread.
    """

    def started(self) -> None:
        """The job reached an engine worker."""

    def progress(self, done: int, total: int, unit: str) -> None:
        """``done`` of ``total`` steps or tiles are finished."""

    def log(self, message: str) -> None:
        """A stage finished (fetch, upscale)."""


def apply_defaults(request: UpscaleRequest, settings: Settings) -> UpscaleRequest:
    """The deployment's defaults (``--default-*``) for the fields a request left out.

    ``settings.request_defaults`` holds values already validated and typed by the schema.
    """
    update: dict[str, Any] = {}
    for name, value in settings.request_defaults.items():
        if name not in request.model_fields_set and value is not None:
            update[name] = value
    return request.model_copy(update=update) if update else request


async def _within(deadline: Deadline, awaitable: Awaitable[T]) -> T:
    try:
        return await asyncio.wait_for(awaitable, timeout=deadline.remaining())
    except TimeoutError:
        raise deadline.expired_error() from None


def _lap(started: float) -> float:
    return time.perf_counter() - started
