"""The sr engine: ncnn parsing, weight conversion, tiling, exact sizes, execution paths
(precision, backend, threads) and fidelity."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from predictor.dev.quality import psnr, roundtrip_psnr
from predictor.engines import ENGINE_NAMES, SROptions, load_engine, options_for
from predictor.engines.base import EngineJob
from predictor.engines.cpu_paths import (
    CpuCapability,
    SRPath,
    cgroup_cpu_limit,
    choose_path,
    choose_threads,
    ncnn_available,
)
from predictor.engines.ncnn import NcnnFormatError, NcnnModel, load_model, parse_param
from predictor.engines.options import OptionError
from predictor.engines.sr import SREngine, default_models_dir, plan_scale
from predictor.engines.sr_nets import RRDBNet, UpConv7
from predictor.engines.tiling import count_tiles, plan_tiles, upscale_tiled
from predictor.flags import add_engine_options, engine_options

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def waifu2x() -> SREngine:
    return SREngine("waifu2x")


@pytest.fixture(scope="module")
def realesrgan() -> SREngine:
    return SREngine("realesrgan")


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)())


def _job(width: int, height: int) -> EngineJob:
    return EngineJob(width=width, height=height, seed=0)


# --- ncnn parsing -------------------------------------------------------------------------

TINY_PARAM = """7767517
3 3
Input            in     0 1 data 0=5 1=5 2=2
Convolution      conv   1 1 data c 0=1 1=3 5=1 6=18 9=2 -23310=1,2.500000e-01
Deconvolution    up     1 1 c out 0=2 1=2 3=2 5=1 6=8
"""


def _write_tiny(tmp_path: Path, truncate: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    conv_w = (np.arange(18, dtype=np.float32) - 9) / 8  # exact in fp16
    deconv_w = np.linspace(-1, 1, 8, dtype=np.float32)
    blob = struct.pack("<I", 0x01306B47) + conv_w.astype("<f2").tobytes()  # 36 B, aligned
    blob += np.array([0.5], "<f4").tobytes()  # conv bias: raw fp32, no tag
    blob += struct.pack("<I", 0) + deconv_w.astype("<f4").tobytes()  # fp32-tagged weight
    blob += np.array([0.25, -0.25], "<f4").tobytes()
    (tmp_path / "tiny.param").write_text(TINY_PARAM)
    (tmp_path / "tiny.bin").write_bytes(blob[: len(blob) - truncate] if truncate else blob)
    return tmp_path / "tiny.param", conv_w, deconv_w


def test_ncnn_parses_tiny_model(tmp_path: Path) -> None:
    param, conv_w, deconv_w = _write_tiny(tmp_path)
    model = load_model(param)
    assert [layer.type for layer in model.layers] == ["Input", "Convolution", "Deconvolution"]
    conv, deconv = model.layers[1], model.layers[2]
    assert conv.inputs == ["data"] and conv.outputs == ["c"]
    assert conv.params == {0: 1, 1: 3, 5: 1, 6: 18, 9: 2, 10: [0.25]}
    np.testing.assert_array_equal(conv.weights["weight"], conv_w)
    np.testing.assert_array_equal(conv.weights["bias"], [0.5])
    np.testing.assert_array_equal(deconv.weights["weight"], deconv_w)
    np.testing.assert_array_equal(deconv.weights["bias"], [0.25, -0.25])
    assert all(w.dtype == np.float32 for layer in model.layers for w in layer.weights.values())


def test_ncnn_odd_fp16_count_is_padded(tmp_path: Path) -> None:
    """9 fp16 values take 18 bytes, padded to 20 as ncnn's ModelBin does."""
    (tmp_path / "m.param").write_text(
        "7767517\n2 2\nInput i 0 1 a\nConvolution c 1 1 a b 0=1 1=3 6=9\n"
    )
    values = np.arange(9, dtype=np.float32)
    payload = struct.pack("<I", 0x01306B47) + values.astype("<f2").tobytes() + b"\0\0"
    (tmp_path / "m.bin").write_bytes(payload)
    model = load_model(tmp_path / "m.param")
    np.testing.assert_array_equal(model.layers[1].weights["weight"], values)
    assert "bias" not in model.layers[1].weights


