"""``python -m loadtest run|overload``: the command line (docs/loadtest.md).

Parsing is plain argparse; :func:`main` hands the settings to :mod:`loadtest.runner`, which needs
locust imported first (``loadtest/__main__.py`` does that).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from loadtest import overload
from loadtest.profiles import PROFILES
from loadtest.users import MODES

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``2m``, ``1m30s``, ``1h``; positive."""
    match = _DURATION.fullmatch(text.strip())
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 60s, 2m, 1h)")
    hours, minutes, secs = (float(part) if part else 0.0 for part in match.groups())
    total = hours * 3600 + minutes * 60 + secs
    if total <= 0:
        raise argparse.ArgumentTypeError(f"the duration must be positive: {text!r}")
    return total


def parse_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {text!r}")
    if parts.query or parts.fragment or parts.username:
        raise argparse.ArgumentTypeError(f"give the server's base URL only: {text!r}")
    return text.rstrip("/")


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text}")
        return value

    return parse


def non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Load tests for the fal-compatible upscaler (locust, headless).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="a load run: report latency, throughput and cost")
    over = commands.add_parser(
        "overload",
        help="offer several times the server's capacity; fail unless it sheds cleanly",
    )
    for sub in (run, over):
        sub.add_argument("--url", required=True, type=parse_url, help="the server's base URL")
        sub.add_argument("--out", required=True, type=Path, help="directory for the report")
        sub.add_argument("--duration", type=parse_duration, default=60.0, help="e.g. 60s, 5m")
        sub.add_argument("--profile", choices=sorted(PROFILES), default="small")
        sub.add_argument("--mode", choices=MODES, default="sync")
        sub.add_argument(
            "--key",
            default=os.environ.get("FAL_KEY") or None,
            help="sent as 'Authorization: Key <key>' (default: $FAL_KEY)",
        )
        tls = sub.add_mutually_exclusive_group()
        tls.add_argument("--ca-file", help="CA bundle that signed an https server's certificate")
        tls.add_argument(
            "--insecure", action="store_true", help="do not verify an https server's certificate"
        )
        sub.add_argument(
            "--timeout",
            type=positive(float),
            default=None,
            help="seconds without an answer (or per queue journey) before a request is a "
            "timeout (default: the server's request timeout + 30)",
        )
        sub.add_argument(
            "--stop-grace",
            type=non_negative,
            default=None,
            help="seconds users get after the duration to finish the request in hand "
            "(default: the timeout)",
        )
        sub.add_argument(
            "--poll-interval",
            type=positive(float),
            default=0.1,
            help="seconds between queue status polls (fal_client's default)",
        )
        sub.add_argument(
            "--shed-backoff",
            type=non_negative,
            default=0.2,
            help="seconds a user waits after a 429/503",
        )
        sub.add_argument(
            "--sync-mode",
            action="store_true",
            help="ask for data: URIs back (fal's sync_mode) instead of URLs to download",
        )
        sub.add_argument("--pool", type=positive(int), default=32, help="pre-encoded requests")
        sub.add_argument(
            "--give-up-after",
            type=positive(float),
            default=None,
            help="seconds after which the impatient profile's impatient clients hang up "
            "(default: the profile's own)",
        )
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--sample-interval", type=positive(float), default=1.0)
    run.add_argument("--users", type=positive(int), required=True)
    run.add_argument("--spawn-rate", type=positive(float), default=1.0, help="users per second")
    over.add_argument(
        "--users", type=positive(int), default=None, help="default: multiplier × capacity"
    )
    over.add_argument(
        "--spawn-rate", type=positive(float), default=None, help="default: all at once"
    )
    over.add_argument("--multiplier", type=positive(float), default=overload.DEFAULT_MULTIPLIER)
    over.add_argument(
        "--capacity",
        type=positive(int),
        default=None,
        help="requests the server takes on (default: /info max_inflight + max_waiting)",
    )
    over.add_argument(
        "--max-p99",
        type=positive(float),
        default=overload.DEFAULT_MAX_P99_S,
        help="seconds the accepted requests' p99 latency may reach",
    )
    over.add_argument(
        "--max-rss-mb",
        type=non_negative,
        default=overload.DEFAULT_MAX_RSS_MB,
        help="MiB the server's resident memory may reach (0: not checked)",
    )
    return parser


def settings_from_args(args: argparse.Namespace):
    from loadtest.runner import RunSettings

    extra = {}
    if args.command == "overload":
        extra = {
            "multiplier": args.multiplier,
            "capacity": args.capacity,
            "limits": overload.OverloadLimits(args.max_p99, args.max_rss_mb),
        }
    return RunSettings(
        command=args.command,
        url=args.url,
        out=args.out,
        duration_s=args.duration,
        profile=args.profile,
        mode=args.mode,
        users=args.users,
        spawn_rate=args.spawn_rate,
        key=args.key,
        ca_file=args.ca_file,
        insecure=args.insecure,
        timeout_s=args.timeout,
        stop_grace_s=args.stop_grace,
        poll_interval_s=args.poll_interval,
        shed_backoff_s=args.shed_backoff,
        sync_mode=args.sync_mode,
        pool_size=args.pool,
        give_up_s=args.give_up_after,
        seed=args.seed,
        sample_interval_s=args.sample_interval,
        **extra,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from loadtest.runner import execute

    return execute(settings_from_args(args))
