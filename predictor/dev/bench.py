"""``make bench``: per-stage timings, encoder choices, server overhead, sr fidelity, the sr
engine's execution paths, LoRA swaps, queue overhead, a short load run and what hostile inputs
cost.

Prints markdown tables (paste them into docs/benchmarks.md with the machine they ran on).
Stages are timed with the same functions the server runs; the server overhead, the queue overhead
and the load run use the real KServe server in a subprocess, on loopback; the load run is
``python -m loadtest`` (locust) in another.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from predictor.codec import ENCODERS, decode_image, encode_image
from predictor.config import FetchLimits
from predictor.dev.bench_hostile import hostile_section
from predictor.dev.bench_sr import sr_section
from predictor.dev.local_server import local_server
from predictor.dev.quality import roundtrip_psnr
from predictor.engines import SROptions, load_engine
from predictor.engines.base import EngineJob
from predictor.fetch import fetch_image_bytes
from predictor.schema import APP_ID, OutputFormat

PHOTOS = ("astronaut", "chelsea", "coffee")
REPEATS = 5


def photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")


def median_ms(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def encoded_input(image: Image.Image, fmt: OutputFormat) -> bytes:
    return encode_image(image, fmt).data


def stage_table(engine, source: Image.Image) -> str:
    """Per-stage medians for ``source`` ×2 in each format."""
    job = EngineJob(width=source.width * 2, height=source.height * 2, seed=0)
    engine_ms = median_ms(lambda: engine.upscale(source, job), repeats=3)
    output = engine.upscale(source, job)
    rows = [
        "| format | fetch (data: URI) | decode 512² | engine ×2 | encode 1024² | output bytes |",
        "|---|---|---|---|---|---|",
    ]
    for fmt in OutputFormat:
        data = encoded_input(source, fmt)
        uri = "data:image/x;base64," + base64.b64encode(data).decode()
        fetch_ms = median_ms(lambda uri=uri: asyncio.run(fetch_image_bytes(uri, FetchLimits())))
        decode_ms = median_ms(lambda data=data: decode_image(data, 1 << 26))
        encode_ms = median_ms(lambda fmt=fmt: encode_image(output, fmt))
        size = len(encode_image(output, fmt).data)
        rows.append(
            f"| {fmt.value} | {fetch_ms:.1f} ms | {decode_ms:.1f} ms | {engine_ms:.0f} ms "
            f"| {encode_ms:.1f} ms | {size:,} |"
        )
    return "\n".join(rows)


def encoder_table(image: Image.Image) -> str:
    """Our encoder settings next to Pillow's defaults, on the same 1 MP upscaled photo."""
    candidates = {
        "jpeg": [("Pillow default (q75, 4:2:0)", {}), ("ours", ENCODERS[OutputFormat.jpeg][3])],
        "png": [("Pillow default (level 6)", {}), ("ours", ENCODERS[OutputFormat.png][3])],
        "webp": [("Pillow default (q80, method 4)", {}), ("ours", ENCODERS[OutputFormat.webp][3])],
    }
    rows = ["| format | settings | encode | bytes |", "|---|---|---|---|"]
    for fmt, options in candidates.items():
        pil_format = ENCODERS[OutputFormat(fmt)][0]
        for label, kwargs in options:

            def save(kwargs=kwargs, pil_format=pil_format) -> int:
                buffer = io.BytesIO()
                image.save(buffer, format=pil_format, **kwargs)
                return buffer.tell()

            ms = median_ms(save, repeats=3)
            shown = label if label != "ours" else f"ours {kwargs}"
            rows.append(f"| {fmt} | {shown} | {ms:.1f} ms | {save():,} |")
    return "\n".join(rows)


def _last_stage_log(log_path: Path) -> dict[str, float]:
    """Stage timings (ms) of the most recent request, from the server's JSON request lines."""
    lines = [line for line in log_path.read_text().splitlines() if '"event":"request"' in line]
    return json.loads(lines[-1])["timings_ms"]


#: the journey's own stages; the rest of the wall time is HTTP, KServe, JSON and the download
JOURNEY_STAGES = ("fetch", "queue", "decode", "inference", "encode")


