"""``python -m predictor.dev.bench_startup``: a chronoedit replica's start, process → ready.

Writes a model to local disk in NVIDIA's layout once, then starts the engine in fresh
processes and times each from the process's spawn to the engine being ready, with the host
memory peaks above the process's idle footprint (after its imports) — anonymous memory, what the
node must provide, and the whole RSS, which also counts the weight files' mapped pages — and the
GPU memory peak:

* on a CUDA machine, the full-size model with random bf16 weights — the files a start reads:
  transformer shards (Wan2.1-I2V-14B), VAE, CLIP ViT-H image encoder, UMT5-XXL text encoder and
  a rank-32 upscaler LoRA (the tokenizer, scheduler and processor configs are the tiny model's)
  — started cold (no embedding or compile cache) and with both caches warm, compiled;
* on the CPU (``--tiny``, or automatically without CUDA), the tiny model, through the cache
  cases the tests check: miss, hit, a corrupt cache file, a changed text encoder, and UMT5's
  weights overwritten with garbage (same size and mtime: the cache still matches and the
  weights are not read; touched: the start fails naming the file).

Before each start the model's files are evicted from the page cache (``posix_fadvise``), so a
"cold" read comes from the disk. ``--budget-s`` bounds the whole stage: a start that would not
fit is skipped and says so; every step is guarded (a failure prints its traceback, its row says
FAILED, the rest runs). Results go to stdout, and as ``bench_startup.md``/``.json`` into
``$OUT`` when set. The written model is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from predictor.dev.bench_gpu import CLIP_VIT_H14, UMT5_XXL, WAN_I2V_14B

RESULT_PREFIX = "BENCH_STARTUP_RESULT "
GiB = 1024**3
#: a start's expected length, to skip one that cannot finish inside the budget
EXPECTED_START_S = {"full": 75.0, "tiny": 4.0}
#: kept back from the budget for deleting the written model
CLEANUP_RESERVE_S = 8.0
SHARD_BYTES = 5 * GiB
RANDOM_STD = 0.02
LORA_RANK = 32


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------------------------
# writing a model in the real layout


def tensor_shapes(module: Any, skip: set[str]) -> dict[str, tuple]:
    """name → shape for each tensor of a module built on the meta device."""
    return {
        name: tuple(tensor.shape)
        for name, tensor in module.state_dict().items()
        if name not in skip
    }


def write_shards(
    shapes: dict[str, tuple],
    directory: Path,
    stem: str,
    dtype: Any,
    device: Any,
    shard_bytes: int = SHARD_BYTES,
    seed: int = 0,
) -> int:
    """Random tensors of those shapes as ``stem[-0000i-of-0000n].safetensors`` (+ the index
    Hugging Face libraries read when there are several); returns the bytes written."""
    import torch
    from safetensors.torch import save_file

    itemsize = torch.empty((), dtype=dtype).element_size()
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = itemsize * max(1, int(torch.Size(shape).numel()))
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    generator = torch.Generator(device=device).manual_seed(seed)
    total = 0
    weight_map: dict[str, str] = {}
    for index, names in enumerate(shards, start=1):
        file = (
            f"{stem}.safetensors"
            if len(shards) == 1
            else f"{stem}-{index:05d}-of-{len(shards):05d}.safetensors"
        )
        tensors = {}
        for name in names:
            tensor = torch.randn(shapes[name], generator=generator, device=device, dtype=dtype)
            tensors[name] = tensor.mul_(RANDOM_STD).to("cpu")
            weight_map[name] = file
        total += sum(tensor.numel() * itemsize for tensor in tensors.values())
        save_file(tensors, str(directory / file), metadata={"format": "pt"})
        del tensors
    if len(shards) > 1:
        index_file = directory / f"{stem}.safetensors.index.json"
        index_file.write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    return total


def _fresh(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def component_modules(model_dir: Path, full: bool) -> dict[str, Any]:
    """Meta-device modules for each weighted component: full-size configs, or the configs
    already in ``model_dir`` (the tiny model's)."""
    import torch
    from diffusers import AutoencoderKLWan, ChronoEditTransformer3DModel
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    if full:
        configs = {
            "transformer": dict(WAN_I2V_14B),
            "vae": {},
            "text_encoder": UMT5Config(**UMT5_XXL),
            "image_encoder": CLIPVisionConfig(**CLIP_VIT_H14),
        }
    else:
        configs = {
            "transformer": ChronoEditTransformer3DModel.load_config(model_dir / "transformer"),
            "vae": AutoencoderKLWan.load_config(model_dir / "vae"),
            "text_encoder": UMT5Config.from_pretrained(model_dir / "text_encoder"),
            "image_encoder": CLIPVisionConfig.from_pretrained(model_dir / "image_encoder"),
        }
    with torch.device("meta"):
        return {
            "transformer": ChronoEditTransformer3DModel.from_config(configs["transformer"]),
            "vae": AutoencoderKLWan.from_config(configs["vae"]),
            "text_encoder": UMT5EncoderModel(configs["text_encoder"]),
            "image_encoder": CLIPVisionModel(configs["image_encoder"]),
        }


def lora_shapes(transformer: Any, rank: int) -> dict[str, tuple]:
    """A diffusers-format LoRA over NVIDIA's target modules of every block: key → shape."""
    import torch

    from predictor.dev.tiny_model import LORA_TARGETS

    shapes: dict[str, tuple] = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and any(
            name.endswith("." + target) for target in LORA_TARGETS
        ):
            shapes[f"transformer.{name}.lora_A.weight"] = (rank, module.in_features)
            shapes[f"transformer.{name}.lora_B.weight"] = (module.out_features, rank)
    return shapes


def estimated_bytes(module: Any, dtype_bytes: int = 2) -> int:
    """What a meta-device module's weights take on disk in bf16 (tied copies left out)."""
    import math

    skip = set(getattr(module, "_tied_weights_keys", None) or ())
    return sum(math.prod(shape) * dtype_bytes for shape in tensor_shapes(module, skip).values())


def seed_prompt_cache(model_dir: Path, cache_dir: Path) -> Path | None:
    """Random full-size embeddings stored under the key of the text encoder now in
    ``model_dir`` (for a start that must not load UMT5, e.g. when it was not written)."""
    import torch

    from predictor.engines.chronoedit import model
    from predictor.engines.chronoedit.prompt_cache import (
        CachedPrompt,
        PromptCache,
        cache_directories,
        cache_key,
        encoder_identity,
    )

    identity = encoder_identity(model_dir / "text_encoder", model_dir / "tokenizer")
    key = cache_key(
        model.UPSCALER_PROMPT,
        model.NEGATIVE_PROMPT,
        model.MAX_SEQUENCE_LENGTH,
        torch.bfloat16,
        identity,
    )
    shape = (1, model.MAX_SEQUENCE_LENGTH, UMT5_XXL["d_model"])
    embeddings = CachedPrompt(
        torch.randn(shape, dtype=torch.bfloat16) * RANDOM_STD,
        torch.randn(shape, dtype=torch.bfloat16) * RANDOM_STD,
    )
    return PromptCache(cache_directories(model_dir, cache_dir)).save(key, embeddings, {})


def write_components(
    directory: Path, modules: dict[str, Any], device: Any, shard_bytes: int = SHARD_BYTES
) -> dict[str, Any]:
    """Each meta-device module's weights as random bf16 safetensors shards with its config, in
    ``directory/<component>/``, and a rank-32 upscaler LoRA for the transformer."""
    import torch

    info: dict[str, Any] = {"layout": "random bf16", "bytes": 0, "components": {}}
    for seed, (name, module) in enumerate(modules.items()):
        target = _fresh(directory / name)
        skip = set(getattr(module, "_tied_weights_keys", None) or ())
        stem = "diffusion_pytorch_model" if name in ("transformer", "vae") else "model"
        started = time.perf_counter()
        written = write_shards(
            tensor_shapes(module, skip), target, stem, torch.bfloat16, device, shard_bytes, seed
        )
        if hasattr(module, "save_config"):
            module.save_config(target)
        else:
            module.config.save_pretrained(target)
        seconds = time.perf_counter() - started
        info["bytes"] += written
        info["components"][name] = {"GB": round(written / 1e9, 2), "write_s": round(seconds, 1)}
        say(f"  wrote {name}: {written / 1e9:.2f} GB in {seconds:.1f} s")
    lora = lora_shapes(modules["transformer"], LORA_RANK)
    (directory / "upsample_lora_diffusers.safetensors").unlink(missing_ok=True)
    write_shards(lora, directory, "upsample_lora_diffusers", torch.bfloat16, device, 1 << 40)
    return info


def write_model(
    directory: Path, full: bool, device: Any, cache_dir: Path, shard_bytes: int = SHARD_BYTES
) -> dict[str, Any]:
    """The tiny model in NVIDIA's layout, with (``full``) its weighted components replaced by
    full-size random bf16 ones written shard by shard from ``device``.

    Where the disk cannot hold UMT5-XXL too, the text encoder is not written (the tiny one
    stays) and the prompt cache is seeded with random full-size embeddings for it, so the
    starts still run; ``info["text_encoder"]`` says which.
    """
    from predictor.dev.tiny_model import build_tiny_model

    started = time.perf_counter()
    shutil.rmtree(directory, ignore_errors=True)
    build_tiny_model(directory)
    info: dict[str, Any] = {"layout": "tiny"}
    if full:
        modules = component_modules(directory, full=True)
        sizes = {name: estimated_bytes(module) for name, module in modules.items()}
        free = shutil.disk_usage(directory).free - 2 * GiB
        text_encoder = "written"
        if free < sum(sizes.values()):
            text_encoder = "not written (disk): embeddings pre-seeded"
            del modules["text_encoder"]
            if free < sum(sizes.values()) - sizes["text_encoder"]:
                raise OSError(
                    f"not enough disk for the full-size model in {directory}: needs "
                    f"{(sum(sizes.values()) - sizes['text_encoder']) / GiB:.1f} GiB without "
                    f"the text encoder, {free / GiB:.1f} GiB free (2 GiB kept back)"
                )
        info = write_components(directory, modules, device, shard_bytes)
        info["text_encoder"] = text_encoder
        if text_encoder != "written":
            seed_prompt_cache(directory, cache_dir)
        processor = directory / "image_processor" / "preprocessor_config.json"
        config = json.loads(processor.read_text())
        side = CLIP_VIT_H14["image_size"]
        config.update(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
        processor.write_text(json.dumps(config, indent=2))
        shutil.rmtree(directory / "lora", ignore_errors=True)  # the distill LoRA is not read
    sync_and_evict(directory)
    info["write_s"] = round(time.perf_counter() - started, 1)
    return info


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts), e.g. ext4 or tmpfs."""
    with contextlib.suppress(OSError):
        resolved = str(path.resolve())
        best = ("", "unknown")
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount, kind = parts[1], parts[2]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[0]):
                best = (mount, kind)
        return f"{best[1]} ({best[0]})"
    return "unknown"


def sync_and_evict(directory: Path) -> bool:
    """Flush the files to disk and drop them from the page cache; False where unsupported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in directory.rglob("*"):
        if path.is_file():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)
    return True