def test_ncnn_truncated_bin_raises(tmp_path: Path) -> None:
    param, _, _ = _write_tiny(tmp_path, truncate=3)
    with pytest.raises(NcnnFormatError, match="truncated while reading up bias"):
        load_model(param)


def test_ncnn_trailing_bytes_and_unknown_tag_raise(tmp_path: Path) -> None:
    param, _, _ = _write_tiny(tmp_path)
    bin_path = param.with_suffix(".bin")
    good = bin_path.read_bytes()
    bin_path.write_bytes(good + b"\0" * 4)
    with pytest.raises(NcnnFormatError, match="4 trailing bytes"):
        load_model(param)
    bin_path.write_bytes(struct.pack("<I", 0x000D4B38) + good[4:])  # int8 tag
    with pytest.raises(NcnnFormatError, match="unsupported storage tag 0x000D4B38"):
        load_model(param)


def test_ncnn_param_errors() -> None:
    with pytest.raises(NcnnFormatError, match="magic"):
        parse_param("123\n1 1\nInput i 0 1 a\n")
    with pytest.raises(NcnnFormatError, match="2 layers"):
        parse_param("7767517\n2 1\nInput i 0 1 a\n")
    with pytest.raises(NcnnFormatError, match="count mismatch"):
        parse_param("7767517\n1 1\nInput i 0 1 a -23310=2,0.1\n")


def test_all_shipped_models_consume_their_bin() -> None:
    for kind in ("waifu2x", "realesrgan"):
        params = sorted(default_models_dir(kind).glob("*.param"))  # type: ignore[arg-type]
        assert params
        for param in params:
            load_model(param)  # raises on any byte left over or missing


# --- conversion: an independent numpy interpreter of the ncnn graph -----------------------


def _np_conv(x: np.ndarray, layer_w: np.ndarray, p: dict) -> np.ndarray:
    k, stride, pad = p[1], p.get(3, 1), p.get(4, 0)
    out_ch = p[0]
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    c, h, w = x.shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    cols = np.stack(
        [
            x[:, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride]
            for i in range(k)
            for j in range(k)
        ],
        axis=1,
    )  # (c, k*k, oh, ow), matching ncnn's (out, in, kh, kw) weight order
    return (layer_w.reshape(out_ch, c * k * k) @ cols.reshape(c * k * k, oh * ow)).reshape(
        out_ch, oh, ow
    )


def _np_deconv(x: np.ndarray, layer_w: np.ndarray, p: dict) -> np.ndarray:
    """ncnn semantics: input (i, j) scatters w[:, :, a, b] to output (i*s + a, j*s + b)."""
    k, stride, pad, out_ch = p[1], p.get(3, 1), p.get(4, 0), p[0]
    c, h, w = x.shape
    weight = layer_w.reshape(out_ch, c, k, k)
    full = np.zeros((out_ch, (h - 1) * stride + k, (w - 1) * stride + k))
    for a in range(k):
        for b in range(k):
            rows = slice(a, a + stride * (h - 1) + 1, stride)
            cols = slice(b, b + stride * (w - 1) + 1, stride)
            full[:, rows, cols] += np.tensordot(weight[:, :, a, b], x, axes=(1, 0))
    return full[:, pad : full.shape[1] - pad, pad : full.shape[2] - pad]