def server_overhead(source: Image.Image, repeats: int = 5) -> str:
    """What the server adds around the journey: HTTP, KServe, JSON, and the output download.

    The server logs each request's own stage times; the overhead is the client's wall time minus
    the server's journey total, so engine-time noise does not blur it.
    """
    with local_server() as (url, log_path):
        rows = [
            "| format | HTTP round trip | server journey | of which engine | overhead "
            "| overhead / engine |",
            "|---|---|---|---|---|---|",
        ]
        with httpx.Client(timeout=120) as client:
            for fmt in OutputFormat:
                body = {
                    "image_url": "data:image/png;base64,"
                    + base64.b64encode(encoded_input(source, fmt)).decode(),
                    "output_format": fmt.value,
                }
                walls, journeys, engines = [], [], []
                for attempt in range(repeats + 1):
                    started = time.perf_counter()
                    response = client.post(f"{url}/{APP_ID}", json=body)
                    response.raise_for_status()
                    client.get(response.json()["images"][0]["url"]).raise_for_status()
                    wall = (time.perf_counter() - started) * 1000
                    time.sleep(0.2)  # let the log line land
                    stages = _last_stage_log(log_path)
                    if attempt:  # the first is a warm-up
                        walls.append(wall)
                        journeys.append(sum(stages[s] for s in JOURNEY_STAGES))
                        engines.append(stages["inference"])
                overheads = [w - j for w, j in zip(walls, journeys, strict=True)]
                overhead, engine = statistics.median(overheads), statistics.median(engines)
                rows.append(
                    f"| {fmt.value} | {statistics.median(walls):.0f} ms "
                    f"| {statistics.median(journeys):.0f} ms | {engine:.0f} ms "
                    f"| {overhead:.1f} ms | {overhead / engine:.2%} |"
                )
        return "\n".join(rows)


def fidelity_table(engine) -> str:
    rows = ["| photo | size | sr ×2 PSNR | bicubic ×2 PSNR | gain |", "|---|---|---|---|---|"]
    gains = []
    for name in PHOTOS:
        original = photo(name)
        result = roundtrip_psnr(
            original, lambda img, w, h: engine.upscale(img, EngineJob(width=w, height=h, seed=0))
        )
        gains.append(result.gain_db)
        rows.append(
            f"| {name} | {original.width}×{original.height} | {result.model_db:.2f} dB "
            f"| {result.bicubic_db:.2f} dB | {result.gain_db:+.2f} dB |"
        )
    rows.append(f"| **mean** | | | | **{statistics.mean(gains):+.2f} dB** |")
    return "\n".join(rows)


def lora_section() -> str:
    """LoRA swap figures: cold load, cached and uncached loads, slot swaps (docs/loras.md)."""
    from predictor.dev.bench_loras import lora_table

    return lora_table()


QUEUE = f"/queue/{APP_ID}"
#: fal_client polls the status at once, then every 0.1 s (DEFAULT_QUEUE_POLL_INTERVAL)
FAL_CLIENT_POLL_S = 0.1


def _sync_call(client: httpx.Client, url: str, body: dict) -> str:
    response = client.post(f"{url}/{APP_ID}", json=body).raise_for_status()
    return response.headers["x-fal-request-id"]


def _queue_polling(client: httpx.Client, url: str, body: dict) -> str:
    handle = client.post(f"{url}{QUEUE}", json=body).raise_for_status().json()
    while client.get(handle["status_url"]).json()["status"] != "COMPLETED":
        time.sleep(FAL_CLIENT_POLL_S)
    client.get(handle["response_url"]).raise_for_status()
    return handle["request_id"]


def _queue_streaming(client: httpx.Client, url: str, body: dict) -> str:
    handle = client.post(f"{url}{QUEUE}", json=body).raise_for_status().json()
    with client.stream("GET", handle["status_url"] + "/stream") as events:
        for line in events.iter_lines():
            if line.startswith("data:") and json.loads(line[5:])["status"] == "COMPLETED":
                break
    client.get(handle["response_url"]).raise_for_status()
    return handle["request_id"]


def _engine_ms(log_path: Path) -> dict[str, float]:
    """Each logged request's engine time (ms), by request id."""
    lines = [
        json.loads(line)
        for line in log_path.read_text().splitlines()
        if '"event":"request"' in line
    ]
    return {line["request_id"]: line["timings_ms"]["inference"] for line in lines}


def queue_overhead(url: str, log_path: Path, source: Image.Image, repeats: int = 7) -> str:
    """The same image through the sync route and through the queue, interleaved. The engine's
    own time (from the server's request log) is taken off each wall time, so that its noise does
    not drown the few milliseconds the protocol costs."""
    body = {
        "image_url": "data:image/jpeg;base64,"
        + base64.b64encode(encoded_input(source, OutputFormat.jpeg)).decode(),
        "sync_mode": True,
        "seed": 1,
    }
    ways: dict[str, Callable[[httpx.Client, str, dict], str]] = {
        "sync route (`POST /fal-ai/…`)": _sync_call,
        "queue, polling at once then every 0.1 s (fal_client)": _queue_polling,
        "queue, status stream (SSE)": _queue_streaming,
    }
    runs: dict[str, list[tuple[str, float]]] = {name: [] for name in ways}
    with httpx.Client(timeout=120) as client:
        for attempt in range(repeats + 1):
            for name, way in ways.items():
                started = time.perf_counter()
                request_id = way(client, url, body)
                if attempt:  # the first round is a warm-up
                    runs[name].append((request_id, (time.perf_counter() - started) * 1000))
    time.sleep(0.5)  # let the last log lines land
    engine = _engine_ms(log_path)
    rows = [
        "| way | median wall time | of which engine | wall − engine | vs the sync route |",
        "|---|---|---|---|---|",
    ]
    sync_rest = None
    for name, measured in runs.items():
        walls = [wall for _, wall in measured]
        engines = [engine[request_id] for request_id, _ in measured]
        rest = statistics.median(w - e for w, e in zip(walls, engines, strict=True))
        sync_rest = rest if sync_rest is None else sync_rest
        versus = "—" if name == next(iter(ways)) else f"{rest - sync_rest:+.0f} ms"
        rows.append(
            f"| {name} | {statistics.median(walls):.0f} ms | {statistics.median(engines):.0f} ms "
            f"| {rest:.0f} ms | {versus} |"
        )
    return "\n".join(rows)


