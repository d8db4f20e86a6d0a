"""The fixed prompt's embeddings on disk, so a start skips loading UMT5-XXL (~11 GB in bf16).

A cache file is keyed by everything that decides the embeddings: the prompt texts, the sequence
length, the dtype, and the identity of the text encoder and tokenizer that made them — the
contents of their config and tokenizer files, and the weight files' names, sizes and
modification times (hashing 11 GB of weights would cost what the cache saves). A different
model, prompt or dtype therefore looks for another file; a file that cannot be read, or whose
recorded key differs from its name's, is ignored with a warning and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("predictor.engines.chronoedit.prompt_cache")

#: bump when the file's layout or what the key covers changes
FORMAT = 1
#: the subdirectory used inside a cache directory
SUBDIR = "prompt-embeddings"
#: beside the weights (hidden, so nothing that globs the model's files takes it for weights)
BESIDE_WEIGHTS = f".chrono-upscaler/{SUBDIR}"
#: a safetensors file, named so that no ``*.safetensors`` glob mistakes it for weights
SUFFIX = ".embeddings"
#: the weight files of a text encoder (their stat, not their bytes, enters the key)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass(frozen=True)
class CachedPrompt:
    """What the cache stores: the positive and the negative prompt's embeddings."""

    positive: torch.Tensor
    negative: torch.Tensor


def _files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())


def encoder_identity(text_encoder_dir: Path, tokenizer_dir: Path) -> dict[str, object]:
    """The text encoder's and tokenizer's identity, cheap to compute on every start.

    Small files (configs, the tokenizer's vocabulary) by content; weight files by name, size
    and modification time in nanoseconds.
    """
    identity: dict[str, object] = {}
    for role, directory in (("text_encoder", text_encoder_dir), ("tokenizer", tokenizer_dir)):
        if not directory.is_dir():
            raise FileNotFoundError(f"{str(directory)!r} does not exist (the {role})")
        for path in _files(directory):
            name = f"{role}/{path.relative_to(directory).as_posix()}"
            stat = path.stat()
            if path.suffix in WEIGHT_SUFFIXES:
                identity[name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            else:
                identity[name] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return identity


def cache_key(
    prompt: str,
    negative_prompt: str,
    max_sequence_length: int,
    dtype: torch.dtype,
    identity: dict[str, object],
) -> str:
    """A hex digest of everything the embeddings depend on."""
    material = {
        "format": FORMAT,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "max_sequence_length": max_sequence_length,
        "dtype": str(dtype).removeprefix("torch."),
        "encoder": identity,
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def cache_directories(model_dir: Path, cache_dir: Path) -> list[Path]:
    """Beside the weights first (it travels with them), then the cache directory."""
    return [model_dir / BESIDE_WEIGHTS, cache_dir / SUBDIR]


class PromptCache:
    """Embedding files in the first usable of ``directories``: a hit is read from wherever it
    is, a new file goes to the first writable one."""

    def __init__(self, directories: Iterable[Path]) -> None:
        self.directories = [Path(directory) for directory in directories]

    def _name(self, key: str) -> str:
        return f"{key[:32]}{SUFFIX}"

    def path_for(self, key: str) -> Path | None:
        """The existing file for ``key``, if any."""
        for directory in self.directories:
            path = directory / self._name(key)
            if path.is_file():
                return path
        return None

    def load(self, key: str, device: torch.device) -> CachedPrompt | None:
        """The embeddings stored under ``key``; None (with a warning) when absent or unusable."""
        from safetensors import SafetensorError, safe_open

        path = self.path_for(key)
        if path is None:
            return None
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as handle:
                stored = (handle.metadata() or {}).get("key")
                if stored != key:
                    log.warning(
                        "prompt_cache mismatched path=%s expected_key=%s stored_key=%s "
                        "action=rebuild",
                        path,
                        key[:16],
                        (stored or "none")[:16],
                    )
                    return None
                return CachedPrompt(handle.get_tensor("positive"), handle.get_tensor("negative"))
        except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as exc:
            log.warning(
                "prompt_cache corrupt path=%s error=%s action=rebuild", path, str(exc)[:200]
            )
            return None

    def save(self, key: str, embeddings: CachedPrompt, describe: dict[str, str]) -> Path | None:
        """Write the embeddings atomically into the first writable directory; None if none is."""
        from safetensors.torch import save_file

        tensors = {
            "positive": embeddings.positive.detach().to("cpu").clone(),
            "negative": embeddings.negative.detach().to("cpu").clone(),
        }
        metadata = {"key": key, "format": str(FORMAT), **describe}
        for directory in self.directories:
            try:
                directory.mkdir(parents=True, exist_ok=True)
                handle, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
                os.close(handle)
                try:
                    save_file(tensors, temporary, metadata=metadata)
                    target = directory / self._name(key)
                    os.replace(temporary, target)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(temporary)
            except OSError as exc:
                log.info("prompt_cache unwritable dir=%s error=%s", directory, exc)
                continue
            log.info("prompt_cache saved path=%s key=%s", target, key[:16])
            return target
        log.warning("prompt_cache not_saved reason=no_writable_directory")
        return None