def run_ncnn_numpy(model: NcnnModel, x: np.ndarray) -> np.ndarray:
    """Execute the .param graph in float64 numpy on a (C, H, W) input."""
    blobs: dict[str, np.ndarray] = {}
    for layer in model.layers:
        ins = [blobs[name] for name in layer.inputs]
        p = layer.params
        if layer.type == "Input":
            outs = [x.astype(np.float64)]
        elif layer.type in ("Convolution", "Deconvolution"):
            weight = layer.weights["weight"].astype(np.float64)
            fn = _np_conv if layer.type == "Convolution" else _np_deconv
            y = fn(ins[0], weight, p)
            if "bias" in layer.weights:
                y = y + layer.weights["bias"][:, None, None]
            if p.get(9, 0) == 2:
                y = np.where(y > 0, y, y * p[10][0])
            else:
                assert p.get(9, 0) == 0
            outs = [y]
        elif layer.type == "Split":
            outs = [ins[0]] * len(layer.outputs)
        elif layer.type == "Concat":
            outs = [np.concatenate(ins, axis=0)]
        elif layer.type == "Eltwise":
            assert p[0] == 1  # sum
            outs = [sum(c * t for c, t in zip(p[1], ins, strict=True))]
        elif layer.type == "BinaryOp":
            assert p.get(0, 0) == 0  # add
            outs = [ins[0] + ins[1]]
        elif layer.type == "Interp":
            assert p[0] == 1  # nearest
            fy, fx = int(p[1]), int(p[2])
            outs = [ins[0].repeat(fy, axis=1).repeat(fx, axis=2)]
        else:
            raise AssertionError(f"reference has no {layer.type}")
        blobs.update(zip(layer.outputs, outs, strict=True))
    return blobs[model.layers[-1].outputs[0]]


def test_waifu2x_matches_numpy_reference() -> None:
    model = load_model(default_models_dir("waifu2x") / "WAIFU2X_PHOTO_UP2X.param")
    net = UpConv7.from_ncnn(model).eval()
    assert net.prepad == 7
    x = np.random.default_rng(0).random((3, 19, 22), dtype=np.float32)
    expected = run_ncnn_numpy(model, x)
    with torch.inference_mode():
        got = net.body(torch.from_numpy(x)[None])[0].numpy()
    assert got.shape == expected.shape == (3, 2 * (19 - 14), 2 * (22 - 14))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    with torch.inference_mode():  # forward pads 7 px: exactly 2x
        assert net(torch.from_numpy(x)[None]).shape == (1, 3, 38, 44)


def test_realesrgan_matches_numpy_reference() -> None:
    model = load_model(default_models_dir("realesrgan") / "REALESRGAN_X4PLUS_UP4X.param")
    net = RRDBNet.from_ncnn(model).eval()
    n_weights = sum(w.size for layer in model.layers for w in layer.weights.values())
    assert sum(p.numel() for p in net.parameters()) == n_weights  # every weight used once
    assert len(net.trunk) == 23 and net.slope == pytest.approx(0.2)
    x = np.random.default_rng(1).random((3, 5, 6), dtype=np.float32)
    expected = run_ncnn_numpy(model, x)
    with torch.inference_mode():
        got = net(torch.from_numpy(x)[None])[0].numpy()
    assert got.shape == expected.shape == (3, 20, 24)
    np.testing.assert_allclose(got, expected, atol=1e-4)


# --- tiling -------------------------------------------------------------------------------


def test_plan_tiles_partitions_the_image() -> None:
    tiles = plan_tiles(130, 70, 64)
    assert len(tiles) == count_tiles(130, 70, 64) == 3 * 2
    covered = np.zeros((130, 70), dtype=int)
    for tile in tiles:
        assert tile.height <= 64 and tile.width <= 64
        covered[tile.y0 : tile.y1, tile.x0 : tile.x1] += 1
    assert (covered == 1).all()
    with pytest.raises(ValueError):
        plan_tiles(0, 5, 8)


def test_tiled_equals_untiled(waifu2x: SREngine) -> None:
    crop = np.asarray(_photo("astronaut"))[40:141, 200:290]  # 101 x 90, odd on purpose
    x = torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float() / 255
    calls: list[tuple[int, int, str]] = []
    net = waifu2x.net
    with torch.inference_mode():
        whole = upscale_tiled(x, net.body, scale=2, tile_size=512, context=7, trim=7)
        tiled = upscale_tiled(
            x,
            net.body,
            scale=2,
            tile_size=40,
            context=7,
            trim=7,
            progress=lambda *a: calls.append(a),
        )
        direct = net(x)
    assert tiled.shape == whole.shape == (1, 3, 202, 180)
    assert (tiled - whole).abs().max() < 1e-4
    assert (whole - direct).abs().max() < 1e-4  # one tile == the plain network
    n = count_tiles(101, 90, 40)
    assert calls == [(i, n, "tile") for i in range(1, n + 1)]


