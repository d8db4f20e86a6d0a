"""The overload scenario's pass rules, applied to a finished run's ``results.json`` document.

Offered several times what the server can take on (running + waiting), a well-behaved server
answers every request with a success or a fast refusal (429 queue full, 503 not ready), never
another error and never a hang; the requests it accepts still finish in bounded time; its memory
stays bounded because refused work is never buffered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from loadtest.stats import status_class

#: the latency SLO the alert rules use (UpscalerLatencySLOBurn: 99% of requests within 120 s)
DEFAULT_MAX_P99_S = 120.0
#: the sr engine serves in about 0.9 GB; the ChronoEdit engine keeps its weights on the GPU
DEFAULT_MAX_RSS_MB = 4096.0
DEFAULT_MULTIPLIER = 4.0


@dataclass(frozen=True)
class OverloadLimits:
    max_p99_s: float = DEFAULT_MAX_P99_S
    #: 0 turns the memory check off
    max_rss_mb: float = DEFAULT_MAX_RSS_MB


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    value: str
    limit: str


def _http_statuses(results: dict) -> dict[str, int]:
    """Every HTTP answer's status code, summed over the routes."""
    counts: dict[str, int] = {}
    for route in results["routes"].values():
        for status, count in route["by_status"].items():
            if status.isdigit():
                counts[status] = counts.get(status, 0) + count
    return counts


def _listed(counts: Iterable[tuple[str, int]]) -> str:
    return ", ".join(f"{status}: {count}" for status, count in counts) or "none"


def check_overload(results: dict, limits: OverloadLimits) -> list[Check]:
    requests = results["requests"]
    http = _http_statuses(results)
    # a failed HTTP call (a timeout, a reset) ends its image request with that failure
    client = {s: n for s, n in requests["by_status"].items() if not s.isdigit()}
    bad_http = sorted((s, n) for s, n in http.items() if status_class(s) == "failed")
    abandoned = results.get("abandoned", 0)
    p99 = requests["latency_accepted"]["p99_s"]
    checks = [
        Check(
            "every HTTP answer is 2xx, 429 or 503",
            not bad_http,
            f"others: {_listed(bad_http)}",
            "none",
        ),
        Check(
            "no timeouts, connection errors or hangs",
            not client and not abandoned,
            f"{_listed(sorted(client.items()))}; still waiting at the end: {abandoned}",
            "none",
        ),
        Check(
            "some requests accepted",
            requests["accepted"] > 0,
            f"{requests['accepted']} accepted, {requests['shed']} shed",
            "≥ 1 accepted",
        ),
        Check(
            "accepted requests' p99 latency",
            p99 is not None and p99 <= limits.max_p99_s,
            "no accepted request" if p99 is None else f"{p99:.2f} s",
            f"≤ {limits.max_p99_s:g} s",
        ),
    ]
    peak = (results.get("server") or {}).get("rss_bytes", {}).get("peak")
    if limits.max_rss_mb <= 0:
        checks.append(Check("server memory (RSS)", True, "not checked", "off"))
    else:
        checks.append(
            Check(
                "server memory (RSS) peak",
                peak is not None and peak / 2**20 <= limits.max_rss_mb,
                "not exported by the server" if peak is None else f"{peak / 2**20:.0f} MiB",
                f"≤ {limits.max_rss_mb:g} MiB",
            )
        )
    return checks


def verdict(checks: list[Check]) -> dict:
    return {"passed": all(check.passed for check in checks), "checks": [asdict(c) for c in checks]}
