"""Optional API keys, as fal checks them: ``Authorization: Key <key>`` on every inference route.

Keys come from a file (one per line, ``#`` comments; in a cluster a mounted Secret) and/or the
``UPSCALER_API_KEYS`` environment variable (comma-separated). With no keys the server is open,
for cluster-internal use. Health, readiness, ``/metrics`` and output files stay open either way
(output file names are random 128-bit tokens, so a browser can show them in ``<img>``).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from predictor.api.access import is_guarded
from predictor.api.errors import error_response
from predictor.errors import RequestFailed

ENV_VAR = "UPSCALER_API_KEYS"


def load_keys(path: Path | None = None, env: str | None = None) -> frozenset[str]:
    """Keys from ``path`` and from ``env`` (default: the process's ``UPSCALER_API_KEYS``)."""
    keys: list[str] = []
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise SystemExit(f"chrono-upscaler serve: error: --keys-file {path}: {exc}") from None
        keys += [line.split("#", 1)[0].strip() for line in text.splitlines()]
    env = os.environ.get(ENV_VAR, "") if env is None else env
    keys += [item.strip() for item in env.split(",")]
    return frozenset(key for key in keys if key)


def is_protected(path: str) -> bool:
    """Routes that run or change something (:data:`predictor.api.access.ROUTES` decides)."""
    return is_guarded(path)


def key_matches(header: str | None, keys: Iterable[str]) -> bool:
    """``header`` is ``Key <key>`` with one of ``keys`` (compared in constant time)."""
    if not header:
        return False
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "key" or not presented.strip():
        return False
    presented = presented.strip()
    # compare against every key, so timing does not tell which prefix matched
    return any([hmac.compare_digest(presented.encode(), key.encode()) for key in keys])


def unauthorized() -> RequestFailed:
    return RequestFailed(
        401,
        "unauthorized",
        "Missing or invalid credentials: send the header 'Authorization: Key <your key>'.",
        retryable=False,
    )


class KeyAuthMiddleware:
    """Refuses protected routes without a valid key (401, with fal's error shape)."""

    def __init__(self, app: ASGIApp, keys: frozenset[str]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys and is_protected(scope["path"]):
            headers = dict(scope.get("headers", []))
            header = headers.get(b"authorization", b"").decode("latin-1") or None
            if not key_matches(header, self.keys):
                response = error_response(unauthorized())
                response.headers["WWW-Authenticate"] = "Key"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
