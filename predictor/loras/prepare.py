"""From a safetensors file to a LoRA ready to copy into a slot: read (safetensors only, never
pickle, size-limited), parsed into one key format, checked against what the slots can hold,
converted to the slots' dtype, and kept in a host-memory LRU (``--lora-cache-mb``) so a repeat
pays only the copy.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from predictor.engines.options import MiB
from predictor.errors import (
    lora_load_error,
)
from predictor.loras.formats import ParsedLora

if TYPE_CHECKING:
    pass


#: what the slots adapt, in every block: self-attention q/k/v/o, cross-attention q/k/v/o and the
#: image-token projections add_k_proj/add_v_proj (Wan's k_img/v_img), and both FFN linears — the
#: union of what Wan 2.1 LoRAs from diffusers, DiffSynth and musubi-tuner train
SLOT_TARGETS = (
    r"blocks\.\d+\.(attn1\.(to_q|to_k|to_v|to_out\.0)"
    r"|attn2\.(to_q|to_k|to_v|to_out\.0|add_k_proj|add_v_proj)"
    r"|ffn\.net\.(0\.proj|2))"
)
SLOT_TARGETS_TEXT = (
    "attention q/k/v/o (self and cross), the cross-attention image projections "
    "add_k_proj/add_v_proj, and both FFN layers of every block"
)


@dataclass(frozen=True)
class SlotLayout:
    """What a LoRA must fit: each slot layer's (in_features, out_features), and the slots' rank."""

    shapes: dict[str, tuple[int, int]]
    rank: int
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_CHUNK = 1024 * 1024
MAX_HEADER_BYTES = 100 * MiB
EXPECTED_KEYS = (
    "diffusers/peft (transformer.blocks.N.attn1.to_q.lora_A.weight), Wan/DiffSynth "
    "(diffusion_model.blocks.N.self_attn.q.lora_A.weight) or kohya/musubi "
    "(lora_unet_blocks_N_self_attn_q.lora_down.weight)"
)


@dataclass(frozen=True)
class PreparedLora:
    """A checked LoRA, ready to copy: module → (down, up·scale) in the slots' dtype."""

    sha256: str
    label: str
    format: str
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rank: int
    nbytes: int


