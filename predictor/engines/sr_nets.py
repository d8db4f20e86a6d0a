"""PyTorch versions of the shipped ncnn super-resolution graphs.

Each network is built from the layer parameters in the .param file (channels, kernels, slopes,
residual scales) and receives the .bin arrays in layer order; any mismatch between the graph we
expect and the graph in the file raises instead of silently producing garbage. Both networks
take RGB in [0, 1] with no mean/normalisation layer (none exists in the .param files).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .ncnn import NcnnLayer, NcnnModel


class NcnnGraphError(ValueError):
    """The ncnn graph does not have the structure the PyTorch module expects."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise NcnnGraphError(message)


def _geometry(layer: NcnnLayer) -> tuple[int, int, int, int]:
    """Return (kernel, stride, pad, dilation), insisting on square kernels and even padding."""
    kw, stride_w, pad_l, dil_w = (int(layer.get(k, d)) for k, d in ((1, 0), (3, 1), (4, 0), (2, 1)))
    kh = int(layer.get(11, kw))
    stride_h, dil_h = int(layer.get(13, stride_w)), int(layer.get(12, dil_w))
    pad_t = int(layer.get(14, pad_l))
    pad_r, pad_b = int(layer.get(15, pad_l)), int(layer.get(16, pad_t))
    _check(kh == kw and stride_h == stride_w and dil_h == dil_w, f"{layer.name}: not square")
    _check(pad_l == pad_t == pad_r == pad_b >= 0, f"{layer.name}: asymmetric/auto padding")
    return kw, stride_w, pad_l, dil_w


def leaky_slope(layer: NcnnLayer) -> float | None:
    """The fused activation as a LeakyReLU slope (0.0 = ReLU), or None when there is none."""
    act = int(layer.get(9, 0))
    if act == 0:
        return None
    if act == 1:
        return 0.0
    if act == 2:
        params = layer.get(10, [0.0])
        return float(params[0]) if isinstance(params, list) else float(params)
    raise NcnnGraphError(f"{layer.name}: fused activation type {act} not supported")


def conv_from_ncnn(layer: NcnnLayer) -> nn.Conv2d:
    """An ``nn.Conv2d`` with the layer's geometry and weights (ncnn: out, in, kh, kw)."""
    _check(layer.type == "Convolution", f"{layer.name}: expected Convolution, got {layer.type}")
    k, stride, pad, dil = _geometry(layer)
    out_ch = int(layer.get(0, 0))
    weight = layer.weights["weight"]
    in_ch, rem = divmod(weight.size, out_ch * k * k)
    _check(rem == 0 and in_ch > 0, f"{layer.name}: weight size {weight.size} does not factor")
    bias = "bias" in layer.weights
    conv = nn.Conv2d(in_ch, out_ch, k, stride=stride, padding=pad, dilation=dil, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight.reshape(out_ch, in_ch, k, k)))
        if bias:
            conv.bias.copy_(torch.from_numpy(layer.weights["bias"]))
    return conv


def deconv_from_ncnn(layer: NcnnLayer) -> nn.ConvTranspose2d:
    """An ``nn.ConvTranspose2d``; ncnn stores (out, in, kh, kw), torch wants (in, out, kh, kw).

    Both frameworks scatter ``x[i] * w[k]`` to output ``i * stride + k - pad`` (no kernel flip),
    and both trim ``pad`` from each side of the full output, so only the axes swap.
    """
    _check(layer.type == "Deconvolution", f"{layer.name}: expected Deconvolution")
    k, stride, pad, dil = _geometry(layer)
    extras = [layer.get(key, 0) for key in (18, 19, 20, 21)]  # output_pad_*, output_w/h
    _check(not any(extras), f"{layer.name}: output padding / fixed output size not supported")
    out_ch = int(layer.get(0, 0))
    weight = layer.weights["weight"]
    in_ch, rem = divmod(weight.size, out_ch * k * k)
    _check(rem == 0 and in_ch > 0, f"{layer.name}: weight size {weight.size} does not factor")
    bias = "bias" in layer.weights
    deconv = nn.ConvTranspose2d(
        in_ch, out_ch, k, stride=stride, padding=pad, dilation=dil, bias=bias
    )
    with torch.no_grad():
        w = weight.reshape(out_ch, in_ch, k, k).transpose(1, 0, 2, 3)
        deconv.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
        if bias:
            deconv.bias.copy_(torch.from_numpy(layer.weights["bias"]))
    return deconv


