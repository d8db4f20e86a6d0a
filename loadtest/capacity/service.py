"""How long one image takes on one replica, and how long a replica takes to start.

A service-time model is a few measured points, each an output size with either a whole-image time
(``seconds``: the ``sr`` engine, or a GPU image at the default steps) or a per-step time
(``step_seconds``, what ``make bench-gpu`` prints, plus ``fixed_seconds`` for decode, VAE and
encode, which it measures too). Between points, time is interpolated linearly in output pixels;
beyond them it is extrapolated along the nearest segment (through the origin with one point).
Each LoRA a request adds costs ``lora_seconds`` (its load and copy into the adapter stack;
docs/loras.md).

Files are YAML (or JSON)::

    points:
      - {width: 854, height: 480, step_seconds: 0.9, fixed_seconds: 2.0}
      - {width: 1280, height: 720, step_seconds: 2.1, fixed_seconds: 3.5}
    default_steps: 8
    lora_seconds: 0.4
    startup: {cold_seconds: 900, cached_seconds: 120}
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ServiceError(ValueError):
    """A service-time file or value that cannot be used; names the field."""


@dataclass(frozen=True)
class Point:
    pixels: int
    fixed_s: float
    step_s: float = 0.0


@dataclass(frozen=True)
class StartUp:
    """Seconds from a replica's creation to its first request: a cold node (image pull, model
    download and load) and a node that already holds both (cached)."""

    cold_s: float = 0.0
    cached_s: float = 0.0


@dataclass(frozen=True)
class ServiceModel:
    points: tuple[Point, ...]
    default_steps: int = 0
    lora_s: float = 0.0
    startup: StartUp = field(default_factory=StartUp)

    def seconds(self, pixels: int, steps: int | None = None, loras: int = 0) -> float:
        """Engine seconds for one image of ``pixels`` output pixels."""
        steps = self.default_steps if steps is None else steps
        fixed, step = _interpolate(self.points, pixels)
        return max(0.0, fixed + step * steps) + self.lora_s * loras


def _interpolate(points: tuple[Point, ...], pixels: int) -> tuple[float, float]:
    if len(points) == 1:
        (only,) = points
        scale = pixels / only.pixels
        return only.fixed_s * scale, only.step_s * scale
    keys = [p.pixels for p in points]
    index = min(max(bisect.bisect_left(keys, pixels), 1), len(points) - 1)
    low, high = points[index - 1], points[index]
    share = (pixels - low.pixels) / (high.pixels - low.pixels)
    return (
        low.fixed_s + share * (high.fixed_s - low.fixed_s),
        low.step_s + share * (high.step_s - low.step_s),
    )


def _number(raw: Any, path: str, *, positive: bool = False) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ServiceError(f"{path}: expected a number, got {raw!r}")
    if raw < 0 or (positive and raw == 0):
        raise ServiceError(
            f"{path}: expected a {'positive' if positive else 'non-negative'} number"
        )
    return float(raw)


def model_from_dict(raw: Any, source: str = "service") -> ServiceModel:
    """A :class:`ServiceModel` from the file's mapping; every field checked once."""
    if not isinstance(raw, dict):
        raise ServiceError(f"{source}: expected a mapping with 'points'")
    unknown = set(raw) - {"points", "default_steps", "lora_seconds", "startup"}
    if unknown:
        raise ServiceError(f"{source}.{sorted(unknown)[0]}: unknown field")
    items = raw.get("points")
    if not isinstance(items, list) or not items:
        raise ServiceError(f"{source}.points: expected a non-empty list")
    points = []
    for index, item in enumerate(items):
        path = f"{source}.points[{index}]"
        if not isinstance(item, dict):
            raise ServiceError(f"{path}: expected a mapping")
        width = _number(item.get("width"), f"{path}.width", positive=True)
        height = _number(item.get("height"), f"{path}.height", positive=True)
        if ("seconds" in item) == ("step_seconds" in item):
            raise ServiceError(f"{path}: give one of seconds and step_seconds")
        if "seconds" in item:
            fixed, step = _number(item["seconds"], f"{path}.seconds"), 0.0
        else:
            step = _number(item["step_seconds"], f"{path}.step_seconds")
            fixed = _number(item.get("fixed_seconds", 0.0), f"{path}.fixed_seconds")
        points.append(Point(int(width * height), fixed, step))
    points.sort(key=lambda p: p.pixels)
    if len({p.pixels for p in points}) != len(points):
        raise ServiceError(f"{source}.points: two points with the same output pixels")
    steps = raw.get("default_steps", 0)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ServiceError(f"{source}.default_steps: expected a non-negative integer")
    if any(p.step_s for p in points) and steps == 0:
        raise ServiceError(f"{source}.default_steps: required with step_seconds")
    startup = raw.get("startup") or {}
    if not isinstance(startup, dict):
        raise ServiceError(f"{source}.startup: expected a mapping")
    return ServiceModel(
        points=tuple(points),
        default_steps=steps,
        lora_s=_number(raw.get("lora_seconds", 0.0), f"{source}.lora_seconds"),
        startup=StartUp(
            cold_s=_number(startup.get("cold_seconds", 0.0), f"{source}.startup.cold_seconds"),
            cached_s=_number(
                startup.get("cached_seconds", 0.0), f"{source}.startup.cached_seconds"
            ),
        ),
    )


