"""Error bodies as fal's clients expect them, and the handlers that answer them.

Domain errors (:mod:`predictor.errors`) carry a status and a body; this module shapes pydantic's
validation errors the way FastAPI shows them and turns any of them into a JSON response, so every
route, middleware and the KServe model answer errors alike. Whatever the input, an error body
echoes only excerpts of it and stays under :data:`MAX_ERROR_BODY_BYTES`.
"""

from __future__ import annotations

import json
import math
from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from predictor.errors import UpscaleError, ValidationFailed, errors_left_out
from predictor.schema import UpscaleRequest

#: no error body is larger (input errors past it are left out), nor any one string in it
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_ERROR_STRING = 2000
_STATUSES = frozenset(status.value for status in HTTPStatus)


def error_response(exc: UpscaleError) -> JSONResponse:
    """The error's body as JSON; whatever the client sent and a message quotes stays encodable."""
    return JSONResponse(json_safe(exc.body()), status_code=exc.status_code, headers=exc.headers())


def json_safe(body: dict[str, Any]) -> dict[str, Any]:
    """An error body as strict JSON of bounded size: see :func:`_encodable`; strings cut to
    :data:`MAX_ERROR_STRING` characters, input errors left out past :data:`MAX_ERROR_BODY_BYTES`."""
    safe = _encodable(body)
    detail = safe.get("detail")
    while isinstance(detail, list) and len(detail) > 1 and _size(safe) > MAX_ERROR_BODY_BYTES:
        summary = detail.pop() if detail[-1].get("type") == "too_many_errors" else None
        detail.pop()
        left_out = 1 + (summary["ctx"]["left_out"] if summary else 0)
        detail.append(errors_left_out(left_out))
    return safe


def _size(body: dict[str, Any]) -> int:
    return len(json.dumps(body, ensure_ascii=False).encode())


def _encodable(value: Any) -> Any:
    """``value`` with what strict JSON in UTF-8 cannot carry replaced: NaN and ±Infinity by their
    names, lone surrogates (``"\\udfff"`` parses in JSON) by ``?``; long strings cut."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, str):
        value = _short(value, MAX_ERROR_STRING)
        return value.encode("utf-8", errors="replace").decode("utf-8")
    if isinstance(value, dict):
        return {_encodable(key): _encodable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encodable(item) for item in value]
    return value


def error_json(
    status_code: int,
    error_type: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A request error (``{"detail": "<text>", "error_type"}`` with the ``X-Fal-*`` headers) that
    no :class:`UpscaleError` raised: not found, still in progress, a framework's own error."""
    body = {"detail": detail, "error_type": error_type, **extra}
    fal_headers = {"X-Fal-Error-Type": error_type, "X-Fal-Retryable": "false"}
    return JSONResponse(json_safe(body), status_code, headers={**(headers or {}), **fal_headers})


async def http_error_handler(_: Request, exc: Exception) -> Response:
    """Starlette's and FastAPI's own errors (no route, wrong method, a body that does not parse)
    in fal's shape, the error type named after the status (``not_found``, ``bad_request``)."""
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase if exc.status_code in _STATUSES else "HTTP error"
    error_type = phrase.lower().replace(" ", "_").replace("-", "_")
    return error_json(exc.status_code, error_type, str(exc.detail), dict(exc.headers or {}))


async def upscale_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, UpscaleError)
    return error_response(exc)


async def validation_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(ValidationFailed([public_error(error) for error in exc.errors()]))


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
        "loc": [*loc_prefix, *(_short(part, 100) for part in error["loc"])],
        "msg": error["msg"],
        "input": _excerpt(error.get("input")),
    }
    if error.get("ctx"):
        item["ctx"] = {
            key: value if isinstance(value, int | float | str | bool) else str(value)
            for key, value in error["ctx"].items()
        }
    return item


def _excerpt(value: Any, max_chars: int = 1000) -> Any:
    """The offending input, cut to about ``max_chars`` of JSON (a data: URI can be megabytes, an
    object thousands of keys): strings cut, containers to their first entries, and a container
    still too long as the start of its JSON text."""
    value = _short(value)
    if isinstance(value, dict | list):
        text = json.dumps(_encodable(value), ensure_ascii=False)
        if len(text) > max_chars:
            return _short(text, max_chars)
    return value


def _short(value: Any, limit: int = 200, entries: int = 20) -> Any:
    """``value`` with strings cut to ``limit`` characters and containers to ``entries`` entries."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"… ({len(value)} characters)"
    if isinstance(value, dict):
        items = list(value.items())[:entries]
        return {_short(key, limit): _short(item, limit) for key, item in items}
    if isinstance(value, list | tuple):
        return [_short(item, limit) for item in value[:entries]]
    return value


def body_not_json(exc: Exception) -> ValidationFailed:
    """A body that is not JSON (or nested past what a parser follows), as FastAPI words it."""
    return ValidationFailed(
        [
            {
                "type": "json_invalid",
                "loc": ["body"],
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": str(exc)[:200]},
            }
        ]
    )


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    url: str | None = None
    ctx: dict[str, Any] | None = None
    input: Any = None


class ErrorBody(BaseModel):
    """fal's two error shapes: input errors (``detail`` a list naming fields) and request errors
    (``detail`` a sentence, ``error_type`` its kind)."""

    detail: list[ErrorItem] | str
    error_type: str | None = None


class KServeErrorBody(BaseModel):
    """KServe's own error shape, kept on its routes."""

    error: str


#: what the routes that take a request body can answer besides success (documented once)
INPUT_ERRORS: dict[int, Any] = {
    400: ErrorBody,
    413: ErrorBody,
    422: ErrorBody,
}
REQUEST_ERRORS: dict[int, Any] = {401: ErrorBody, 429: ErrorBody, 503: ErrorBody, 504: ErrorBody}
_DESCRIPTIONS = {
    200: "OK",
    202: "accepted",
    400: "a bad request: fetch, decode, unsupported feature, or protocol error",
    401: "a key is required (Authorization: Key <key>)",
    404: "not found",
    413: "over a size limit",
    422: "a field is invalid; loc names it",
    429: "too many requests in flight; see Retry-After",
    500: "the job failed on the server",
    501: "not implemented by this model",
    503: "not ready; see Retry-After",
    504: "timed out",
}


def openapi_responses(spec: dict[int, Any]) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` from {status: model or description}: every status a route answers,
    with its JSON body where it has a model."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status, what in spec.items():
        if isinstance(what, str):
            responses[status] = {"description": what}
        else:
            responses[status] = {"description": _DESCRIPTIONS.get(status, "error"), "model": what}
    return responses
