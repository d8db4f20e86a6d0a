"""One record per request: filled along the journey, finished once into metrics and a JSON log line.

:class:`TelemetryMiddleware` wraps the upscaling routes: it opens a :class:`RequestRecord`
(visible to the handler through :func:`current_record`), returns its id in ``x-fal-request-id``
and, whatever happens (a 422 from FastAPI, a 413 from the body limit, a 504), finishes it exactly
once with the response's status. Queued work (later) finishes its records the same way.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from predictor import metrics

REQUEST_ID_HEADER = "x-fal-request-id"
log = logging.getLogger("predictor.requests")


@dataclass
class RequestRecord:
    """What one request did: its stage times, device time and sizes."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    route: str = ""
    started: float = field(default_factory=time.perf_counter)
    #: seconds per stage (fetch, queue, decode, inference, encode), summed over instances
    timings: dict[str, float] = field(default_factory=dict)
    device_seconds: float = 0.0
    images: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    #: the work continues elsewhere (a queue submit): that job counts it, not this HTTP call
    handed_off: bool = False

    def add_time(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    def add_device_time(self, seconds: float, telemetry: Telemetry) -> None:
        """Device time of a job; a job that outlives its request (a 504) is still paid for."""
        if self.finished:
            telemetry.count_device_time(seconds)
        else:
            self.device_seconds += seconds

    def add_image(self, width: int, height: int, size_bytes: int, safety_flagged: bool) -> None:
        self.images.append(
            {"width": width, "height": height, "bytes": size_bytes, "flagged": safety_flagged}
        )


_current: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "upscaler_request_record", default=None
)


def current_record() -> RequestRecord | None:
    """The record the middleware opened for the request being handled (None outside one)."""
    return _current.get()


class JsonLineFormatter(logging.Formatter):
    """A log record as one JSON object: the message's fields plus time, level and logger."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record.args if isinstance(record.args, dict) else {"message": record.getMessage()}
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            **fields,
        }
        return json.dumps(line, separators=(",", ":"), default=str)


def configure_request_log(stream: Any = None) -> None:
    """Request lines go out as pure JSON lines, whatever format the other loggers use."""
    if any(isinstance(h.formatter, JsonLineFormatter) for h in log.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class Telemetry:
    """Turns finished records into metrics and the per-request log line, for one engine."""

    def __init__(self, engine: str, gpu_hourly_usd: float = 0.0) -> None:
        self.engine = engine
        self.gpu_hourly_usd = gpu_hourly_usd
        metrics.start_series(engine)

    def count_device_time(self, seconds: float) -> None:
        metrics.DEVICE_SECONDS.labels(self.engine).inc(seconds)
        metrics.COST_USD.labels(self.engine).inc(
            metrics.device_cost_usd(seconds, self.gpu_hourly_usd)
        )

    def count_abandoned(self, reason: str, wasted_s: float, saved_s: float) -> None:
        """A job stopped after its request was given up: what it still cost, what it saved."""
        metrics.ABANDONED_ENGINE_SECONDS.labels(self.engine, reason).inc(wasted_s)
        metrics.SAVED_ENGINE_SECONDS.labels(self.engine, reason).inc(saved_s)

    def finish(self, record: RequestRecord, status: int, error_type: str | None = None) -> str:
        """Count ``record`` once (later calls are no-ops) and return its outcome."""
        outcome = metrics.outcome_for_status(status, error_type)
        if record.finished or record.handed_off:
            return outcome
        record.finished = True
        total = time.perf_counter() - record.started
        engine = self.engine
        metrics.REQUESTS.labels(engine, outcome).inc()
        metrics.REQUEST_DURATION.labels("total", engine, outcome).observe(total)
        for stage in metrics.STAGES[:-1]:
            if stage in record.timings:
                metrics.REQUEST_DURATION.labels(stage, engine, outcome).observe(
                    record.timings[stage]
                )
        cost = metrics.device_cost_usd(record.device_seconds, self.gpu_hourly_usd)
        if record.device_seconds:
            self.count_device_time(record.device_seconds)
        for image in record.images:
            if image["flagged"]:
                metrics.SAFETY_FLAGGED.labels(engine).inc()
        if outcome == "ok":  # fal bills delivered images only
            for image in record.images:
                metrics.OUTPUT_MEGAPIXELS.labels(engine).inc(image["width"] * image["height"] / 1e6)
                metrics.LIST_PRICE.add(
                    engine, metrics.list_price_cents(image["width"], image["height"])
                )
        log.info(
            "request",
            {
                "event": "request",
                "request_id": record.request_id,
                "route": record.route,
                "engine": engine,
                "status": status,
                "outcome": outcome,
                "error_type": error_type,
                **record.details,
                "images": record.images,
                "timings_ms": {
                    **{stage: round(s * 1000, 1) for stage, s in record.timings.items()},
                    "total": round(total * 1000, 1),
                },
                "device_s": round(record.device_seconds, 4),
                "cost_usd": round(cost, 8),
            },
        )
        return outcome


class TelemetryMiddleware:
    """Opens a record for each request to ``tracked(method, path)`` routes and finishes it."""

    def __init__(
        self,
        app: ASGIApp,
        telemetry: Callable[[], Telemetry | None],
        tracked: Callable[[str, str], bool],
    ) -> None:
        self.app = app
        self.telemetry = telemetry
        self.tracked = tracked

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        telemetry = self.telemetry()
        if (
            scope["type"] != "http"
            or telemetry is None
            or not self.tracked(scope["method"], scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        record = RequestRecord(route=scope["path"])
        token = _current.set(record)
        status: int | None = None
        error_type: str | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, error_type
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                for name, value in headers:
                    if name.lower() == b"x-fal-error-type":
                        error_type = value.decode("latin-1")
                headers.append((REQUEST_ID_HEADER.encode(), record.request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            status = status or 499
            raise
        finally:
            _current.reset(token)
            telemetry.finish(record, status or 500, error_type)