def test_engine_progress_spans_all_passes() -> None:
    calls: list[tuple[int, int, str]] = []
    engine = SREngine("waifu2x", tile_size=24)
    engine.upscale(_photo("coffee").resize((30, 20)), _job(120, 80), lambda *a: calls.append(a))
    total = count_tiles(20, 30, 24) + count_tiles(40, 60, 24)  # x2 twice
    assert calls == [(i, total, "tile") for i in range(1, total + 1)]


# --- sizes and plans ----------------------------------------------------------------------


def _plan(*args: int) -> tuple[int, int, int]:
    plan = plan_scale(*args)
    return plan.scale, plan.passes, plan.magnification


def test_plan_scale() -> None:
    assert _plan(100, 50, 100, 50, 2) == (2, 1, 2)  # factor 1 still runs the net once
    assert plan_scale(100, 50, 150, 75, 2).scale == 2
    assert _plan(100, 50, 201, 50, 2) == (4, 2, 4)
    assert _plan(100, 50, 300, 150, 2) == (4, 2, 4)
    assert _plan(100, 50, 400, 200, 2) == (4, 2, 4)
    assert _plan(100, 50, 400, 201, 2) == (8, 3, 8)
    assert _plan(100, 50, 200, 100, 4) == (2, 1, 4)  # Real-ESRGAN: x4 once, then shrink
    assert _plan(3, 7, 12, 28, 4) == (4, 1, 4)
    assert _plan(1, 1, 50, 1, 4) == (64, 3, 64)
    with pytest.raises(ValueError):
        plan_scale(0, 5, 10, 10, 2)
    with pytest.raises(ValueError):
        plan_scale(5, 5, 10, 10, 3)


@pytest.mark.parametrize("factor", [1, 1.5, 2, 3, 4])
def test_exact_output_size(waifu2x: SREngine, factor: float) -> None:
    image = _photo("chelsea").resize((37, 23))
    width, height = round(37 * factor), round(23 * factor)
    out = waifu2x.upscale(image, _job(width, height))
    assert out.mode == "RGB" and out.size == (width, height)


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (7, 3)])
def test_tiny_inputs(waifu2x: SREngine, size: tuple[int, int]) -> None:
    image = Image.new("RGB", size, (200, 30, 90))
    for target in (size, (4 * size[0], 4 * size[1]), (size[0] * 3 + 1, size[1] * 2)):
        out = waifu2x.upscale(image, _job(*target))
        assert out.size == target and out.mode == "RGB"
    flat = np.asarray(waifu2x.upscale(image, _job(4 * size[0], 4 * size[1]))).astype(int)
    assert np.abs(flat - [200, 30, 90]).max() <= 6  # a flat colour stays (nearly) flat


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "F", "1"])
def test_non_rgb_inputs(waifu2x: SREngine, mode: str) -> None:
    rgb = _photo("coffee").resize((24, 16))
    if mode == "I;16":
        image = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
    elif mode == "F":
        image = Image.fromarray(np.asarray(rgb.convert("L"), np.float32) / 255)
    else:
        image = rgb.convert(mode)
    out = waifu2x.upscale(image, _job(48, 32))
    assert out.mode == "RGB" and out.size == (48, 32)
    if mode in ("I;16", "F"):  # rescaled into 8 bits, not clipped to white
        grey = rgb.convert("L").convert("RGB").resize((48, 32), Image.BICUBIC)
        assert psnr(grey, out) > 25


# --- registry and quality helpers ---------------------------------------------------------


def test_registry() -> None:
    assert "sr" in ENGINE_NAMES
    with pytest.raises(ValueError, match=r"supported engines: .*sr"):
        options_for("nope")
    engine = load_engine(options_for("sr", tile_size=64))
    assert isinstance(engine, SREngine) and engine.name == "sr" and engine.tile_size == 64
    assert engine.size_multiple == 1 and not engine.supports_loras and engine.prompt == ""
    with pytest.raises(OptionError, match=r"^model must be one of waifu2x, realesrgan"):
        options_for("sr", model="bogus")
    with pytest.raises(OptionError, match=r"^tile_size must be at least 1, got 0"):
        SROptions(tile_size=0)


