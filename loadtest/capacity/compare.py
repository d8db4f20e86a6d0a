"""The simulator against reality: a local ``sr`` deployment of several replicas on one Redis
queue, driven by the load test, next to a simulation of the same deployment and traffic.

``python -m loadtest.capacity compare`` (``make capacity-compare``):

1. starts ``redis-server`` and ``--replicas`` predictor processes sharing its queue;
2. calibrates, unloaded: each distinct output size of the profile's pool goes through the queue
   alone (``--calibrate-repeats`` times); the server's ``inference_time`` is the engine's service
   time for that size, and the client's wall time beyond it the per-request overhead (submit,
   polls, result, download) that holds no engine slot;
3. runs ``python -m loadtest run --mode queue`` with ``--users`` closed-loop users;
4. simulates the same deployment (KEDA with min = max = ``--replicas``: the local run does not
   autoscale) with the same users and sizes, twice: with the calibrated (unloaded) times, and
   with the times the run itself saw — the engine scaled by how much slower it ran under load,
   and the overhead as the run's mean end-to-end time less its mean wait and engine time. The
   first is the planner's prediction; the second separates the queueing model's error from the
   machine's contention (the cores are shared by the replicas, the load generator and Redis);
5. writes ``compare.json`` and ``compare.md`` (p95, throughput, replicas side by side).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from loadtest.capacity.deployment import parse_document
from loadtest.capacity.service import model_from_dict
from loadtest.capacity.simulate import SimSettings, simulate
from loadtest.capacity.summary import summarize_outcome
from loadtest.capacity.traffic import ClosedLoop, SizeMix, profile_sizes
from loadtest.cli import parse_duration
from loadtest.profiles import PROFILES

TOLERANCE = 0.20


def add_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--replicas", type=int, default=2)
    sub.add_argument("--users", type=int, default=4)
    sub.add_argument("--duration", type=parse_duration, default=90.0)
    sub.add_argument("--profile", choices=sorted(PROFILES), default="small")
    sub.add_argument("--threads", type=int, default=1, help="torch threads per replica")
    sub.add_argument("--calibrate-repeats", type=int, default=3)
    sub.add_argument("--pool", type=int, default=32)
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--out", type=Path, default=Path("build/capacity/compare"))
    sub.add_argument(
        "--resimulate",
        action="store_true",
        help="simulate again against the run saved in --out (no servers, no load)",
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _redis() -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _journey(client, base: str, body: bytes) -> tuple[float, float]:
    """One queue journey alone: (client wall seconds, server inference seconds)."""
    from loadtest.users import SUBMIT_PATH, with_logs

    started = time.perf_counter()
    handle = (
        client.post(base + SUBMIT_PATH, content=body, headers={"content-type": "application/json"})
        .raise_for_status()
        .json()
    )
    while True:
        document = client.get(with_logs(handle["status_url"])).raise_for_status().json()
        if document["status"] == "COMPLETED":
            break
        time.sleep(0.1)
    result = client.get(handle["response_url"]).raise_for_status().json()
    client.get(result["images"][0]["url"]).raise_for_status()
    wall = time.perf_counter() - started
    return wall, float((document.get("metrics") or {})["inference_time"])


def calibrate(base: str, profile: str, pool: int, seed: int, repeats: int) -> dict:
    """Per output size: the engine's median seconds, unloaded; and the median overhead."""
    import httpx

    from loadtest.profiles import build_pool

    by_size: dict[int, list[float]] = {}
    overheads: list[float] = []
    payloads = {p.expected_output: p for p in build_pool(PROFILES[profile], pool, seed)}
    with httpx.Client(timeout=300) as client:
        _journey(client, base, next(iter(payloads.values())).body)  # warm-up
        for (width, height), payload in sorted(payloads.items()):
            for _ in range(repeats):
                wall, inference = _journey(client, base, payload.body)
                by_size.setdefault(width * height, []).append(inference)
                overheads.append(wall - inference)
    points = [
        {"width": pixels, "height": 1, "seconds": statistics.median(times)}
        for pixels, times in sorted(by_size.items())
    ]
    return {"points": points, "overhead_s": statistics.median(overheads)}