# ---------------------------------------------------------------------------------------------
# one start, in its own process


def _status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


class HostMemory:
    """This process's host memory during a start, sampled every ``period`` seconds.

    ``VmHWM`` (the kernel's own high-water mark) counts the safetensors pages mapped while
    weights stream to the GPU: page cache the kernel reclaims under pressure, not memory the
    node must provide. ``RssAnon`` is what must be provided (copies, casts, buffers); it has no
    high-water mark, so a thread samples it. A start's anonymous peak lasts far longer than a
    sample period (gigabytes take hundreds of milliseconds to fill), so sampling finds it.
    """

    def __init__(self, period: float = 0.01) -> None:
        import threading

        self.period = period
        self.idle = {name: _status_kib(name) for name in ("VmRSS", "RssAnon", "RssFile")}
        self.peak = dict(self.idle)
        self._lock = threading.Lock()  # sample() from the thread and the caller: no lost update
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="host-memory", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def sample(self) -> None:
        with self._lock:
            for name in ("RssAnon", "RssFile"):
                self.peak[name] = max(self.peak[name], _status_kib(name))

    def stop(self) -> dict[str, float]:
        """The figures, in GB above the idle footprint; stops sampling."""
        self._stop.set()
        self._thread.join()
        self.sample()

        def gb(kib: int) -> float:
            return round(kib * 1024 / 1e9, 2)

        return {
            "host_idle_GB": gb(self.idle["VmRSS"]),
            "host_anon_peak_over_idle_GB": gb(self.peak["RssAnon"] - self.idle["RssAnon"]),
            "host_file_peak_over_idle_GB": gb(self.peak["RssFile"] - self.idle["RssFile"]),
            "host_peak_over_idle_GB": gb(_status_kib("VmHWM") - self.idle["VmRSS"]),
        }