class HostCache:
    """An LRU of :class:`PreparedLora` by content hash, bounded in bytes (thread-safe)."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.used = 0
        self._items: OrderedDict[str, PreparedLora] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str) -> PreparedLora | None:
        with self._lock:
            item = self._items.get(sha256)
            if item is not None:
                self._items.move_to_end(sha256)
            return item

    def put(self, item: PreparedLora) -> None:
        if item.nbytes > self.capacity:
            return  # bigger than the whole cache: used once, never kept
        with self._lock:
            if item.sha256 in self._items:
                return
            self._items[item.sha256] = item
            self.used += item.nbytes
            while self.used > self.capacity:
                _, evicted = self._items.popitem(last=False)
                self.used -= evicted.nbytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._items


def some_names(names: Iterable[str], limit: int = 4) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_and_convert(
    parsed: ParsedLora, layout: SlotLayout, label: str, loc: Sequence[str | int]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Refuse what the slots cannot hold (with the reason), else module → (down, up·scale)."""
    if parsed.unsupported:
        raise lora_load_error(
            f"LoRA {label!r} holds tensors this server cannot apply: "
            f"{some_names(parsed.unsupported, 2)}.",
            loc,
        )
    inside = {module for module in parsed.modules if module in layout.shapes}
    outside = (set(parsed.modules) - inside) | set(parsed.unplaced)
    if not inside:
        example = next(iter(sorted(parsed.unplaced.values()) or sorted(parsed.modules)), None)
        found = f" (e.g. {example!r})" if example else " (it holds no tensors)"
        raise lora_load_error(
            f"No key of LoRA {label!r} matches a layer of the ChronoEdit transformer{found}; "
            f"expected {EXPECTED_KEYS} keys.",
            loc,
        )
    missing = {module for module in outside if re.fullmatch(SLOT_TARGETS, module)}
    if missing:  # slot-shaped names beyond this transformer's blocks
        raise lora_load_error(
            f"LoRA {label!r} names layers this transformer does not have: {some_names(missing)} "
            "(a LoRA for a model with more blocks?).",
            loc,
        )
    if outside:
        raise lora_load_error(
            f"LoRA {label!r} targets layers outside the request-LoRA slots: {some_names(outside)}. "
            f"The slots cover {SLOT_TARGETS_TEXT}.",
            loc,
        )
    if parsed.incomplete:
        raise lora_load_error(
            f"LoRA {label!r} has layers without both factors: {some_names(parsed.incomplete)}.", loc
        )
    converted: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module in sorted(inside):
        item = parsed.modules[module]
        in_features, out_features = layout.shapes[module]
        if item.rank > layout.rank:
            raise lora_load_error(
                f"LoRA {label!r} has rank {item.rank} (layer {module}), above this deployment's "
                f"slot rank {layout.rank} (--lora-max-rank).",
                loc,
            )
        if item.down.shape[1] != in_features or item.up.shape[0] != out_features:
            raise lora_load_error(
                f"LoRA {label!r} does not fit layer {module}: its factors are "
                f"{tuple(item.up.shape)} @ {tuple(item.down.shape)}, the layer is "
                f"{in_features} → {out_features} (a LoRA for another model?).",
                loc,
            )
        if not (item.down.is_floating_point() and item.up.is_floating_point()):
            raise lora_load_error(f"LoRA {label!r}: layer {module} is not floating point.", loc)
        up = item.up if item.scale == 1.0 else item.up.float() * item.scale
        down = item.down.to(layout.dtype).contiguous()
        up = up.to(layout.dtype).contiguous()
        if not (torch.isfinite(down).all() and torch.isfinite(up).all()):
            raise lora_load_error(f"LoRA {label!r}: layer {module} holds NaN or infinity.", loc)
        if layout.device.type == "cuda":  # page-locked: the per-request copy runs at full speed
            down, up = down.pin_memory(), up.pin_memory()
        converted[module] = (down, up)
    return converted


# --- reading safetensors -----------------------------------------------------------------------


def _header_problem(head: bytes, size: int) -> str | None:
    """Why the first 9 bytes of a file are not a safetensors file (None when they could be):
    an 8-byte little-endian header length, then the JSON header's ``{``."""
    length = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if 2 <= length <= min(size - 8, MAX_HEADER_BYTES) and head[8:9] == b"{":
        return None
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"):
        return "it is a pickle/torch.save checkpoint, which is never loaded (use .safetensors)"
    return "it has no safetensors header"


def read_safetensors(
    path: Path, label: str, loc: Sequence[str | int]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file, or a 400 that says why not."""
    from safetensors import safe_open

    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(9)
        problem = _header_problem(head, size)
        if problem is None:
            length = int.from_bytes(head[:8], "little")
            try:
                header = json.loads(head[8:] + file.read(length - 1))
                if not isinstance(header, dict):
                    raise ValueError("not an object")
            except ValueError:
                problem = "its header is not safetensors JSON"
    if problem is not None:
        raise lora_load_error(f"LoRA {label!r} is not a safetensors file: {problem}.", loc)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # SafetensorError and friends: a corrupt or truncated file
        raise lora_load_error(
            f"LoRA {label!r} could not be read as safetensors: {exc}.", loc
        ) from None
    return tensors, metadata


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(8 * _CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_suffix(name: str, label: str, loc: Sequence[str | int]) -> None:
    """Only ``.safetensors``: pickle checkpoints run code when loaded."""
    lowered = name.lower()
    if lowered.endswith(SUFFIX):
        return
    if lowered.endswith(PICKLE_SUFFIXES):
        raise lora_load_error(
            f"LoRA {label!r} is a pickle checkpoint ({Path(name).suffix}); only .safetensors files "
            "are loaded (pickle can run code).",
            loc,
        )
    raise lora_load_error(f"LoRA {label!r} is not a .safetensors file.", loc)