LOAD_RUN = ("--users", "2", "--spawn-rate", "2", "--duration", "10s", "--profile", "small")


def load_run(url: str, hourly_usd: float) -> str:
    """A short ``python -m loadtest run`` against the local server; its figures side by side with
    what they are compared against."""
    if importlib.util.find_spec("locust") is None:
        return "Not available: locust is not installed (`pip install '.[loadtest]'`)."
    out = Path(tempfile.mkdtemp()) / "loadtest"
    done = subprocess.run(
        [sys.executable, "-m", "loadtest", "run", "--url", url, *LOAD_RUN, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode:
        return f"The load run failed ({done.returncode}):\n\n```\n{done.stderr[-2000:]}\n```"
    results = json.loads((out / "results.json").read_text())
    latency = results["requests"]["latency_accepted"]
    rates, cost = results["throughput"], results["cost"]["server"]
    engine_s = cost["device_seconds_per_image"]
    inflight = results["server"]["limits"]["max_inflight"]
    ceiling = inflight / engine_s
    ms = "{:.0f} ms".format
    return "\n".join(
        [
            f"`python -m loadtest run {' '.join(LOAD_RUN)}` (sync route, outputs downloaded): "
            f"{results['requests']['total']} requests, {results['requests']['accepted']} "
            f"accepted, in {results['elapsed_s']:.1f} s.",
            "",
            "| figure | measured | compared with |",
            "|---|---|---|",
            f"| p50 latency | {ms(latency['p50_s'] * 1000)} "
            f"| engine time per image {ms(engine_s * 1000)} (2 users share {inflight} worker) |",
            f"| p95 / p99 latency | {ms(latency['p95_s'] * 1000)} / "
            f"{ms(latency['p99_s'] * 1000)} | 2 × engine time {ms(2 * engine_s * 1000)} |",
            f"| throughput | {rates['images_per_s']:.2f} images/s "
            f"| engine-bound ceiling {ceiling:.2f} images/s ({inflight} worker ÷ engine time): "
            f"{rates['images_per_s'] / ceiling:.0%} of it |",
            f"| cost per image at ${hourly_usd:g}/h | ${cost['cost_per_image_usd']:.5f} "
            f"| fal's list price ${cost['list_price_per_image_usd']:.2f} "
            f"({cost['cost_to_list_price']:.1%} of it) |",
        ]
    )


#: the hourly price the load run's cost figure assumes (an on-demand H100 is about this much)
BENCH_HOURLY_USD = 3.6


def main() -> None:
    print(f"# make bench — {time.strftime('%Y-%m-%d')}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} "
        "threads)\n"
    )
    engine = load_engine(SROptions())
    source = photo("astronaut").resize((512, 512), Image.LANCZOS)
    print("## Stages: 512² photo ×2 (sr engine, waifu2x photo), medians\n")
    table = stage_table(engine, source)
    print(table, "\n")
    print("## Encoder settings on the 1024² result\n")
    upscaled = engine.upscale(source, EngineJob(width=1024, height=1024, seed=0))
    print(encoder_table(upscaled), "\n")
    print("## Server overhead (real KServe server, loopback, sync_mode false + download)\n")
    print(server_overhead(source), "\n")
    print("## sr fidelity: ×2 round trip on scikit-image photos\n")
    print(fidelity_table(engine), "\n")
    print("## sr engine: execution paths against today's and ncnn's (predictor/dev/bench_sr.py)\n")
    print(sr_section(), "\n")
    print("## LoRA swaps\n")
    print(lora_section(), "\n")
    with local_server("--gpu-hourly-usd", str(BENCH_HOURLY_USD)) as (url, log_path):
        print("## Queue overhead: one 256² photo ×2, sync route vs queue (loopback, medians)\n")
        print(queue_overhead(url, log_path, source.resize((256, 256), Image.LANCZOS)), "\n")
        print("## Short load run (locust, 2 users, small profile, 10 s)\n")
        print(load_run(url, BENCH_HOURLY_USD), "\n")
    print("## Hostile inputs: bounded cost (predictor/dev/bench_hostile.py)\n")
    print(hostile_section())


if __name__ == "__main__":
    main()