def test_psnr() -> None:
    a = np.zeros((4, 5, 3), np.uint8)
    assert psnr(a, a) == math.inf
    b = a.copy()
    b[0, 0, 0] = 255  # MSE = 255² / 60
    assert psnr(a, b) == pytest.approx(10 * math.log10(60))
    assert psnr(a, np.pad(b, ((0, 1), (0, 2), (0, 0)))) == pytest.approx(10 * math.log10(60))


# --- fidelity -----------------------------------------------------------------------------


def test_waifu2x_beats_bicubic(waifu2x: SREngine) -> None:
    """The bar: +1.5 dB over bicubic on average for a x2 round trip (measured ~+2.2 dB)."""

    def upscale(image: Image.Image, width: int, height: int) -> Image.Image:
        return waifu2x.upscale(image, _job(width, height))

    results = {
        name: roundtrip_psnr(_photo(name), upscale) for name in ("astronaut", "chelsea", "coffee")
    }
    gains = [r.gain_db for r in results.values()]
    summary = {name: round(r.gain_db, 2) for name, r in results.items()}
    assert all(g > 0 for g in gains), summary
    assert sum(gains) / len(gains) >= 1.5, summary


def test_realesrgan_is_sensible(realesrgan: SREngine) -> None:
    original = _photo("astronaut").crop((150, 40, 278, 168))  # 128² face crop
    small = original.resize((64, 64), Image.BICUBIC)
    out = realesrgan.upscale(small, _job(128, 128))
    assert out.size == (128, 128) and out.mode == "RGB"
    mean_colour = np.asarray(original).reshape(-1, 3).mean(0)
    flat = np.broadcast_to(mean_colour, (128, 128, 3))
    score = psnr(original, out)
    assert score > 24.0  # measured ~27.5 dB (a GAN model trades PSNR for texture)
    assert score > psnr(original, flat) + 8.0


# --- execution paths: precision, backend, threads -----------------------------------------

AMX = CpuCapability(frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}), "SPR")
AVX512_BF16 = CpuCapability(frozenset({"avx512f", "avx512_bf16"}), "Zen 4")
PLAIN = CpuCapability(frozenset({"avx2", "fma"}), "old")


def test_cpu_capability_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx512f avx512_bf16 amx_tile "
        "amx_bf16\n\nprocessor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n"
    )
    cpu = CpuCapability.detect(cpuinfo)
    assert cpu.model_name == "Test CPU" and cpu.amx_bf16 and cpu.native_bf16
    assert cpu.describe() == "AMX bf16"
    assert AVX512_BF16.native_bf16 and not AVX512_BF16.amx_bf16
    assert not PLAIN.native_bf16 and PLAIN.describe() == "no native bf16"
    assert CpuCapability.detect(tmp_path / "missing") == CpuCapability(frozenset())


@pytest.mark.parametrize(
    ("cpu", "model", "has_ncnn", "expected"),
    [
        (AMX, "waifu2x", True, ("torch", "bf16")),
        (AMX, "realesrgan", True, ("torch", "bf16")),
        (AVX512_BF16, "waifu2x", True, ("ncnn", "fp32")),
        (AVX512_BF16, "waifu2x", False, ("torch", "bf16")),
        (AVX512_BF16, "realesrgan", True, ("torch", "bf16")),
        (PLAIN, "waifu2x", True, ("ncnn", "fp32")),
        (PLAIN, "waifu2x", False, ("torch", "fp32")),
        (PLAIN, "realesrgan", True, ("torch", "fp32")),
    ],
)
def test_auto_path_follows_the_documented_table(
    cpu: CpuCapability, model: str, has_ncnn: bool, expected: tuple[str, str]
) -> None:
    path = choose_path(model, cpu=cpu, has_ncnn=has_ncnn)
    assert (path.backend, path.precision) == expected
    assert path.channels_last == (path.backend == "torch")
    assert path.reason.startswith("auto") and cpu.describe() in path.reason
    if cpu is not AMX and model == "waifu2x" and not has_ncnn:
        assert "ncnn not installed" in path.reason


