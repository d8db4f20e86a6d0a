"""Shared fixtures: real photos, a real predictor server process, a local HTTP image server."""

from __future__ import annotations

import io
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def skimage_photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")


def photo_crop(width: int, height: int, name: str = "astronaut") -> Image.Image:
    image = skimage_photo(name)
    return (
        image.resize((width, height), Image.BICUBIC)
        if width > 256
        else image.crop((100, 60, 100 + width, 60 + height))
    )


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    import base64

    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen
    log_path: Path
    #: the CA file that signed an HTTPS server's certificate (httpx's ``verify``)
    verify: ssl.SSLContext | bool = True

    def post(self, payload, timeout: float = 120, **kwargs) -> httpx.Response:
        return httpx.post(
            f"{self.url}/fal-ai/chrono-edit-lora-gallery/upscaler",
            json=payload,
            timeout=timeout,
            verify=self.verify,
            **kwargs,
        )

    def assert_alive(self) -> None:
        response = httpx.get(
            f"{self.url}/v1/models/chrono-upscaler", timeout=10, verify=self.verify
        )
        assert response.status_code == 200, response.text
        assert response.json()["ready"] is True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request_lines(self) -> list[dict]:
        """The server's per-request JSON log lines, oldest first."""
        return [
            json.loads(line)
            for line in self.log().splitlines()
            if line.startswith("{") and '"event":"request"' in line
        ]

    def admitted_count(self) -> int:
        """Requests that have reached an engine worker so far (from the server's log)."""
        return self.log().count(" admitted queue_ms=")

    def wait_admitted(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.admitted_count() < count:
            assert time.monotonic() < deadline, f"no request admitted:\n{self.log()[-2000:]}"
            time.sleep(0.05)


def serve_in_thread(handler: Any) -> tuple[ThreadingHTTPServer, str]:
    """A loopback HTTP server for ``handler`` on a free port, serving on daemon threads:
    (the server, for ``shutdown()``; its base URL)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def launch_server(
    tmp_dir: Path, *flags: str, env: dict[str, str] | None = None, ca_file: Path | None = None
) -> ServerProcess:
    """Start ``chrono-upscaler serve`` on a free port without waiting for it to be ready."""
    port = free_port()
    log_path = tmp_dir / f"server-{port}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "predictor", "serve", "--port", str(port), *flags],
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    scheme = "https" if ca_file else "http"
    verify = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    return ServerProcess(f"{scheme}://127.0.0.1:{port}", process, log_path, verify)


def start_server(tmp_dir: Path, *flags: str, ca_file: Path | None = None) -> ServerProcess:
    """Start ``chrono-upscaler serve`` and wait until it is ready; with ``ca_file`` the flags
    must include --tls-cert/key."""
    server = launch_server(tmp_dir, *flags, ca_file=ca_file)
    process, verify = server.process, server.verify
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            ready = httpx.get(f"{server.url}/v1/models/chrono-upscaler", timeout=2, verify=verify)
            if ready.status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"server did not become ready:\n{server.log()}")


def stop_server(server: ServerProcess) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    """The default server, allowed to fetch from loopback so tests can serve images locally."""
    srv = start_server(tmp_path_factory.mktemp("server"), "--allow-private-urls")
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def guarded_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """Production guards on (no private URLs) and small limits."""
    srv = start_server(
        tmp_path_factory.mktemp("guarded"),
        "--max-download-mb",
        "1",
        "--max-input-pixels",
        "1000000",
        "--max-output-pixels",
        "4000000",
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def busy_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """One job at a time, nobody may wait, short request and fetch timeouts."""
    srv = start_server(
        tmp_path_factory.mktemp("busy"),
        "--allow-private-urls",
        "--max-inflight",
        "1",
        "--max-waiting",
        "0",
        "--request-timeout",
        "3",
        "--fetch-timeout",
        "1.5",
    )
    yield srv
    stop_server(srv)


class ImageHost:
    """A local HTTP server with images and misbehaving endpoints, for URL fetching tests."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                if path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", query.removeprefix("to="))
                    self.end_headers()
                elif path == "/loop":
                    self.send_response(302)
                    self.send_header("Location", "/loop")
                    self.end_headers()
                elif path == "/slow":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.end_headers()
                    for _ in range(40):
                        try:
                            self.wfile.write(b"\x89")
                            self.wfile.flush()
                        except OSError:
                            return
                        time.sleep(0.25)
                elif path == "/endless":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.end_headers()
                    try:
                        for _ in range(4096):
                            self.wfile.write(b"\0" * 65536)
                    except OSError:
                        return
                elif path in host.files:
                    body, mime = host.files[path]
                    self.send_response(200)
                    self.send_header("Content-Type", mime)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        self.httpd, self.url = serve_in_thread(Handler)

    def add(self, path: str, body: bytes, mime: str = "image/png") -> str:
        self.files[path] = (body, mime)
        return self.url + path

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    host = ImageHost()
    yield host
    host.close()
