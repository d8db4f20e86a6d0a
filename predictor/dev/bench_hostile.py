"""``make bench`` (and ``python -m predictor.dev.bench_hostile``): what hostile inputs cost a real
server (issue 25): a normal request's latency beside a 30 MB hostile body, the size of the
errors they get, how soon a worker is free after a JPEG built to decode for minutes, and the
memory kept by 100 finished queue requests with 30 MB inputs."""

from __future__ import annotations

import argparse
import base64
import io
import re
import threading
import time

import httpx
from PIL import Image

from predictor.dev.hostile import progressive_jpeg_repeating_scan
from predictor.dev.local_server import local_server
from predictor.schema import APP_ID, OWNER_ALIAS

FAL = f"/{APP_ID}"
MB = 1024 * 1024
#: how long a hostile body's answer is waited for
ANSWER_WAIT_S = 120.0


def _small_png(side: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.radial_gradient("L").resize((side, side)).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _hostile_bodies() -> dict[str, bytes]:
    def unknown_fields(count: int) -> bytes:
        return ('{"image_url":"x",' + ",".join(f'"f{i}":0' for i in range(count)) + "}").encode()

    return {
        "2.4 M unknown fields (30 MB)": unknown_fields(2_400_000),
        "300 k unknown fields (3.3 MB)": unknown_fields(300_000),
        "nesting 15 M deep (30 MB)": b"[" * (15 * MB) + b"]" * (15 * MB),
        "one 30 MB unknown field": b'{"image_url":"x","junk":"' + b"A" * (30 * MB) + b'"}',
        "30 MB of escaped quotes": b'{"image_url":"' + b'\\"' * (15 * MB) + b'"}',
        # not hostile: the largest input a client may send, for comparison
        "a valid 30 MB data: URI": f'{{"image_url":"{_data_uri(_thirty_mb_png())}"}}'.encode(),
    }


def _thirty_mb_png() -> bytes:
    """A 64² PNG followed by 30 MB of zeros (decoders stop at its end): the largest input, and
    a fast job."""
    return _small_png() + b"\0" * (30 * MB)


def _timed_post(client: httpx.Client, url: str, **kwargs) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = client.post(url, **kwargs)
    return response, time.perf_counter() - started


def hostile_body_table(url: str, only: str = "") -> str:
    """Each hostile body (whose name contains ``only``) sent while a normal request is made:
    both answers' times."""
    normal = {"image_url": _data_uri(_small_png()), "sync_mode": True}
    rows = [
        "| hostile body | status | answer body | its answer | normal request beside it |",
        "|---|---|---|---|---|",
    ]
    with httpx.Client(base_url=url, timeout=120) as client:
        _, alone = _timed_post(client, FAL, json=normal)
        rows.append(f"| (none) | | | | {alone * 1000:.0f} ms |")
        for name, body in _hostile_bodies().items():
            if only not in name:
                continue
            result: dict = {}

            def send(body: bytes = body, result: dict = result) -> None:
                with httpx.Client(base_url=url, timeout=ANSWER_WAIT_S) as own:
                    headers = {"content-type": "application/json"}
                    try:
                        result["response"], result["s"] = _timed_post(
                            own, FAL, content=body, headers=headers
                        )
                    except httpx.TimeoutException:
                        result["response"] = None

            hostile = threading.Thread(target=send)
            hostile.start()
            time.sleep(0.2)  # the body is on its way or being checked
            response, beside = _timed_post(client, FAL, json=normal)
            assert response.status_code == 200, response.text[:200]
            hostile.join()
            answer = result["response"]
            if answer is None:
                rows.append(
                    f"| {name} | no answer in {ANSWER_WAIT_S:.0f} s | | | {beside * 1000:.0f} ms |"
                )
                continue
            rows.append(
                f"| {name} | {answer.status_code} {answer.json().get('error_type', '')} | "
                f"{len(answer.content):,} B | {result['s'] * 1000:.0f} ms | "
                f"{beside * 1000:.0f} ms |"
            )
    return "\n".join(rows)


def jpeg_table(url: str) -> str:
    """The 100,000-scan progressive JPEG: its answer, then a normal request at once."""
    hostile = _data_uri(progressive_jpeg_repeating_scan(4096, 100_000), "image/jpeg")
    normal = {"image_url": _data_uri(_small_png()), "sync_mode": True}
    with httpx.Client(base_url=url, timeout=600) as client:
        answer, took = _timed_post(client, FAL, json={"image_url": hostile})
        after, next_took = _timed_post(client, FAL, json=normal)
    return "\n".join(
        [
            "| input | its answer | time | the next normal request |",
            "|---|---|---|---|",
            f"| 4096² progressive JPEG, one AC scan ×100,000 ({len(hostile) / MB:.1f} MB URI) | "
            f"{answer.status_code} {answer.json().get('error_type')} | {took * 1000:.0f} ms | "
            f"{after.status_code} in {next_took * 1000:.0f} ms |",
        ]
    )


def _rss_mb(client: httpx.Client) -> float:
    metrics = client.get("/metrics").text
    match = re.search(r"^process_resident_memory_bytes (\S+)$", metrics, re.MULTILINE)
    assert match, "no process_resident_memory_bytes in /metrics"
    return float(match.group(1)) / MB


def queue_memory_table(url: str, requests: int = 100, input_mb: int = 30) -> str:
    """RSS idle, then after ``requests`` finished queue requests with ``input_mb`` MB inputs."""
    body = {"image_url": _data_uri(_small_png() + b"\0" * (input_mb * MB))}
    with httpx.Client(base_url=url, timeout=120) as client:
        idle = _rss_mb(client)
        ids = []
        for _ in range(requests):
            submitted = client.post(f"/queue{FAL}", json=body)
            assert submitted.status_code == 200, submitted.text[:200]
            ids.append(submitted.json()["request_id"])
            while True:
                status = client.get(f"/queue/{OWNER_ALIAS}/requests/{ids[-1]}/status").json()
                if status["status"] == "COMPLETED":
                    break
                time.sleep(0.05)
            assert "error" not in status, status
        finished = _rss_mb(client)
    return "\n".join(
        [
            "| requests finished (kept for the result TTL) | RSS idle | RSS after | retained |",
            "|---|---|---|---|",
            f"| {requests} × {input_mb} MB input | {idle:.0f} MB | {finished:.0f} MB | "
            f"{finished - idle:+.0f} MB |",
        ]
    )


def hostile_section(only: str = "", jpeg: bool = True, requests: int = 100) -> str:
    with local_server("--request-timeout", "10") as (url, _):
        parts = ["### A normal request beside a hostile body\n", hostile_body_table(url, only)]
        if jpeg:
            parts += [
                "\n### A JPEG built to decode for minutes (request timeout 10 s)\n",
                jpeg_table(url),
            ]
        if requests:
            parts += [
                "\n### Memory kept by finished queue requests\n",
                queue_memory_table(url, requests),
            ]
    return "\n".join(parts)


def main() -> None:
    """Options to run a lighter set against an older checkout (put first on PYTHONPATH, with
    this module and ``hostile.py`` copied in), for a before/after in the same session."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="", help="hostile bodies whose name contains this")
    parser.add_argument("--no-jpeg", action="store_true", help="skip the 100,000-scan JPEG")
    parser.add_argument("--requests", type=int, default=100, help="queue requests for memory")
    args = parser.parse_args()
    print(hostile_section(args.only, not args.no_jpeg, args.requests))


if __name__ == "__main__":
    main()