def test_path_overrides_and_validation() -> None:
    forced = choose_path("waifu2x", "bf16", cpu=PLAIN, has_ncnn=True)
    assert (forced.backend, forced.precision) == ("torch", "bf16") and "emulated" in forced.reason
    assert choose_path("waifu2x", "fp32", cpu=AMX, has_ncnn=True).backend == "ncnn"
    assert choose_path("realesrgan", "fp32", cpu=AMX, has_ncnn=True).label == (
        "torch fp32 channels-last"
    )
    assert choose_path("waifu2x", backend="torch", cpu=AVX512_BF16, has_ncnn=True).label == (
        "torch bf16 channels-last"
    )
    assert choose_path("realesrgan", backend="ncnn", cpu=AMX, has_ncnn=True).label == "ncnn fp32"
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32"):
        choose_path("waifu2x", "fp16", cpu=AMX, has_ncnn=True)
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_path("waifu2x", backend="onnx", cpu=AMX, has_ncnn=True)
    with pytest.raises(ValueError, match="runs float32 only"):
        choose_path("waifu2x", "bf16", "ncnn", cpu=AMX, has_ncnn=True)
    with pytest.raises(ValueError, match="needs the ncnn package"):
        choose_path("waifu2x", backend="ncnn", cpu=AMX, has_ncnn=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        SREngine("waifu2x", precision="half")


def test_precision_flags_are_validated_and_reach_the_engine() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_engine_options(parser)
    args = parser.parse_args(["--sr-precision", "fp32", "--sr-backend", "torch"])
    assert engine_options(args) == SROptions(precision="fp32", backend="torch")
    assert engine_options(parser.parse_args([])) == SROptions()
    with pytest.raises(OptionError, match="precision must be one of auto, bf16, fp32"):
        SROptions(precision="half")  # type: ignore[arg-type]
    for bad in (["--sr-precision", "fp16"], ["--sr-backend", "onnx"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_engine_reports_its_path() -> None:
    engine = SREngine("waifu2x", tile_size=32, cpu=AMX)
    meta = engine.metadata()
    assert meta["sr_path"] == "torch bf16 channels-last" and meta["sr_backend"] == "torch"
    assert meta["cpu_bf16"] == "AMX bf16" and "AMX" in str(meta["sr_path_reason"])
    assert meta["threads"] == torch.get_num_threads() and meta["tile_size"] == 32
    plain = SREngine("realesrgan", cpu=PLAIN)
    assert plain.metadata()["sr_path"] == "torch fp32 channels-last"


def test_cgroup_cpu_limit(tmp_path: Path) -> None:
    cpu_max, quota, period = tmp_path / "cpu.max", tmp_path / "quota", tmp_path / "period"
    missing = tmp_path / "none"
    cpu_max.write_text("250000 100000\n")
    assert cgroup_cpu_limit(cpu_max, missing, missing) == 2.5
    cpu_max.write_text("max 100000\n")
    assert cgroup_cpu_limit(cpu_max, missing, missing) is None
    quota.write_text("50000\n")
    period.write_text("100000\n")
    assert cgroup_cpu_limit(missing, quota, period) == 0.5  # cgroup v1
    quota.write_text("-1\n")
    assert cgroup_cpu_limit(missing, quota, period) is None
    assert cgroup_cpu_limit(missing, missing, missing) is None


def test_threads_honour_the_quota() -> None:
    assert choose_threads(None, 64, 64, 2.0)[0] == 2  # a 2-CPU pod on a 64-core node
    assert choose_threads(None, 64, 64, 2.5)[0] == 3
    assert choose_threads(None, 64, 64, 0.25)[0] == 1
    assert choose_threads(None, 8, 4, None)[0] == 4  # affinity mask
    threads, why = choose_threads(None, 2, 2, 16.0)
    assert threads == 2 and "quota 16" in why
    assert choose_threads(6, 2, 2, 1.0) == (6, "asked for (--threads)")
    with pytest.raises(ValueError):
        choose_threads(0, 2, 2, None)


#: tolerances against the float32 NCHW result, in 8-bit levels: (largest, mean). Measured on
#: these crops (Xeon with AMX): fp32 channels-last and ncnn 1 / 0.0001 (rounding ties); bf16
#: waifu2x 2 / 0.42, Real-ESRGAN 2 / 0.16 (its first and last convolutions stay float32).
PATH_TOLERANCE = {
    "torch fp32 channels-last": (1, 0.001),
    "ncnn fp32": (1, 0.001),
    "torch bf16 channels-last": (4, 0.6),
}
PATHS = [
    SRPath("torch", "fp32", True, "test"),
    SRPath("torch", "bf16", True, "test"),
    pytest.param(
        SRPath("ncnn", "fp32", False, "test"),
        marks=pytest.mark.skipif(not ncnn_available(), reason="ncnn is not installed"),
    ),
]


def _path_difference(engine: SREngine, image: Image.Image, job: EngineJob, path: SRPath):
    engine.use_path(SRPath("torch", "fp32", False, "reference"))
    reference = np.asarray(engine.upscale(image, job)).astype(int)
    engine.use_path(path)
    diff = np.abs(np.asarray(engine.upscale(image, job)).astype(int) - reference)
    return diff.max(), diff.mean()


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.label)
def test_waifu2x_paths_match_fp32_on_a_photo(path: SRPath) -> None:
    engine = SREngine("waifu2x", tile_size=96, cpu=PLAIN)
    image = _photo("astronaut").crop((120, 20, 248, 148))  # face and helmet, 128²
    largest, mean = _path_difference(engine, image, _job(256, 256), path)
    max_allowed, mean_allowed = PATH_TOLERANCE[path.label]
    assert largest <= max_allowed and mean <= mean_allowed, (largest, mean)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.label)
def test_realesrgan_paths_match_fp32_on_a_photo(path: SRPath) -> None:
    engine = SREngine("realesrgan", cpu=PLAIN)
    image = _photo("coffee").crop((200, 100, 264, 164))  # 64², one tile
    largest, mean = _path_difference(engine, image, _job(256, 256), path)
    max_allowed, mean_allowed = PATH_TOLERANCE[path.label]
    assert largest <= max_allowed and mean <= mean_allowed, (largest, mean)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.label)
