"""A simulation's outputs: ``results.json``, ``report.md`` (laid out like the load test's) and
``capacity.png`` (offered traffic, replicas and latency over time)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from loadtest.capacity.simulate import Outcome
from loadtest.report import LATENCY_HEADER, seconds, usd


def _latency_row(label: str, summary: dict) -> str:
    return (
        f"| {label} | {summary['count']} | {seconds(summary['p50_s'])} "
        f"| {seconds(summary['p95_s'])} | {seconds(summary['p99_s'])} "
        f"| {seconds(summary['max_s'])} |"
    )


def _fixed(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def render_markdown(results: dict) -> str:
    d, r = results["deployment"], results["requests"]
    latency, cost, replicas = results["latency"], results["cost"], results["replicas"]
    rate = results["throughput"]
    hourly = d["replica_hourly_usd"]
    lines = [
        f"# Capacity plan: {d['name']} ({d['engine']}, {d['autoscaler']})",
        "",
        f"Simulated {results['duration_s'] / 3600:.2f} h of traffic "
        f"({results['elapsed_s'] / 3600:.2f} h with the work in hand finished); "
        f"replicas {d['min_replicas']}–{d['max_replicas']}, "
        f"{d['gpus_per_replica']} GPU(s) each, {usd(hourly)}/replica-hour.",
        "",
        "## Requests",
        "",
        "| offered | served | refused (429) | unfinished | cold start | over the client timeout |",
        "|---|---|---|---|---|---|",
        f"| {r['total']} | {r['served']} | {r['refused']} | {r['unfinished']} "
        f"| {r['cold_start']} ({r['cold_start_share']:.1%}) "
        f"| {r['over_client_timeout']} (> {r['client_timeout_s']:g} s) |",
        "",
        f"Throughput {rate['images_per_s']:.3f} images/s of {rate['offered_per_s']:.3f} offered.",
        "",
        "## Latency (served requests)",
        "",
        *LATENCY_HEADER,
        _latency_row("end to end", latency["total"]),
        _latency_row("queue wait", latency["wait"]),
        _latency_row("engine (service)", latency["engine"]),
        "",
        "## Replicas and cost",
        "",
        "| mean replicas | max | starts (cold / cached) | replica-hours | GPU-hours | cost "
        "| per image | fal's list price per image | cost / list price |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {replicas['mean']:.2f} | {replicas['max']} "
        f"| {replicas['starts_cold']} / {replicas['starts_cached']} "
        f"| {replicas['replica_hours']:.2f} "
        f"| {_fixed(replicas['gpu_hours'], '.2f')} "
        f"| {usd(cost['usd'])} | {usd(cost['per_image_usd'])} "
        f"| {usd(cost['list_price_per_image_usd'])} "
        f"| {_fixed(cost['cost_to_list_price'], '.1%')} |",
        "",
    ]
    if hourly is None:
        lines += ["No price: set spec.pricing or pass --hourly-usd for the cost columns.", ""]
    return "\n".join(lines)


def plot(path: Path, outcome: Outcome, bucket_s: float | None = None) -> None:
    """Offered requests/s, replicas (all and ready) and p50/p95 latency per time bucket."""
    from matplotlib.figure import Figure

    duration = max(outcome.elapsed_s, 1e-9)
    bucket = bucket_s or max(duration / 200.0, 1.0)
    edges = np.arange(0.0, duration + bucket, bucket)
    scale, unit = (3600.0, "hours") if duration > 4 * 3600 else (1.0, "seconds")
    figure = Figure(figsize=(10, 9), layout="constrained")
    traffic, replicas, latency = figure.subplots(3, 1, sharex=True)
    counts, _ = np.histogram(outcome.arrival, bins=edges)
    traffic.step(edges[:-1] / scale, counts / bucket, where="post", color="tab:blue")
    traffic.set(title="offered traffic", ylabel="requests/s")
    timeline = outcome.timeline
    if len(timeline):
        replicas.step(timeline[:, 0] / scale, timeline[:, 1], where="post", label="replicas")
        replicas.step(timeline[:, 0] / scale, timeline[:, 2], where="post", label="ready")
        replicas.legend(loc="upper right")
    replicas.set(title="replicas", ylabel="replicas")
    served = ~np.isnan(outcome.end)
    ends = outcome.end[served]
    totals = (outcome.end - outcome.arrival)[served] + outcome.overhead_s
    index = np.digitize(ends, edges) - 1
    for q, colour in ((50, "tab:green"), (95, "tab:orange")):
        values = [
            np.percentile(totals[index == i], q) if np.any(index == i) else np.nan
            for i in range(len(edges) - 1)
        ]
        latency.plot(edges[:-1] / scale, values, color=colour, label=f"p{q}")
    latency.set(title="latency of requests finishing", ylabel="seconds", xlabel=unit)
    latency.legend(loc="upper right")
    figure.savefig(path, dpi=100)


def write_outputs(out: Path, results: dict, outcome: Outcome) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "results": out / "results.json",
        "report": out / "report.md",
        "plot": out / "capacity.png",
    }
    paths["results"].write_text(json.dumps(results, indent=2) + "\n")
    paths["report"].write_text(render_markdown(results))
    plot(paths["plot"], outcome)
    return paths
