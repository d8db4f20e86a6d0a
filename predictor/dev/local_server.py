"""A real ``chrono-upscaler serve`` process on a free loopback port, for the benchmarks."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


@contextlib.contextmanager
def local_server(*flags: str) -> Iterator[tuple[str, Path]]:
    """``chrono-upscaler serve`` on a free loopback port, ready: (its URL, its log file)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = Path(tempfile.mkdtemp()) / "server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "predictor", "serve", "--port", str(port), *flags],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/v1/models/chrono-upscaler", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url, log_path
    finally:
        process.terminate()
        process.wait(timeout=30)
