"""``make bench-gpu``: the FLOP floor it compares against, its GPU-less exit, its harness."""

from __future__ import annotations

import pytest
import torch

from predictor.dev.bench_gpu import WAN_I2V_14B, StepShape, floor_seconds, main, step_flops


@pytest.mark.parametrize(
    ("width", "height", "tokens", "floor_s"),
    [(832, 480, 3120, 0.11), (1280, 720, 7200, 0.28), (1664, 960, 12480, 0.55)],
)
def test_flop_floor_matches_design(width: int, height: int, tokens: int, floor_s: float) -> None:
    """The cost floor in docs/chronoedit.md: bf16 at ~800 TFLOP/s, one pass per step."""
    shape = StepShape(width, height)
    assert shape.latent == (2, height // 8, width // 8)  # 5 frames → 2 latent frames
    assert shape.tokens(WAN_I2V_14B) == tokens
    assert floor_seconds(step_flops(shape)) == pytest.approx(floor_s, abs=0.005)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this runs the real benchmark")
def test_without_a_gpu_it_says_so_and_exits_zero(capsys) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "needs a CUDA GPU" in out and "| 832×480 | 3120 | 87.8 | 0.110 |" in out


def test_harness_times_a_tiny_transformer_on_cpu(capsys) -> None:
    args = ["--tiny", "--device", "cpu", "--resolutions", "64x48", "--repeats", "1"]
    assert main([*args, "--no-compile"]) == 0
    out = capsys.readouterr().out
    assert "| 64×48 |" in out and "eager s/step" in out