def child(args: argparse.Namespace) -> int:
    """Start the engine and print one result line; the parent timed the spawn (``--t0``)."""
    import torch
    from PIL import Image

    from predictor.engines.base import EngineJob
    from predictor.engines.chronoedit.engine import ChronoEditEngine

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    result: dict[str, Any] = {"ok": False, "imports_s": round(time.time() - args.t0, 2)}
    memory = HostMemory()
    try:
        engine = ChronoEditEngine(
            args.model_dir,
            device=args.device,
            compile=args.compile,
            cache_dir=args.cache_dir,
            **({"max_pass_area": args.max_pass_area} if args.max_pass_area else {}),
        )
        result["ready_s"] = round(time.time() - args.t0, 2)
        result.update(
            ok=True,
            embeddings=engine.startup.embeddings,
            compile_cache=engine.startup.compile_cache,
            phases=with_rest(engine.startup.phases),
        )
        if args.render:
            job = EngineJob(width=64, height=48, seed=1, num_inference_steps=2)
            image = engine.upscale(Image.new("RGB", (32, 24), (120, 80, 40)), job)
            result["image_sha256"] = hashlib.sha256(image.tobytes()).hexdigest()
    except Exception as exc:
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"
    result.update(memory.stop())
    if torch.cuda.is_available():
        result["gpu_peak_GB"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        result["gpu_reserved_peak_GB"] = round(torch.cuda.max_memory_reserved() / 1e9, 2)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def with_rest(phases: dict[str, float]) -> dict[str, float]:
    """The phases plus ``rest``: the total's part no phase names (adapters, LoRA slots, …)."""
    named = sum(seconds for name, seconds in phases.items() if name != "total")
    return {**phases, "rest": round(phases.get("total", named) - named, 3)}


def start_once(
    model_dir: Path,
    cache_dir: Path,
    device: str,
    compile: bool,
    render: bool,
    timeout: float,
    max_pass_area: int | None = None,
) -> dict[str, Any]:
    """Spawn a fresh process that starts the engine; its result line as a dict.

    ``max_pass_area`` (default the engine's) sets the warm-up bucket a compiled start builds.
    """
    t0 = time.time()
    command = [sys.executable, "-m", "predictor.dev.bench_startup", "--child"]
    command += ["--t0", repr(t0), "--model-dir", str(model_dir), "--cache-dir", str(cache_dir)]
    command += ["--device", device] + (["--compile"] if compile else [])
    command += ["--render"] if render else []
    command += ["--max-pass-area", str(max_pass_area)] if max_pass_area else []
    # a new pod's local compiler caches are empty: only --cache-dir carries anything over
    local = Path(tempfile.mkdtemp(prefix="inductor-", dir=cache_dir.parent))
    env = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(local),
        "TRITON_CACHE_DIR": str(local / "triton"),
    }
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        tail = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        return {
            "ok": False,
            "error": f"did not finish within {timeout:.0f} s (killed)",
            "log_tail": (tail or str(exc.stderr or ""))[-3000:],
        }
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line.removeprefix(RESULT_PREFIX))
            if not result["ok"]:
                result["log_tail"] = done.stderr[-3000:]
            return result
    return {"ok": False, "error": f"exit {done.returncode}", "log_tail": done.stderr[-3000:]}


