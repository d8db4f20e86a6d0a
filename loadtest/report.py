"""A run's outputs: ``results.json`` (the numbers), ``report.md`` (the same, for people),
``latency.png`` (latency over time and its histogram, accepted vs shed requests) and
``requests.csv`` (the images received: a trace the capacity planner replays, docs/capacity.md)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from loadtest.stats import RequestRecord

CLASSES = (
    ("accepted", "tab:green"),
    ("shed", "tab:orange"),
    ("gave_up", "tab:purple"),
    ("failed", "tab:red"),
)


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def usd(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    digits = f"{value:.4g}"
    if "e" not in digits:  # at least whole cents: $0.50, not $0.5
        digits = f"{value:.2f}" if len(digits.partition(".")[2]) < 2 else digits
    return f"${digits}"


def _number(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}{unit}"


def _latency_row(label: str, summary: dict) -> str:
    return (
        f"| {label} | {summary['count']} | {seconds(summary['p50_s'])} "
        f"| {seconds(summary['p95_s'])} | {seconds(summary['p99_s'])} "
        f"| {seconds(summary['max_s'])} |"
    )


LATENCY_HEADER = ["| what | count | p50 | p95 | p99 | max |", "|---|---|---|---|---|---|"]


def render_markdown(results: dict) -> str:
    config, requests = results["config"], results["requests"]
    server = results.get("server") or {}
    lines = [
        f"# Load test: {results['command']} — {config['mode']} mode, {config['profile']} profile",
        "",
        f"Target {results['url']} (engine {server.get('engine') or 'unknown'}), started "
        f"{results['started_at']}; {config['users']} users (spawned {config['spawn_rate']:g}/s) "
        f"for {config['duration_s']:g} s, {results['elapsed_s']:.1f} s in all with the stop "
        f"grace. Profile: {config['profile_description']}.",
        "",
        "## Requests",
        "",
        f"{requests['total']} image requests: {requests['accepted']} accepted, "
        f"{requests['shed']} shed (429/503), {requests.get('gave_up', 0)} given up by "
        f"impatient clients, {requests['failed']} failed; "
        f"{results['abandoned']} still unanswered when the run ended.",
        "",
        "| status | count |",
        "|---|---|",
        *(f"| {status} | {count} |" for status, count in requests["by_status"].items()),
        "",
        "## Latency",
        "",
        *LATENCY_HEADER,
        _latency_row("image requests, all", requests["latency"]),
        _latency_row("accepted", requests["latency_accepted"]),
        _latency_row("shed", requests["latency_shed"]),
        *(
            _latency_row(f"`{route}`", summary["latency"])
            for route, summary in results["routes"].items()
        ),
    ]
    if results["skipped_downloads"]:
        lines += [
            "",
            f"{results['skipped_downloads']} output URLs were not under {results['url']} and "
            "were not downloaded.",
        ]
    rates = results["throughput"]
    lines += [
        "",
        "## Throughput",
        "",
        "| requests/s | accepted/s | images/s | output MP/s | HTTP calls/s |",
        "|---|---|---|---|---|",
        f"| {rates['requests_per_s']:.2f} | {rates['accepted_per_s']:.2f} "
        f"| {rates['images_per_s']:.2f} | {rates['output_megapixels_per_s']:.2f} "
        f"| {rates['http_requests_per_s']:.2f} |",
    ]
    impatient = results.get("impatient")
    if impatient:
        lines += ["", *_impatient_lines(impatient)]
    queue = results.get("queue")
    if queue:
        lines += [
            "",
            "## Queue: waiting vs running (the server's status logs)",
            "",
            *LATENCY_HEADER,
            _latency_row("waiting for a worker", queue["wait"]),
            _latency_row("on a worker", queue["run"]),
            _latency_row("engine (`metrics.inference_time`)", queue["inference"]),
            _latency_row("end to end (client)", queue["end_to_end"]),
        ]
    lines += ["", *_cost_lines(results["cost"]), "", *_server_lines(server)]
    verdict = results.get("overload")
    if verdict:
        lines += [
            "",
            f"## Overload: {verdict['multiplier']:g}× the server's capacity "
            f"({server.get('capacity')})",
            "",
            "| check | value | limit | result |",
            "|---|---|---|---|",
            *(
                f"| {c['name']} | {c['value']} | {c['limit']} "
                f"| {'pass' if c['passed'] else 'FAIL'} |"
                for c in verdict["checks"]
            ),
            "",
            f"**{'PASSED' if verdict['passed'] else 'FAILED'}**",
        ]
    return "\n".join(lines) + "\n"


def _impatient_lines(figures: dict) -> list[str]:
    per = figures["engine_seconds_per_given_up"]
    wasted = figures["engine_seconds_after_give_up"]
    return [
        "## Impatient clients: work nobody received",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests the clients gave up on | {figures['given_up']} |",
        f"| server: engine seconds spent on them after the clients left "
        f"(`upscaler_abandoned_engine_seconds_total`) "
        f"| {'not exported by the server' if wasted is None else f'{wasted:.2f} s'} |",
        f"| … per given-up request (target: one step or tile) | {seconds(per)} |",
        f"| server: engine seconds saved by stopping them | "
        f"{_number(figures['saved_engine_seconds'], ' s')} |",
        f"| requests received by the clients that waited | {figures['received']} "
        f"({figures['received_per_s']:.2f}/s) |",
        f"| their latency p50 / p95 | {seconds(figures['received_latency']['p50_s'])} / "
        f"{seconds(figures['received_latency']['p95_s'])} |",
    ]


def _cost_lines(cost: dict) -> list[str]:
    lines = ["## Cost (the server's counters, scraped before and after)", ""]
    server, client = cost.get("server"), cost["client"]
    if server is None:
        lines.append("Not available: `/metrics` was unreachable or has no cost counters.")
    else:
        ratio = server["cost_to_list_price"]
        lines += [
            "| figure | run | per image |",
            "|---|---|---|",
            f'| images delivered (`upscaler_requests_total{{outcome="ok"}}`) '
            f"| {server['images']:.0f} | |",
            "| device seconds (`upscaler_gpu_seconds_total`) "
            f"| {_number(server['device_seconds'])} "
            f"| {_number(server['device_seconds_per_image'], digits=3)} |",
            f"| cost (`upscaler_cost_usd_total`) | {usd(server['cost_usd'])} "
            f"| {usd(server['cost_per_image_usd'])} |",
            f"| fal's list price (`upscaler_list_price_usd_total`) "
            f"| {usd(server['list_price_usd'])} | {usd(server['list_price_per_image_usd'])} |",
            f"| cost / list price | {'–' if ratio is None else f'{ratio:.1%}'} | |",
        ]
    lines += [
        "",
        f"fal's list price for the {client['images']} images this client received: "
        f"{usd(client['list_price_usd'])} ({usd(client['list_price_per_image_usd'])} per image).",
    ]
    return lines


def _server_lines(server: dict) -> list[str]:
    rss = server.get("rss_bytes") or {}

    def mib(value: float | None) -> str:
        return "–" if value is None else f"{value / 2**20:.0f} MiB"

    return [
        "## Server",
        "",
        f"Memory (`process_resident_memory_bytes`): {mib(rss.get('start'))} at the start, "
        f"{mib(rss.get('peak'))} at the peak, {mib(rss.get('end'))} at the end "
        f"({server.get('samples', 0)} samples). Most waiting: "
        f"{_number(server.get('queue_depth_max'), digits=0)}; most running: "
        f"{_number(server.get('inflight_max'), digits=0)}; capacity (running + waiting): "
        f"{server.get('capacity') if server.get('capacity') is not None else '–'}.",
    ]


def plot_latency(path: Path, requests: Sequence[RequestRecord], samples: Sequence[dict]) -> None:
    """Latency over time and its histogram, accepted vs shed vs failed; the server's memory and
    queue over time when they were sampled."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")

    panels = 3 if samples else 2
    figure = Figure(figsize=(10, 3.4 * panels), layout="constrained")
    over_time, histogram, *rest = figure.subplots(panels, 1)
    latencies = [r.latency_s for r in requests if r.latency_s > 0]
    low, high = (min(latencies), max(latencies)) if latencies else (1e-3, 1.0)
    bins = np.geomspace(low, high * 1.0001, 40) if high > low else 10
    for name, colour in CLASSES:
        group = [r for r in requests if r.outcome == name]
        if not group:
            continue
        label = f"{name} ({len(group)})"
        over_time.scatter(
            [r.started + r.latency_s for r in group],
            [r.latency_s for r in group],
            s=10,
            color=colour,
            label=label,
            marker="x" if name == "failed" else "o",
        )
        histogram.hist(
            [r.latency_s for r in group], bins=bins, color=colour, alpha=0.6, label=label
        )
    for axis in (over_time, histogram):
        if latencies:
            axis.legend(loc="upper right")
    over_time.set(
        title="latency of each image request, at the time it finished",
        xlabel="seconds into the run",
        ylabel="latency (s)",
        yscale="log",
    )
    histogram.set(title="latency histogram", xlabel="latency (s)", ylabel="requests", xscale="log")
    for axis in (over_time.yaxis, histogram.xaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(NullFormatter())
    if rest:
        (server,) = rest
        times = [s["t"] for s in samples]
        server.plot(times, [(s.get("rss_bytes") or 0) / 2**20 for s in samples], color="tab:blue")
        server.set(title="server", xlabel="seconds into the run", ylabel="RSS (MiB)")
        depth = server.twinx()
        depth.step(
            times, [s.get("queue_depth") or 0 for s in samples], where="post", color="tab:purple"
        )
        depth.step(times, [s.get("inflight") or 0 for s in samples], where="post", color="tab:gray")
        depth.set_ylabel("waiting (purple), running (grey)")
    figure.savefig(path, dpi=100)


def write_outputs(
    out: Path, results: dict, requests: Sequence[RequestRecord], samples: Sequence[dict]
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "results": out / "results.json",
        "report": out / "report.md",
        "plot": out / "latency.png",
        "trace": out / "requests.csv",
    }
    paths["results"].write_text(json.dumps(results, indent=2) + "\n")
    paths["report"].write_text(render_markdown(results))
    plot_latency(paths["plot"], requests, samples)
    write_trace(paths["trace"], requests)
    return paths


def write_trace(path: Path, requests: Sequence[RequestRecord]) -> None:
    """When each image request that delivered images started, and their output pixels (the
    columns ``python -m loadtest.capacity --traffic trace`` reads)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time", "output_pixels", "latency_s"])
        for record in sorted(requests, key=lambda r: r.started):
            if record.output_pixels:
                writer.writerow(
                    [f"{record.started:.3f}", record.output_pixels, f"{record.latency_s:.3f}"]
                )
