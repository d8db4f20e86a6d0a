"""The playground: one page (plain HTML, CSS and JavaScript shipped in the package) that tries the
upscaler from a browser through fal's queue API.

It is served at ``/playground``, and at ``/`` to browsers only: ``GET /`` is also KServe's liveness
route (kubelet probes and curl get its ``{"status": "alive"}``), so the page takes ``/`` only when
the request's ``Accept`` header prefers ``text/html`` over JSON. Nothing is fetched from outside
the server (clusters are often offline).
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PLAYGROUND_PATH = "/playground"
#: the page's files and their media types; nothing else under /playground/ is served
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
#: the page talks only to this server; output images may come from --public-url's host
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob: http: https:; "
        "connect-src 'self'; script-src 'self'; style-src 'self'; "
        "object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def read_asset(name: str) -> bytes:
    """One of the page's files, from the installed package."""
    return (resources.files(__package__) / name).read_bytes()


def _media_ranges(accept: str) -> list[tuple[str, float]]:
    ranges: list[tuple[str, float]] = []
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if not media:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        ranges.append((media.lower(), quality))
    return ranges


def _quality(ranges: list[tuple[str, float]], media: str) -> float:
    """The quality ``ranges`` give ``media``: the most specific matching range wins."""
    kind = media.split("/")[0]
    for candidate in (media, f"{kind}/*", "*/*"):
        for range_, quality in ranges:
            if range_ == candidate:
                return quality
    return 0.0


def prefers_html(accept: str | None) -> bool:
    """A browser's page load: ``text/html`` named outright and ranked above JSON.

    No header, ``*/*`` (curl, kubelet) or a tie keep KServe's JSON, so probes never get a page.
    """
    if not accept:
        return False
    ranges = _media_ranges(accept)
    if not any(media in ("text/html", "application/xhtml+xml") for media, _ in ranges):
        return False
    html = max(_quality(ranges, "text/html"), _quality(ranges, "application/xhtml+xml"))
    return html > 0 and html > _quality(ranges, "application/json")


def _page_response(body: bytes, media_type: str, vary: bool = False) -> Response:
    headers = dict(SECURITY_HEADERS)
    if vary:
        headers["Vary"] = "Accept"
    return Response(body, media_type=media_type, headers=headers)


class BrowserRootMiddleware:
    """``GET /`` from a browser gets the playground; anything else goes on to KServe's liveness.

    Both answers carry ``Vary: Accept`` so that no cache hands one to the other's client.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != "/"
            or scope["method"] not in ("GET", "HEAD")
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        if prefers_html(headers.get(b"accept", b"").decode("latin-1")):
            page = _page_response(read_asset("index.html"), ASSETS["index.html"], vary=True)
            await page(scope, receive, send)
            return

        async def send_with_vary(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"vary", b"Accept")],
                }
            await send(message)

        await self.app(scope, receive, send_with_vary)


def mount_playground(app: FastAPI) -> None:
    """Serve the page at ``/playground`` (its files under ``/playground/``) and, for browsers, at
    ``/`` in front of KServe's liveness route."""

    @app.get(PLAYGROUND_PATH, include_in_schema=False)
    async def playground() -> Response:
        return _page_response(read_asset("index.html"), ASSETS["index.html"])

    @app.get(f"{PLAYGROUND_PATH}/{{name}}", include_in_schema=False)
    async def playground_asset(name: str) -> Response:
        if name not in ASSETS:
            return Response(status_code=404)
        return _page_response(read_asset(name), ASSETS[name])

    app.add_middleware(BrowserRootMiddleware)
