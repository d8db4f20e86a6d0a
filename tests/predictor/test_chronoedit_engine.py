"""The chronoedit engine in process, on the tiny random model built by ``make-tiny-model``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client import REGISTRY

from predictor.engines import ChronoEditOptions, load_engine
from predictor.engines.base import SAFETY_FLAGGED_KEY, EngineJob
from predictor.engines.chronoedit.engine import ChronoEditEngine
from predictor.engines.chronoedit.model import (
    MAX_SEQUENCE_LENGTH,
    UPSCALER_LORA_FILE,
    UPSCALER_PROMPT,
    find_upscaler_lora,
    resolve_device,
    resolve_dtype,
    resolve_local_dir,
)
from predictor.engines.safety import DiffusersSafetyChecker
from predictor.workers import JobCancelled
from tests.conftest import photo_crop
from tests.predictor.chronoedit_helpers import seam_ratio

torch.set_num_threads(2)
AREA = 64 * 64  # 64×48 outputs are one pass, 192×128 outputs are 12 blended tiles


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> ChronoEditEngine:
    return ChronoEditEngine(tiny_model_dir, max_pass_area=AREA)


def _job(width: int = 64, height: int = 48, **fields) -> EngineJob:
    return EngineJob(width=width, height=height, **{"seed": 7, "num_inference_steps": 2, **fields})


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# --- loading --------------------------------------------------------------------------------


def test_loads_through_the_registry_and_describes_itself(tiny_model_dir: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="predictor.engines.chronoedit"):
        engine = load_engine(ChronoEditOptions(model_dir=str(tiny_model_dir), max_pass_area=AREA))
    assert isinstance(engine, ChronoEditEngine)
    assert engine.prompt == UPSCALER_PROMPT and engine.size_multiple == 16
    meta = engine.metadata()
    assert meta["engine"] == "chronoedit" and meta["prompt"] == UPSCALER_PROMPT
    assert meta["safety_checker"] is None  # nothing checks, and it says so
    assert (meta["dtype"], meta["device"], meta["compiled"]) == ("float32", "cpu", False)
    assert meta["max_pass_area"] == AREA and meta["flow_shift"] == 5.0
    assert meta["upscaler_lora"] == str(tiny_model_dir / UPSCALER_LORA_FILE)
    assert any(
        record.levelno == logging.WARNING and "safety_checker=none" in record.getMessage()
        for record in caplog.records
    )
    engine.close()


def test_prompt_is_encoded_once_and_the_text_encoder_released(engine: ChronoEditEngine) -> None:
    assert engine.pipe.text_encoder is None
    positive, negative = engine.embeddings.positive, engine.embeddings.negative
    # WanAttnProcessor splits image from text tokens assuming 512 text tokens whenever the
    # transformer has added K/V projections, the tiny model included
    assert engine.pipe.transformer.config.added_kv_proj_dim is not None
    assert positive.shape[1] == negative.shape[1] == MAX_SEQUENCE_LENGTH
    assert not torch.equal(positive, negative)
    assert engine.pipe.scheduler.config.flow_shift == 5.0


def test_devices_and_dtypes() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", cpu) == torch.float16
    assert resolve_device("cpu") == cpu
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


def test_model_dir_resolution(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    assert resolve_local_dir(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError):
        resolve_local_dir(tmp_path / "missing")
    # a repo id resolves through the local HF cache only (never a download)
    cache = tmp_path / "hub"
    snapshot = cache / "models--nvidia--ChronoEdit-14B-Diffusers" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert resolve_local_dir("nvidia/ChronoEdit-14B-Diffusers") == snapshot
    assert resolve_local_dir("hf://nvidia/ChronoEdit-14B-Diffusers") == snapshot
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        resolve_local_dir("nobody/not-cached")


def test_upscaler_lora_lookup(tmp_path: Path) -> None:
    base = tmp_path / "ChronoEdit-14B-Diffusers"
    sibling = tmp_path / "ChronoEdit-14B-Diffusers-Upscaler-Lora"
    base.mkdir()
    sibling.mkdir()
    with pytest.raises(FileNotFoundError, match="--upscaler-lora"):
        find_upscaler_lora(base)
    (sibling / UPSCALER_LORA_FILE).write_bytes(b"x")  # NVIDIA's README layout
    assert find_upscaler_lora(base) == sibling / UPSCALER_LORA_FILE
    (base / UPSCALER_LORA_FILE).write_bytes(b"x")  # one merged directory (/mnt/models)
    assert find_upscaler_lora(base) == base / UPSCALER_LORA_FILE
    assert find_upscaler_lora(base, sibling) == sibling / UPSCALER_LORA_FILE
    assert find_upscaler_lora(base, sibling / UPSCALER_LORA_FILE) == sibling / UPSCALER_LORA_FILE
    with pytest.raises(FileNotFoundError):
        find_upscaler_lora(base, tmp_path / "nowhere.safetensors")


# --- rendering ------------------------------------------------------------------------------


def test_exact_size_and_determinism(engine: ChronoEditEngine) -> None:
    source = photo_crop(32, 24)
    first = engine.upscale(source, _job())
    assert first.size == (64, 48) and first.mode == "RGB"
    assert first.tobytes() == engine.upscale(source, _job()).tobytes()
    assert first.tobytes() != engine.upscale(source, _job(seed=8)).tobytes()
    assert first.tobytes() != engine.upscale(source, _job(num_inference_steps=3)).tobytes()
    with pytest.raises(ValueError, match="multiple of 16"):
        engine.upscale(source, _job(width=60))


def test_the_image_is_the_pipelines_own_last_frame(engine: ChronoEditEngine) -> None:
    """Only the last frame leaves the device, converted there; the bytes equal the pipeline's
    own ``np`` output of all five frames, its last frame clipped and rounded on the host."""
    source = photo_crop(32, 24)
    image = engine.upscale(source, _job())
    guide = source.resize((64, 48), Image.Resampling.LANCZOS)
    frames = engine.pipe(
        image=guide,
        prompt_embeds=engine.embeddings.positive,
        negative_prompt_embeds=engine.embeddings.negative,
        height=48,
        width=64,
        num_frames=5,
        num_inference_steps=2,
        guidance_scale=1.0,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    ).frames
    assert frames.shape[:2] == (1, 5)
    expected = (np.clip(frames[0][-1], 0.0, 1.0) * 255.0).round().astype(np.uint8)
    assert np.array_equal(np.asarray(image), expected)


def test_step_callback_fires_once_per_step(engine: ChronoEditEngine) -> None:
    calls: list[tuple[int, int, str]] = []
    engine.upscale(photo_crop(32, 24), _job(num_inference_steps=3), lambda *a: calls.append(a))
    assert calls == [(1, 3, "step"), (2, 3, "step"), (3, 3, "step")]


def test_tiled_progress_counts_steps_over_all_tiles(engine: ChronoEditEngine) -> None:
    job = _job(192, 128)
    tiles = engine.plan(job)
    assert len(tiles) == 12
    calls: list[tuple[int, int, str]] = []
    result = engine.upscale(photo_crop(96, 64), job, lambda *a: calls.append(a))
    assert result.size == (192, 128)
    total = 2 * len(tiles)
    assert calls == [(done, total, "step") for done in range(1, total + 1)]


def test_an_exception_from_progress_stops_the_job(engine: ChronoEditEngine) -> None:
    source = photo_crop(32, 24)
    reference = engine.upscale(source, _job(num_inference_steps=4))
    seen: list[int] = []

    def cancel_at_two(done: int, total: int, unit: str) -> None:
        seen.append(done)
        if done == 2:
            raise JobCancelled()

    with pytest.raises(JobCancelled):
        engine.upscale(source, _job(num_inference_steps=4), cancel_at_two)
    assert seen == [1, 2]
    seen.clear()
    with pytest.raises(JobCancelled):  # a tiled job stops inside its first tile
        engine.upscale(photo_crop(96, 64), _job(192, 128, num_inference_steps=4), cancel_at_two)
    assert seen == [1, 2]
    # the pipeline is left usable and the next request is unaffected
    assert engine.upscale(source, _job(num_inference_steps=4)).tobytes() == reference.tobytes()


def test_guidance_above_one_adds_an_unconditional_pass(engine: ChronoEditEngine) -> None:
    passes: list[int] = []
    hook = engine.pipe.transformer.register_forward_pre_hook(lambda *_: passes.append(1))
    try:
        source = photo_crop(32, 24)
        plain = engine.upscale(source, _job(guidance_scale=1.0))
        assert len(passes) == 2  # one transformer pass per step
        passes.clear()
        guided = engine.upscale(source, _job(guidance_scale=4.0))
        assert len(passes) == 4  # and a negative-prompt pass per step
    finally:
        hook.remove()
    assert plain.tobytes() != guided.tobytes()


def test_lora_scale_zero_is_the_base_model(
    tiny_model_dir: Path, engine: ChronoEditEngine, tmp_path: Path
) -> None:
    """Scale 0 subtracts the merged upscaler again (one low-rank pair): the base model's output
    up to float rounding — compared with an engine whose upscaler LoRA is all zeros."""
    from safetensors.torch import load_file, save_file

    source = photo_crop(32, 24)
    full = engine.upscale(source, _job(lora_scale=1.0))
    half = engine.upscale(source, _job(lora_scale=0.5))
    off = engine.upscale(source, _job(lora_scale=0.0))
    assert len({full.tobytes(), half.tobytes(), off.tobytes()}) == 3
    zeros = {key: value.zero_() for key, value in load_file(engine.upscaler_lora).items()}
    save_file(zeros, str(tmp_path / UPSCALER_LORA_FILE))
    bare = ChronoEditEngine(tiny_model_dir, max_pass_area=AREA, upscaler_lora=tmp_path)
    base = bare.upscale(source, _job(lora_scale=1.0))
    bare.close()
    assert np.abs(_pixels(base) - _pixels(off)).max() <= 1
    assert np.abs(_pixels(base) - _pixels(full)).max() > 2
    assert engine.upscale(source, _job(lora_scale=1.0)).tobytes() == full.tobytes()


def test_tiles_are_blended_without_visible_seams(engine: ChronoEditEngine, monkeypatch) -> None:
    """The tiny model draws artefacts along every pass border; butted tiles show them as a
    grid, the blend hides them. The same metric is checked on both, so it can tell."""
    import predictor.engines.chronoedit.engine as chronoedit

    source, job = photo_crop(96, 64), _job(192, 128, seed=1)
    tiles = engine.plan(job)
    blended = engine.upscale(source, job)
    original = chronoedit.blend_tiles
    monkeypatch.setattr(
        chronoedit, "blend_tiles", lambda *a, **k: original(*a, **{**k, "feather": False})
    )
    butted = engine.upscale(source, job)
    assert seam_ratio(butted, tiles) > 2.0
    assert seam_ratio(blended, tiles) < 1.3


# --- safety ---------------------------------------------------------------------------------


class RecordingChecker:
    source = "test-checker"

    def __init__(self, flag: bool) -> None:
        self.flag = flag
        self.seen: list[tuple[int, int]] = []

    def check(self, image: Image.Image) -> bool:
        self.seen.append(image.size)
        return self.flag


def test_flagged_output_is_blacked_out_and_counted(engine: ChronoEditEngine, caplog) -> None:
    checker = RecordingChecker(flag=True)
    engine.safety_checker, before = checker, engine.safety_flagged
    try:
        with caplog.at_level(logging.WARNING, logger="predictor.engines.chronoedit"):
            flagged = engine.upscale(photo_crop(32, 24), _job())
        unchecked = engine.upscale(photo_crop(32, 24), _job(enable_safety_checker=False))
        assert engine.metadata()["safety_checker"] == "test-checker"
    finally:
        engine.safety_checker = None
    assert flagged.size == (64, 48) and not _pixels(flagged).any()
    assert flagged.info.get(SAFETY_FLAGGED_KEY) is True
    assert engine.safety_flagged == before + 1
    assert checker.seen == [(64, 48)]  # the disabled request was not checked
    assert _pixels(unchecked).any() and SAFETY_FLAGGED_KEY not in unchecked.info
    assert any("flagged=1 action=blacked_out" in r.getMessage() for r in caplog.records)


def test_diffusers_safety_checker_verdicts(tiny_model_dir: Path, flagging_checker_dir) -> None:
    image = photo_crop(64, 48)
    assert DiffusersSafetyChecker(tiny_model_dir / "safety_checker").check(image) is False
    assert DiffusersSafetyChecker(flagging_checker_dir).check(image) is True


# --- deployment options ---------------------------------------------------------------------


def test_distill_lora_is_fused_with_flow_shift_two(
    tiny_model_dir: Path, engine: ChronoEditEngine
) -> None:
    distilled = ChronoEditEngine(
        tiny_model_dir,
        max_pass_area=AREA,
        distill_lora=tiny_model_dir / "lora" / "chronoedit_distill_lora.safetensors",
    )
    assert distilled.flow_shift == 2.0 and distilled.pipe.scheduler.config.flow_shift == 2.0
    # distill and upscaler are merged into the weights: no peft adapter is left
    assert not getattr(distilled.pipe.transformer, "peft_config", None)
    source = photo_crop(32, 24)
    assert distilled.upscale(source, _job()).tobytes() != engine.upscale(source, _job()).tobytes()
    distilled.close()


def test_compiled_transformer_is_warm_and_never_recompiles_a_bucket(
    tiny_model_dir: Path, engine: ChronoEditEngine, caplog
) -> None:
    """``compile=True``: regional torch.compile, the default bucket compiled at load, and
    requests of that bucket (any scale, guidance, seed, steps) reuse the one graph."""
    from torch._dynamo.utils import counters

    compiled = ChronoEditEngine(tiny_model_dir, max_pass_area=32 * 32, compile=True)
    assert compiled.metadata()["compiled"] is True and compiled.warmup_bucket == (32, 32)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    source = photo_crop(16, 16)
    results = [
        compiled.upscale(source, _job(32, 32, **fields))
        for fields in ({}, {"lora_scale": 0.3}, {"guidance_scale": 3.0}, {"seed": 9})
    ]
    assert counters["stats"]["unique_graphs"] == graphs  # no recompilation
    # and the graph reads the LoRA scale set in place: compiled matches eager at each scale
    for result, scale in ((results[0], 1.0), (results[1], 0.3)):
        eager = engine.upscale(source, _job(32, 32, lora_scale=scale))
        assert np.abs(_pixels(result) - _pixels(eager)).max() <= 2
    assert np.abs(_pixels(results[0]) - _pixels(results[1])).max() > 2
    compiled.upscale(photo_crop(24, 16), _job(48, 32))  # tiled into 32×32 passes: same bucket
    assert counters["stats"]["unique_graphs"] == graphs
    # a single pass of another shape compiles once, and says so (log and metric)
    late = REGISTRY.get_sample_value("upscaler_compiled_graphs_total", {"engine": "chronoedit"})
    with caplog.at_level(logging.INFO, logger="predictor.engines.chronoedit"):
        compiled.upscale(source, _job(32, 16))
        compiled.upscale(source, _job(32, 16, seed=3))  # now warm
    assert counters["stats"]["unique_graphs"] == graphs + 1
    warnings = [r.getMessage() for r in caplog.records if "while serving" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "compiled graphs=1 while serving pass_shapes=32x16 rank=0" in warnings[0]
    assert "warm_bucket=32x32" in warnings[0]
    after = REGISTRY.get_sample_value("upscaler_compiled_graphs_total", {"engine": "chronoedit"})
    assert after == (late or 0) + 1
    lines = [r.getMessage() for r in caplog.records if "chronoedit upscale" in r.getMessage()]
    assert [line.split("new_graphs=")[1].split()[0] for line in lines] == ["1", "0"]
    compiled.close()
