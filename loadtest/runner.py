"""One headless load run: ask the server what it is, encode the pool, drive locust for the
duration, scrape the server before, during and after, then write the report.

:func:`execute` is what ``python -m loadtest`` calls (after importing locust, which patches the
standard library with gevent). :func:`build_results` is the pure part: recorder and scrapes in,
the ``results.json`` document out.
"""

from __future__ import annotations

import logging
import math
import ssl
import sys
import time
import urllib.error
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from loadtest import overload, report, scrape
from loadtest.profiles import PROFILES, build_pool
from loadtest.stats import (
    Recorder,
    client_list_price_usd,
    summarize_queue,
    summarize_requests,
    summarize_routes,
    throughput,
)
from loadtest.users import UserSettings

log = logging.getLogger("loadtest")

SCHEMA_VERSION = 1
#: the client's timeout when the server does not say its own: the server's default (300 s) + 30 s
DEFAULT_TIMEOUT_S = 330.0


@dataclass(frozen=True)
class RunSettings:
    command: str  # "run" or "overload"
    url: str
    out: Path
    duration_s: float
    profile: str = "small"
    mode: str = "sync"
    #: None: (overload) multiplier × capacity
    users: int | None = None
    #: users started per second; None: all at once
    spawn_rate: float | None = None
    key: str | None = None
    ca_file: str | None = None
    insecure: bool = False
    #: None: the server's request timeout (from /info) + 30 s
    timeout_s: float | None = None
    #: seconds users get after the duration to finish the request in hand; None: the timeout
    stop_grace_s: float | None = None
    poll_interval_s: float = 0.1
    shed_backoff_s: float = 0.2
    sync_mode: bool = False
    pool_size: int = 32
    #: replaces the impatient profile's give-up deadline (seconds)
    give_up_s: float | None = None
    seed: int = 0
    sample_interval_s: float = 1.0
    # overload only
    multiplier: float = overload.DEFAULT_MULTIPLIER
    capacity: int | None = None
    limits: overload.OverloadLimits = field(default_factory=overload.OverloadLimits)

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")


@dataclass
class Plan:
    """What the run will do, once the server has been asked."""

    users: int
    spawn_rate: float
    timeout_s: float
    stop_grace_s: float
    capacity: int | None


class SetupError(Exception):
    """The run cannot start (the target is unreachable, the capacity unknown)."""


def plan(settings: RunSettings, info: dict | None) -> Plan:
    limits = (info or {}).get("limits") or {}
    capacity = settings.capacity
    if capacity is None and limits:
        capacity = scrape.capacity(info)
    users = settings.users
    if users is None:
        if settings.command != "overload":
            raise SetupError("--users is required")
        if capacity is None:
            raise SetupError("the server's capacity is unknown (no /info): pass --capacity")
        users = math.ceil(settings.multiplier * capacity)
    if users < 1:
        raise SetupError("at least one user is needed")
    timeout = settings.timeout_s
    if timeout is None:
        server_timeout = limits.get("request_timeout_s")
        timeout = float(server_timeout) + 30 if server_timeout else DEFAULT_TIMEOUT_S
    grace = settings.stop_grace_s if settings.stop_grace_s is not None else timeout
    spawn_rate = settings.spawn_rate if settings.spawn_rate else float(users)
    return Plan(users, spawn_rate, timeout, grace, capacity)


def engine_name(info: dict | None) -> str | None:
    engine = (info or {}).get("engine") or {}
    return engine.get("engine") or engine.get("name")


def _rss_figures(before, samples: list[dict], after) -> dict:
    values = [s["rss_bytes"] for s in samples if s.get("rss_bytes") is not None]
    first = scrape.total(before, scrape.RSS) if before else None
    last = scrape.total(after, scrape.RSS) if after else None
    values += [v for v in (first, last) if v is not None]
    return {
        "start": first if first is not None else (values[0] if values else None),
        "peak": max(values) if values else None,
        "end": last if last is not None else (values[-1] if values else None),
    }


