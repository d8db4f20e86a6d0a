"""``make bench-gpu``'s "where the time goes" stage: what the next optimisation should aim at.

Three measurements of the default 720p request on the compiled engine, each cheap enough to
run in every GPU session:

* **outside the steps, by part**: the CLIP image encoder, the VAE encode of the five-frame
  condition video, the VAE decode, and the rest (host-side pre- and post-processing), timed by
  wrapping those calls with device synchronisation;
* **the VAE with cuDNN's autotuner off and on** (``torch.backends.cudnn.benchmark``): its 3-D
  convolutions are most of the time outside the steps, and the autotuner is the one switch
  that may change them; measured as a ratio in the same run before any default changes;
* **kernels by kind** over one request (``torch.profiler``): matrix multiplies, attention,
  Inductor's fused kernels, convolutions, copies and the rest, with the largest kernels by
  name — which part of a step sits above its FLOP floor.

On the CPU (the tiny harness) the same code runs over CPU operators instead of kernels.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

#: kernel (or CPU operator) names → kind; the first match wins, so convolutions, whose cuDNN
#: kernels are "implicit GEMMs", are tested before matrix multiplies
KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("attention", re.compile(r"flash|fmha|attention|sdpa|scaled_dot_product", re.I)),
    ("convolution", re.compile(r"conv|fprop|dgrad|wgrad|winograd", re.I)),
    (
        "matmul",
        re.compile(
            r"gemm|matmul|\bmm\b|addmm|bmm|linear|cutlass|nvjet|xmma|scaled_mm"
            r"|cublas",
            re.I,
        ),
    ),
    ("fused (Inductor/Triton)", re.compile(r"triton", re.I)),
    ("copy", re.compile(r"memcpy|memset|copy|\bcat\b|contiguous", re.I)),
)


def kind_of(name: str) -> str:
    """The kind of a kernel or CPU operator, by its name (``other`` when nothing matches)."""
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return "other"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Stopwatch:
    """Synchronised wall time spent inside wrapped callables, by name."""

    device: torch.device
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def wrap(self, owner: Any, attribute: str, name: str) -> Callable[[], None]:
        """Time ``owner.attribute`` under ``name`` from now on; returns the undo."""
        original = getattr(owner, attribute)
        had_own = attribute in vars(owner)

        def timed(*args: Any, **kwargs: Any) -> Any:
            _sync(self.device)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                _sync(self.device)
                self.seconds[name] += time.perf_counter() - started

        setattr(owner, attribute, timed)

        def undo() -> None:
            if had_own:
                setattr(owner, attribute, original)
            else:
                delattr(owner, attribute)

        return undo


def outside_parts(pipe: Any, device: torch.device, run: Callable[[], float]) -> dict[str, float]:
    """Seconds in the CLIP image encoder, the VAE encode and the VAE decode during ``run()``
    (which returns the time outside the steps), and the rest of that time."""
    watch = Stopwatch(device)
    undo = [
        watch.wrap(pipe, "encode_image", "CLIP image encoder"),
        watch.wrap(pipe.vae, "encode", "VAE encode"),
        watch.wrap(pipe.vae, "decode", "VAE decode"),
    ]
    try:
        outside = run()
    finally:
        for step in reversed(undo):
            step()
    parts = dict(watch.seconds)
    parts["rest (host pre/post-processing)"] = outside - sum(parts.values())
    parts["outside the steps"] = outside
    return parts


def _median_seconds(call: Callable[[], Any], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def vae_autotuner(vae: Any, width: int, height: int, device: torch.device,
                  repeats: int = 3) -> dict[str, float]:  # fmt: skip
    """The VAE's encode (five frames) and decode (two latent frames) at ``width``×``height``,
    median seconds with ``cudnn.benchmark`` off and then on (its first, tuning call untimed);
    the setting is restored."""
    frames = torch.rand(1, 3, 5, height, width, device=device, dtype=vae.dtype) * 2 - 1
    latent = torch.randn(1, vae.config.z_dim, 2, height // 8, width // 8, device=device,
                         dtype=vae.dtype)  # fmt: skip
    before = torch.backends.cudnn.benchmark
    result: dict[str, float] = {}
    try:
        with torch.inference_mode():
            for setting in (False, True):
                torch.backends.cudnn.benchmark = setting
                label = "on" if setting else "off"
                vae.encode(frames)  # untimed: warms up (and tunes, when on)
                vae.decode(latent)
                result[f"encode, autotuner {label}"] = _median_seconds(
                    lambda: vae.encode(frames), device, repeats
                )
                result[f"decode, autotuner {label}"] = _median_seconds(
                    lambda: vae.decode(latent), device, repeats
                )
    finally:
        torch.backends.cudnn.benchmark = before
    return result


def _self_time_us(event: Any, on_device: bool) -> float:
    if not on_device:
        return float(event.self_cpu_time_total)
    for name in ("self_device_time_total", "self_cuda_time_total"):  # renamed across versions
        if hasattr(event, name):
            return float(getattr(event, name))
    return 0.0


@dataclass
class KernelProfile:
    """Device (or, on the CPU, operator) self time of one profiled run, by kind and by name."""

    by_kind: dict[str, float]
    top: list[tuple[str, str, float]]
    total_s: float

    def table(self, per: str, divide: float = 1.0) -> str:
        lines = [f"| kind | s {per} | share |", "|---|---|---|"]
        for kind, seconds in sorted(self.by_kind.items(), key=lambda item: -item[1]):
            share = seconds / self.total_s if self.total_s else 0.0
            lines.append(f"| {kind} | {seconds / divide:.4f} | {share:.1%} |")
        lines += ["", f"| largest kernels | kind | s {per} |", "|---|---|---|"]
        lines += [
            f"| `{name[:90]}` | {kind} | {seconds / divide:.4f} |"
            for name, kind, seconds in self.top
        ]
        return "\n".join(lines)


def profile_kernels(run: Callable[[], Any], device: torch.device, top: int = 10) -> KernelProfile:
    """Run ``run()`` under ``torch.profiler`` and sum each kernel's self time by kind."""
    from torch.profiler import ProfilerActivity, profile

    on_device = device.type == "cuda"
    activities = [ProfilerActivity.CUDA] if on_device else [ProfilerActivity.CPU]
    with profile(activities=activities) as profiler:
        run()
        _sync(device)
    by_name: dict[str, float] = defaultdict(float)
    for event in profiler.key_averages():
        if on_device and getattr(event, "device_type", None) != torch.autograd.DeviceType.CUDA:
            continue
        if not on_device and not event.key.startswith("aten::"):
            continue  # python frames and profiler records nest the operators' time
        by_name[event.key] += _self_time_us(event, on_device) / 1e6
    by_kind: dict[str, float] = defaultdict(float)
    for name, seconds in by_name.items():
        by_kind[kind_of(name)] += seconds
    largest = sorted(by_name.items(), key=lambda item: -item[1])[:top]
    return KernelProfile(
        dict(by_kind),
        [(name, kind_of(name), seconds) for name, seconds in largest],
        sum(by_name.values()),
    )


def kernel_rates(
    profile: KernelProfile, step_parts: dict[str, float], steps: int
) -> dict[str, float]:
    """TFLOP/s achieved by the matmul and attention kernels over ``steps`` transformer steps
    (``step_parts``: FLOPs per step by kind). The few matmuls outside the steps (CLIP, the
    adapters' small pairs) count in the time, so the matmul rate errs low, by well under 1 %
    at full size."""
    return {
        kind: flops * steps / profile.by_kind[kind] / 1e12
        for kind, flops in step_parts.items()
        if profile.by_kind.get(kind)
    }
