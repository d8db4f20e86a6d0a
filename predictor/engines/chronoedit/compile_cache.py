"""torch.compile's artifacts kept across starts, so a new replica compiles little or nothing.

After the warm-up has compiled the shape buckets, ``torch.compiler.save_cache_artifacts()``
serializes what dynamo, AOTAutograd, Inductor and Triton produced (PyTorch's "mega-cache");
the next start hot-loads it with ``load_cache_artifacts`` before compiling, and the compile
then finds its kernels in the local caches. One file per key — torch and Triton versions, the
GPU model, the dtype, the warm-up shapes and the transformer's config — in a directory the
operator mounts from a volume (``--cache-dir``). An unreadable file is ignored with a warning.
The key only finds the right file: correctness never rests on it, since Inductor looks each
graph up by its own hash and compiles what it does not find.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger("predictor.engines.chronoedit.compile_cache")

SUBDIR = "torch-compile"


def device_model(device: torch.device) -> str:
    """The accelerator's model name (kernels are tuned per GPU), or the CPU's architecture."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}"


def compile_key(
    device: torch.device,
    dtype: torch.dtype,
    shapes: list[tuple[int, int]],
    model_config: dict[str, object],
    backend: str = "inductor",
) -> dict[str, object]:
    """Everything a compiled artifact depends on, as a JSON-able dict."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "device": device_model(device),
        "dtype": str(dtype).removeprefix("torch."),
        "shapes": [list(shape) for shape in shapes],
        "backend": backend,
        "model": model_config,
    }


def key_digest(key: dict[str, object]) -> str:
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class CompileCache:
    """One mega-cache file for one key under ``directory/torch-compile``."""

    def __init__(self, directory: Path, key: dict[str, object]) -> None:
        self.key = key
        self.digest = key_digest(key)
        self.path = Path(directory) / SUBDIR / f"{self.digest}.bin"
        self.loaded = False

    def load(self) -> bool:
        """Hot-load the artifacts if the file exists; False (with a warning if broken) if not."""
        if not self.path.is_file():
            log.info("compile_cache miss path=%s", self.path)
            return False
        started = time.perf_counter()
        try:  # torch logs a torn or foreign file itself and returns None
            info = torch.compiler.load_cache_artifacts(self.path.read_bytes())
            error = None if info is not None else "no artifacts could be loaded"
        except Exception as exc:
            info, error = None, str(exc)[:200]
        if error is not None:
            log.warning(
                "compile_cache unreadable path=%s error=%s action=recompile", self.path, error
            )
            return False
        self.loaded = True
        log.info(
            "compile_cache hit path=%s artifacts=%s load_s=%.2f",
            self.path,
            _count(info),
            time.perf_counter() - started,
        )
        return True

    def save(self) -> Path | None:
        """Write what this process compiled (atomically); None when nothing or unwritable."""
        artifacts = torch.compiler.save_cache_artifacts()
        if artifacts is None:
            log.info("compile_cache nothing_to_save")
            return None
        data, info = artifacts
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as file:
                    file.write(data)
                os.replace(temporary, self.path)
                (directory / f"{self.digest}.json").write_text(
                    json.dumps(self.key, indent=2, sort_keys=True, default=str) + "\n"
                )
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
        except OSError as exc:
            log.warning("compile_cache not_saved path=%s error=%s", self.path, exc)
            return None
        log.info(
            "compile_cache saved path=%s bytes=%d artifacts=%s", self.path, len(data), _count(info)
        )
        return self.path


def _count(info: object) -> int | None:
    """How many artifacts a CacheInfo describes (its fields are lists per cache kind)."""
    lists = [value for value in vars(info).values() if isinstance(value, list)] if info else []
    return sum(len(value) for value in lists) if lists else None
