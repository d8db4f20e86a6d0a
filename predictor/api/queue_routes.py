"""fal's queue routes under ``/queue``, and fal's proxy convention at ``/api/fal/proxy``.

fal's clients address a request by the app's owner and alias only
(``/queue/fal-ai/chrono-edit-lora-gallery/requests/{id}``); the full app path is served too.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import AnyHttpUrl, BaseModel, TypeAdapter, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from predictor.api.access import PROXY_PATH
from predictor.api.errors import (
    INPUT_ERRORS,
    REQUEST_ERRORS,
    ErrorBody,
    error_json,
    error_response,
    json_safe,
    openapi_responses,
    public_error,
)
from predictor.errors import InputError, RequestFailed, ValidationFailed, not_ready
from predictor.queue.base import CancelOutcome, QueueBackend, Status, queue_urls
from predictor.queue.webhooks import check_webhook_url
from predictor.schema import APP_ID, OWNER_ALIAS, UpscaleRequest, UpscaleResponse
from predictor.telemetry import REQUEST_ID_HEADER, current_record

QUEUE_SUBMIT_PATH = f"/queue/{APP_ID}"
_WEBHOOK_URL = TypeAdapter(AnyHttpUrl)


class Submitted(BaseModel):
    """fal's answer to a submit."""

    status: str
    request_id: str
    gateway_request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int


class StatusDocument(BaseModel):
    """fal's status document (``IN_QUEUE`` / ``IN_PROGRESS`` / ``COMPLETED``)."""

    status: str
    request_id: str
    response_url: str
    status_url: str
    queue_position: int | None = None
    logs: list[dict[str, Any]] | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None


class CancelAnswer(BaseModel):
    status: str


#: what every route about one request can answer besides its success
_REQUEST_ROUTE_ERRORS = {401: ErrorBody, 404: ErrorBody, 503: ErrorBody}


def not_found(request_id: str) -> JSONResponse:
    return error_json(
        404,
        "request_not_found",
        f"Request {request_id!r} not found (unknown, or its result has expired).",
    )


def mount_queue_routes(
    app: FastAPI,
    get_queue: Callable[[], QueueBackend | None],
    public_url: str | None,
    allow_private_urls: bool = False,
) -> None:
    def ready_queue() -> QueueBackend:
        queue = get_queue()
        if queue is None:
            raise not_ready()
        return queue

    @app.post(
        QUEUE_SUBMIT_PATH,
        tags=["fal queue"],
        summary="Submit a request to the queue",
        response_model=Submitted,
        responses=openapi_responses({**INPUT_ERRORS, **REQUEST_ERRORS}),
    )
    async def submit(
        body: UpscaleRequest,
        request: Request,
        fal_webhook: Annotated[str | None, Query(description="URL to POST the result to")] = None,
    ) -> JSONResponse:
        queue = ready_queue()
        if fal_webhook is not None:
            try:
                _WEBHOOK_URL.validate_python(fal_webhook)
            except ValidationError as exc:
                raise ValidationFailed(
                    [public_error(error, ("query", "fal_webhook")) for error in exc.errors()]
                ) from None
            try:
                await check_webhook_url(fal_webhook, allow_private_urls)
            except InputError as exc:
                item = {"type": exc.error_type, "loc": exc.loc, "msg": exc.msg}
                raise ValidationFailed([{**item, "input": fal_webhook[:200]}]) from None
        record = current_record()
        assert record is not None, "the telemetry middleware opens a record for submits"
        base_url = public_url or str(request.base_url)
        state = await queue.submit(record.request_id, body, base_url, fal_webhook)
        record.handed_off = True  # counted when the job finishes, not now
        return JSONResponse(
            {
                "status": state.status.value,
                "request_id": state.request_id,
                "gateway_request_id": state.request_id,
                **queue_urls(base_url, state.request_id),
                "queue_position": state.position or 0,
            }
        )

    for prefix in {f"/queue/{OWNER_ALIAS}", f"/queue/{APP_ID}"}:
        _mount_request_routes(app, prefix, ready_queue)


