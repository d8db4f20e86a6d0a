"""Which execution path the ``sr`` engine takes on this CPU, how many threads, and why.

Three paths run the shipped networks (docs/benchmarks.md has the measurements behind the rule):

* **torch bf16**: autocast to bfloat16 (oneDNN accumulates in float32) with channels-last
  tensors. Fast only where the CPU computes bf16 natively: AMX tiles (Intel Sapphire Rapids and
  later) or AVX512_BF16 (Cooper Lake, AMD Zen 4 and later); elsewhere it is emulated and slow.
* **torch fp32**: float32 with channels-last tensors (faster than the default NCHW on oneDNN).
* **ncnn fp32**: the ncnn runtime (PyPI ``ncnn``) on the very ``.param``/``.bin`` files, float32
  with its Winograd convolutions; it has no fast bf16 path on x86.

``auto`` picks per network from the CPU's flags (:func:`choose_path`); ``--sr-precision`` and
``--sr-backend`` override it. Everything here takes its inputs as arguments so tests can mock
the CPU.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Precision = Literal["auto", "bf16", "fp32"]
Backend = Literal["auto", "torch", "ncnn"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
BACKENDS: tuple[str, ...] = ("auto", "torch", "ncnn")

CPUINFO = Path("/proc/cpuinfo")
CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


@dataclass(frozen=True)
class CpuCapability:
    """The CPU features the path choice depends on (``flags`` as in /proc/cpuinfo)."""

    flags: frozenset[str]
    model_name: str = ""

    @property
    def amx_bf16(self) -> bool:
        """AMX tiles with bf16 (matrix units: the fastest bf16 path)."""
        return "amx_bf16" in self.flags and "amx_tile" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        """AVX-512 bf16 dot products (native bf16 without matrix units)."""
        return "avx512_bf16" in self.flags

    @property
    def native_bf16(self) -> bool:
        """Whether bf16 arithmetic is native here (otherwise it is emulated, and slow)."""
        return self.amx_bf16 or self.avx512_bf16

    def describe(self) -> str:
        """The bf16 unit in words, for logs and ``/info``."""
        if self.amx_bf16:
            return "AMX bf16"
        if self.avx512_bf16:
            return "AVX512_BF16 (no AMX)"
        return "no native bf16"

    @classmethod
    def detect(cls, cpuinfo: Path = CPUINFO) -> CpuCapability:
        """Read this machine's flags; a missing /proc/cpuinfo means no native bf16 is assumed."""
        try:
            text = cpuinfo.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return cls(frozenset())
        return cls.parse(text)

    @classmethod
    def parse(cls, text: str) -> CpuCapability:
        """The first processor's ``flags`` and ``model name`` lines of a /proc/cpuinfo text."""
        flags: frozenset[str] = frozenset()
        model = ""
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "flags" and not flags:
                flags = frozenset(value.split())
            elif key == "model name" and not model:
                model = value.strip()
        return cls(flags, model)


@dataclass(frozen=True)
class SRPath:
    """How the sr engine runs its network: backend, arithmetic, tensor layout, and why."""

    backend: Literal["torch", "ncnn"]
    precision: Literal["bf16", "fp32"]
    channels_last: bool
    reason: str

    @property
    def label(self) -> str:
        """Short name, e.g. ``torch bf16 channels-last``."""
        if self.backend == "ncnn":
            return "ncnn fp32"
        layout = "channels-last" if self.channels_last else "NCHW"
        return f"torch {self.precision} {layout}"


def ncnn_available() -> bool:
    """Whether the ``ncnn`` package can be imported (without importing it)."""
    return importlib.util.find_spec("ncnn") is not None