def load_run(base: str, args: argparse.Namespace, out: Path) -> dict:
    command = [
        sys.executable,
        "-m",
        "loadtest",
        "run",
        "--url",
        base,
        "--mode",
        "queue",
        "--profile",
        args.profile,
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.users),
        "--duration",
        f"{args.duration:g}s",
        "--pool",
        str(args.pool),
        "--seed",
        str(args.seed),
        "--out",
        str(out),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=args.duration + 900)
    return json.loads((out / "results.json").read_text())


def deployment_document(replicas: int) -> dict:
    """The local run as an UpscalerDeployment: sr on a shared queue, a fixed replica count."""
    return {
        "apiVersion": "serving.chrono-upscaler.dev/v1alpha1",
        "kind": "UpscalerDeployment",
        "metadata": {"name": "sr-local"},
        "spec": {
            "engine": "sr",
            "scaling": {
                "mode": "RawDeployment",
                "minReplicas": replicas,
                "maxReplicas": replicas,
            },
            "queue": {"redis": {"url": "redis://127.0.0.1:6379/0"}},
        },
    }


def simulate_run(
    args,
    calibration: dict,
    sizes: SizeMix,
    scale: float = 1.0,
    overhead_s: float | None = None,
    sigma: float = 0.0,
) -> dict:
    points = [{**p, "seconds": p["seconds"] * scale} for p in calibration["points"]]
    settings = SimSettings(
        deployment=parse_document(deployment_document(args.replicas)),
        service=model_from_dict({"points": points}),
        traffic=ClosedLoop(args.users, args.duration, sizes),
        overhead_s=calibration["overhead_s"] if overhead_s is None else overhead_s,
        service_distribution="lognormal" if sigma else "fixed",
        service_sigma=sigma,
        seed=args.seed,
        sample_s=1.0,
    )
    outcome = simulate(settings)
    results = summarize_outcome(outcome, 330.0)
    results["throughput"]["images_per_elapsed_s"] = (
        results["requests"]["served"] / outcome.elapsed_s
    )
    return results


def _ratio(simulated: float, measured: float) -> float:
    return simulated / measured if measured else float("nan")


def render(report: dict) -> str:
    measured, rows = report["measured"], []
    labels = (
        ("calibrated service times", "sim_calibrated"),
        ("service times as measured under load", "sim_scaled"),
    )
    for label, key in labels:
        sim = report[key]
        rows.append(
            f"| simulated, {label} | {sim['p95_s']:.2f} s "
            f"({sim['p95_ratio']:.2f}×) | {sim['images_per_s']:.2f} "
            f"({sim['throughput_ratio']:.2f}×) | {sim['replicas']} |"
        )
    c, calibration = report["config"], report["calibration"]
    return "\n".join(
        [
            f"# Simulated vs measured: sr, {c['replicas']} replicas on Redis, {c['users']} users,"
            f" {c['profile']} profile, queue mode, {c['duration_s']:g} s",
            "",
            "| run | p95 end to end | images/s | replicas |",
            "|---|---|---|---|",
            f"| measured (python -m loadtest) | {measured['p95_s']:.2f} s "
            f"| {measured['images_per_s']:.2f} | {c['replicas']} (fixed) |",
            *rows,
            "",
            f"Calibration (unloaded): engine {calibration['mean_engine_s']:.3f} s per image on "
            f"average over the pool's sizes, overhead {calibration['overhead_s']:.3f} s per "
            f"request. Under load the engine took {measured['mean_inference_s']:.3f} s "
            f"({report['contention']:.2f}× the calibrated mean) and the rest of a request "
            f"(end to end − wait − engine) {measured['overhead_s']:.3f} s; its jitter, "
            f"a lognormal spread σ = {report['jitter_sigma']:.2f} beyond the sizes'. "
            f"Load average before the run {report['loadavg_before']:.2f}, at its end "
            f"{calibration.get('loadavg_after', float('nan')):.2f} "
            f"({os.cpu_count()} CPUs).",
            "",
        ]
    )


