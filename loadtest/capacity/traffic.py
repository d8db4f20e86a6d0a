"""The traffic a simulation is offered: open arrivals (constant, a daily curve, bursts, a recorded
trace) or closed-loop users like the load test's (each sends its next request when the last one
is answered).

Open arrivals are a Poisson process; a time-varying rate is drawn by thinning (candidates at the
peak rate, each kept with probability rate(t) / peak). Output sizes are drawn from a mix, or come
with the trace. Everything is drawn up front with numpy's seeded generator, so two settings
compared by the recommender see the same requests.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

DAY_S = 86400.0


class TrafficError(ValueError):
    """A traffic option or trace that cannot be used; names the option, column or row."""


@dataclass(frozen=True)
class SizeMix:
    """Output sizes (pixels) and their weights."""

    pixels: tuple[int, ...]
    weights: tuple[float, ...]

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        p = np.asarray(self.weights) / sum(self.weights)
        return rng.choice(np.asarray(self.pixels, dtype=np.int64), size=count, p=p)


def parse_size_mix(text: str) -> SizeMix:
    """``1280x720`` or ``854x480:0.7,1280x720:0.3`` (weights need not add up to 1)."""
    pixels, weights = [], []
    for part in text.split(","):
        size, _, weight = part.strip().partition(":")
        try:
            width, height = (int(v) for v in size.lower().replace("×", "x").split("x"))
            share = float(weight) if weight else 1.0
        except ValueError as exc:
            raise TrafficError(f"--sizes: not WxH[:weight]: {part!r}") from exc
        if width < 1 or height < 1 or share <= 0:
            raise TrafficError(f"--sizes: sizes and weights must be positive: {part!r}")
        pixels.append(width * height)
        weights.append(share)
    return SizeMix(tuple(pixels), tuple(weights))


@dataclass(frozen=True)
class Arrivals:
    """Open traffic: arrival times (s, ascending) and each request's output pixels, steps and
    LoRA count (None: the service model's default steps, no LoRAs)."""

    times: np.ndarray
    pixels: np.ndarray
    steps: np.ndarray | None = None
    loras: np.ndarray | None = None
    #: the traffic's span (None: until the last arrival)
    horizon_s: float | None = None

    @property
    def duration_s(self) -> float:
        if self.horizon_s is not None:
            return self.horizon_s
        return float(self.times[-1]) if len(self.times) else 0.0


@dataclass(frozen=True)
class ClosedLoop:
    """``users`` clients, each sending its next request ``think_s`` after the last answer,
    for ``duration_s`` (the load test's users)."""

    users: int
    duration_s: float
    sizes: SizeMix
    think_s: float = 0.0


Traffic = Arrivals | ClosedLoop


def _thinned(
    rate: Callable[[np.ndarray], np.ndarray],
    peak: float,
    duration_s: float,
    sizes: SizeMix,
    rng: np.random.Generator,
) -> Arrivals:
    if peak <= 0 or duration_s <= 0:
        raise TrafficError("the rate and the duration must be positive")
    count = rng.poisson(peak * duration_s)
    times = np.sort(rng.uniform(0.0, duration_s, size=count))
    keep = rng.uniform(0.0, peak, size=count) < rate(times)
    times = times[keep]
    return Arrivals(times=times, pixels=sizes.draw(rng, len(times)), horizon_s=duration_s)


def constant(rate: float, duration_s: float, sizes: SizeMix, seed: int = 0) -> Arrivals:
    """Poisson arrivals at ``rate`` requests/s."""
    rng = np.random.default_rng(seed)
    return _thinned(lambda t: np.full_like(t, rate), rate, duration_s, sizes, rng)


def daily(
    peak: float,
    trough: float,
    duration_s: float,
    sizes: SizeMix,
    peak_hour: float = 14.0,
    seed: int = 0,
) -> Arrivals:
    """A day's curve: ``trough`` req/s at night rising on a cosine to ``peak`` at ``peak_hour``."""
    if not 0 <= trough <= peak:
        raise TrafficError("--trough-rate must be between 0 and --peak-rate")
    rng = np.random.default_rng(seed)

    def rate(t: np.ndarray) -> np.ndarray:
        phase = 2 * math.pi * (t / DAY_S - peak_hour / 24.0)
        return trough + (peak - trough) * (1 + np.cos(phase)) / 2

    return _thinned(rate, peak, duration_s, sizes, rng)


def bursts(
    base: float,
    burst_rate: float,
    every_s: float,
    burst_s: float,
    duration_s: float,
    sizes: SizeMix,
    seed: int = 0,
) -> Arrivals:
    """``base`` req/s, and ``burst_rate`` for ``burst_s`` at the start of every ``every_s``."""
    if burst_s <= 0 or every_s < burst_s:
        raise TrafficError("--burst-for must be positive and at most --burst-every")
    rng = np.random.default_rng(seed)
    peak = max(base, burst_rate)
    return _thinned(
        lambda t: np.where(np.mod(t, every_s) < burst_s, burst_rate, base),
        peak,
        duration_s,
        sizes,
        rng,
    )


def _seconds(value: str, row: int, column: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise TrafficError(
            f"trace row {row}, {column}: expected seconds or an ISO 8601 time, got {value!r}"
        ) from exc


def _int(value: str, row: int, column: str, minimum: int) -> int:
    try:
        number = int(float(value))
    except ValueError as exc:
        raise TrafficError(f"trace row {row}, {column}: expected an integer") from exc
    if number < minimum:
        raise TrafficError(f"trace row {row}, {column}: expected at least {minimum}")
    return number


def load_trace(path: Path, sizes: SizeMix | None = None) -> Arrivals:
    """A CSV trace: ``time`` (seconds, or ISO 8601) and either ``width`` + ``height`` or
    ``output_pixels`` (else sizes are drawn from ``sizes``); optional ``steps`` and ``loras``.
    Times are shifted so the first request arrives at 0."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise TrafficError(f"{path}: {exc}") from exc
    if not rows:
        raise TrafficError(f"{path}: no rows")
    columns = set(rows[0])
    if "time" not in columns:
        raise TrafficError(f"{path}: a 'time' column is required")
    has_size = {"width", "height"} <= columns or "output_pixels" in columns
    if not has_size and sizes is None:
        raise TrafficError(f"{path}: give width and height (or output_pixels) columns, or --sizes")
    times, pixels, steps, loras = [], [], [], []
    for number, row in enumerate(rows, start=2):
        times.append(_seconds(row["time"], number, "time"))
        if "output_pixels" in columns:
            pixels.append(_int(row["output_pixels"], number, "output_pixels", 1))
        elif has_size:
            pixels.append(
                _int(row["width"], number, "width", 1) * _int(row["height"], number, "height", 1)
            )
        if "steps" in columns:
            steps.append(_int(row["steps"], number, "steps", 1))
        if "loras" in columns:
            loras.append(_int(row["loras"], number, "loras", 0))
    order = np.argsort(np.asarray(times), kind="stable")
    start = min(times)
    arrivals_pixels = (
        np.asarray(pixels, dtype=np.int64)[order]
        if pixels
        else sizes.draw(np.random.default_rng(0), len(times))  # type: ignore[union-attr]
    )
    return Arrivals(
        times=np.asarray(times)[order] - start,
        pixels=arrivals_pixels,
        steps=np.asarray(steps, dtype=np.int64)[order] if steps else None,
        loras=np.asarray(loras, dtype=np.int64)[order] if loras else None,
    )


def profile_sizes(name: str, pool: int = 32, seed: int = 0) -> SizeMix:
    """The output sizes of the load test's pool for profile ``name`` (same pool, same seed)."""
    from loadtest.profiles import PROFILES, build_pool

    pixels = [w * h for w, h in (p.expected_output for p in build_pool(PROFILES[name], pool, seed))]
    return SizeMix(tuple(pixels), tuple(1.0 for _ in pixels))