def _validate(precision: str, backend: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"sr precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend not in BACKENDS:
        raise ValueError(f"sr backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "ncnn" and precision == "bf16":
        raise ValueError(
            "the ncnn backend runs float32 only (its bf16 storage is slower than float32 on "
            "x86); use precision fp32 or auto with it, or the torch backend for bf16"
        )


def choose_path(
    model: str,
    precision: str = "auto",
    backend: str = "auto",
    cpu: CpuCapability | None = None,
    has_ncnn: bool | None = None,
) -> SRPath:
    """The execution path for ``model`` ("waifu2x" or "realesrgan") on ``cpu``.

    ``auto`` (both settings) follows the measurements in docs/benchmarks.md:

    ============================  ===================  ======================
    CPU                           waifu2x              realesrgan
    ============================  ===================  ======================
    AMX bf16                      torch bf16           torch bf16
    AVX512_BF16, no AMX           ncnn fp32            torch bf16
    no native bf16                ncnn fp32            torch fp32
    ============================  ===================  ======================

    With precision ``fp32`` (backend auto), waifu2x runs on ncnn and realesrgan on torch fp32.
    All torch paths use channels-last. Without the ``ncnn`` package, its cells become torch
    (bf16 where native, else fp32). A forced setting is honoured even where it is slow, and the
    reason says so; invalid combinations raise ``ValueError``.
    """
    _validate(precision, backend)
    cpu = CpuCapability.detect() if cpu is None else cpu
    has_ncnn = ncnn_available() if has_ncnn is None else has_ncnn
    unit = cpu.describe()
    if backend == "ncnn":
        if not has_ncnn:
            raise ValueError("sr backend ncnn needs the ncnn package (pip install ncnn)")
        return SRPath("ncnn", "fp32", False, "asked for (backend ncnn)")
    if precision == "bf16":
        why = "asked for (precision bf16)"
        if not cpu.native_bf16:
            why += f"; this CPU has {unit}, so bf16 is emulated and slower than fp32"
        return SRPath("torch", "bf16", True, why)
    bf16 = precision == "auto" and cpu.native_bf16
    how = f"auto, {unit}" if precision == "auto" else "fp32 asked for"
    # waifu2x's small convolutions suit ncnn's Winograd kernels: it beats torch fp32 everywhere
    # and ties torch bf16 without AMX; only AMX makes torch bf16 clearly faster
    if backend == "auto" and model == "waifu2x" and not (bf16 and cpu.amx_bf16):
        if has_ncnn:
            return SRPath("ncnn", "fp32", False, f"{how}: ncnn fp32 is the fastest for waifu2x")
        how += ", ncnn not installed"
    if bf16:
        return SRPath("torch", "bf16", True, f"{how}: torch bf16 is the fastest")
    return SRPath("torch", "fp32", True, f"{how}: torch fp32 channels-last is the fastest")


def cgroup_cpu_limit(
    cpu_max: Path = CGROUP_V2_CPU_MAX,
    v1_quota: Path = CGROUP_V1_QUOTA,
    v1_period: Path = CGROUP_V1_PERIOD,
) -> float | None:
    """The container's CPU quota in CPUs (``2.5`` for ``250000 100000``), or None if unlimited.

    cgroup v2 ``cpu.max`` is ``"<quota|max> <period>"``; v1 splits it into two files with -1
    for no limit. A Kubernetes ``limits.cpu`` becomes exactly this quota.
    """
    try:
        quota_text, period_text = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota_text, period_text = v1_quota.read_text().strip(), v1_period.read_text().strip()
        except OSError:
            return None
    if quota_text in ("max", "-1"):
        return None
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cpus() -> int:
    """CPUs this process may be scheduled on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_threads(
    requested: int | None, current: int, cpus: int, quota: float | None
) -> tuple[int, str]:
    """Intra-op threads for the engine and why: the request, else what the CPUs and quota allow.

    ``current`` is torch's own default (its count of physical cores, blind to a cgroup quota: a
    pod limited to 2 CPUs on a 64-core node would otherwise run 64 threads and be throttled).
    A fractional quota rounds up: a thread that waits on the last fraction costs less than a
    core left idle.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be positive, got {requested}")
        return requested, "asked for (--threads)"
    limit = min(current, cpus)
    why = f"torch default {current}, {cpus} CPUs in the affinity mask"
    if quota is not None:
        limit = min(limit, max(1, math.ceil(quota)))
        why += f", cgroup quota {quota:g} CPUs"
    return max(1, limit), why
