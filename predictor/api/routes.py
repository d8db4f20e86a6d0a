"""The HTTP edge: fal's routes mounted on KServe's own FastAPI app, and error translation.

Protocol translation happens here once; the journey below sees only validated requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from predictor.api.connections import MAX_HEADER_BYTES
from predictor.api.errors import (
    INPUT_ERRORS,
    REQUEST_ERRORS,
    ErrorBody,
    error_json,
    error_response,
    http_error_handler,
    openapi_responses,
    upscale_error_handler,
    validation_error_handler,
)
from predictor.api.json_shape import JSON_LIMITS, JsonLimits, check_json_shape
from predictor.errors import (
    CLIENT_DISCONNECTED,
    UpscaleError,
    client_disconnected,
    file_too_large,
    not_ready,
)
from predictor.journey import Upscaler
from predictor.schema import APP_ID, UpscaleRequest, UpscaleResponse
from predictor.telemetry import TelemetryMiddleware

FAL_PATH = f"/{APP_ID}"
_V1_PREDICT = re.compile(r"^/v1/models/[^/]+:predict$")


def is_sync_upscale_route(method: str, path: str) -> bool:
    """The routes that hold the connection while the job runs (fal's sync route, KServe v1)."""
    return method == "POST" and (path == FAL_PATH or _V1_PREDICT.match(path) is not None)


def is_upscale_route(method: str, path: str) -> bool:
    """The routes whose requests are upscaling requests (counted, timed, given an id)."""
    return is_sync_upscale_route(method, path) or (method == "POST" and path == f"/queue{FAL_PATH}")


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with a 413, and upscaling requests whose JSON is
    past ``json_limits`` with a 422 (:func:`check_json_shape`), before the app parses them.

    A declared ``Content-Length`` is checked up front; a chunked body is read up to the limit and
    then replayed to the app (which would buffer it whole anyway).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, json_limits: JsonLimits = JSON_LIMITS) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.json_limits = json_limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await error_response(self._too_large())(scope, receive, send)
                return
        chunks: list[bytes] = []
        received = 0
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            more_body = message.get("more_body", False)
            if received > self.max_bytes:
                await error_response(self._too_large())(scope, receive, send)
                return
        body = b"".join(chunks)
        del chunks
        if body and is_upscale_route(scope["method"], scope["path"]):
            try:
                check_json_shape(body, self.json_limits)
            except UpscaleError as exc:
                await error_response(exc)(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed, body
            if not replayed:
                replayed = True
                message: Message = {"type": "http.request", "body": body, "more_body": False}
                body = b""  # the app keeps its own reference as long as it needs one
                return message
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> UpscaleError:
        return file_too_large(
            f"The request body is over the {self.max_bytes}-byte limit.", self.max_bytes, ("body",)
        )


class CancelOnDisconnectMiddleware:
    """Stop a synchronous request's job when its client hangs up.

    The body is read first (the app would read it whole anyway) and replayed; the connection's
    ``receive`` channel is then watched for ``http.disconnect``. When it comes before the
    response has started, the handler is cancelled with the reason ``client_disconnected``: its
    job stops at the next step or tile and the worker is free at once. The request is recorded
    as a 499 ``client_disconnected`` (the answer itself goes nowhere).
    """

    def __init__(self, app: ASGIApp, watched: Callable[[str, str], bool]) -> None:
        self.app = app
        self.watched = watched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.watched(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        body: list[Message] = []
        while not body or body[-1].get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":  # gone before its body arrived
                return
            body.append(message)
        gone = asyncio.Event()
        started = False

        async def replay() -> Message:
            if body:
                return body.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        handler = asyncio.ensure_future(self.app(scope, replay, tracked_send))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if handler.done() or started:  # answered (a disconnect after it changes nothing)
                await handler
                return
            handler.cancel(CLIENT_DISCONNECTED)
            with contextlib.suppress(asyncio.CancelledError):
                await handler
            await error_response(client_disconnected())(scope, replay, send)
        except asyncio.CancelledError:
            handler.cancel()
            raise
        finally:
            watcher.cancel()


def describe(upscaler: Upscaler) -> dict[str, Any]:
    """The deployment as a client sees it (no secrets): what runs, its limits and defaults."""
    settings = upscaler.settings
    return {
        "app_id": APP_ID,
        "model_name": settings.model_name,
        "engine": upscaler.engine.metadata(),
        "auth_required": bool(settings.api_keys),
        # where queued requests and sync_mode=false outputs live (in_process/memory: one replica)
        "queue": settings.queue_kind,
        "output_store": settings.output_store_kind,
        # the device's hourly price (--gpu-hourly-usd), for cost per image; None when unset
        "gpu_hourly_usd": settings.gpu_hourly_usd or None,
        "limits": {
            "max_download_bytes": settings.fetch.max_bytes,
            "max_body_bytes": settings.max_body_bytes,
            "max_header_bytes": MAX_HEADER_BYTES,
            "max_json_depth": JSON_LIMITS.max_depth,
            "max_json_values": JSON_LIMITS.max_values,
            "max_input_pixels": settings.max_input_pixels,
            "max_output_pixels": settings.max_output_pixels,
            "max_inflight": settings.max_inflight,
            "max_waiting": settings.max_waiting,
            "request_timeout_s": settings.request_timeout_s,
            "shutdown_grace_s": settings.shutdown_grace_s,
            "queue_result_ttl_s": settings.queue_result_ttl_s,
        },
        "defaults": {name: str(value) for name, value in settings.request_defaults.items()},
        # the LoRA catalog's names a request (and the playground) may put in loras[].path
        "loras_catalog": list(getattr(upscaler.engine, "loras_catalog", None) or []),
    }


def add_telemetry_middleware(app: FastAPI, get_upscaler: Callable[[], Upscaler | None]) -> None:
    """Count and time upscaling requests; add it after the body limit so it sees its 413s."""
    app.add_middleware(
        TelemetryMiddleware,
        telemetry=lambda: upscaler.telemetry if (upscaler := get_upscaler()) else None,
        tracked=is_upscale_route,
    )


def mount_fal_routes(
    app: FastAPI, get_upscaler: Callable[[], Upscaler | None], max_body_bytes: int
) -> None:
    """Add fal's upscaler route and the output file route to ``app`` (KServe's app in serving)."""
    app.add_exception_handler(UpscaleError, upscale_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    # inside the body limit: it reads the (already bounded) body, then watches the connection
    app.add_middleware(CancelOnDisconnectMiddleware, watched=is_sync_upscale_route)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)

    def ready_upscaler() -> Upscaler:
        upscaler = get_upscaler()
        if upscaler is None:
            raise not_ready()
        return upscaler

    @app.post(
        FAL_PATH,
        response_model=UpscaleResponse,
        tags=["fal"],
        summary="Upscale an image (fal-compatible, synchronous)",
        responses=openapi_responses({**INPUT_ERRORS, **REQUEST_ERRORS, 500: ErrorBody}),
    )
    async def upscale(body: UpscaleRequest, request: Request) -> UpscaleResponse:
        return await ready_upscaler().upscale(body, str(request.base_url))

    @app.get(
        "/info",
        tags=["fal"],
        summary="What this deployment runs: engine, limits, auth",
        responses=openapi_responses({503: ErrorBody}),
    )
    async def info() -> dict[str, Any]:
        return describe(ready_upscaler())

    @app.get(
        "/files/{file_name}",
        tags=["fal"],
        summary="Download an output image",
        response_class=Response,
        responses={
            200: {
                "description": "the image",
                "content": {f"image/{kind}": {} for kind in ("jpeg", "png", "webp")},
            },
            **openapi_responses({404: ErrorBody, 503: ErrorBody}),
        },
    )
    async def get_file(file_name: str) -> Response:
        stored = await asyncio.to_thread(ready_upscaler().store.get, file_name)
        if stored is None:
            return error_json(
                404, "file_not_found", f"File {file_name!r} does not exist or has expired."
            )
        return Response(
            stored.data,
            media_type=stored.content_type,
            headers={
                "Cache-Control": "private, immutable",
                "Content-Disposition": f'inline; filename="{file_name}"',
            },
        )