class UpConv7(nn.Module):
    """waifu2x "upconv_7": six unpadded 3×3 convs + LeakyReLU, then a stride-2 deconvolution.

    :attr:`body` is exactly the ncnn graph: it eats :attr:`prepad` pixels on every side, so
    ``body(pad(x, prepad))`` is ``2×`` the size of ``x`` (:meth:`forward` does that padding with
    edge replication, as waifu2x does at image borders).
    """

    scale = 2

    def __init__(self, body: nn.Sequential, prepad: int) -> None:
        super().__init__()
        self.body = body
        self.prepad = prepad

    @classmethod
    def from_ncnn(cls, model: NcnnModel) -> UpConv7:
        """Build from a parsed waifu2x upconv_7 model, validating the chain and its geometry."""
        layers = [layer for layer in model.layers if layer.type != "Input"]
        _check(
            len(layers) >= 2 and layers[-1].type == "Deconvolution",
            "upconv_7: expected convolutions followed by one Deconvolution",
        )
        modules: list[nn.Module] = []
        shrink = 0  # input pixels eaten per side by the unpadded convs
        prev_out, prev_ch = None, 3
        for layer in layers:
            _check(
                len(layer.inputs) == 1 and (prev_out is None or layer.inputs[0] == prev_out),
                f"{layer.name}: upconv_7 must be a plain chain",
            )
            prev_out = layer.outputs[0]
            if layer is layers[-1]:
                deconv = deconv_from_ncnn(layer)
                _check(deconv.in_channels == prev_ch, f"{layer.name}: channel mismatch")
                modules.append(deconv)
            else:
                conv = conv_from_ncnn(layer)
                _check(
                    conv.in_channels == prev_ch and conv.stride == (1, 1),
                    f"{layer.name}: channel/stride mismatch",
                )
                shrink += (conv.kernel_size[0] - 1) // 2 * conv.dilation[0] - conv.padding[0]
                modules.append(conv)
                prev_ch = conv.out_channels
            slope = leaky_slope(layer)
            if slope is not None:
                modules.append(nn.LeakyReLU(slope, inplace=True))
        # deconv: out = s * n + (k - s - 2 p); solve s * (W + 2P - 2 shrink) + (k - s - 2p) = s W
        s, k, p = deconv.stride[0], deconv.kernel_size[0], deconv.padding[0]
        twice_prepad, rem = divmod(2 * s * shrink - (k - s - 2 * p), s)
        _check(
            rem == 0 and twice_prepad % 2 == 0 and s == cls.scale,
            "upconv_7: geometry does not give an exact 2x output",
        )
        return cls(nn.Sequential(*modules), twice_prepad // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, 3, 2H, 2W)."""
        return self.body(F.pad(x, [self.prepad] * 4, mode="replicate"))


def float32_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``layer`` in float32 even inside a bf16 autocast region.

    The layers that read pixels and write pixels are cheap (3 channels on one side) but see
    bf16's 8-bit mantissa directly: a bf16 output near 1.0 is only good to half an 8-bit level.
    """
    if not torch.is_autocast_enabled("cpu"):  # the sr engine autocasts on the CPU only
        return layer(x)
    with torch.autocast("cpu", enabled=False):
        return layer(x.float())


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3×3 convs; the last one's output is scaled and added back."""

    def __init__(self, convs: list[nn.Conv2d], slope: float, res_scale: float) -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.slope = slope
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Under CPU autocast the dense features are concatenated in the autocast dtype: each
        conv would cast its input to it anyway (so the result is bit-identical), but a float32
        ``x`` among bf16 features made every ``torch.cat`` promote the whole stack to float32
        and the conv cast it back, which cost Real-ESRGAN's bf16 path 40% of its time. The
        residual sum keeps ``x``'s own precision."""
        feats = [x.to(torch.get_autocast_dtype("cpu")) if torch.is_autocast_enabled("cpu") else x]
        for conv in self.convs[:-1]:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), self.slope, inplace=True))
        return self.convs[-1](torch.cat(feats, 1)) * self.res_scale + x


class RRDB(nn.Module):
    """Three residual dense blocks inside one more scaled residual connection."""

    def __init__(self, blocks: list[ResidualDenseBlock], res_scale: float) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x) * self.res_scale + x


