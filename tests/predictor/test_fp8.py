"""``--precision fp8`` on the CPU: the row-wise quantisation, the emulated scaled matmul, the
layer swap, the engine on the tiny model, and the start-up error where there is no fp8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from predictor.engines.base import EngineJob
from predictor.engines.chronoedit import fp8
from predictor.engines.chronoedit.engine import ChronoEditEngine
from predictor.flags import engine_options
from tests.conftest import photo_crop

torch.set_num_threads(2)


def test_rows_quantize_to_e4m3_with_one_scale_each() -> None:
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(64, 96, generator=generator) * torch.logspace(-3, 3, 64)[:, None]
    matrix[5] = 0.0
    quantized, scale = fp8.quantize_rows(matrix)
    assert quantized.dtype == torch.float8_e4m3fn and scale.shape == (64, 1)
    assert scale[5].item() == 1.0 and not quantized[5].float().any()  # a zero row stays zero
    # each row's largest magnitude lands on e4m3's largest value
    peaks = quantized.float().abs().amax(dim=1)
    assert torch.equal(peaks[torch.arange(64) != 5], torch.full((63,), fp8.FP8_MAX))
    # 3 mantissa bits: relative error ≤ 2⁻⁴, plus the subnormal step (2⁻⁹ of a scale unit)
    error = (fp8.dequantize_rows(quantized, scale) - matrix).abs()
    assert bool((error <= matrix.abs() * 2**-4 + scale * 2**-9).all())


def test_emulated_scaled_matmul_is_what_torch_computes() -> None:
    generator = torch.Generator().manual_seed(1)
    a, a_scale = fp8.quantize_rows(torch.randn(48, 64, generator=generator))
    b, b_scale = fp8.quantize_rows(torch.randn(32, 64, generator=generator))
    bias = torch.randn(32, generator=generator)
    ours = fp8.scaled_matmul(a, a_scale, b, b_scale, torch.float32, bias)
    exact = (a.float() * a_scale) @ (b.float() * b_scale).t() + bias
    torch.testing.assert_close(ours, exact)
    try:  # torch's own CPU kernel, where this build has one
        theirs = torch._scaled_mm(
            a, b.t(), scale_a=a_scale, scale_b=b_scale.t(), out_dtype=torch.float32
        )
    except (RuntimeError, NotImplementedError):
        pytest.skip("no CPU _scaled_mm in this torch build")
    torch.testing.assert_close(ours - bias, theirs, rtol=1e-3, atol=1e-3)


def test_fp8_linear_replaces_every_linear_and_stays_close() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Sequential(nn.Linear(128, 32)))
    x = torch.randn(3, 10, 64)
    with torch.no_grad():
        expected = model(x)
        assert fp8.quantize_linears(model) == 2
        got = model(x)
    assert isinstance(model[0], fp8.Fp8Linear) and isinstance(model[2][0], fp8.Fp8Linear)
    assert model[0].weight.dtype == torch.float8_e4m3fn and got.shape == expected.shape
    relative = (got - expected).norm() / expected.norm()
    assert 0 < relative < 0.05


def test_without_fp8_the_start_up_error_names_the_flag(tiny_model_dir: Path, monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"--precision fp8.*CUDA GPU"):
        ChronoEditEngine(tiny_model_dir, device="cpu", precision="fp8")
    # a CUDA GPU older than Ada/Hopper: named, with its capability
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(ValueError, match=r"--precision fp8.*A100 is 8\.0.*--precision bf16"):
        fp8.check_support(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with pytest.raises(ValueError, match=r"--precision fp8.*--dtype is float16"):
        fp8.check_support(torch.device("cuda"), torch.float16)


def test_flags_default_to_compile_on_cuda_and_bf16() -> None:
    import argparse

    from predictor.flags import add_engine_options

    parser = argparse.ArgumentParser()
    add_engine_options(parser)

    def options(*argv: str):
        return engine_options(parser.parse_args(["--engine", "chronoedit", *argv]))

    assert (options().compile, options().precision) == (None, "bf16")  # None: on when CUDA
    assert options("--no-compile").compile is False and options("--compile").compile is True
    assert options("--precision", "fp8").precision == "fp8"
    with pytest.raises(SystemExit):
        options("--precision", "int4")


def test_fp8_engine_on_the_tiny_model(tiny_model_dir: Path, monkeypatch) -> None:
    """The fp8 path itself (the scaled matmul emulated on the CPU), eager and compiled: every
    block linear is float8, outputs stay near bf16's, and the compiled graph matches eager."""
    monkeypatch.setattr(fp8, "check_support", lambda device, dtype: None)  # the CPU emulates it
    job = EngineJob(width=32, height=32, seed=3, num_inference_steps=2)
    source = photo_crop(16, 16)
    reference = ChronoEditEngine(tiny_model_dir, max_pass_area=32 * 32)
    expected = np.asarray(reference.upscale(source, job), dtype=np.int16)
    reference.close()
    eager = ChronoEditEngine(tiny_model_dir, max_pass_area=32 * 32, precision="fp8")
    blocks = eager.pipe.transformer.blocks
    linears = [module for module in blocks.modules() if isinstance(module, nn.Linear)]
    quantized = [module for module in blocks.modules() if isinstance(module, fp8.Fp8Linear)]
    assert not linears and len(quantized) == 2 * 12  # 2 blocks × 12 linear layers
    assert eager.metadata()["precision"] == "fp8"
    got = np.asarray(eager.upscale(source, job), dtype=np.int16)
    assert 0 < np.abs(got - expected).mean() < 8  # fp8 drifts, a little
    compiled = ChronoEditEngine(
        tiny_model_dir, max_pass_area=32 * 32, precision="fp8", compile=True
    )
    assert np.abs(np.asarray(compiled.upscale(source, job), dtype=np.int16) - got).max() <= 2
    eager.close()
    compiled.close()
    torch._dynamo.reset()


def test_the_upscale_command_stays_eager_unless_asked(tmp_path: Path, monkeypatch) -> None:
    """``serve`` compiles on CUDA by default; a one-image ``upscale`` would spend more on
    compiling than on the image, so it stays eager unless ``--compile`` is given."""
    import predictor.engines
    from predictor.cli import main

    seen = []

    def load_engine(options):
        seen.append(options.compile)
        raise SystemExit(0)

    monkeypatch.setattr(predictor.engines, "load_engine", load_engine)
    source = tmp_path / "in.png"
    photo_crop(16, 16).save(source)
    for extra in ([], ["--compile"]):
        with pytest.raises(SystemExit):
            main(["upscale", str(source), "-o", str(tmp_path / "out.png"),
                  "--engine", "chronoedit", *extra])  # fmt: skip
    assert seen == [False, True]