# ---------------------------------------------------------------------------------------------
# scenarios


@dataclass
class Row:
    name: str
    expect: str
    result: dict[str, Any] = field(default_factory=dict)
    verdict: str = "skipped"


def _encoder_weights(model_dir: Path) -> list[Path]:
    return sorted((model_dir / "text_encoder").glob("*.safetensors"))


def _prompt_cache_files(model_dir: Path, cache_dir: Path) -> list[Path]:
    from predictor.engines.chronoedit.prompt_cache import SUFFIX, cache_directories

    return [
        path
        for directory in cache_directories(model_dir, cache_dir)
        for path in sorted(directory.glob(f"*{SUFFIX}"))
    ]


def corrupt_prompt_cache(model_dir: Path, cache_dir: Path) -> None:
    files = _prompt_cache_files(model_dir, cache_dir)
    assert files, "no prompt cache file to corrupt"
    for path in files:
        path.write_bytes(b"\x00garbage" * 64)


def touch_encoder(model_dir: Path) -> None:
    for path in _encoder_weights(model_dir):
        path.touch()


def garbage_encoder_keep_mtime(model_dir: Path) -> None:
    """UMT5's weight files overwritten with random bytes of the same size, mtimes restored."""
    for path in _encoder_weights(model_dir):
        stat = path.stat()
        path.write_bytes(os.urandom(stat.st_size))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def check(row: Row, reference: str | None) -> str:
    """The row's verdict against what it expected."""
    result, expect = row.result, row.expect
    if expect.startswith("fail"):
        needle = expect.split(":", 1)[1]
        if result.get("ok"):
            return "FAILED (it started; expected a failure)"
        return "ok" if needle in result.get("error", "") else "FAILED (error names no file)"
    if not result.get("ok"):
        return f"FAILED ({result.get('error', 'no result')})"
    wanted_embeddings, _, wanted_compile = expect.partition("+")
    if result.get("embeddings") != wanted_embeddings:
        return f"FAILED (embeddings {result.get('embeddings')}, expected {wanted_embeddings})"
    if wanted_compile and result.get("compile_cache") != wanted_compile:
        return f"FAILED (compile cache {result.get('compile_cache')}, expected {wanted_compile})"
    image = result.get("image_sha256")
    if reference is not None and image is not None and image != reference:
        return "FAILED (different image)"
    return "ok"


