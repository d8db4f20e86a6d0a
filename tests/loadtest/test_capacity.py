"""The capacity simulator (loadtest/capacity/): queueing against closed forms, the deployment as
the operator reads it, service times, traffic, the report, the recommender and the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from loadtest.capacity import deployment, service, traffic
from loadtest.capacity.recommend import p95_with_misses, patch_text, patched, recommend
from loadtest.capacity.simulate import SimSettings, simulate
from loadtest.capacity.summary import list_price_usd, summarize_outcome
from tests.conftest import ROOT


def ud(spec: dict, name: str = "planner") -> dict:
    return {
        "apiVersion": "serving.chrono-upscaler.dev/v1alpha1",
        "kind": "UpscalerDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def queue_deployment(replicas: int, **scaling) -> deployment.Deployment:
    spec = {
        "engine": "sr",
        "scaling": {
            "mode": "RawDeployment",
            "minReplicas": replicas,
            "maxReplicas": replicas,
            **scaling,
        },
        "queue": {"redis": {"url": "redis://redis:6379/0"}, "maxQueued": 1_000_000},
        "pricing": {"cpuHourlyUsd": 1.0},
    }
    return deployment.parse_document(ud(spec))


def flat_service(seconds: float) -> service.ServiceModel:
    return service.model_from_dict({"points": [{"width": 1, "height": 1, "seconds": seconds}]})


ONE_SIZE = traffic.SizeMix((1,), (1.0,))

# --- queueing against closed forms -------------------------------------------------------------


def erlang_c_wait(arrival: float, service_rate: float, servers: int) -> float:
    """Mean wait in queue of M/M/c (Erlang C)."""
    a = arrival / service_rate
    top = a**servers / math.factorial(servers) * servers / (servers - a)
    bottom = sum(a**k / math.factorial(k) for k in range(servers)) + top
    return top / bottom / (servers * service_rate - arrival)


@pytest.mark.parametrize(("servers", "utilization"), [(1, 0.7), (4, 0.8)])
def test_mean_wait_matches_mmc_closed_form(servers: int, utilization: float) -> None:
    arrival = utilization * servers  # service rate 1/s
    settings = SimSettings(
        deployment=queue_deployment(servers),
        service=flat_service(1.0),
        traffic=traffic.constant(arrival, 200_000 / arrival, ONE_SIZE, seed=3),
        service_distribution="exponential",
        claim_poll_s=0,
        seed=3,
    )
    outcome = simulate(settings)
    waits = outcome.start - outcome.arrival
    expected = erlang_c_wait(arrival, 1.0, servers)
    assert not np.isnan(waits).any()
    assert abs(waits.mean() / expected - 1) < 0.05, (waits.mean(), expected)


def test_deterministic_single_server_has_no_wait_below_saturation_spacing() -> None:
    # arrivals every 2 s (a trace), service 1 s: nobody ever waits, one replica is busy half
    # of the time, and the replica-hours are the elapsed time
    times = np.arange(0, 100, 2.0)
    arrivals = traffic.Arrivals(times=times, pixels=np.ones(len(times), dtype=np.int64))
    outcome = simulate(
        SimSettings(queue_deployment(1), flat_service(1.0), arrivals, claim_poll_s=0)
    )
    assert np.allclose(outcome.start, outcome.arrival)
    assert np.allclose(outcome.end - outcome.start, 1.0)
    assert outcome.replica_seconds == pytest.approx(outcome.elapsed_s)


def test_claim_poll_is_the_predictors() -> None:
    from loadtest.capacity.simulate import CLAIM_POLL_S
    from predictor.queue.redis import POLL_S

    assert CLAIM_POLL_S == POLL_S


# --- the deployment, as the operator reads it --------------------------------------------------


def test_serverless_defaults_are_the_operators() -> None:
    parsed = deployment.parse_document(
        ud({"engine": "chronoedit", "model": {"storageUri": "hf://o/r"}})
    )
    assert parsed.autoscaler == "knative"
    assert (parsed.min_replicas, parsed.max_replicas, parsed.target_concurrency) == (0, 1, 1)
    assert parsed.gpus == 1 and parsed.replica_hourly_usd is None
    assert parsed.scale_to_zero_grace_s is None
    assert (parsed.slots, parsed.max_waiting) == (1, 16)


def test_queue_deployment_is_keda_and_prices_gpus() -> None:
    parsed = deployment.parse_document(
        ud(
            {
                "engine": "chronoedit",
                "model": {"storageUri": "hf://o/r"},
                "gpu": {"count": 2},
                "pricing": {"gpuHourlyUsd": 3.0},
                "scaling": {
                    "mode": "RawDeployment",
                    "maxReplicas": 8,
                    "scaleToZeroGracePeriod": "15m",
                },
                "queue": {"maxQueued": 50},
            }
        )
    )
    assert parsed.autoscaler == "keda" and parsed.shared_queue
    assert parsed.replica_hourly_usd == 6.0
    assert parsed.scale_to_zero_grace_s == 900.0
    assert parsed.max_queued == 50


def test_an_invalid_spec_names_the_field() -> None:
    with pytest.raises(deployment.DeploymentError, match=r"spec\.scaling\.minReplicas"):
        deployment.parse_document(ud({"engine": "sr", "scaling": {"minReplicas": 3}}))
    with pytest.raises(deployment.DeploymentError, match="kind"):
        deployment.parse_document({"kind": "Deployment"})


def test_the_shipped_examples_load(tmp_path: Path) -> None:
    for name in ("upscaler.yaml", "upscaler-queue.yaml", "upscaler-sr-cpu.yaml"):
        parsed, raw = deployment.load(ROOT / "manifests" / "examples" / name)
        assert raw["kind"] == "UpscalerDeployment" and parsed.max_replicas >= 1


# --- service times -----------------------------------------------------------------------------


def test_service_times_interpolate_in_pixels_with_steps_and_loras() -> None:
    model = service.model_from_dict(
        {
            "points": [
                {"width": 100, "height": 100, "step_seconds": 1.0, "fixed_seconds": 2.0},
                {"width": 200, "height": 100, "step_seconds": 3.0, "fixed_seconds": 2.0},
            ],
            "default_steps": 4,
            "lora_seconds": 0.5,
        }
    )
    assert model.seconds(10_000) == pytest.approx(6.0)
    assert model.seconds(15_000) == pytest.approx(2.0 + 2.0 * 4)
    assert model.seconds(15_000, steps=8, loras=2) == pytest.approx(2.0 + 2.0 * 8 + 1.0)
    assert model.seconds(30_000) == pytest.approx(2.0 + 5.0 * 4)  # extrapolated


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({}, "points"),
        ({"points": [{"width": 1, "height": 1}]}, "points[0]"),
        ({"points": [{"width": 0, "height": 1, "seconds": 1}]}, "points[0].width"),
        ({"points": [{"width": 1, "height": 1, "step_seconds": 1}]}, "default_steps"),
        (
            {"points": [{"width": 1, "height": 1, "seconds": 1}], "startup": {"cold_seconds": -1}},
            "startup.cold_seconds",
        ),
        ({"points": [{"width": 1, "height": 1, "seconds": 1}], "extra": 1}, "extra"),
    ],
)
def test_service_errors_name_the_field(raw: dict, field: str) -> None:
    with pytest.raises(service.ServiceError, match=field.replace("[", r"\[").replace("]", r"\]")):
        service.model_from_dict(raw)

    text = (Path(__file__).parent / "data" / "bench_gpu_h200.md").read_text()
    compiled = service.from_bench_gpu(text, steps=30)  # compiled bf16 by default
    assert compiled == [
        {"width": 1280, "height": 720, "step_seconds": 0.4, "fixed_seconds": 0.56},
        {"width": 2048, "height": 1152, "step_seconds": 1.247, "fixed_seconds": 1.39},
        {"width": 2560, "height": 1440, "step_seconds": 2 * 1.272, "fixed_seconds": 2.86},
    ]
    model = service.model_from_dict({"points": compiled, "default_steps": 30}, source="h200")
    assert model.seconds(1280 * 720) == pytest.approx(0.56 + 30 * 0.4)  # 12.56 s: the table's
    fp8 = service.from_bench_gpu(text, steps=30, mode="compiled fp8", fixed_s=1.0)
    assert [(p["width"], p["step_seconds"], p["fixed_seconds"]) for p in fp8] == [
        (1280, 0.285, 1.0),
        (2560, 2 * 0.98, 1.0),
    ]
    with pytest.raises(service.ServiceError, match=r"'compiled fp16'.*eager bf16, compiled bf16"):
        service.from_bench_gpu(text, steps=30, mode="compiled fp16")


def test_bench_output_gives_the_sr_stage_time() -> None:
    text = (
        "## Stages: 512² photo ×2 (sr engine, waifu2x photo), medians\n\n"
        "| format | fetch (data: URI) | decode 512² | engine ×2 | encode 1024² | output bytes |\n"
        "|---|---|---|---|---|---|\n"
        "| jpeg | 1.0 ms | 2.0 ms | 2300 ms | 9.0 ms | 200,000 |\n"
    )
    assert service.from_bench(text) == [{"width": 1024, "height": 1024, "seconds": 2.3}]
    with pytest.raises(service.ServiceError):
        service.from_bench("nothing here")


# --- traffic -----------------------------------------------------------------------------------


def test_constant_and_daily_rates() -> None:
    steady = traffic.constant(2.0, 10_000, ONE_SIZE, seed=1)
    assert len(steady.times) / 10_000 == pytest.approx(2.0, rel=0.03)
    day = traffic.daily(4.0, 1.0, traffic.DAY_S, ONE_SIZE, peak_hour=12, seed=1)
    hours = np.histogram(day.times, bins=24, range=(0, traffic.DAY_S))[0] / 3600
    assert hours[12] == pytest.approx(4.0, rel=0.1)
    assert hours[0] == pytest.approx(1.0, rel=0.15)
    assert len(day.times) / traffic.DAY_S == pytest.approx(2.5, rel=0.03)  # the cosine's mean


def test_trace_csv(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text(
        "time,width,height,steps\n2026-12-01T00:00:10Z,854,480,8\n2026-12-01T00:00:00Z,1280,720,4\n"
    )
    trace = traffic.load_trace(path)
    assert trace.times.tolist() == [0.0, 10.0]
    assert trace.pixels.tolist() == [1280 * 720, 854 * 480]
    assert trace.steps.tolist() == [4, 8]
    path.write_text("time,width,height\n1,abc,2\n")
    with pytest.raises(traffic.TrafficError, match="row 2, width"):
        traffic.load_trace(path)


def test_size_mix_parsing() -> None:
    mix = traffic.parse_size_mix("854x480:3,1280×720:1")
    assert mix.pixels == (854 * 480, 1280 * 720) and mix.weights == (3.0, 1.0)
    with pytest.raises(traffic.TrafficError, match="--sizes"):
        traffic.parse_size_mix("big")


# --- the simulation's figures ------------------------------------------------------------------


def test_list_price_is_the_predictors() -> None:
    pixels = np.array([854 * 480, 854 * 480 + 1, 100])
    assert list_price_usd(pixels) == pytest.approx(0.02 + 0.03 + 0.02)


def test_scale_from_zero_counts_cold_starts_and_cost() -> None:
    # KEDA from zero: one request at t=0 waits for the poll (t=0), a 60 s cold start, 10 s of
    # engine; the replica stays for the 300 s cooldown (next polls at 30 s steps), then goes
    spec = {
        "engine": "sr",
        "scaling": {"mode": "RawDeployment", "maxReplicas": 2},
        "queue": {},
        "pricing": {"cpuHourlyUsd": 3.6},
    }
    parsed = deployment.parse_document(ud(spec))
    model = service.model_from_dict(
        {
            "points": [{"width": 1, "height": 1, "seconds": 10}],
            "startup": {"cold_seconds": 60, "cached_seconds": 5},
        }
    )
    arrivals = traffic.Arrivals(times=np.array([0.0, 1000.0]), pixels=np.ones(2, dtype=np.int64))
    outcome = simulate(SimSettings(parsed, model, arrivals, sample_s=5, claim_poll_s=0))
    results = summarize_outcome(outcome, client_timeout_s=65)
    # first: poll at 0 → cold 60 s → served 60–70. Second at 1000: the replica went at 360 s
    # (last active poll at 60, cooldown 300 → the poll at 360); KEDA's poll at 1020 wakes a
    # cached node (5 s): served 1025–1035
    assert outcome.start.tolist() == [60.0, 1025.0]
    assert results["requests"]["cold_start"] == 2
    assert results["requests"]["over_client_timeout"] == 1
    assert (outcome.starts_cold, outcome.starts_cached) == (1, 1)
    assert results["cost"]["per_image_usd"] == pytest.approx(
        outcome.replica_seconds / 3600 * 3.6 / 2
    )


def test_serverless_buffers_at_zero_and_refuses_beyond_a_replicas_queue() -> None:
    spec = {"engine": "sr", "scaling": {"maxReplicas": 1}}
    parsed = deployment.parse_document(ud(spec)).with_scaling(max_waiting=2)
    times = np.zeros(5)
    arrivals = traffic.Arrivals(times=times, pixels=np.ones(5, dtype=np.int64))
    outcome = simulate(SimSettings(parsed, flat_service(1.0), arrivals))
    # all five arrive at zero replicas; the activator buffers them, wakes one replica (start-up
    # 0 s); routed to it: one runs, two wait, two are refused
    assert outcome.refused.sum() == 2
    assert sorted(outcome.end[~outcome.refused].tolist()) == [1.0, 2.0, 3.0]
    assert outcome.cold.all()


# --- recommendations ---------------------------------------------------------------------------


def test_recommend_finds_the_cheapest_setting_that_meets_the_target() -> None:
    document = ud(
        {
            "engine": "sr",
            "scaling": {"mode": "RawDeployment", "minReplicas": 1, "maxReplicas": 2},
            "queue": {},
            "pricing": {"cpuHourlyUsd": 1.0},
        }
    )
    base = SimSettings(
        deployment.parse_document(document),
        flat_service(1.0),
        traffic.constant(3.0, 1800, ONE_SIZE, seed=2),
        service_distribution="exponential",
    )
    best = recommend(
        document,
        base,
        p95_target_s=4.0,
        cost_of=lambda results: results["cost"]["usd"],
        summarize=lambda outcome: summarize_outcome(outcome, 300),
        max_replicas_limit=8,
    )
    assert best is not None and best.p95_s <= 4.0
    # 3 requests/s of 1 s each need more than 3 replicas: the fixed two cannot keep up
    assert best.fields["maxReplicas"] >= 4
    # one replica fewer (same other fields) misses the target
    fewer = {**best.fields, "maxReplicas": best.fields["maxReplicas"] - 1}
    if fewer["maxReplicas"] >= max(1, fewer["minReplicas"]):  # else no smaller setting exists
        smaller = deployment.parse_document(patched(document, fewer))
        assert p95_with_misses(simulate(dataclasses.replace(base, deployment=smaller))) > 4.0
    patch = yaml.safe_load(patch_text(document, best.fields))
    assert set(patch["spec"]["scaling"]) <= {
        "minReplicas",
        "maxReplicas",
        "targetQueueLength",
        "scaleToZeroGracePeriod",
    }
    assert patch["spec"]["scaling"]["maxReplicas"] == best.fields["maxReplicas"]


# --- the command line --------------------------------------------------------------------------


def test_simulate_command_writes_report_results_and_plot(tmp_path: Path) -> None:
    yaml_path = tmp_path / "ud.yaml"
    yaml_path.write_text(
        yaml.safe_dump(
            ud(
                {
                    "engine": "chronoedit",
                    "model": {"storageUri": "hf://o/r"},
                    "scaling": {"maxReplicas": 4},
                    "pricing": {"gpuHourlyUsd": 2.0},
                }
            )
        )
    )
    service_path = tmp_path / "service.yaml"
    service_path.write_text(
        yaml.safe_dump(
            {
                "points": [{"width": 1280, "height": 720, "seconds": 20}],
                "startup": {"cold_seconds": 300, "cached_seconds": 60},
            }
        )
    )
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.capacity",
            "simulate",
            "--deployment",
            str(yaml_path),
            "--traffic",
            "bursts",
            "--rate",
            "0.05",
            "--burst-rate",
            "0.3",
            "--burst-every",
            "30m",
            "--burst-for",
            "5m",
            "--duration",
            "2h",
            "--service",
            str(service_path),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["deployment"]["autoscaler"] == "knative"
    assert results["replicas"]["max"] <= 4 and results["requests"]["served"] > 0
    assert results["cost"]["list_price_per_image_usd"] == pytest.approx(0.03)
    assert (out / "capacity.png").stat().st_size > 10_000
    assert "# Capacity plan" in (out / "report.md").read_text()


def test_bad_input_is_an_error_naming_it(tmp_path: Path) -> None:
    yaml_path = tmp_path / "ud.yaml"
    yaml_path.write_text(yaml.safe_dump(ud({"engine": "sr", "scaling": {"maxReplicas": 0}})))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.capacity",
            "simulate",
            "--deployment",
            str(yaml_path),
            "--rate",
            "1",
            "--seconds",
            "1",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2
    assert "spec.scaling.maxReplicas" in done.stderr


def test_lognormal_jitter_keeps_the_mean() -> None:
    times = np.arange(0, 20_000, 10.0)
    arrivals = traffic.Arrivals(times=times, pixels=np.ones(len(times), dtype=np.int64))
    settings = SimSettings(
        queue_deployment(1),
        flat_service(2.0),
        arrivals,
        service_distribution="lognormal",
        service_sigma=0.6,
    )
    engine = simulate(settings).service_s
    assert engine.mean() == pytest.approx(2.0, rel=0.05)
    assert np.log(engine).std() == pytest.approx(0.6, rel=0.05)


def test_initial_replicas_serve_at_once_and_keda_keeps_them_for_a_cooldown() -> None:
    spec = {"engine": "sr", "scaling": {"mode": "RawDeployment", "maxReplicas": 4}, "queue": {}}
    parsed = deployment.parse_document(ud(spec))
    arrivals = traffic.Arrivals(
        times=np.array([1.0]), pixels=np.ones(1, dtype=np.int64), horizon_s=200.0
    )
    outcome = simulate(
        SimSettings(parsed, flat_service(1.0), arrivals, initial_replicas=3, claim_poll_s=0)
    )
    assert outcome.start.tolist() == [1.0]  # no cold start: three replicas were serving
    assert not outcome.cold.any()
    # the HPA keeps its highest recommendation for 300 s: all three stay through the 200 s
    assert outcome.timeline[:, 1].min() == 3


def test_patch_removes_a_field_with_null() -> None:
    document = ud({"engine": "sr", "scaling": {"scaleToZeroGracePeriod": "15m", "maxReplicas": 2}})
    patch = yaml.safe_load(
        patch_text(document, {"scaleToZeroGracePeriod": None, "maxReplicas": 2, "minReplicas": 1})
    )
    assert patch == {"spec": {"scaling": {"scaleToZeroGracePeriod": None, "minReplicas": 1}}}


def test_compare_resimulates_a_saved_run(tmp_path: Path) -> None:
    # a saved compare (calibration and the load test's results.json), simulated again without
    # servers: the report puts the measured and simulated figures side by side
    summary = {"count": 100, "mean_s": 0.2, "p50_s": 0.18, "p95_s": 0.4, "p99_s": 0.5, "max_s": 0.6}
    queue = {
        "wait": {**summary, "mean_s": 0.1},
        "run": summary,
        "inference": {**summary, "mean_s": 0.15, "p50_s": 0.12, "p95_s": 0.3},
        "end_to_end": {**summary, "mean_s": 0.35},
    }
    loadtest_results = {
        "requests": {"latency_accepted": {**summary, "p95_s": 0.7}, "accepted": 300},
        "throughput": {"images_per_s": 9.5},
        "queue": queue,
    }
    (tmp_path / "loadtest.json").write_text(json.dumps(loadtest_results))
    calibration = {
        "points": [
            {"width": 40_000, "height": 1, "seconds": 0.08},
            {"width": 130_000, "height": 1, "seconds": 0.12},
        ],
        "overhead_s": 0.09,
    }
    (tmp_path / "compare.json").write_text(
        json.dumps({"calibration": calibration, "loadavg_before": 1.0})
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.capacity",
            "compare",
            "--resimulate",
            "--replicas",
            "2",
            "--users",
            "4",
            "--duration",
            "20s",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "compare.json").read_text())
    assert report["measured"]["p95_s"] == 0.7
    assert report["measured"]["overhead_s"] == pytest.approx(0.35 - 0.1 - 0.15)
    for key in ("sim_calibrated", "sim_scaled"):
        assert report[key]["replicas"] == 2 and report[key]["images_per_s"] > 0
    assert report["jitter_sigma"] > 0
    assert (
        "| measured (python -m loadtest) | 0.70 s | 9.50 |" in (tmp_path / "compare.md").read_text()
    )