def build_results(
    settings: RunSettings,
    run_plan: Plan,
    recorder: Recorder,
    elapsed_s: float,
    started_at: datetime,
    info: dict | None,
    before: scrape.Samples | None,
    after: scrape.Samples | None,
    samples: list[dict],
) -> dict:
    """The ``results.json`` document (see docs/loadtest.md for its fields)."""
    requests = summarize_requests(recorder.requests)
    client_price = client_list_price_usd(recorder.requests)
    server_cost = scrape.cost_delta(before, after) if before and after else None
    profile = PROFILES[settings.profile]

    def gauge_max(name: str) -> float | None:
        values = [s[name] for s in samples if s.get(name) is not None]
        return max(values) if values else None

    results = {
        "schema_version": SCHEMA_VERSION,
        "command": settings.command,
        "url": settings.base_url,
        "started_at": started_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "config": {
            "mode": settings.mode,
            "profile": settings.profile,
            "profile_description": profile.description,
            "users": run_plan.users,
            "spawn_rate": run_plan.spawn_rate,
            "duration_s": settings.duration_s,
            "timeout_s": run_plan.timeout_s,
            "stop_grace_s": run_plan.stop_grace_s,
            "poll_interval_s": settings.poll_interval_s,
            "shed_backoff_s": settings.shed_backoff_s,
            "sync_mode": settings.sync_mode,
            "pool_size": settings.pool_size,
            "give_up_s": settings.give_up_s,
            "seed": settings.seed,
            "key_sent": bool(settings.key),
        },
        "elapsed_s": elapsed_s,
        "abandoned": recorder.in_flight,
        "skipped_downloads": recorder.skipped_downloads,
        "requests": requests,
        "routes": summarize_routes(recorder.http),
        "throughput": throughput(recorder, elapsed_s),
        "queue": summarize_queue(recorder.requests),
        "cost": {
            "server": server_cost,
            "client": {
                "images": requests["images"],
                "list_price_usd": client_price,
                "list_price_per_image_usd": client_price / requests["images"]
                if requests["images"]
                else None,
            },
        },
        "server": {
            "engine": engine_name(info),
            "gpu_hourly_usd": (info or {}).get("gpu_hourly_usd"),
            "limits": (info or {}).get("limits"),
            "capacity": run_plan.capacity,
            "rss_bytes": _rss_figures(before, samples, after),
            "queue_depth_max": gauge_max("queue_depth"),
            "inflight_max": gauge_max("inflight"),
            "samples": len(samples),
        },
    }
    if any(shape.give_up_s for shape in profile.shapes):
        results["impatient"] = impatient_figures(results, before, after)
    if settings.command == "overload":
        checks = overload.check_overload(results, settings.limits)
        results["overload"] = {
            "multiplier": settings.multiplier,
            "max_p99_s": settings.limits.max_p99_s,
            "max_rss_mb": settings.limits.max_rss_mb,
            **overload.verdict(checks),
        }
    return results


def impatient_figures(
    results: dict, before: scrape.Samples | None, after: scrape.Samples | None
) -> dict:
    """What the requests nobody received cost the engine, next to what the patient clients got."""
    requests = results["requests"]
    gave_up = requests["gave_up"]
    work = scrape.abandoned_work(before, after) if before and after else {}
    wasted = work.get("engine_seconds")
    return {
        "given_up": gave_up,
        "received": requests["accepted"],
        "received_per_s": results["throughput"]["accepted_per_s"],
        "received_latency": requests["latency_accepted"],
        # engine seconds spent on given-up jobs after their clients left (server's counter)
        "engine_seconds_after_give_up": wasted,
        "engine_seconds_per_given_up": wasted / gave_up if wasted is not None and gave_up else None,
        "saved_engine_seconds": work.get("saved_engine_seconds"),
        "server_client_disconnected": work.get("client_disconnected"),
    }


