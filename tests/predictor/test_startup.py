"""A chronoedit start on the tiny model: weights straight to the device, the prompt's embeddings
from their cache (hit, miss, corrupt, mismatched), compile artifacts across processes, and the
start-up bench's CPU stage."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from predictor.dev import bench_startup
from predictor.engines.base import EngineJob
from predictor.engines.chronoedit.compile_cache import CompileCache, compile_key
from predictor.engines.chronoedit.engine import ChronoEditEngine
from predictor.engines.chronoedit.loader import StartupError, StartupReport, prompt_embeddings
from predictor.engines.chronoedit.prompt_cache import (
    SUFFIX,
    CachedPrompt,
    PromptCache,
    cache_key,
    encoder_identity,
)
from predictor.engines.options import LoraSettings

torch.set_num_threads(2)


@pytest.fixture
def model_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model (these tests damage its files)."""
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy, ignore=shutil.ignore_patterns(".chrono-upscaler"))
    return copy


def _start(model_dir: Path, cache_dir: Path) -> ChronoEditEngine:
    return ChronoEditEngine(model_dir, cache_dir=cache_dir, loras=LoraSettings(slots=0))


def _render(engine: ChronoEditEngine) -> bytes:
    job = EngineJob(width=64, height=48, seed=3, num_inference_steps=2)
    return engine.upscale(Image.new("RGB", (32, 24), (200, 120, 40)), job).tobytes()


def _cache_files(model_dir: Path, cache_dir: Path) -> list[Path]:
    return sorted(model_dir.rglob(f"*{SUFFIX}")) + sorted(cache_dir.rglob(f"*{SUFFIX}"))


def test_umt5_is_not_read_when_the_embedding_cache_matches(model_dir: Path, tmp_path) -> None:
    """The issue's target: garbage in UMT5's files with their size and mtime kept still starts
    (from the cache) with the same images; touched, the start loads them and fails naming the
    file."""
    cache_dir = tmp_path / "cache"
    first = _start(model_dir, cache_dir)
    assert first.startup.embeddings == "miss"
    reference = _render(first)
    first.close()
    assert len(_cache_files(model_dir, cache_dir)) == 1

    weights = sorted((model_dir / "text_encoder").glob("*.safetensors"))
    assert weights
    bench_startup.garbage_encoder_keep_mtime(model_dir)
    second = _start(model_dir, cache_dir)
    assert second.startup.embeddings == "hit"
    assert _render(second) == reference
    second.close()

    bench_startup.touch_encoder(model_dir)
    with pytest.raises(StartupError) as failure:
        _start(model_dir, cache_dir)
    assert str(weights[0]) in str(failure.value)
    assert "not a readable safetensors file" in str(failure.value)


def test_corrupt_cache_file_is_ignored_with_a_warning_and_rebuilt(
    model_dir: Path, tmp_path, caplog
) -> None:
    cache_dir = tmp_path / "cache"
    reference = _render(_start(model_dir, cache_dir))
    (cache_file,) = _cache_files(model_dir, cache_dir)
    cache_file.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger="predictor.engines.chronoedit.prompt_cache"):
        engine = _start(model_dir, cache_dir)
    assert engine.startup.embeddings == "miss"
    assert any("prompt_cache corrupt" in record.getMessage() for record in caplog.records)
    assert _render(engine) == reference
    assert _start(model_dir, cache_dir).startup.embeddings == "hit"  # rebuilt


def test_a_cache_file_with_another_key_inside_is_not_used(model_dir: Path, tmp_path, caplog):
    """A file whose recorded key differs from the one its name promises (copied by hand, a
    truncated-name clash) is ignored, never trusted."""
    cache_dir = tmp_path / "cache"
    _start(model_dir, cache_dir)
    (cache_file,) = _cache_files(model_dir, cache_dir)
    key = cache_file.name.removesuffix(SUFFIX)
    cache = PromptCache([cache_file.parent])
    zeros = torch.zeros(1, 512, 16)
    cache.save("f" * 64, CachedPrompt(zeros, zeros), {})
    (cache_file.parent / f"{'f' * 32}{SUFFIX}").replace(cache_file)
    with caplog.at_level(logging.WARNING, logger="predictor.engines.chronoedit.prompt_cache"):
        assert cache.load(key + "0" * 32, torch.device("cpu")) is None
    assert any("prompt_cache mismatched" in record.getMessage() for record in caplog.records)