def scenarios(model_dir: Path, full: bool, seeded: bool = False) -> list[tuple[Row, Any]]:
    """(row, what to do to the files before the start); ``seeded``: the prompt cache was
    seeded because UMT5 was not written, so even the cold start finds it."""
    if full:
        cold = Row("cold: compile cache empty, embeddings pre-seeded", "hit+miss")
        return [
            (cold if seeded else Row("cold: no caches", "miss+miss"), None),
            (Row("warm: both caches", "hit+hit"), None),
        ]
    encoder = _encoder_weights(model_dir)[0]
    return [
        (Row("cold: cache miss", "miss"), None),
        (Row("warm: cache hit", "hit"), None),
        (Row("corrupt cache file", "miss"), "corrupt"),
        (Row("changed text encoder (touched)", "miss"), "touch"),
        (Row("UMT5 garbage, same size and mtime", "hit"), "garbage"),
        (Row("UMT5 garbage, touched", f"fail:{encoder}"), "touch"),
    ]


def run_stage(args: argparse.Namespace) -> list[Row]:
    import torch

    full = not args.tiny and torch.cuda.is_available()
    device = "cuda" if full else "cpu"
    started = time.monotonic()

    def left() -> float:
        return args.budget_s - (time.monotonic() - started)

    if args.dir:
        root = Path(args.dir)
    else:  # the full-size model goes to the working directory's disk: /tmp may be in memory
        root = Path(tempfile.mkdtemp(prefix="bench-startup-", dir=Path.cwd() if full else None))
    model_dir, cache_dir = root / "model", root / "cache"
    say(f"bench-startup: {'full-size model on ' + device if full else 'tiny model on the CPU'}")
    say(
        f"  directory {root} on {filesystem_of(root)} "
        f"({shutil.disk_usage(root.parent).free / GiB:.0f} GiB free)"
    )
    rows: list[Row] = []
    write_row = Row("write model", "written")
    rows.append(write_row)
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(cache_dir, ignore_errors=True)
        write_row.result = write_model(model_dir, full, device, cache_dir)
        write_row.verdict = "ok"
        say(f"  model written in {write_row.result['write_s']} s")
    except Exception as exc:
        traceback.print_exc()
        write_row.verdict = f"FAILED ({type(exc).__name__}: {exc})"
    try:
        if write_row.verdict == "ok":
            _run_starts(rows, model_dir, cache_dir, full, device, args, left)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            say(f"  removed {root}")
    return rows