class RRDBNet(nn.Module):
    """ESRGAN generator (Real-ESRGAN x4plus): RRDB trunk, two nearest ×2 upsamplings."""

    scale = 4
    #: Real-ESRGAN's own pre-padding (the convs are zero-padded; replicated context avoids a dark
    #: rim at image borders and gives tiles enough real neighbourhood)
    prepad = 10

    def __init__(
        self,
        conv_first: nn.Conv2d,
        trunk: list[RRDB],
        tail: list[nn.Conv2d],
        slope: float,
    ) -> None:
        super().__init__()
        self.conv_first = conv_first
        self.trunk = nn.Sequential(*trunk)
        self.conv_body, self.conv_up1, self.conv_up2, self.conv_hr, self.conv_last = tail
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, 3, 4H, 4W), not clamped.

        Under bf16 autocast the first and last convolutions stay float32 (:func:`float32_layer`):
        on photos that halves the largest difference to float32 for a few percent of the time.
        """
        feat = float32_layer(self.conv_first, x)
        feat = feat + self.conv_body(self.trunk(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.interpolate(feat, scale_factor=2.0, mode="nearest")
            feat = F.leaky_relu(conv(feat), self.slope, inplace=True)
        return float32_layer(
            self.conv_last, F.leaky_relu(self.conv_hr(feat), self.slope, inplace=True)
        )

    @classmethod
    def from_ncnn(cls, model: NcnnModel) -> RRDBNet:
        """Build from Real-ESRGAN's ncnn graph, checking every layer kind against the design."""
        convs = model.of_type("Convolution")
        n_blocks, rem = divmod(len(convs) - 6, 15)
        _check(rem == 0 and n_blocks > 0, f"RRDBNet: {len(convs)} convolutions do not fit")
        slopes = {leaky_slope(c) for c in convs} - {None}
        _check(len(slopes) == 1, f"RRDBNet: expected one LeakyReLU slope, got {slopes}")
        slope = float(slopes.pop())

        eltwise = model.of_type("Eltwise")
        _check(len(eltwise) == 4 * n_blocks, "RRDBNet: unexpected number of residual sums")
        coeffs = {tuple(layer.get(1, [])) for layer in eltwise}  # type: ignore[arg-type]
        _check(
            len(coeffs) == 1 and all(int(e.get(0, 0)) == 1 for e in eltwise),
            f"RRDBNet: residual sums are not all 'a * s + b': {coeffs}",
        )
        res_scale, skip_scale = coeffs.pop()
        _check(skip_scale == 1.0, "RRDBNet: skip connection must have weight 1")
        interps = model.of_type("Interp")
        _check(
            len(interps) == 2
            and all(
                int(i.get(0, 0)) == 1 and float(i.get(1, 0)) == 2.0 and float(i.get(2, 0)) == 2.0
                for i in interps
            ),
            "RRDBNet: expected two nearest-neighbour x2 Interp layers",
        )
        adds = model.of_type("BinaryOp")
        _check(len(adds) == 1 and int(adds[0].get(0, 0)) == 0, "RRDBNet: expected one trunk add")
        _check(len(model.of_type("Concat")) == 12 * n_blocks, "RRDBNet: dense concat mismatch")
        known = {"Input", "Convolution", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"}
        others = {layer.type for layer in model.layers} - known
        _check(not others, f"RRDBNet: unexpected layer types {sorted(others)}")

        modules = iter(convs)

        def take(activated: bool, in_ch: int | None = None) -> nn.Conv2d:
            layer = next(modules)
            _check(
                (leaky_slope(layer) is not None) == activated,
                f"{layer.name}: activation does not match the RRDBNet design",
            )
            conv = conv_from_ncnn(layer)
            _check(
                conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1),
                f"{layer.name}: expected a padded 3x3 convolution",
            )
            _check(in_ch is None or conv.in_channels == in_ch, f"{layer.name}: channel mismatch")
            return conv

        conv_first = take(False, 3)
        nf = conv_first.out_channels
        trunk = []
        for _ in range(n_blocks):
            blocks = []
            for _ in range(3):
                rdb_convs = [take(True, nf)]
                gc = rdb_convs[0].out_channels
                rdb_convs += [take(True, nf + i * gc) for i in range(1, 4)]
                last = take(False, nf + 4 * gc)
                _check(last.out_channels == nf, f"RRDBNet: dense block must output {nf}")
                blocks.append(ResidualDenseBlock([*rdb_convs, last], slope, res_scale))
            trunk.append(RRDB(blocks, res_scale))
        tail = [take(False, nf), take(True, nf), take(True, nf), take(True, nf), take(False, nf)]
        _check(tail[-1].out_channels == 3, "RRDBNet: last conv must output RGB")
        _check(next(modules, None) is None, "RRDBNet: unused convolutions")
        return cls(conv_first, trunk, tail, slope)
