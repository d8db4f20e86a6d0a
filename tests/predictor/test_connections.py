"""Header size and request reading time are bounded (issue 25): uvicorn with our protocol, on a
real socket, with the read timeouts shortened for the test."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
import uvicorn

from predictor.api import connections
from predictor.api.connections import MAX_HEADER_BYTES, BoundedH11Protocol

FAL = "/fal-ai/chrono-edit-lora-gallery/upscaler"


async def _app(scope, receive, send) -> None:
    """Reads the whole body, answers its length; records a client that went away."""
    assert scope["type"] == "http"
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            _app.disconnected += 1
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


_app.disconnected = 0


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sent before closing the connection (fails if it stays open)."""
    return await asyncio.wait_for(reader.read(), seconds)


@pytest.fixture
def short_timeouts(monkeypatch) -> None:
    monkeypatch.setattr(connections, "HEADER_TIMEOUT_S", 0.3)
    monkeypatch.setattr(connections, "BODY_IDLE_TIMEOUT_S", 0.3)


def test_half_sent_requests_time_out_and_whole_ones_are_served(short_timeouts) -> None:
    async def scenario() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        config = uvicorn.Config(
            _app,
            http=BoundedH11Protocol,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            lifespan="off",
            log_level="warning",
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        while not server.started:
            await asyncio.sleep(0.01)
        host, port = listener.getsockname()[:2]

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection(host, port)

        try:
            # a connection that never sends anything
            reader, _ = await connect()
            assert await _closed_within(reader, 5) == b""
            # a request line and half the headers, then nothing
            reader, writer = await connect()
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le")
            assert await _closed_within(reader, 5) == b""
            # headers trickled slower than the deadline allows, a byte at a time
            reader, writer = await connect()
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa":
                if reader.at_eof():
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)
            assert await _closed_within(reader, 5) == b""
            # the headers, then part of the body, then nothing: the app sees the client go
            reader, writer = await connect()
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            assert await _closed_within(reader, 5) == b""
            await asyncio.sleep(0.1)
            assert _app.disconnected == 1
            # a whole request is answered, and its connection kept
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
                for _ in range(2):
                    answer = await client.post("/", content=b"x" * 1_000_000)
                    assert answer.status_code == 200 and answer.text == "1000000"
                    await asyncio.sleep(0.5)  # idle past the header timeout: keep-alive's own
                # headers over the limit: fal's error shape, not a buffer that grows
                answer = await client.get("/", headers={"x-big": "a" * (2 * MAX_HEADER_BYTES)})
                assert answer.status_code == 431
                assert answer.json()["error_type"] == "headers_too_large"
                assert answer.headers["x-fal-error-type"] == "headers_too_large"
            # a request h11 cannot read
            reader, writer = await connect()
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
            answer = await _closed_within(reader, 5)
            assert answer.startswith(b"HTTP/1.1 400 ")
            assert b'"error_type": "invalid_http_request"' in answer
        finally:
            server.should_exit = True
            await serving

    asyncio.run(scenario())


def test_the_server_refuses_huge_headers_and_keeps_serving(server) -> None:
    big = httpx.post(
        server.url + FAL, json={"image_url": "x"}, headers={"x-flood": "a" * 1_000_000}, timeout=30
    )
    assert big.status_code == 431
    assert big.json()["error_type"] == "headers_too_large"
    server.assert_alive()