def test_tiled_equals_untiled_on_every_path(path: SRPath) -> None:
    """waifu2x's context covers its receptive field, so tiles match one whole-image tile."""
    engine = SREngine("waifu2x", cpu=PLAIN)
    engine.use_path(path)
    image = _photo("chelsea").crop((150, 60, 251, 150))  # 101 x 90
    job = _job(202, 180)
    engine.tile_size = 512
    whole = np.asarray(engine.upscale(image, job)).astype(int)
    engine.tile_size = 40
    tiled = np.asarray(engine.upscale(image, job)).astype(int)
    diff = np.abs(tiled - whole)  # float results that differ in the last bits may round apart
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


def test_bench_counts_the_networks_flops() -> None:
    """The sr bench's GFLOP/s rest on this count: waifu2x's six valid 3×3 convs, then the deconv."""
    from predictor.dev.bench_sr import conv_flops

    net = UpConv7.from_ncnn(load_model(default_models_dir("waifu2x") / "WAIFU2X_PHOTO_UP2X.param"))
    side, expected = 30, 0
    for module in net.body:
        if isinstance(module, torch.nn.Conv2d):
            side -= 2
            expected += 2 * side * side * module.in_channels * module.out_channels * 9
        elif isinstance(module, torch.nn.ConvTranspose2d):
            expected += 2 * side * side * module.in_channels * module.out_channels * 16
    assert side == 30 - 2 * 6 and conv_flops(net.body, (1, 3, 30, 30)) == expected


def test_dense_blocks_concatenate_in_the_autocast_dtype_with_identical_results(
    realesrgan: SREngine,
) -> None:
    """The bf16 path's dense blocks stack their features in bf16 (the speed-up), which must give
    exactly what stacking in float32 and letting each conv cast gives."""
    import torch.nn.functional as F

    block = realesrgan.net.trunk[0].blocks[0]
    x = torch.rand(1, 64, 24, 24).contiguous(memory_format=torch.channels_last)

    def float32_stack(x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in block.convs[:-1]:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), block.slope))
        return block.convs[-1](torch.cat(feats, 1)) * block.res_scale + x

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(block(x), float32_stack(x))
        assert block(x).dtype == torch.float32  # the residual keeps x's precision
