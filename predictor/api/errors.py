"""Error bodies as fal's clients expect them, and the handlers that answer them.

Domain errors (:mod:`predictor.errors`) carry a status and a body; this module shapes pydantic's
validation errors the way FastAPI shows them and turns any of them into a JSON response, so every
route, middleware and the KServe model answer errors alike.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from predictor.errors import UpscaleError, ValidationFailed
from predictor.schema import UpscaleRequest


def error_response(exc: UpscaleError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers())


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