def test_read_only_weights_put_the_cache_in_the_cache_dir(model_dir: Path, tmp_path) -> None:
    """Weights on a read-only volume (a node cache): the embeddings go to --cache-dir."""
    cache_dir = tmp_path / "cache"
    blocked = model_dir / ".chrono-upscaler"
    blocked.write_text("a file where the cache directory would go")  # mkdir fails, as if RO
    first = _start(model_dir, cache_dir)
    assert first.startup.embeddings == "miss"
    assert first.startup.prompt_cache_path.startswith(str(cache_dir))
    assert _start(model_dir, cache_dir).startup.embeddings == "hit"


def test_the_key_covers_prompt_dtype_configs_tokenizer_and_weight_stats(model_dir: Path):
    def key(prompt: str = "p", dtype: torch.dtype = torch.bfloat16) -> str:
        identity = encoder_identity(model_dir / "text_encoder", model_dir / "tokenizer")
        return cache_key(prompt, "", 512, dtype, identity)

    base = key()
    assert key() == base  # stable
    assert key(prompt="q") != base
    assert key(dtype=torch.float32) != base
    config = model_dir / "text_encoder" / "config.json"
    stat = config.stat()
    config.write_text(json.dumps({**json.loads(config.read_text()), "d_ff": 64}))
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert key() != base  # a config's content counts, not its mtime
    changed = key()
    tokenizer = model_dir / "tokenizer" / "tokenizer_config.json"
    data = json.loads(tokenizer.read_text())
    data["model_max_length"] = 511
    tokenizer.write_text(json.dumps(data))
    assert key() != changed
    changed = key()
    (weights,) = (model_dir / "text_encoder").glob("*.safetensors")
    with weights.open("ab") as file:
        file.write(b"\0")  # a size change
    assert key() != changed


def test_each_component_is_loaded_straight_onto_the_device(
    model_dir: Path, tmp_path, monkeypatch
) -> None:
    """Every weighted component is read with ``device_map`` (placed as it is read, no CPU copy
    of the pipeline first), in the serving dtype (the image encoder in fp32), never fetched;
    and no text encoder stays resident."""
    from diffusers import AutoencoderKLWan, ChronoEditTransformer3DModel
    from transformers import CLIPVisionModel, UMT5EncoderModel

    calls: dict[str, dict] = {}
    for cls in (ChronoEditTransformer3DModel, AutoencoderKLWan, CLIPVisionModel, UMT5EncoderModel):
        original = cls.from_pretrained

        def recorder(_cls, *args, _original=original, **kwargs):
            calls[kwargs["subfolder"]] = kwargs
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(recorder))
    engine = _start(model_dir, tmp_path / "cache")
    assert set(calls) == {"transformer", "vae", "image_encoder", "text_encoder"}
    for subfolder, kwargs in calls.items():
        assert kwargs["device_map"] == "cpu" and kwargs["local_files_only"] is True, subfolder
        expected = torch.float32 if subfolder == "image_encoder" else engine.dtype
        assert kwargs["dtype"] == expected, subfolder
    assert engine.pipe.text_encoder is None and engine.pipe.tokenizer is None
    assert set(engine.startup.phases) >= {
        "imports",
        "embeddings",
        "transformer",
        "vae",
        "image_encoder",
    }


