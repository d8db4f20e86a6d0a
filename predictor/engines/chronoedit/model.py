"""ChronoEdit for upscaling: finding local weights, the LoRAs, the prompt, compilation.

Everything here reads from disk only (``local_files_only``): in a cluster KServe's storage
initializer has already copied the weights to ``/mnt/models``; on a workstation they may sit in
the Hugging Face cache. A missing file is a start-up error, never a download.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from diffusers import ChronoEditPipeline

    from predictor.loras.formats import ParsedLora

log = logging.getLogger("predictor.engines.chronoedit")

#: NVIDIA's trigger text for the Upscaler LoRA (its model card and ChronoEdit's README)
UPSCALER_PROMPT = (
    "The user want to enhance image clarity and resolution while keeping the content identical. "
    "super-resolution, high detail, 4K clarity, same composition, natural texture."
)
#: NVIDIA's own inference script leaves the negative prompt empty
NEGATIVE_PROMPT = ""
BASE_REPO = "nvidia/ChronoEdit-14B-Diffusers"
UPSCALER_LORA_REPO = "nvidia/ChronoEdit-14B-Diffusers-Upscaler-Lora"
UPSCALER_LORA_FILE = "upsample_lora_diffusers.safetensors"
#: where the 8-step distillation LoRA sits inside the base repository
DISTILL_LORA_FILE = "lora/chronoedit_distill_lora.safetensors"
#: UniPC flow shift: NVIDIA's default, and what the distillation LoRA was trained for
FLOW_SHIFT = 5.0
DISTILL_FLOW_SHIFT = 2.0
#: WanAttnProcessor splits image from text tokens assuming exactly 512 text tokens
MAX_SEQUENCE_LENGTH = 512
#: 5 video frames = 2 latent frames (the VAE compresses time 4×); the last frame is the result
NUM_FRAMES = 5

DeviceName = Literal["auto", "cuda", "cpu"]
DtypeName = Literal["auto", "bfloat16", "float16", "float32"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_local_dir(spec: str | Path) -> Path:
    """A directory on disk, or a Hugging Face repo id (``owner/name`` or ``hf://owner/name``)
    resolved in the local cache only; never a download."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    repo_id = str(spec).removeprefix("hf://").strip("/")
    if _REPO_ID.match(repo_id) and not path.exists():
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo_id, local_files_only=True))
        except Exception as exc:  # LocalEntryNotFoundError and friends: not in the cache
            raise FileNotFoundError(
                f"{spec!r} is neither a directory nor a repository in the local Hugging Face "
                f"cache ({type(exc).__name__}); download it first or mount it"
            ) from None
    if path.exists():
        raise FileNotFoundError(f"{str(spec)!r} is a file, not a directory")
    raise FileNotFoundError(f"{str(spec)!r} does not exist")


def single_safetensors(directory: Path, preferred: str | None = None, what: str = "LoRA") -> Path:
    """The LoRA file inside ``directory``: ``preferred`` when present, else its one
    ``.safetensors`` file (top level first, then below); none or several is an error."""
    if preferred is not None and (directory / preferred).is_file():
        return directory / preferred
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.rglob("*.safetensors"))
    if len(files) == 1:
        return files[0]
    if not files:
        raise FileNotFoundError(f"no .safetensors file in {str(directory)!r} (the {what})")
    names = ", ".join(str(file.relative_to(directory)) for file in files[:6])
    raise FileNotFoundError(
        f"{str(directory)!r} holds {len(files)} .safetensors files ({names}); pass the {what} "
        "file itself"
    )