def _mount_request_routes(
    app: FastAPI, prefix: str, ready_queue: Callable[[], QueueBackend]
) -> None:
    @app.get(
        f"{prefix}/requests/{{request_id}}/status",
        tags=["fal queue"],
        response_model=StatusDocument,
        responses=openapi_responses(_REQUEST_ROUTE_ERRORS),
    )
    async def status(request_id: str, logs: str | None = None) -> Response:
        state = await ready_queue().state(request_id)
        if state is None:
            return not_found(request_id)
        document = state.status_document(_truthy(logs))
        return JSONResponse(document, headers={REQUEST_ID_HEADER: request_id})

    @app.get(
        f"{prefix}/requests/{{request_id}}/status/stream",
        tags=["fal queue"],
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "status documents as server-sent events, until COMPLETED",
                "content": {"text/event-stream": {}},
            },
            **openapi_responses(_REQUEST_ROUTE_ERRORS),
        },
    )
    async def status_stream(request_id: str, logs: str | None = None) -> Response:
        queue = ready_queue()
        if await queue.state(request_id) is None:
            return not_found(request_id)
        return StreamingResponse(
            _status_events(queue, request_id, _truthy(logs)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", REQUEST_ID_HEADER: request_id},
        )

    @app.get(
        f"{prefix}/requests/{{request_id}}",
        tags=["fal queue"],
        response_model=UpscaleResponse,
        # a failed request's result is its error, with the status it ended in
        responses=openapi_responses(
            {**_REQUEST_ROUTE_ERRORS, **INPUT_ERRORS, **REQUEST_ERRORS, 500: ErrorBody}
        ),
    )
    async def result(request_id: str) -> Response:
        state = await ready_queue().state(request_id)
        if state is None:
            return not_found(request_id)
        headers = {REQUEST_ID_HEADER: request_id}
        outcome = state.outcome
        if state.status is not Status.COMPLETED or outcome is None:
            return error_json(
                400,
                "request_in_progress",
                "Request is still in progress.",
                headers,
                status=state.status.value,
            )
        if outcome.failed:
            return JSONResponse(
                json_safe(outcome.body),
                status_code=outcome.error_status or 500,
                headers={**outcome.error_headers, **headers},
            )
        return JSONResponse(outcome.body, headers=headers)

    @app.put(
        f"{prefix}/requests/{{request_id}}/cancel",
        tags=["fal queue"],
        status_code=202,
        response_model=CancelAnswer,
        responses={
            **openapi_responses({400: CancelAnswer, 404: CancelAnswer}),
            **openapi_responses({401: ErrorBody, 503: ErrorBody}),
        },
    )
    async def cancel(request_id: str) -> Response:
        outcome = await ready_queue().cancel(request_id)
        codes = {
            CancelOutcome.CANCELLATION_REQUESTED: 202,
            CancelOutcome.ALREADY_COMPLETED: 400,
            CancelOutcome.NOT_FOUND: 404,
        }
        return JSONResponse({"status": outcome.value}, status_code=codes[outcome])


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


async def _status_events(
    queue: QueueBackend, request_id: str, with_logs: bool
) -> AsyncIterator[bytes]:
    """Server-sent events: the status each time it changes, until COMPLETED.

    As on fal, each event's ``logs`` holds only the lines that are new since the last event
    (the JavaScript client accumulates them).
    """
    sent_logs = 0
    last: dict | None = None
    while True:
        marker = queue.change_marker(request_id)
        state = await queue.state(request_id)
        if state is None:  # expired meanwhile
            return
        document = state.status_document(with_logs)
        if with_logs:
            logs = document["logs"]
            document["logs"], sent_logs = logs[sent_logs:], len(logs)
        if document != last or document.get("logs"):
            yield f"data: {json.dumps(document)}\n\n".encode()
            last = document
        if state.status is Status.COMPLETED:
            return
        if not await queue.wait_changed(request_id, marker, 15):
            yield b": keep-alive\n\n"


def map_proxy_target(target: str) -> tuple[str, str] | None:
    """fal's URL for this app → (local path, query); None for anything else.

    ``https://fal.run/<app>`` → ``/<app>``; ``https://queue.fal.run/<app>/…`` → ``/queue/<app>/…``.
    URLs this server returned itself (``…/queue/…``) map to themselves. The host is never used.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.path.startswith("/"):
        return None
    path = parts.path.rstrip("/")
    if path.startswith("/queue/"):
        queued, path = True, path[len("/queue") :]
    else:
        queued = (parts.hostname or "").startswith("queue.")
    if path != f"/{APP_ID}" and not path.startswith(f"/{OWNER_ALIAS}/"):
        return None
    if ".." in path.split("/"):
        return None
    return ("/queue" + path if queued else path), parts.query


class FalProxyMiddleware:
    """fal's server-proxy convention: ``x-fal-target-url`` names the fal URL; serve it locally.

    Nothing is fetched: the request is re-dispatched to this server's own route for that URL.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PROXY_PATH:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        target = headers.get(b"x-fal-target-url", b"").decode("latin-1")
        mapped = map_proxy_target(target) if target else None
        if mapped is None:
            detail = (
                f"x-fal-target-url {target!r} is not a URL of this app ({APP_ID})."
                if target
                else "The proxy needs the target URL in the x-fal-target-url header."
            )
            error = RequestFailed(400, "invalid_proxy_target", detail, retryable=False)
            await error_response(error)(scope, receive, send)
            return
        path, query = mapped
        scope = {
            **scope,
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode() or scope.get("query_string", b""),
        }
        await self.app(scope, receive, send)
