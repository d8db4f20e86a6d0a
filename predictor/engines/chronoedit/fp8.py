"""``--precision fp8``: linear layers in float8 e4m3 with per-row scales.

Each weight row (one output channel) is scaled so its largest magnitude maps to e4m3's largest
finite value (448) and stored in float8; each activation row (one token) is quantized the same
way on the fly. The product of the two float8 matrices is rescaled by both scale vectors —
``torch._scaled_mm`` with row-wise scales (scale_a M×1, scale_b 1×N), the matmul H100/H200-class
GPUs run at about twice the bf16 rate. Off CUDA the same arithmetic is emulated in float32
(:func:`scaled_matmul`), so the quantisation and the layer swap are tested on any machine.
"""

from __future__ import annotations

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
#: what the flag is called, for errors a deployment must be able to act on
FLAG = "--precision fp8 (spec.model.precision: fp8)"
#: row-wise scaled float8 matmuls need Ada (8.9) or Hopper (9.0) and newer
MIN_CAPABILITY = (8, 9)


def quantize_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``matrix`` (… × K) as float8 e4m3 and a float32 scale per row (… × 1), with
    ``quantized.float() * scale ≈ matrix``; an all-zero row gets scale 1."""
    amax = matrix.abs().amax(dim=-1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    quantized = (matrix.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return quantized, scale


def dequantize_rows(quantized: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return quantized.float() * scale


def scaled_matmul(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b_t: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(a · a_scale) @ (b_t · b_scale)ᵀ`` for float8 ``a`` (M × K, scale M × 1) and ``b_t``
    (N × K, scale N × 1): ``torch._scaled_mm`` on CUDA, the same sum in float32 elsewhere."""
    if a.is_cuda:
        return torch._scaled_mm(
            a,
            b_t.t(),  # column-major K × N, as the kernel wants it
            scale_a=a_scale,
            scale_b=b_scale.reshape(1, -1),  # 1 × N, contiguous
            bias=bias,
            out_dtype=out_dtype,
            use_fast_accum=True,
        )
    out = dequantize_rows(a, a_scale) @ dequantize_rows(b_t, b_scale).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


class Fp8Linear(nn.Module):
    """A linear layer whose weight is float8 e4m3 with a scale per output row; activations are
    quantized per token on the fly; the output (and the bias) keep the layer's dtype."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.out_dtype = linear.weight.dtype
        with torch.no_grad():
            weight, scale = quantize_rows(linear.weight)
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        quantized, scale = quantize_rows(rows)
        out = scaled_matmul(
            quantized, scale, self.weight, self.weight_scale, self.out_dtype, self.bias
        )
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, float8_e4m3"


def quantize_linears(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by an :class:`Fp8Linear`; returns how many.

    The bf16 weight is released as each layer is replaced, so peak memory stays near the
    float8 model's plus one layer.
    """
    names = [name for name, child in module.named_modules() if isinstance(child, nn.Linear)]
    for name in names:
        linear = module.get_submodule(name)
        module.set_submodule(name, Fp8Linear(linear))
        del linear
    return len(names)


def check_support(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> None:
    """Refuse fp8 where the device cannot run row-scaled float8 matmuls, naming the flag.

    On CUDA the capability is checked and one small row-scaled matmul is tried, so a GPU or
    torch build without the kernel fails here, at start-up, and not on the first request. The
    rest of the model must be bf16: the row-scaled kernel writes bf16 (and takes a bf16 bias).
    """
    if device.type != "cuda":
        raise ValueError(
            f"{FLAG} needs a CUDA GPU with float8 support (compute capability "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}+: L4/L40S, H100, H200, B200); this engine "
            f"runs on {device.type}. Use --precision bf16."
        )
    capability = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    if capability < MIN_CAPABILITY:
        raise ValueError(
            f"{FLAG} needs a GPU with float8 support (compute capability "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}+); {name} is "
            f"{capability[0]}.{capability[1]}. Use --precision bf16."
        )
    if dtype != torch.bfloat16:
        raise ValueError(
            f"{FLAG} runs beside a bfloat16 model; --dtype is {str(dtype).removeprefix('torch.')}. "
            "Use --dtype bfloat16 (or auto)."
        )
    try:
        probe = torch.ones(32, 32, device=device, dtype=torch.bfloat16)
        quantized, scale = quantize_rows(probe)
        scaled_matmul(quantized, scale, quantized, scale, torch.bfloat16)
        torch.cuda.synchronize(device)
    except RuntimeError as exc:
        raise ValueError(
            f"{FLAG}: this torch build cannot run row-scaled float8 matmuls on {name} "
            f"({str(exc).splitlines()[0]}). Use --precision bf16."
        ) from None
