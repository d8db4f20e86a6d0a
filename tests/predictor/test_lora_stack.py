"""The merged upscaler + one stacked low-rank pair equals the peft path it replaced.

The reference is the tiny transformer with every LoRA loaded as a peft adapter by diffusers'
own loader and weighted with ``set_adapters`` — the engine's path before the stack. Ours is
:class:`~predictor.loras.slots.AdapterStack`: the upscaler merged into the weights, its
correction and the request LoRAs stacked into one pair per layer. Both run the same inputs, for
``lora_scale`` 0, 1 and 1.7 and 0–3 extra LoRAs of ranks 4, 8 and 2, eager and compiled.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from predictor.engines.chronoedit.model import (
    UPSCALER_LORA_FILE,
    compile_transformer,
    read_upscaler_lora,
)
from predictor.engines.options import LoraSettings
from predictor.loras.slots import AdaptedLinear, AdapterStack, rank_buckets
from predictor.loras.sources import LoraLoader

torch.set_num_threads(2)
SCALES = (0.0, 1.0, 1.7)
#: 0–3 extra LoRAs: a (rank 4, every target), b (rank 8, attention), c (rank 2, one FFN layer)
EXTRAS = (
    (),
    (("a", 1.0),),
    (("b", 0.5), ("c", 2.0)),
    (("c", 0.7), ("a", 1.0), ("b", 1.5)),
)
FILES = {"a": "a.safetensors", "b": "b.safetensors", "c": "nested/c.safetensors"}


def _inputs(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)

    def noise(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=generator).to(dtype)

    return {
        "hidden_states": noise(1, 36, 2, 4, 4),
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": noise(1, 512, 16),
        "encoder_hidden_states_image": noise(1, 17, 16),
    }


def _run(transformer, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**_inputs(dtype), return_dict=False)[0].float()


def _transformer(model_dir: Path, dtype: torch.dtype = torch.float32):
    from diffusers import ChronoEditTransformer3DModel

    return ChronoEditTransformer3DModel.from_pretrained(model_dir / "transformer").to(dtype)


def _peft_reference(model_dir: Path, lora_files, dtype: torch.dtype = torch.float32):
    """The old path: each LoRA a peft adapter, weighted per case with ``set_adapters``."""
    from diffusers import ChronoEditPipeline

    transformer = _transformer(model_dir, dtype)
    paths = {"upscaler": model_dir / UPSCALER_LORA_FILE}
    paths.update({name: lora_files["dir"] / file for name, file in FILES.items()})
    for name, path in paths.items():
        state, metadata = ChronoEditPipeline.lora_state_dict(str(path), return_lora_metadata=True)
        transformer.load_lora_adapter(
            state, prefix="transformer", adapter_name=name, metadata=metadata
        )
    transformer.to(dtype)

    def output(scale: float, extras) -> torch.Tensor:
        weights = {"upscaler": scale, **dict.fromkeys(FILES, 0.0), **dict(extras)}
        transformer.set_adapters(list(weights), list(weights.values()))
        return _run(transformer, dtype)

    return output


def _ours(model_dir: Path, lora_files, dtype: torch.dtype = torch.float32):
    transformer = _transformer(model_dir, dtype)
    upscaler = read_upscaler_lora(model_dir / UPSCALER_LORA_FILE)
    stack = AdapterStack.install(transformer, upscaler, slots=3, max_rank=8)
    loader = LoraLoader(LoraSettings(lora_dir=str(lora_files["dir"]), max_rank=8), stack.layout)
    prepared = {name: loader.load(file, 0) for name, file in FILES.items()}

    def output(scale: float, extras) -> torch.Tensor:
        stack.apply(scale, [(prepared[name], weight) for name, weight in extras])
        return _run(transformer, dtype)

    return transformer, stack, output


@pytest.fixture(scope="module")
def reference(tiny_model_dir, lora_files):
    output = _peft_reference(tiny_model_dir, lora_files)
    return {(scale, extras): output(scale, extras) for scale in SCALES for extras in EXTRAS}


def test_rank_buckets_double_up_to_the_capacity() -> None:
    assert rank_buckets(224, 64) == (64, 128, 224)  # the upscaler's 32 + 3 slots of 64
    assert rank_buckets(32, 64) == (32,)  # no slots: the upscaler's correction alone
    assert rank_buckets(0, 64) == ()


def test_stack_equals_peft_eager(tiny_model_dir, lora_files, reference) -> None:
    _, stack, ours = _ours(tiny_model_dir, lora_files)
    assert stack.variants == (0, 8, 16, 28)  # upscaler rank 4 + 3 × 8
    assert all(isinstance(layer, AdaptedLinear) for layer in stack.layers.values())
    distinct = set()
    for (scale, extras), expected in reference.items():
        got = ours(scale, extras)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        used = (4 if scale != 1.0 else 0) + sum({"a": 4, "b": 8, "c": 2}[n] for n, _ in extras)
        assert stack.rank == stack.bucket(used)
        distinct.add(round(float(expected.abs().sum()), 3))
    assert len(distinct) == len(reference)  # every case is a different model
    # the default request runs with no adapter math at all
    ours(1.0, ())
    assert stack.rank == 0 and {layer.rank for layer in stack.layers.values()} == {0}


def test_stack_equals_peft_in_bf16(tiny_model_dir, lora_files) -> None:
    """In bf16 both paths round differently (the merge, the scale folded into ``up``); the
    difference stays within what bf16 itself does to the fp32 result."""
    output = _peft_reference(tiny_model_dir, lora_files, torch.bfloat16)
    _, _, ours = _ours(tiny_model_dir, lora_files, torch.bfloat16)
    exact = _peft_reference(tiny_model_dir, lora_files)
    for scale, extras in ((1.0, ()), (1.7, EXTRAS[3]), (0.0, EXTRAS[1])):
        expected, got = output(scale, extras), ours(scale, extras)
        bf16_error = (expected - exact(scale, extras)).abs().max()
        assert (got - expected).abs().max() <= 2 * bf16_error + 1e-3


def test_compiled_stack_equals_peft_with_no_recompiles(tiny_model_dir, lora_files, reference):
    """Regional compile; warm-up runs each graph variant (rank 0 and every bucket) once; then
    every case — any scale, 0–3 LoRAs, in any order — adds no graph and recompiles nothing."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    transformer, stack, ours = _ours(tiny_model_dir, lora_files)
    compile_transformer(transformer)
    for rank in stack.variants:
        with stack.variant(rank):
            _run(transformer)
    graphs = counters["stats"]["unique_graphs"]
    frames = counters["frames"]["total"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for (scale, extras), expected in reversed(reference.items()):
            torch.testing.assert_close(ours(scale, extras), expected, rtol=1e-4, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == graphs
    assert counters["frames"]["total"] == frames
    torch._dynamo.reset()


def test_an_upscaler_that_does_not_fit_is_a_start_up_error(tiny_model_dir) -> None:
    from predictor.loras.formats import LoraModule, ParsedLora

    factors = LoraModule(torch.ones(4, 24), torch.ones(24, 4))
    beyond = ParsedLora("diffusers", {"blocks.9.attn1.to_q": factors})  # the model has 2 blocks
    with pytest.raises(ValueError, match=r"upscaler LoRA cannot be applied.*blocks\.9"):
        AdapterStack.install(_transformer(tiny_model_dir), beyond, slots=3, max_rank=8)