def _try_scrape(base: str, context: ssl.SSLContext | None) -> scrape.Samples | None:
    try:
        return scrape.scrape(base, context)
    except (OSError, ValueError) as exc:
        log.warning("no metrics from %s/metrics: %s", base, exc)
        return None


def _server_info(settings: RunSettings, context: ssl.SSLContext | None) -> dict | None:
    headers = {"Authorization": f"Key {settings.key}"} if settings.key else {}
    try:
        return scrape.server_info(settings.base_url, headers, context)
    except urllib.error.HTTPError as exc:  # the server answered, without /info
        log.warning("%s/info answered %s; going on without it", settings.base_url, exc.code)
        return None
    except (OSError, ValueError) as exc:
        raise SetupError(f"cannot reach {settings.base_url}: {exc}") from exc


def drive(
    settings: RunSettings,
    run_plan: Plan,
    user_settings: UserSettings,
    pool: list,
    context: ssl.SSLContext | None,
) -> tuple[Recorder, float, list[dict]]:
    """Run locust for the duration (plus the stop grace); sample the server's gauges meanwhile."""
    import gevent
    from locust.env import Environment

    from loadtest.users import make_user_class

    recorder = Recorder()
    user_class = make_user_class(user_settings, pool, recorder)
    environment = Environment(
        user_classes=[user_class], host=settings.base_url, stop_timeout=run_plan.stop_grace_s
    )
    runner = environment.create_local_runner()
    samples: list[dict] = []

    def sample_server() -> None:
        while True:
            taken = time.perf_counter() - recorder.t0
            found = _try_scrape(settings.base_url, context)
            if found is not None:
                samples.append({"t": taken, **scrape.gauges(found)})
            gevent.sleep(settings.sample_interval_s)

    recorder.t0 = time.perf_counter()
    sampler = gevent.spawn(sample_server)
    runner.start(run_plan.users, spawn_rate=run_plan.spawn_rate)
    gevent.sleep(settings.duration_s)
    recorder.stopping = True
    runner.stop()  # users finish the request in hand, for up to the stop grace
    elapsed = time.perf_counter() - recorder.t0
    sampler.kill()
    runner.quit()
    return recorder, elapsed, samples


def execute(settings: RunSettings) -> int:
    """The whole run; 0 when done (and, for overload, passed), 1 when overload failed, 2 when
    the run could not start."""
    context = (
        scrape.ssl_context(settings.ca_file, settings.insecure)
        if settings.base_url.startswith("https://")
        else None
    )
    try:
        info = _server_info(settings, context)
        run_plan = plan(settings, info)
    except SetupError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    user_settings = UserSettings(
        base_url=settings.base_url,
        mode=settings.mode,
        key=settings.key,
        timeout_s=run_plan.timeout_s,
        poll_interval_s=settings.poll_interval_s,
        shed_backoff_s=settings.shed_backoff_s,
        sync_mode=settings.sync_mode,
        ca_file=settings.ca_file,
        insecure=settings.insecure,
        seed=settings.seed,
    )
    print(
        f"loadtest {settings.command}: {run_plan.users} users ({settings.mode}, "
        f"{settings.profile} profile) against {settings.base_url} for {settings.duration_s:g} s",
        file=sys.stderr,
    )
    pool = build_pool(
        PROFILES[settings.profile],
        settings.pool_size,
        settings.seed,
        settings.sync_mode,
        settings.give_up_s,
    )
    before = _try_scrape(settings.base_url, context)
    started_at = datetime.now(UTC)
    recorder, elapsed, samples = drive(settings, run_plan, user_settings, pool, context)
    after = _try_scrape(settings.base_url, context)
    results = build_results(
        settings, run_plan, recorder, elapsed, started_at, info, before, after, samples
    )
    paths = report.write_outputs(settings.out, results, recorder.requests, samples)
    print(paths["report"].read_text())
    print(f"written: {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    if settings.command == "overload":
        passed = results["overload"]["passed"]
        print(f"overload: {'PASSED' if passed else 'FAILED'}")
        return 0 if passed else 1
    return 0