def test_no_kernel_is_fetched_from_the_hub_unless_the_node_asks(
    model_dir: Path, tmp_path, monkeypatch
) -> None:
    """With ``kernels`` installed, transformers asks the Hub for CUDA kernels while it loads UMT5
    — a download an offline GPU node refused (seen on an H200). Off by default; a node that
    sets ``USE_HUB_KERNELS`` itself keeps its choice."""
    from transformers import UMT5EncoderModel
    from transformers.integrations import hub_kernels

    seen: list[bool] = []
    original = UMT5EncoderModel.from_pretrained

    def recorder(_cls, *args, **kwargs):
        seen.append(hub_kernels._kernels_enabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(UMT5EncoderModel, "from_pretrained", classmethod(recorder))
    monkeypatch.setenv("USE_HUB_KERNELS", "unset below")  # restored (removed) after the test
    monkeypatch.delenv("USE_HUB_KERNELS")
    _start(model_dir, tmp_path / "first")
    for cached in _cache_files(model_dir, tmp_path / "first"):
        cached.unlink()  # so the next start encodes the prompt again
    monkeypatch.setenv("USE_HUB_KERNELS", "YES")
    _start(model_dir, tmp_path / "second")
    assert seen == [False, True]


def test_damaged_transformer_shard_is_named(model_dir: Path, tmp_path) -> None:
    (shard,) = (model_dir / "transformer").glob("*.safetensors")
    shard.write_bytes(os.urandom(shard.stat().st_size))
    with pytest.raises(StartupError) as failure:
        _start(model_dir, tmp_path / "cache")
    assert str(shard) in str(failure.value)


# --- the real layout the start-up bench writes ------------------------------------------------


def test_sharded_random_model_in_the_real_layout_loads(model_dir: Path, tmp_path) -> None:
    """The writer the GPU stage uses for the full-size model, here with the tiny configs and
    tiny shards: several shards and an index per component, and the engine loads them."""
    modules = bench_startup.component_modules(model_dir, full=False)
    info = bench_startup.write_components(model_dir, modules, "cpu", shard_bytes=4096)
    assert info["bytes"] > 0
    shards = sorted((model_dir / "transformer").glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 1
    assert (model_dir / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert (model_dir / "text_encoder" / "model.safetensors.index.json").is_file()
    engine = _start(model_dir, tmp_path / "cache")
    assert len(_render(engine)) == 64 * 48 * 3


def test_the_written_upscaler_lora_has_nvidias_keys(tiny_model_dir: Path) -> None:
    from safetensors import safe_open

    modules = bench_startup.component_modules(tiny_model_dir, full=False)
    shapes = bench_startup.lora_shapes(modules["transformer"], rank=4)
    with safe_open(str(tiny_model_dir / "upsample_lora_diffusers.safetensors"), "pt") as handle:
        names = handle.keys()
        expected = {key: tuple(handle.get_slice(key).get_shape()) for key in names}
    assert shapes == expected


# --- the compile cache --------------------------------------------------------------------------


def test_compile_artifacts_are_reused_by_the_next_process(model_dir: Path, tmp_path) -> None:
    """Two fresh processes with empty local inductor caches: the first compiles and saves, the
    second hot-loads the artifacts (a hit) and renders the same image."""
    cache_dir = tmp_path / "cache"
    cold = bench_startup.start_once(model_dir, cache_dir, "cpu", True, True, 600, 32 * 32)
    assert cold["ok"], cold
    assert cold["compile_cache"] == "miss"
    saved = list((cache_dir / "torch-compile").glob("*.bin"))
    assert len(saved) == 1
    key = json.loads(saved[0].with_suffix(".json").read_text())
    assert key["torch"] == torch.__version__ and key["shapes"] == [[32, 32]]
    warm = bench_startup.start_once(model_dir, cache_dir, "cpu", True, True, 600, 32 * 32)
    assert warm["ok"], warm
    assert warm["compile_cache"] == "hit"
    assert warm["image_sha256"] == cold["image_sha256"]


def test_an_unreadable_compile_cache_is_ignored_with_a_warning(tmp_path, caplog) -> None:
    cache = CompileCache(tmp_path, compile_key(torch.device("cpu"), torch.float32, [(32, 32)], {}))
    assert cache.load() is False  # nothing there
    cache.path.parent.mkdir(parents=True)
    cache.path.write_bytes(b"torn")
    with caplog.at_level(logging.WARNING, logger="predictor.engines.chronoedit.compile_cache"):
        assert cache.load() is False
    assert any("compile_cache unreadable" in record.getMessage() for record in caplog.records)


def test_the_compile_key_changes_with_what_kernels_depend_on() -> None:
    cpu = torch.device("cpu")
    base = CompileCache(Path("/x"), compile_key(cpu, torch.bfloat16, [(32, 32)], {"a": 1}))
    for other in (
        compile_key(cpu, torch.float32, [(32, 32)], {"a": 1}),
        compile_key(cpu, torch.bfloat16, [(64, 32)], {"a": 1}),
        compile_key(cpu, torch.bfloat16, [(32, 32)], {"a": 2}),
    ):
        assert CompileCache(Path("/x"), other).path != base.path


# --- the bench's CPU stage ----------------------------------------------------------------------


def test_bench_startup_cpu_stage_checks_every_cache_case(tmp_path, monkeypatch, capsys) -> None:
    """``--tiny``: miss, hit, corrupt, changed encoder, UMT5 garbage kept / touched — each row
    ok, exit 0, the table and JSON in $OUT, and the written model removed."""
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    work = tmp_path / "work"
    assert bench_startup.main(["--tiny", "--dir", str(work), "--budget-s", "900"]) == 0
    rows = json.loads((tmp_path / "out" / "bench_startup.json").read_text())
    verdicts = {row["name"]: row["verdict"] for row in rows}
    assert all(verdict == "ok" for verdict in verdicts.values()), verdicts
    by_name = {row["name"]: row["result"] for row in rows}
    assert by_name["cold: cache miss"]["embeddings"] == "miss"
    assert by_name["warm: cache hit"]["embeddings"] == "hit"
    assert by_name["corrupt cache file"]["embeddings"] == "miss"
    assert by_name["changed text encoder (touched)"]["embeddings"] == "miss"
    assert by_name["UMT5 garbage, same size and mtime"]["embeddings"] == "hit"
    assert "text_encoder/model.safetensors" in by_name["UMT5 garbage, touched"]["error"]
    assert "| warm: cache hit |" in (tmp_path / "out" / "bench_startup.md").read_text()
    assert not work.exists()


def test_host_memory_tells_copies_from_mapped_weight_pages(tmp_path) -> None:
    """The start-up target is anonymous memory: a copy held for a moment counts in the anon
    peak; a weight file's pages mapped and read (what streaming to the GPU does) count only in
    the file and RSS peaks."""
    import mmap

    weights = tmp_path / "shard.safetensors"
    size = 256 * 1024 * 1024
    with weights.open("wb") as handle:
        handle.truncate(size)
    memory = bench_startup.HostMemory(period=0.005)
    with weights.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
        checksum = sum(m[offset] for offset in range(0, size, 4096))  # every page read
        memory.sample()
    assert checksum == 0
    mapped = memory.stop()
    assert mapped["host_file_peak_over_idle_GB"] >= 0.25
    assert mapped["host_anon_peak_over_idle_GB"] < 0.1
    assert mapped["host_peak_over_idle_GB"] >= 0.25

    memory = bench_startup.HostMemory(period=0.005)
    copy = bytearray(size)
    copy[::4096] = b"\x01" * len(range(0, size, 4096))  # touched: resident
    memory.sample()
    del copy
    copied = memory.stop()
    assert copied["host_anon_peak_over_idle_GB"] >= 0.25


def test_bench_startup_skips_what_the_budget_cannot_hold(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    assert bench_startup.main(["--tiny", "--dir", str(tmp_path / "w"), "--budget-s", "1"]) == 0
    rows = json.loads((tmp_path / "out" / "bench_startup.json").read_text())
    assert rows[0]["verdict"] == "ok"  # the model is written regardless
    assert all(row["verdict"].startswith("skipped") for row in rows[1:])


def test_a_failing_step_says_failed_and_the_rest_runs(tmp_path, monkeypatch, capsys) -> None:
    """The harness's guard (the starts themselves are faked here: the test above runs them)."""
    started: list[str] = []

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    def fake_start(model_dir, cache_dir, device, compile, render, timeout):
        started.append(str(model_dir))
        return {"ok": True, "embeddings": "hit"}

    monkeypatch.setattr(bench_startup, "corrupt_prompt_cache", broken)
    monkeypatch.setattr(bench_startup, "start_once", fake_start)
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    assert bench_startup.main(["--tiny", "--dir", str(tmp_path / "w"), "--budget-s", "900"]) == 1
    rows = json.loads((tmp_path / "out" / "bench_startup.json").read_text())
    verdicts = {row["name"]: row["verdict"] for row in rows}
    assert verdicts["corrupt cache file"].startswith("FAILED (RuntimeError: disk on fire")
    assert verdicts["UMT5 garbage, same size and mtime"] == "ok"  # later steps still ran
    assert len(started) == 5  # every start but the broken step's
    assert "Traceback" in capsys.readouterr().err


def test_a_seeded_prompt_cache_spares_the_text_encoder(model_dir: Path, tmp_path) -> None:
    """What the GPU stage does when the disk cannot hold UMT5-XXL: the start finds embeddings
    under the key of the text encoder in the directory and never loads it."""
    cache_dir = tmp_path / "cache"
    assert bench_startup.seed_prompt_cache(model_dir, cache_dir) is not None
    report = StartupReport()
    embeddings = prompt_embeddings(
        model_dir, torch.bfloat16, torch.device("cpu"), cache_dir, report
    )
    assert report.embeddings == "hit"
    assert embeddings.positive.shape == (1, 512, bench_startup.UMT5_XXL["d_model"])
