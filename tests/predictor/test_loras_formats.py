"""LoRA key formats, the catalog, the flags and the LoRA file lookups (no model needed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from predictor.cli import _lora_item, build_parser, settings_from_args
from predictor.engines.chronoedit.model import (
    UPSCALER_LORA_FILE,
    find_distill_lora,
    find_upscaler_lora,
)
from predictor.engines.options import LoraSettings
from predictor.loras.formats import METADATA_KEY, parse_lora, to_format, wan_module
from predictor.loras.prepare import SLOT_TARGETS
from predictor.loras.sources import load_catalog

GENERATOR = torch.Generator().manual_seed(3)


def _factors(rank: int = 4, inner: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(rank, inner, generator=GENERATOR), torch.randn(
        inner, rank, generator=GENERATOR
    )


MODULES = {
    "blocks.0.attn1.to_q": _factors(),
    "blocks.0.attn2.add_k_proj": _factors(),
    "blocks.1.attn2.to_out.0": _factors(),
    "blocks.1.ffn.net.2": _factors(),
}


@pytest.mark.parametrize("fmt", ["diffusers", "wan", "kohya"])
def test_each_format_reads_back_to_the_same_layers(fmt: str) -> None:
    tensors, metadata = to_format(MODULES, fmt, alpha=2.0)
    parsed = parse_lora(tensors, metadata)
    assert parsed.format == fmt and not parsed.unplaced and not parsed.unsupported
    assert sorted(parsed.modules) == sorted(MODULES)
    for name, (down, up) in MODULES.items():
        module = parsed.modules[name]
        assert torch.equal(module.down, down) and torch.equal(module.up, up)
        assert module.scale == 0.5  # alpha 2 / rank 4


def test_key_spellings_are_recognised() -> None:
    down, up = _factors()
    cases = {
        # peft with its adapter name, PeftModel's prefix, old diffusers' lora.down/up
        "peft": {"blocks.0.attn1.to_q.lora_A.default.weight": down,
                 "blocks.0.attn1.to_q.lora_B.default.weight": up},
        "peft model": {"base_model.model.blocks.0.attn1.to_q.lora_A.weight": down,
                       "base_model.model.blocks.0.attn1.to_q.lora_B.weight": up},
        "lora.down": {"transformer.blocks.0.attn1.to_q.lora.down.weight": down,
                      "transformer.blocks.0.attn1.to_q.lora.up.weight": up},
        # DiffSynth without a prefix, ComfyUI's model.diffusion_model.
        "diffsynth": {"blocks.0.self_attn.q.lora_A.default.weight": down,
                      "blocks.0.self_attn.q.lora_B.default.weight": up},
        "comfy": {"model.diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
                  "model.diffusion_model.blocks.0.self_attn.q.lora_up.weight": up},
        # kohya with diffusers' names
        "kohya diffusers names": {"lora_transformer_blocks_0_attn1_to_q.lora_down.weight": down,
                                  "lora_transformer_blocks_0_attn1_to_q.lora_up.weight": up},
    }  # fmt: skip
    for case, tensors in cases.items():
        parsed = parse_lora(tensors)
        assert list(parsed.modules) == ["blocks.0.attn1.to_q"], case
        assert parsed.modules["blocks.0.attn1.to_q"].scale == 1.0, case


def test_alpha_from_metadata_patterns_and_rslora() -> None:
    tensors, _ = to_format(MODULES, "diffusers")
    config = {
        "transformer.lora_alpha": 8,
        "transformer.alpha_pattern": {"ffn.net.2": 2},
        "transformer.use_rslora": False,
    }
    parsed = parse_lora(tensors, {METADATA_KEY: json.dumps(config)})
    assert parsed.modules["blocks.0.attn1.to_q"].scale == 2.0
    assert parsed.modules["blocks.1.ffn.net.2"].scale == 0.5
    rslora = parse_lora(
        tensors,
        {METADATA_KEY: json.dumps({"transformer.lora_alpha": 8, "transformer.use_rslora": True})},
    )
    assert rslora.modules["blocks.0.attn1.to_q"].scale == 8 / math.sqrt(4)
    assert parse_lora(tensors, {METADATA_KEY: "not json"}).modules["blocks.0.attn1.to_q"].scale == 1


def test_what_cannot_be_applied_is_reported_not_dropped() -> None:
    down, up = _factors()
    base = "diffusion_model.blocks.0.self_attn.q"
    parsed = parse_lora(
        {
            f"{base}.lora_down.weight": down,
            f"{base}.lora_up.weight": up,
            "diffusion_model.blocks.0.norm3.diff_b": torch.zeros(24),  # zero: skipped
            "diffusion_model.blocks.0.cross_attn.o.diff_b": torch.ones(24),  # non-zero bias
            "diffusion_model.blocks.0.self_attn.k.dora_scale": torch.ones(1, 24),
            "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": down,
            "diffusion_model.head.head.lora_down.weight": down,  # outside the slots
            "diffusion_model.head.head.lora_up.weight": up,
            "diffusion_model.blocks.1.self_attn.v.lora_down.weight": down,  # no up
            "random.tensor": down,
        }
    )
    assert list(parsed.modules) == ["blocks.0.attn1.to_q", "head.head"]
    assert parsed.skipped_zero == 1
    assert len(parsed.unsupported) == 3  # the bias, DoRA, the text encoder
    assert parsed.incomplete == ["blocks.1.attn1.to_v"]
    assert "random.tensor" in parsed.unplaced
    assert parse_lora({}).modules == {}


def test_wan_names_round_trip_and_slot_targets_cover_them() -> None:
    import re

    for name in ("blocks.3.attn1.to_out.0", "blocks.0.attn2.add_v_proj", "blocks.9.ffn.net.0.proj"):
        assert re.fullmatch(SLOT_TARGETS, name)
        assert parse_lora(to_format({name: _factors()}, "wan")[0]).modules.keys() == {name}
    assert wan_module("blocks.2.attn2.add_k_proj") == "blocks.2.cross_attn.k_img"
    for outside in ("proj_out", "condition_embedder.time_proj", "blocks.0.norm2"):
        assert not re.fullmatch(SLOT_TARGETS, outside)


def test_catalog_json_yaml_and_errors(tmp_path: Path) -> None:
    plain = tmp_path / "catalog.json"
    plain.write_text(json.dumps({"paint": "hf://acme/paint/p.safetensors", "web": "https://x/y"}))
    assert load_catalog(plain) == {"paint": "hf://acme/paint/p.safetensors", "web": "https://x/y"}
    yaml_file = tmp_path / "catalog.yaml"
    yaml_file.write_text("paint:\n  uri: a.safetensors\nbrush: b.safetensors\n")
    assert load_catalog(yaml_file) == {"paint": "a.safetensors", "brush": "b.safetensors"}
    listed = tmp_path / "list.yml"
    listed.write_text("- {name: paint, uri: a.safetensors}\n")
    assert load_catalog(listed) == {"paint": "a.safetensors"}
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    assert load_catalog(empty) == {}
    for text, message in (("[1, 2]", "need a 'name'"), ('{"x": 3}', "no URI"), ("{", "not valid")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_catalog(bad)
    with pytest.raises(FileNotFoundError, match="LoRA catalog"):
        load_catalog(tmp_path / "none.json")


def test_flags_reach_the_engine_options() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--engine",
            "chronoedit",
            "--lora-dir",
            "/mnt/loras",
            "--lora-catalog",
            "/etc/chrono-upscaler/loras/catalog.json",
            "--lora-cache-dir",
            "/cache",
            "--lora-cache-mb",
            "512",
            "--max-lora-mb",
            "100",
            "--lora-max-rank",
            "128",
            "--lora-slots",
            "2",
            "--allow-lora-urls",
            "--allow-private-urls",
            "--lora-fetch-timeout",
            "60",
        ]
    )
    assert settings_from_args(args).engine_options.loras == LoraSettings(
        lora_dir="/mnt/loras",
        catalog="/etc/chrono-upscaler/loras/catalog.json",
        cache_dir="/cache",
        cache_bytes=512 * 1024 * 1024,
        max_bytes=100 * 1024 * 1024,
        max_rank=128,
        slots=2,
        allow_urls=True,
        allow_private_urls=True,
        fetch_timeout_s=60.0,
    )
    plain = build_parser().parse_args(["serve", "--engine", "chronoedit"])
    assert settings_from_args(plain).engine_options.loras == LoraSettings()  # the defaults
    upscale = build_parser().parse_args(
        [
            "upscale",
            "in.png",
            "-o",
            "out.png",
            "--lora",
            "paint:0.5",
            "--lora",
            "https://h/x.safetensors",
        ]
    )
    assert [_lora_item(item) for item in upscale.lora] == [
        {"path": "paint", "scale": 0.5},
        {"path": "https://h/x.safetensors"},
    ]


def test_bad_lora_flags_are_refused() -> None:
    for flags, expected in (
        (["--lora-max-rank", "0"], "--lora-max-rank: loras.max_rank must be at least 1"),
        (["--lora-slots", "4"], "invalid choice"),
        (["--lora-cache-mb", "-1"], "--lora-cache-mb: loras.cache_bytes must be at least 0"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "predictor", "serve", "--engine", "chronoedit", *flags],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0 and expected in result.stderr, result.stderr


def test_distill_and_upscaler_loras_may_be_directories(tmp_path: Path) -> None:
    """The operator mounts --model-dir /mnt/models/model and each LoRA storage URI as a sibling
    directory (/mnt/models/upscaler-lora, /mnt/models/distill-lora)."""
    model = tmp_path / "model"
    (model / "lora").mkdir(parents=True)
    distill_dir, upscaler_dir = tmp_path / "distill-lora", tmp_path / "upscaler-lora"
    distill_dir.mkdir()
    upscaler_dir.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.safetensors file"):
        find_distill_lora(distill_dir)
    (distill_dir / "my_distill.safetensors").write_bytes(b"x")
    assert find_distill_lora(distill_dir) == distill_dir / "my_distill.safetensors"
    assert (
        find_distill_lora(distill_dir / "my_distill.safetensors")
        == distill_dir / "my_distill.safetensors"
    )
    (distill_dir / "other.safetensors").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"2 \.safetensors files"):
        find_distill_lora(distill_dir)
    (model / "lora" / "chronoedit_distill_lora.safetensors").write_bytes(b"x")  # a base repo
    assert find_distill_lora(model) == model / "lora" / "chronoedit_distill_lora.safetensors"
    with pytest.raises(FileNotFoundError, match="distillation LoRA"):
        find_distill_lora(tmp_path / "nowhere")
    # the upscaler: by its own name, or the one file of a mounted directory
    (upscaler_dir / "renamed.safetensors").write_bytes(b"x")
    assert find_upscaler_lora(model, upscaler_dir) == upscaler_dir / "renamed.safetensors"
    (upscaler_dir / UPSCALER_LORA_FILE).write_bytes(b"x")
    assert find_upscaler_lora(model, upscaler_dir) == upscaler_dir / UPSCALER_LORA_FILE
    assert find_upscaler_lora(model) == upscaler_dir / UPSCALER_LORA_FILE  # the sibling mount