def find_lora_file(spec: str | Path, preferred: str | None = None, what: str = "LoRA") -> Path:
    """A LoRA given as a file, a directory holding it, or a repo id in the local HF cache."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    try:
        directory = resolve_local_dir(spec)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"the {what} {str(spec)!r} was not found: {exc}") from None
    return single_safetensors(directory, preferred, what)


def find_upscaler_lora(model_dir: Path, explicit: str | Path | None = None) -> Path:
    """The Upscaler LoRA file: ``explicit`` (a file, a directory holding it — by its name, else
    its only ``.safetensors`` — or a cached repo id), else next to the base weights, in a sibling
    ``ChronoEdit-14B-Diffusers-Upscaler-Lora`` (NVIDIA's README layout) or ``upscaler-lora``
    (the operator's mounts) directory, or in the Hugging Face cache."""
    if explicit is not None:
        return find_lora_file(explicit, UPSCALER_LORA_FILE, "upscaler LoRA")
    candidates = [
        model_dir / UPSCALER_LORA_FILE,
        model_dir.parent / UPSCALER_LORA_REPO.split("/")[1] / UPSCALER_LORA_FILE,
        model_dir.parent / "upscaler-lora" / UPSCALER_LORA_FILE,
    ]
    with contextlib.suppress(FileNotFoundError):
        candidates.append(resolve_local_dir(UPSCALER_LORA_REPO) / UPSCALER_LORA_FILE)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(candidate) for candidate in candidates)
    raise FileNotFoundError(
        f"the upscaler LoRA ({UPSCALER_LORA_FILE}) was not found; looked in {looked}. "
        "Pass --upscaler-lora PATH."
    )


def find_distill_lora(spec: str | Path) -> Path:
    """The distillation LoRA: a file, or a directory (``chronoedit_distill_lora.safetensors`` or
    its only ``.safetensors``, e.g. a mounted storage URI), or a cached repo id."""
    return find_lora_file(spec, Path(DISTILL_LORA_FILE).name, "distillation LoRA")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when there is a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available")
    if name not in ("cuda", "cpu"):
        raise ValueError(f"unknown device {name!r}; choose auto, cuda or cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a GPU (what the 14B model is served in), float32 on the CPU
    (CPU bf16 kernels are slow and the tiny test model is exact in fp32)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if name not in dtypes:
        raise ValueError(f"unknown dtype {name!r}; choose auto, {', '.join(dtypes)}")
    return dtypes[name]


@dataclass(frozen=True)
class PromptEmbeddings:
    """The fixed prompt's text embeddings: computed once, reused by every request."""

    positive: torch.Tensor
    negative: torch.Tensor


def fuse_distill_lora(pipe: ChronoEditPipeline, path: Path) -> None:
    """Merge NVIDIA's 8-step distillation LoRA into the transformer at weight 1, for good."""
    pipe.load_lora_weights(str(path), adapter_name="distill", local_files_only=True)
    pipe.fuse_lora(components=["transformer"], lora_scale=1.0, adapter_names=["distill"])
    pipe.unload_lora_weights()  # the merged weights stay; the adapter layers go


def read_upscaler_lora(path: Path) -> ParsedLora:
    """The Upscaler LoRA's factors, read with diffusers' own key conversion (the file is in the
    format ``load_lora_weights`` takes) into module → factors; the engine merges them into the
    weights (:class:`~predictor.loras.slots.AdapterStack`)."""
    from diffusers import ChronoEditPipeline

    from predictor.loras.formats import METADATA_KEY, parse_lora

    state, metadata = ChronoEditPipeline.lora_state_dict(
        str(path), return_lora_metadata=True, local_files_only=True
    )
    if metadata is not None and not isinstance(metadata, dict):
        metadata = None
    parsed = parse_lora(state, {METADATA_KEY: json.dumps(metadata)} if metadata else None)
    if not parsed.modules:
        raise ValueError(
            f"the upscaler LoRA {str(path)!r} holds no LoRA factors for the transformer"
        )
    return parsed


def quantize_blocks(transformer: torch.nn.Module) -> int:
    """``--precision fp8``: every linear layer of the transformer blocks in float8 e4m3 (the
    matmuls that are nearly all of a step); embedders, norms and the output head stay as they
    are. Returns how many layers were converted."""
    from .fp8 import quantize_linears

    return quantize_linears(transformer.blocks)


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (one engine per process)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compile_transformer(transformer: torch.nn.Module, backend: str = "inductor") -> None:
    """Regional ``torch.compile`` of the 40 identical blocks, static shapes.

    One compiled block serves every block (compiled once per shape, not 40 times);
    ``dynamic=False`` keeps each shape bucket's kernels specialised, and the recompile limit
    is raised so several buckets can coexist before dynamo would fall back to eager.
    """
    import torch._dynamo

    config = torch._dynamo.config
    if hasattr(config, "recompile_limit"):
        config.recompile_limit = max(config.recompile_limit, 64)
    else:  # older torch
        config.cache_size_limit = max(config.cache_size_limit, 64)
    transformer.compile_repeated_blocks(dynamic=False, backend=backend)