def load_raw(path: Path) -> dict:
    """A service-time file's mapping, unchecked (:func:`model_from_dict` checks it)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ServiceError(f"{path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ServiceError(f"{path}: expected a mapping with 'points'")
    return raw


#: a row of ``make bench-gpu``'s engine table:
#: | mode | request | output | tiles | rank | s/step | ×floor | outside steps s | …
_GPU_ROW = re.compile(
    r"^\|\s*(?P<mode>(?:eager|compiled) \w+)\s*\|\s*(?P<request>[^|]+?)\s*\|"
    r"\s*(?P<width>\d+)\s*[×x]\s*(?P<height>\d+)\s*\|\s*(?P<tiles>\d+)\s*\|\s*\d+\s*\|"
    r"\s*(?P<step>[\d.]+)\s*\|\s*[\d.]+\s*\|\s*(?P<outside>[\d.]+)\s*\|"
)
#: the mode taken when none is asked for: what ``serve`` runs on a GPU by default
DEFAULT_GPU_MODE = "compiled bf16"


def from_bench_gpu(
    text: str, *, steps: int, fixed_s: float | None = None, mode: str | None = None
) -> list[dict]:
    """Points from ``make bench-gpu`` output: the default request's rows of one ``mode``
    (``compiled bf16`` when it ran, else the first mode printed; ``compiled fp8`` for fp8).

    A point's per-step time is the row's s/step × its tiles (a tiled output runs every step once
    per tile), and its fixed time the row's measured time outside the steps (VAE, CLIP, the
    guide), unless ``fixed_s`` overrides it.
    """
    rows: dict[str, dict[tuple[int, int], dict]] = {}
    for line in text.splitlines():
        match = _GPU_ROW.match(line.strip())
        if not match or match["request"] != "default":
            continue
        size = (int(match["width"]), int(match["height"]))
        rows.setdefault(match["mode"], {})[size] = {  # the final summary repeats a row
            "width": size[0],
            "height": size[1],
            "step_seconds": float(match["step"]) * int(match["tiles"]),
            "fixed_seconds": float(match["outside"]) if fixed_s is None else fixed_s,
        }
    if not rows:
        raise ServiceError(
            "bench-gpu output: no timed rows of the default request "
            "(| mode | default | W×H | tiles | rank | s/step | ×floor | outside s | …) found"
        )
    if steps < 1:
        raise ServiceError("--steps: expected a positive integer with --bench-gpu")
    if mode is None:
        mode = DEFAULT_GPU_MODE if DEFAULT_GPU_MODE in rows else next(iter(rows))
    if mode not in rows:
        raise ServiceError(
            f"--bench-gpu-mode: {mode!r} has no timed rows; the output has {', '.join(rows)}"
        )
    return sorted(rows[mode].values(), key=lambda point: point["width"] * point["height"])


#: ``make bench``'s stage table row: | jpeg | fetch | decode | NNN ms (engine ×2) | encode | bytes |
_BENCH_ROW = re.compile(r"^\|\s*jpeg\s*\|[^|]*\|[^|]*\|\s*([\d.]+)\s*ms\s*\|")
#: its heading names the input: "Stages: 512² photo ×2"
_BENCH_HEAD = re.compile(r"Stages:\s*(\d+)²\s*photo\s*×\s*(\d+)")


def from_bench(text: str) -> list[dict]:
    """One point from ``make bench``'s stage table: the ``sr`` engine's time for its photo."""
    head = _BENCH_HEAD.search(text)
    row = next((m for line in text.splitlines() if (m := _BENCH_ROW.match(line.strip()))), None)
    if head is None or row is None:
        raise ServiceError("bench output: no 'Stages: N² photo ×F' table with a jpeg row found")
    side = int(head.group(1)) * int(head.group(2))
    return [{"width": side, "height": side, "seconds": float(row.group(1)) / 1000}]
