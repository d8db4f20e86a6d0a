"""Fixtures for the chronoedit engine: the tiny random model, built once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def startup_cache_dir(tmp_path_factory) -> Iterator[Path]:
    """The engines' start-up caches (compiled kernels, prompt embeddings) go to a temporary
    directory, never to the home directory (``CHRONO_UPSCALER_CACHE_DIR``)."""
    directory = tmp_path_factory.mktemp("startup-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHRONO_UPSCALER_CACHE_DIR", str(directory))
        yield directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny ChronoEdit model (with a never-flagging safety checker), built by the real CLI."""
    from predictor.cli import main

    directory = tmp_path_factory.mktemp("chronoedit") / "tiny"
    assert main(["make-tiny-model", str(directory), "--with-safety-checker"]) == 0
    return directory


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A redis-server of the module's own, without persistence (the fault suite's part)."""
    from tests.faults.parts import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"), persistent=False)
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def flagging_checker_dir(tmp_path_factory) -> Path:
    """A tiny safety checker whose thresholds flag every image (the real checker code path)."""
    from predictor.dev.tiny_model import build_safety_checker

    return build_safety_checker(tmp_path_factory.mktemp("checker") / "flag-all", True)


# --- request LoRAs (tests/predictor/test_loras*.py) --------------------------------------------

#: what the test LoRAs adapt: every slot target (attention incl. add_k/add_v, FFN)
ALL_SLOT_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj", "ffn.net.0.proj", "ffn.net.2",
]  # fmt: skip


def write_peft_lora(
    transformer,
    path: Path,
    seed: int,
    rank: int = 4,
    alpha: float | None = None,
    targets: list[str] | None = None,
    std: float = 0.4,
    bare_keys: bool = False,
) -> dict:
    """A random LoRA made with peft on ``transformer`` (both factors non-zero), saved in
    diffusers' format by the pipeline's own ``save_lora_weights`` (``alpha`` in its metadata
    header), or as bare peft keys (``bare_keys``). Returns the state dict as peft names it."""
    import json

    import torch
    from diffusers import ChronoEditPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = LoraConfig(
        r=rank, lora_alpha=alpha or rank, target_modules=targets or ALL_SLOT_TARGETS
    )
    adapter = f"test-{path.stem}"
    transformer.add_adapter(config, adapter_name=adapter)
    generator = torch.Generator().manual_seed(seed)
    state = {
        key: torch.randn(value.shape, generator=generator) * std
        for key, value in get_peft_model_state_dict(transformer, adapter_name=adapter).items()
    }
    transformer.delete_adapters(adapter)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = config.to_dict() if alpha is not None else None
    if bare_keys:
        from predictor.loras.formats import METADATA_KEY

        header = {"format": "pt"}
        if metadata is not None:
            header[METADATA_KEY] = json.dumps(
                {f"transformer.{k}": list(v) if isinstance(v, set) else v
                 for k, v in metadata.items()}, default=str
            )  # fmt: skip
        save_file(state, str(path), metadata=header)
    else:
        ChronoEditPipeline.save_lora_weights(
            path.parent,
            transformer_lora_layers=state,
            weight_name=path.name,
            transformer_lora_adapter_metadata=metadata,
        )
    return state


def convert_lora_file(source: Path, destination: Path, fmt: str) -> Path:
    """The same weights in another key format (our own writer), alpha kept."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from predictor.loras.formats import parse_lora, to_format

    with safe_open(str(source), framework="pt") as handle:
        parsed = parse_lora({k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata())  # noqa: SIM118
    scales = {module.scale * module.rank for module in parsed.modules.values()}
    (alpha,) = scales  # one alpha for the whole file
    modules = {name: (m.down, m.up) for name, m in parsed.modules.items()}
    tensors, metadata = to_format(modules, fmt, alpha=alpha)
    save_file(tensors, str(destination), metadata=metadata)
    return destination


@pytest.fixture(scope="session")
def lora_files(tmp_path_factory, tiny_model_dir: Path) -> dict[str, Path]:
    """LoRAs for the tiny model in a --lora-dir, bad ones too, a catalog, and a file outside.

    ``a``: rank 4, alpha 8 (scale 2), every slot target, diffusers format; ``a_wan``,
    ``a_kohya``, ``a_peft``: the same weights as Wan/DiffSynth, kohya/musubi and bare peft keys;
    ``b``: rank 8, no alpha, attention only; ``c``: rank 2, FFN only.
    """
    import json

    import torch
    from diffusers import ChronoEditTransformer3DModel
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("loras")
    lora_dir, outside = root / "loras", root / "outside"
    outside.mkdir()
    transformer = ChronoEditTransformer3DModel.from_pretrained(tiny_model_dir / "transformer")
    files = {"dir": lora_dir, "outside_dir": outside, "root": root}
    files["a"] = lora_dir / "a.safetensors"
    write_peft_lora(transformer, files["a"], seed=101, rank=4, alpha=8)
    files["a_peft"] = lora_dir / "a_peft.safetensors"
    write_peft_lora(transformer, files["a_peft"], seed=101, rank=4, alpha=8, bare_keys=True)
    for fmt in ("wan", "kohya"):
        files[f"a_{fmt}"] = convert_lora_file(files["a"], lora_dir / f"a_{fmt}.safetensors", fmt)
    files["b"] = lora_dir / "b.safetensors"
    write_peft_lora(
        transformer, files["b"], seed=202, rank=8, targets=["to_q", "to_k", "to_v", "to_out.0"]
    )
    files["c"] = lora_dir / "nested" / "c.safetensors"
    write_peft_lora(transformer, files["c"], seed=303, rank=2, targets=["ffn.net.0.proj"])
    files["rank16"] = lora_dir / "rank16.safetensors"
    write_peft_lora(transformer, files["rank16"], seed=404, rank=16)
    files["outside_targets"] = lora_dir / "outside_targets.safetensors"
    write_peft_lora(
        transformer, files["outside_targets"], seed=505, targets=["to_q", "proj_out", "time_proj"]
    )
    files["keyless"] = lora_dir / "keyless.safetensors"
    save_file(
        {"model.weight": torch.ones(4, 4), "something.else": torch.zeros(2)}, files["keyless"]
    )
    files["pickle"] = lora_dir / "weights.bin"
    torch.save(
        {"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, 24)}, files["pickle"]
    )
    files["disguised"] = lora_dir / "disguised.safetensors"
    torch.save({"x": torch.ones(2)}, files["disguised"])
    files["secret"] = outside / "secret.safetensors"
    files["secret"].write_bytes(files["a"].read_bytes())
    files["link"] = lora_dir / "link.safetensors"
    files["link"].symlink_to(files["secret"])
    files["one_file_dir"] = lora_dir / "one"
    files["one_file_dir"].mkdir()
    (files["one_file_dir"] / "only.safetensors").write_bytes(files["b"].read_bytes())
    files["catalog"] = root / "catalog.json"
    files["catalog"].write_text(
        json.dumps(
            {"paint": "a.safetensors", "brush": str(files["secret"]), "ffn": "nested/c.safetensors"}
        )
    )
    return files