def _run_starts(rows, model_dir, cache_dir, full, device, args, left) -> None:
    actions = {
        "corrupt": lambda: corrupt_prompt_cache(model_dir, cache_dir),
        "touch": lambda: touch_encoder(model_dir),
        "garbage": lambda: garbage_encoder_keep_mtime(model_dir),
    }
    expected = EXPECTED_START_S["full" if full else "tiny"]
    reference = None
    seeded = rows[0].result.get("text_encoder", "written") != "written"
    for row, action in scenarios(model_dir, full, seeded):
        rows.append(row)
        remaining = left() - CLEANUP_RESERVE_S
        if remaining < expected:
            row.verdict = (
                f"skipped ({remaining:.0f} s of the budget left, a start takes ~{expected:.0f} s)"
            )
            say(f"  {row.name}: {row.verdict}")
            continue
        try:
            if action is not None:
                actions[action]()
            evicted = sync_and_evict(model_dir)
            row.result = start_once(
                model_dir, cache_dir, device, full and not args.no_compile, not full, remaining
            )
            row.result["page_cache_evicted"] = evicted
            row.verdict = check(row, reference)
            if row.name.startswith("cold") and row.result.get("ok"):
                reference = row.result.get("image_sha256")
        except Exception as exc:
            traceback.print_exc()
            row.verdict = f"FAILED ({type(exc).__name__}: {exc})"
        say(f"  {row.name}: {row.verdict} {json.dumps(_brief(row.result))}")
        if "log_tail" in row.result and row.verdict != "ok":
            say(row.result["log_tail"])


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in result.items() if key != "log_tail"}


def table(rows: list[Row]) -> str:
    lines = [
        "| step | ready s | embeddings | compile cache | host anon peak GB | "
        "host RSS peak GB | GPU peak GB | phases s | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        result = row.result
        phases = result.get("phases") or {}
        seconds = result.get("ready_s", result.get("write_s", ""))
        lines.append(
            f"| {row.name} | {seconds} | {result.get('embeddings', '')} | "
            f"{result.get('compile_cache', '')} | "
            f"{result.get('host_anon_peak_over_idle_GB', '')} | "
            f"{result.get('host_peak_over_idle_GB', '')} | {result.get('gpu_peak_GB', '')} | "
            + ", ".join(f"{name} {value:g}" for name, value in phases.items())
            + f" | {row.verdict} |"
        )
    lines.append(
        "\nhost anon peak: anonymous memory (copies, casts, buffers) above the idle process, "
        "sampled; host RSS peak: VmHWM above idle, which also counts weight-file pages mapped "
        "while they stream to the device (page cache the kernel can reclaim)."
    )
    return "\n".join(lines)


def write_outputs(rows: list[Row], text: str) -> None:
    out = os.environ.get("OUT")
    if not out:
        return
    with contextlib.suppress(OSError):
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "bench_startup.md").write_text(text + "\n")
        (Path(out) / "bench_startup.json").write_text(
            json.dumps([asdict(row) for row in rows], indent=2) + "\n"
        )


def run(args: argparse.Namespace) -> int:
    if args.child:
        return child(args)
    import torch

    say(
        f"torch {torch.__version__}, "
        + (torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")
    )
    rows = run_stage(args)
    text = table(rows)
    say(text)
    write_outputs(rows, text)
    failed = [row for row in rows if row.verdict.startswith("FAILED")]
    full = not args.tiny and torch.cuda.is_available()
    # on the CPU the cache cases are checks; on a GPU the rows say FAILED and the chain goes on
    return 1 if failed and not full else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m predictor.dev.bench_startup",
        description="Time a chronoedit replica's start (process → ready), cold and cached.",
    )
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU")
    parser.add_argument("--budget-s", type=float, default=170.0, help="wall-clock budget")
    parser.add_argument("--dir", help="where to write the model (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the written model")
    parser.add_argument("--no-compile", action="store_true", help="full-size starts uncompiled")
    # the per-start process
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--render", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--max-pass-area", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
