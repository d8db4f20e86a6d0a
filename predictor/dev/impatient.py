"""``python -m predictor.dev.impatient``: impatient clients and instant cancels against a server.

Ordinary impatient traffic once wedged a server: a client that sends a whole sync request and
hangs up 0–30 ms later, or a queue submit cancelled at once, could leave a worker slot held with
nothing running (docs/benchmarks.md). This drives both at a real ``serve`` process (or ``--url``),
then reports the pool's slot gauges and how long the next normal request takes: with no slot
leaked, it is served at once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from PIL import Image

ROUTE = "/fal-ai/chrono-edit-lora-gallery/upscaler"
QUEUE_ROUTE = "/queue" + ROUTE


def small_request(side: int = 96, seed: int = 0) -> dict:
    image = Image.new("RGB", (side, side), (seed % 256, 90, 160))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    return {"image_url": f"data:image/png;base64,{data}", "seed": seed, "sync_mode": True}


@dataclass
class Result:
    hung_up: int
    cancelled: int
    answers: dict[str, int]
    slots: float
    slots_free: float
    inflight: float
    next_request_s: float
    next_status: int

    @property
    def wedged(self) -> int:
        """Slots held with no job running once the load has ended."""
        return round(self.slots - self.slots_free - self.inflight)


async def hang_up(url: str, body: bytes, rng: random.Random) -> None:
    """Send a whole sync request, then close the connection 0–30 ms later."""
    parts = urlsplit(url)
    _, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = (
        f"POST {ROUTE} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(head + body)
    await writer.drain()
    await asyncio.sleep(rng.uniform(0, 0.03))
    writer.close()
    await writer.wait_closed()


async def submit_and_cancel(client: httpx.AsyncClient, payload: dict) -> str:
    """Submit to the queue and cancel at once: the cancel's status (202, or 400 if done), or
    the submit's when it was refused (429 with the line full)."""
    submitted = await client.post(QUEUE_ROUTE, json=payload)
    if submitted.status_code != 200:
        return f"submit {submitted.status_code}"
    cancelled = await client.put(submitted.json()["cancel_url"])
    return f"cancel {cancelled.status_code}"


def gauges(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    wanted = ("upscaler_worker_slots", "upscaler_worker_slots_free", "upscaler_inflight_requests")
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            values[name] = float(value)
    return values


async def drive(
    url: str, clients: int, cancels: int, concurrency: int, seed: int, next_timeout: float = 300
) -> Result:
    rng = random.Random(seed)
    body = json.dumps(small_request()).encode()
    gate = asyncio.Semaphore(concurrency)
    answers: dict[str, int] = {}

    async def one_hangup() -> None:
        async with gate:
            await hang_up(url, body, rng)

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one_cancel(i: int) -> None:
            async with gate:
                answer = await submit_and_cancel(client, small_request(seed=i))
                answers[answer] = answers.get(answer, 0) + 1

        await asyncio.gather(
            *(one_hangup() for _ in range(clients)), *(one_cancel(i) for i in range(cancels))
        )
    for _ in range(600):  # the given-up jobs end at their next tile
        seen = gauges(url)
        if seen["upscaler_inflight_requests"] == 0:
            break
        await asyncio.sleep(0.05)
    started = time.monotonic()
    try:
        answer = httpx.post(f"{url}{ROUTE}", json=small_request(seed=seed), timeout=next_timeout)
        status = answer.status_code
    except httpx.TimeoutException:
        status = 0  # no answer at all: the server is wedged
    took = time.monotonic() - started
    seen = gauges(url)
    return Result(
        clients,
        cancels,
        answers,
        seen["upscaler_worker_slots"],
        seen["upscaler_worker_slots_free"],
        seen["upscaler_inflight_requests"],
        took,
        status,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: start one on a free port)")
    parser.add_argument("--clients", type=int, default=1000, help="hang-ups (default 1000)")
    parser.add_argument("--cancels", type=int, default=1000, help="instant cancels (default 1000)")
    parser.add_argument("--concurrency", type=int, default=64, help="at once (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def report(url: str) -> Result:
        result = asyncio.run(drive(url, args.clients, args.cancels, args.concurrency, args.seed))
        print(
            f"{result.hung_up} hang-ups, {result.cancelled} instant cancels "
            f"({result.answers}): slots {result.slots:.0f}, "
            f"free {result.slots_free:.0f}, running {result.inflight:.0f}, "
            f"wedged {result.wedged}; next normal request {result.next_status} "
            f"in {result.next_request_s:.2f} s"
        )
        return result

    if args.url:
        result = report(args.url)
    else:
        from predictor.dev.local_server import local_server

        with local_server("--max-inflight", "1", "--max-waiting", "64") as (url, _):
            result = report(url)
    return 0 if result.wedged == 0 and result.next_status == 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
