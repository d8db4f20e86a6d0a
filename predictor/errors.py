"""Errors a request can end in, shaped the way fal's clients expect them.

fal has two shapes (both keep FastAPI's ``detail`` key):

* input errors: ``{"detail": [{"loc", "msg", "type", "url", "ctx"?}]}`` — what a client sent
  is wrong (schema, an image that cannot be fetched or decoded, a limit exceeded);
* request errors: ``{"detail": "<text>", "error_type": "<kind>"}`` plus ``X-Fal-Error-Type`` —
  the request could not be served (queue full, timed out, not ready).

Pure data: the HTTP edge (``predictor.routes``) turns them into responses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ERROR_DOCS = "https://docs.fal.ai/errors/#"


class UpscaleError(Exception):
    """Base class: every error that must reach the client with a specific status."""

    status_code: int = 500
    error_type: str = "internal_error"
    retryable: bool = False

    def body(self) -> dict[str, Any]:
        raise NotImplementedError

    def headers(self) -> dict[str, str]:
        return {
            "X-Fal-Error-Type": self.error_type,
            "X-Fal-Retryable": "true" if self.retryable else "false",
        }


class InputError(UpscaleError):
    """Something in the request body is wrong; ``loc`` names the field (fal/FastAPI style)."""

    def __init__(
        self,
        status_code: int,
        error_type: str,
        msg: str,
        loc: Sequence[str | int] = ("body",),
        ctx: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(msg)
        self.status_code = status_code
        self.error_type = error_type
        self.msg = msg
        self.loc = list(loc)
        self.ctx = ctx

    def body(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "loc": self.loc,
            "msg": self.msg,
            "type": self.error_type,
            "url": ERROR_DOCS + self.error_type,
        }
        if self.ctx:
            item["ctx"] = self.ctx
        return {"detail": [item], "error_type": self.error_type}


#: the most input errors one body lists; the rest are counted in a last item
MAX_ERROR_ITEMS = 20


class ValidationFailed(UpscaleError):
    """Schema or range errors (422), as a list of pydantic-style items (the first
    :data:`MAX_ERROR_ITEMS`: a body with thousands of unknown fields has as many errors)."""

    status_code = 422
    error_type = "validation_error"

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = errors[:MAX_ERROR_ITEMS]
        self.left_out = len(errors) - len(self.errors)

    def body(self) -> dict[str, Any]:
        detail = list(self.errors)
        if self.left_out:
            detail.append(errors_left_out(self.left_out))
        return {"detail": detail, "error_type": self.error_type}


def errors_left_out(count: int) -> dict[str, Any]:
    """The last input error of a body that lists only some: how many it leaves out."""
    return {
        "type": "too_many_errors",
        "loc": ["body"],
        "msg": f"… and {count} more error(s) not listed.",
        "ctx": {"left_out": count},
    }


class RequestFailed(UpscaleError):
    """The request as a whole could not be served (429/503/504): a flat detail and error_type."""

    def __init__(
        self,
        status_code: int,
        error_type: str,
        detail: str,
        retry_after: float | None = None,
        retryable: bool = True,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.error_type = error_type
        self.detail = detail
        self.retry_after = retry_after
        self.retryable = retryable

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "error_type": self.error_type}

    def headers(self) -> dict[str, str]:
        headers = super().headers()
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after)))
        return headers


# The input errors this service raises, one constructor each so call sites read as prose.
def download_error(msg: str, loc: Sequence[str | int] = ("body", "image_url")) -> InputError:
    return InputError(400, "file_download_error", msg, loc)


def url_not_allowed(msg: str, loc: Sequence[str | int] = ("body", "image_url")) -> InputError:
    return InputError(400, "url_not_allowed", msg, loc)


def image_load_error(
    msg: str, loc: Sequence[str | int] = ("body", "image_url"), **ctx: Any
) -> InputError:
    return InputError(400, "image_load_error", msg, loc, ctx or None)


def file_too_large(
    msg: str, max_bytes: int, loc: Sequence[str | int] = ("body", "image_url")
) -> InputError:
    return InputError(413, "file_too_large", msg, loc, {"max_bytes": max_bytes})


def image_too_large(msg: str, loc: Sequence[str | int], **ctx: Any) -> InputError:
    return InputError(413, "image_too_large", msg, loc, ctx or None)


def feature_not_supported(msg: str, loc: Sequence[str | int]) -> InputError:
    return InputError(400, "feature_not_supported", msg, loc)


def lora_loc(index: int) -> tuple[str | int, ...]:
    """Where a request LoRA's problem points: ``["body", "loras", index, "path"]``."""
    return ("body", "loras", index, "path")


def lora_load_error(msg: str, loc: Sequence[str | int]) -> InputError:
    """A request LoRA that cannot be used: missing, not safetensors, no matching keys, …"""
    return InputError(400, "lora_load_error", msg, loc)


def queue_full(retry_after: float) -> RequestFailed:
    return RequestFailed(
        429, "queue_full", "Too many requests in flight; retry later.", retry_after=retry_after
    )


def not_ready(detail: str = "The model is not ready yet.") -> RequestFailed:
    return RequestFailed(503, "runner_scheduling_failure", detail, retry_after=5)


def internal_error() -> RequestFailed:
    return RequestFailed(
        500, "internal_error", "The upscaler failed on this request; it has been logged."
    )


def timed_out(seconds: float) -> RequestFailed:
    return RequestFailed(
        504, "request_timeout", f"Request timed out after {seconds:g} s.", retryable=True
    )


#: the error type of work refused or stopped because the server is shutting down (503, retryable)
SHUTTING_DOWN = "server_shutting_down"
#: the error type a request ends in when its client hung up (recorded as 499; nobody reads it)
CLIENT_DISCONNECTED = "client_disconnected"


def shutting_down(detail: str) -> RequestFailed:
    """503 with ``Retry-After``: another replica (or this one, restarted) can take the request."""
    return RequestFailed(503, SHUTTING_DOWN, detail, retry_after=1)


def client_disconnected() -> RequestFailed:
    return RequestFailed(
        499, CLIENT_DISCONNECTED, "The client closed the connection; the job was stopped."
    )


def error_message(body: dict[str, Any]) -> str:
    """One line for an error body: its text, or the first input error as ``loc: msg``."""
    detail = body.get("detail")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        item = detail[0]
        loc = ".".join(str(part) for part in item.get("loc", []))
        return f"{loc}: {item.get('msg')}" if loc else str(item.get("msg"))
    return str(detail)


#: the error type of a request refused or ended because a shared store could not be reached
STORE_UNAVAILABLE = "store_unavailable"


def store_unavailable(what: str, cause: Exception, retry_after: float = 2) -> RequestFailed:
    """503 with ``Retry-After``: the shared queue or the output store is down for now (its
    client already retried with backoff); the request can be sent again."""
    return RequestFailed(
        503,
        STORE_UNAVAILABLE,
        f"The {what} is unreachable ({type(cause).__name__}); retry the request shortly.",
        retry_after=retry_after,
    )