def measure(args: argparse.Namespace) -> tuple[dict, float, dict]:
    """The real part: Redis and the replicas up, the calibration, then the load run."""
    from predictor.dev.local_server import local_server

    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(_redis())
        flags = ("--redis-url", redis_url, "--threads", str(args.threads))
        urls = [stack.enter_context(local_server(*flags))[0] for _ in range(args.replicas)]
        base = urls[0]
        print(f"{args.replicas} replicas up on {redis_url}; calibrating …", file=sys.stderr)
        calibration = calibrate(base, args.profile, args.pool, args.seed, args.calibrate_repeats)
        loadavg = os.getloadavg()[0]
        print(f"load run: {args.users} users, {args.duration:g} s …", file=sys.stderr)
        results = load_run(base, args, Path(tempfile.mkdtemp()) / "loadtest")
        # the machine's load over the last minute of the run (the replicas' own included)
        calibration["loadavg_after"] = os.getloadavg()[0]
    return calibration, loadavg, results


def main(args: argparse.Namespace) -> int:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.resimulate:  # the saved run of an earlier compare, simulated again
        saved = json.loads((out / "compare.json").read_text())
        calibration, loadavg = saved["calibration"], saved["loadavg_before"]
        calibration = {
            key: calibration[key]
            for key in ("points", "overhead_s", "loadavg_after")
            if key in calibration
        }
        results = json.loads((out / "loadtest.json").read_text())
    else:
        calibration, loadavg, results = measure(args)
        (out / "loadtest.json").write_text(json.dumps(results, indent=2))
    sizes = profile_sizes(args.profile, args.pool, args.seed)
    engine_mean = _mean_engine(calibration, sizes)
    measured = {
        "p95_s": results["requests"]["latency_accepted"]["p95_s"],
        "images_per_s": results["throughput"]["images_per_s"],
        "accepted": results["requests"]["accepted"],
        "mean_inference_s": results["queue"]["inference"]["mean_s"],
        "mean_wait_s": results["queue"]["wait"]["mean_s"],
    }
    queue = results["queue"]
    measured["overhead_s"] = (
        queue["end_to_end"]["mean_s"] - queue["wait"]["mean_s"] - queue["inference"]["mean_s"]
    )
    contention = measured["mean_inference_s"] / engine_mean
    report = {
        "config": {
            "replicas": args.replicas,
            "users": args.users,
            "profile": args.profile,
            "duration_s": args.duration,
            "threads": args.threads,
        },
        "calibration": {**calibration, "mean_engine_s": engine_mean},
        "loadavg_before": loadavg,
        "contention": contention,
        "measured": measured,
    }
    jitter = _jitter(calibration, sizes, results["queue"]["inference"])
    report["jitter_sigma"] = jitter
    variants = (
        ("sim_calibrated", 1.0, None, 0.0),
        ("sim_scaled", contention, measured["overhead_s"], jitter),
    )
    for key, scale, overhead, sigma in variants:
        sim = simulate_run(args, calibration, sizes, scale, overhead, sigma)
        p95 = sim["latency"]["total"]["p95_s"]
        rate = sim["throughput"]["images_per_elapsed_s"]
        report[key] = {
            "p95_s": p95,
            "images_per_s": rate,
            "replicas": sim["replicas"]["max"],
            "p95_ratio": _ratio(p95, measured["p95_s"]),
            "throughput_ratio": _ratio(rate, measured["images_per_s"]),
            "within_tolerance": abs(p95 / measured["p95_s"] - 1) <= TOLERANCE
            and abs(rate / measured["images_per_s"] - 1) <= TOLERANCE,
        }
    (out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    text = render(report)
    (out / "compare.md").write_text(text)
    print(text)
    return 0


def _jitter(calibration: dict, sizes: SizeMix, inference: dict) -> float:
    """The engine's jitter under load as a lognormal spread: the measured log-spread (from its
    p95 / p50, 1.645 standard deviations apart) less the spread the pool's sizes explain."""
    model = model_from_dict({"points": calibration["points"]})
    logs = np.log([model.seconds(p) for p in sizes.pixels])
    measured = math.log(inference["p95_s"] / inference["p50_s"]) / 1.645
    return math.sqrt(max(0.0, measured**2 - float(np.var(logs))))


def _mean_engine(calibration: dict, sizes: SizeMix) -> float:
    """The calibrated engine time averaged over the pool's sizes (as the load run draws them)."""
    model = model_from_dict({"points": calibration["points"]})
    seconds = [model.seconds(p) * w for p, w in zip(sizes.pixels, sizes.weights, strict=True)]
    return sum(seconds) / sum(sizes.weights)
