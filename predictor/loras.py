"""Request LoRAs (DESIGN §5): where they come from, how they are checked and cached, and the
compile-safe slots they are swapped into. See docs/loras.md.

A request's ``loras`` (at most 3 ``{path, scale}``) are applied on top of the resident Upscaler
LoRA for that request only. ``path`` is, in this order:

1. a name in the deployment's catalog (``--lora-catalog``: JSON or YAML, name → URI);
2. ``hf://owner/repo[@revision]/path/file.safetensors``, through ``huggingface_hub`` into its cache;
3. an ``http(s)://`` URL, only with ``--allow-lora-urls`` (catalog URLs are always allowed), with
   the image fetcher's address guards;
4. a file under ``--lora-dir`` (relative to it, or an absolute path inside it; a path that
   resolves outside it, through ``..`` or a link, is refused).

Only safetensors is read (never pickle), up to ``--max-lora-mb``; downloads are kept on disk by
content hash (``--lora-cache-dir``) and converted LoRAs in a host-memory LRU
(``--lora-cache-mb``), so a repeat pays only the copy into its slot.

**Slots.** Changing the adapters of a ``torch.compile``-d model recompiles it (a new adapter name,
``set_adapters``, a scaling stored as a Python float, a parameter of another shape). So at load
the transformer gets, beside the upscaler, ``--lora-slots`` (3) extra peft adapters of rank
``--lora-max-rank`` over :data:`SLOT_TARGETS`, all active (``set_adapters`` once), zero-weighted,
with 0-d tensor scalings (:class:`~predictor.engines.chronoedit_model.AdapterScale`). A request
copies each LoRA's factors into a slot's existing parameters (zero-padded to the slot's rank)
and fills its scaling in place: shapes, names and the graph never change.

Everything a request names is resolved, read, converted and checked against the slots before the
model is touched, so a refused LoRA leaves the pipeline exactly as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import torch

from predictor import metrics
from predictor.config import LoraSettings, MiB
from predictor.engines.base import LoraRequest, ProgressFn
from predictor.errors import (
    InputError,
    download_error,
    file_too_large,
    lora_load_error,
    lora_loc,
    url_not_allowed,
)
from predictor.lora_formats import ParsedLora, parse_lora

if TYPE_CHECKING:
    from predictor.engines.chronoedit_model import AdapterScale

log = logging.getLogger("predictor.loras")

#: adapter names of the extra slots (fixed: a new adapter name would recompile)
SLOT_NAMES = ("extra_1", "extra_2", "extra_3")
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
SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_HF = re.compile(
    r"^hf://(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+)(?:@(?P<revision>[\w.-]+))?/(?P<file>.+)$"
)
_CHUNK = 1024 * 1024
#: a cancelled or timed-out job is noticed this often while a LoRA downloads
HEARTBEAT_S = 5.0
MAX_HEADER_BYTES = 100 * MiB
EXPECTED_KEYS = (
    "diffusers/peft (transformer.blocks.N.attn1.to_q.lora_A.weight), Wan/DiffSynth "
    "(diffusion_model.blocks.N.self_attn.q.lora_A.weight) or kohya/musubi "
    "(lora_unet_blocks_N_self_attn_q.lora_down.weight)"
)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "chrono-upscaler" / "loras"


def hf_download(repo_id: str, filename: str, revision: str | None, max_bytes: int) -> str:
    """A file from the Hugging Face Hub into its local cache (``HF_HUB_OFFLINE=1``: the cache
    only). The size is checked from the Hub's metadata before anything is downloaded."""
    from huggingface_hub import hf_hub_download

    try:
        info = hf_hub_download(repo_id, filename, revision=revision, dry_run=True)
    except TypeError:  # huggingface_hub before dry_run: checked after the download instead
        info = None
    size = getattr(info, "file_size", None)
    if info is not None and info.will_download and size is not None and size > max_bytes:
        raise _TooLarge(size)
    return hf_hub_download(repo_id, filename, revision=revision)


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


# --- the catalog -----------------------------------------------------------------------------


def load_catalog(path: str | Path) -> dict[str, str]:
    """name → URI from a JSON or YAML file: ``{"name": "uri"}`` (what the operator's ConfigMap
    holds), ``{"name": {"uri": …}}`` or ``[{"name": …, "uri": …}]``. Errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise FileNotFoundError(f"LoRA catalog {str(path)!r}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # JSONDecodeError, yaml.YAMLError
        raise ValueError(f"LoRA catalog {str(path)!r} is not valid JSON/YAML: {exc}") from None
    if data is None:
        return {}
    if isinstance(data, list):
        entries = {}
        for item in data:
            if not isinstance(item, dict) or "name" not in item:
                raise ValueError(f"LoRA catalog {str(path)!r}: list items need a 'name'")
            entries[item["name"]] = item
        data = entries
    if not isinstance(data, dict):
        raise ValueError(f"LoRA catalog {str(path)!r} must map names to URIs")
    catalog: dict[str, str] = {}
    for name, value in data.items():
        uri = value.get("uri") or value.get("path") if isinstance(value, dict) else value
        if not isinstance(name, str) or not name or not isinstance(uri, str) or not uri:
            raise ValueError(f"LoRA catalog {str(path)!r}: entry {name!r} has no URI string")
        catalog[name] = uri
    return catalog


# --- converted LoRAs and the host cache --------------------------------------------------------


@dataclass(frozen=True)
class SlotLayout:
    """What a LoRA must fit: each slot layer's (in_features, out_features), and the slots' rank."""

    shapes: dict[str, tuple[int, int]]
    rank: int
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


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


def _some(names: Iterable[str], limit: int = 4) -> str:
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
            f"{_some(parsed.unsupported, 2)}.",
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
            f"LoRA {label!r} names layers this transformer does not have: {_some(missing)} "
            "(a LoRA for a model with more blocks?).",
            loc,
        )
    if outside:
        raise lora_load_error(
            f"LoRA {label!r} targets layers outside the request-LoRA slots: {_some(outside)}. "
            f"The slots cover {SLOT_TARGETS_TEXT}.",
            loc,
        )
    if parsed.incomplete:
        raise lora_load_error(
            f"LoRA {label!r} has layers without both factors: {_some(parsed.incomplete)}.", loc
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


# --- the manager: sources → checked LoRAs --------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    kind: str  # "file", "hf", "url"
    target: str
    label: str


class LoraLoader:
    """Resolves, fetches, reads, checks and caches request LoRAs for one engine's slots."""

    def __init__(self, settings: LoraSettings, layout: SlotLayout | None = None) -> None:
        self.settings = settings
        #: what LoRAs must fit (the engine sets it once its slots exist)
        self.layout = layout or SlotLayout({}, settings.max_rank)
        self.catalog = load_catalog(settings.catalog) if settings.catalog else {}
        self.catalog_dir = Path(settings.catalog).parent if settings.catalog else None
        self.lora_dir = Path(settings.lora_dir).expanduser() if settings.lora_dir else None
        if self.lora_dir is not None and not self.lora_dir.is_dir():
            raise FileNotFoundError(f"--lora-dir {str(self.lora_dir)!r} is not a directory")
        self.cache_dir = (
            Path(settings.cache_dir).expanduser() if settings.cache_dir else default_cache_dir()
        )
        self.cache = HostCache(settings.cache_bytes)
        self._lock = threading.Lock()
        #: (real path, size, mtime, inode) → content hash: a known file is not hashed again
        self._hashes: dict[tuple[str, int, int, int], str] = {}
        #: URL → downloaded file (this process's lifetime) and hf:// spec → file in the HF cache
        self._downloads: dict[str, Path] = {}

    @property
    def catalog_names(self) -> list[str]:
        return sorted(self.catalog)

    # resolution

    def resolve(self, path: str, index: int) -> _Source:
        """Where ``path`` points; a catalog name first. Refusals are 400s at the entry's loc."""
        loc = lora_loc(index)
        if path in self.catalog:
            return self._classify(self.catalog[path], path, loc, trusted=True)
        return self._classify(path, path, loc, trusted=False)

    def _classify(self, spec: str, label: str, loc: Sequence[str | int], trusted: bool) -> _Source:
        scheme = _SCHEME.match(spec)
        kind = scheme.group(1).lower() if scheme else None
        if kind == "hf":
            match = _HF.match(spec)
            if not match or not match.group("file").endswith(SUFFIX):
                raise lora_load_error(
                    f"{spec!r} is not hf://owner/repo[@revision]/path/file.safetensors.", loc
                )
            return _Source("hf", spec, label)
        if kind in ("http", "https"):
            if not (trusted or self.settings.allow_urls):
                raise url_not_allowed(
                    "LoRA URLs are not allowed on this deployment (its operator can allow them "
                    "with --allow-lora-urls); use a name from its LoRA catalog"
                    + (f" ({_some(self.catalog, 6)})." if self.catalog else "."),
                    loc,
                )
            if not trusted:  # logs and messages show no query string (signed URLs carry keys)
                label = urlunsplit(urlsplit(spec)._replace(query="", fragment=""))
            return _Source("url", spec, label)
        if kind is not None:
            raise lora_load_error(
                f"LoRA scheme {kind!r} is not supported; use a catalog name, a file in the LoRA "
                "directory, hf://owner/repo/file.safetensors or an http(s) URL.",
                loc,
            )
        return _Source("file", str(self._local_file(spec, label, loc, trusted)), label)

    def _local_file(self, spec: str, label: str, loc: Sequence[str | int], trusted: bool) -> Path:
        path = Path(spec).expanduser() if trusted else Path(spec)
        if trusted and path.is_absolute():
            root, candidate = None, path  # the deployment's own catalog may point anywhere
        else:
            root = self.lora_dir or (self.catalog_dir if trusted else None)
            if root is None:
                known = f" (its names: {_some(self.catalog, 6)})" if self.catalog else ""
                raise lora_load_error(
                    f"{spec!r} is not in this deployment's LoRA catalog{known}, and it has no "
                    "LoRA directory (--lora-dir) to look for files in.",
                    loc,
                )
            candidate = path if path.is_absolute() else root / path
        try:
            real = Path(os.path.realpath(candidate))
        except (OSError, ValueError):
            raise lora_load_error(f"{spec!r} is not a usable path.", loc) from None
        if root is not None and not real.is_relative_to(os.path.realpath(root)):
            raise lora_load_error(
                f"{spec!r} resolves outside the LoRA directory; only files inside it can be used.",
                loc,
            )
        if real.is_dir():
            return self._single_file(real, spec, loc, root)
        if not real.exists():
            raise lora_load_error(f"LoRA file {spec!r} does not exist.", loc)
        check_suffix(candidate.name, label, loc)  # the name asked for (a link may have none)
        return real

    def _single_file(self, directory: Path, spec: str, loc, root: Path | None) -> Path:
        files = sorted(directory.glob(f"*{SUFFIX}"))
        if len(files) != 1:
            what = "no" if not files else f"{len(files)}"
            raise lora_load_error(
                f"LoRA directory {spec!r} holds {what} .safetensors files; name one file.", loc
            )
        real = Path(os.path.realpath(files[0]))
        if root is not None and not real.is_relative_to(os.path.realpath(root)):
            raise lora_load_error(f"{spec!r} resolves outside the LoRA directory.", loc)
        return real

    # loading

    def load(
        self, path: str, index: int, heartbeat: Callable[[], None] | None = None
    ) -> PreparedLora:
        """A checked, converted LoRA for ``path`` (request entry ``index``); cached by content."""
        started = time.perf_counter()
        loc = lora_loc(index)
        source = self.resolve(path, index)
        file = self._fetch(source, loc, heartbeat or (lambda: None))
        key = self._stat_key(file, source.label, loc)
        with self._lock:
            sha = self._hashes.get(key)
        if sha is None:
            sha = sha256_file(file)
            with self._lock:
                self._hashes[key] = sha
        cached = self.cache.get(sha)
        if cached is not None:
            metrics.LORA_CACHE_HITS.inc()
            metrics.LORA_LOAD_SECONDS.observe(time.perf_counter() - started)
            return cached
        metrics.LORA_CACHE_MISSES.inc()
        tensors, metadata = read_safetensors(file, source.label, loc)
        parsed = parse_lora(tensors, metadata)
        modules = check_and_convert(parsed, self.layout, source.label, loc)
        prepared = PreparedLora(
            sha256=sha,
            label=source.label,
            format=parsed.format,
            modules=modules,
            rank=max(down.shape[0] for down, _ in modules.values()),
            nbytes=sum(down.nbytes + up.nbytes for down, up in modules.values()),
        )
        self.cache.put(prepared)
        seconds = time.perf_counter() - started
        metrics.LORA_LOAD_SECONDS.observe(seconds)
        log.info(
            "lora loaded label=%s format=%s layers=%d rank=%d bytes=%d sha256=%s seconds=%.3f",
            source.label,
            parsed.format,
            len(modules),
            prepared.rank,
            prepared.nbytes,
            sha[:12],
            seconds,
        )
        return prepared

    def _stat_key(self, file: Path, label: str, loc) -> tuple[str, int, int, int]:
        try:
            stat = file.stat()
        except OSError:
            raise lora_load_error(f"LoRA file {label!r} cannot be read.", loc) from None
        if stat.st_size > self.settings.max_bytes:
            raise self._too_large(label, stat.st_size, loc)
        return (str(file), stat.st_size, stat.st_mtime_ns, stat.st_ino)

    def _too_large(self, label: str, size: int, loc) -> InputError:
        limit = self.settings.max_bytes
        return file_too_large(
            f"LoRA {label!r} is {size:,} bytes; the limit is {limit:,} (--max-lora-mb).", limit, loc
        )

    def _fetch(self, source: _Source, loc, heartbeat: Callable[[], None]) -> Path:
        if source.kind == "file":
            return Path(source.target)
        with self._lock:
            known = self._downloads.get(source.target)
        if known is not None and known.is_file():
            return known
        if source.kind == "hf":
            file = self._from_hub(source, loc)
        else:
            file = asyncio.run(self._download(source, loc, heartbeat))
        with self._lock:
            self._downloads[source.target] = file
        return file

    def _from_hub(self, source: _Source, loc) -> Path:
        match = _HF.match(source.target)
        assert match is not None
        repo_id = f"{match.group('owner')}/{match.group('repo')}"
        try:
            return Path(
                hf_download(
                    repo_id, match.group("file"), match.group("revision"), self.settings.max_bytes
                )
            )
        except _TooLarge as exc:
            raise self._too_large(source.label, exc.size, loc) from None
        except Exception as exc:  # huggingface_hub's errors: not found, offline, HTTP, …
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise download_error(
                f"Could not get LoRA {source.label!r} from the Hugging Face Hub "
                f"({type(exc).__name__}: {reason[:300]}).",
                loc,
            ) from None

    async def _download(self, source: _Source, loc, heartbeat: Callable[[], None]) -> Path:
        """GET a LoRA URL with the image fetcher's guards into the cache, named by content hash."""
        import httpx

        from predictor.fetch import check_scheme, pinned_request

        limits = self.settings
        what = f"loras[{loc[2]}].path"
        url = source.target
        timeout = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=5.0)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            async with (
                asyncio.timeout(limits.fetch_timeout_s),
                httpx.AsyncClient(
                    timeout=timeout, follow_redirects=False, trust_env=False
                ) as client,
            ):
                for _ in range(4):  # the first request and up to 3 redirects
                    request = await pinned_request(
                        client,
                        "GET",
                        url,
                        limits.allow_private_urls,
                        {"Accept": "application/octet-stream, */*"},
                        what=what,
                    )
                    response = await client.send(request, stream=True)
                    try:
                        if response.is_redirect and "location" in response.headers:
                            url = urljoin(
                                str(check_scheme(url, what)), response.headers["location"]
                            )
                            continue
                        return await self._save_body(response, source.label, loc, heartbeat)
                    finally:
                        await response.aclose()
                raise download_error(f"LoRA {source.label!r} redirected more than 3 times.", loc)
        except InputError as exc:
            exc.loc = list(loc)  # the fetcher's guards name image_url by default
            raise
        except TimeoutError:
            raise download_error(
                f"Downloading LoRA {source.label!r} took longer than {limits.fetch_timeout_s:g} s.",
                loc,
            ) from None
        except httpx.HTTPError as exc:
            raise download_error(
                f"Downloading LoRA {source.label!r} failed: {exc or type(exc).__name__}.", loc
            ) from None

    async def _save_body(self, response, label: str, loc, heartbeat: Callable[[], None]) -> Path:
        if response.status_code != 200:
            raise download_error(
                f"LoRA {label!r} answered HTTP {response.status_code}; expected 200.", loc
            )
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.settings.max_bytes:
            raise self._too_large(label, int(declared), loc)
        digest = hashlib.sha256()
        size = 0
        handle, temporary = tempfile.mkstemp(dir=self.cache_dir, suffix=".part")
        try:
            with os.fdopen(handle, "wb") as file:
                async for chunk in response.aiter_bytes():  # as it arrives
                    size += len(chunk)
                    if size > self.settings.max_bytes:
                        raise self._too_large(label, size, loc)
                    digest.update(chunk)
                    file.write(chunk)
                    heartbeat()
            final = self.cache_dir / f"{digest.hexdigest()}{SUFFIX}"
            os.replace(temporary, final)
            return final
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)

    def prepare(
        self, requests: Sequence[LoraRequest], progress: ProgressFn | None = None
    ) -> list[tuple[PreparedLora, float]]:
        """Every LoRA of a request, loaded and checked (nothing is applied here).

        ``progress(i, n, "lora")`` is called before each and after the last, and every few
        seconds while one downloads: a cancelled or timed-out job stops there.
        """
        total = len(requests)
        slots = self.settings.slots
        if total > slots:
            raise lora_load_error(
                f"This deployment applies at most {slots} extra LoRAs per request; "
                f"the request has {total}.",
                ("body", "loras"),
            )
        prepared = []
        for index, item in enumerate(requests):
            if progress is not None:
                progress(index, total, "lora")
            last = time.monotonic()

            def heartbeat(index: int = index) -> None:
                nonlocal last
                if progress is not None and time.monotonic() - last >= HEARTBEAT_S:
                    last = time.monotonic()
                    progress(index, total, "lora")

            prepared.append((self.load(item.path, index, heartbeat), float(item.scale)))
        if progress is not None and total:
            progress(total, total, "lora")
        return prepared


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


# --- the slots -----------------------------------------------------------------------------------


@dataclass
class _SlotState:
    scale: AdapterScale
    sha256: str | None = None
    #: layers whose factors are non-zero now (zeroed again when the next LoRA leaves them out)
    filled: frozenset[str] = frozenset()


class LoraSlots:
    """The extra, always-active adapters request LoRAs are copied into (see the module doc)."""

    def __init__(self, transformer: torch.nn.Module, names: Sequence[str], rank: int) -> None:
        from peft.tuners.lora import LoraLayer

        from predictor.engines.chronoedit_model import AdapterScale

        self.names = tuple(names)
        self.rank = rank
        #: slot → layer → (lora_A weight, lora_B weight)
        self.params: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {
            name: {} for name in self.names
        }
        shapes: dict[str, tuple[int, int]] = {}
        dtype, device = torch.float32, torch.device("cpu")
        for module_name, module in transformer.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            for name in self.names:
                if name in module.lora_A:
                    down = module.lora_A[name].weight
                    up = module.lora_B[name].weight
                    self.params[name][module_name] = (down, up)
                    shapes[module_name] = (int(down.shape[1]), int(up.shape[0]))
                    dtype, device = down.dtype, down.device
        self.layout = SlotLayout(shapes, rank, dtype, device)
        self.state = {name: _SlotState(AdapterScale(transformer, name)) for name in self.names}
        with torch.no_grad():
            for name in self.names:
                for down, up in self.params[name].values():
                    down.zero_()
                    up.zero_()
                self.state[name].scale.set(0.0)

    @classmethod
    def install(
        cls, transformer: torch.nn.Module, count: int, rank: int, resident: Sequence[str]
    ) -> LoraSlots:
        """Add ``count`` zeroed slots of ``rank`` beside the ``resident`` adapters, activate them
        all (``set_adapters``: once, before any compilation) and make every scaling a tensor.

        Call it before building the resident adapters' :class:`AdapterScale`: ``set_adapters``
        writes Python floats into every scaling.
        """
        from peft import LoraConfig

        if not 0 <= count <= len(SLOT_NAMES):
            raise ValueError(f"--lora-slots must be 0 to {len(SLOT_NAMES)}, got {count}")
        if rank < 1:
            raise ValueError(f"--lora-max-rank must be at least 1, got {rank}")
        names = SLOT_NAMES[:count]
        for name in names:
            config = LoraConfig(r=rank, lora_alpha=rank, target_modules=SLOT_TARGETS)
            with warnings.catch_warnings():  # several adapters in one model are the point here
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                transformer.add_adapter(config, adapter_name=name)
        if names:
            adapters = [*resident, *names]
            transformer.set_adapters(adapters, [1.0] * len(adapters))
        return cls(transformer, names, rank)

    @property
    def count(self) -> int:
        return len(self.names)

    def apply(self, loras: Sequence[tuple[PreparedLora, float]]) -> dict[str, str | None]:
        """Put ``loras`` (checked already) into the slots, scale 0 ones left out, the rest zeroed.

        Slots are assigned canonically — by content hash, then scale — so the output does not
        depend on the order of a request's ``loras`` (slot order is the order of the additions).
        A slot that already holds a LoRA only has its scale set. Returns slot → label.
        """
        active = sorted(
            ((lora, scale) for lora, scale in loras if scale != 0.0),
            key=lambda item: (item[0].sha256, item[1]),
        )
        if len(active) > self.count:
            raise ValueError(f"{len(active)} LoRAs for {self.count} slots")
        placed: dict[str, str | None] = {}
        try:
            with torch.no_grad():
                for index, name in enumerate(self.names):
                    state = self.state[name]
                    if index < len(active):
                        lora, scale = active[index]
                        if state.sha256 != lora.sha256:
                            self._fill(name, lora)
                        state.scale.set(scale)
                        placed[name] = lora.label
                    else:
                        state.scale.set(0.0)
                        if state.filled:
                            self._clear(name, state.filled)
                        placed[name] = None
        except BaseException:
            self.reset()  # never leave a half-copied slot behind
            raise
        return placed

    def _fill(self, name: str, lora: PreparedLora) -> None:
        state = self.state[name]
        state.sha256 = None  # unknown until the copy is complete
        params = self.params[name]
        self._clear(name, state.filled - set(lora.modules))
        non_blocking = self.layout.device.type == "cuda"
        for module, (down, up) in lora.modules.items():
            slot_down, slot_up = params[module]
            rank = down.shape[0]
            slot_down[:rank].copy_(down, non_blocking=non_blocking)
            slot_down[rank:].zero_()
            slot_up[:, :rank].copy_(up, non_blocking=non_blocking)
            slot_up[:, rank:].zero_()
        state.filled = frozenset(lora.modules)
        state.sha256 = lora.sha256

    def _clear(self, name: str, modules: Iterable[str]) -> None:
        state = self.state[name]
        for module in modules:
            down, up = self.params[name][module]
            down.zero_()
            up.zero_()
        state.filled = state.filled - set(modules)
        if not state.filled:
            state.sha256 = None

    def reset(self) -> None:
        """Every slot zeroed and off: the state of a fresh process."""
        with torch.no_grad():
            for name in self.names:
                state = self.state[name]
                state.scale.set(0.0)
                for down, up in self.params[name].values():
                    down.zero_()
                    up.zero_()
                state.filled, state.sha256 = frozenset(), None


def bench_table() -> str:
    """``make bench``'s LoRA section (``predictor.bench`` calls it); see predictor/bench_loras."""
    from predictor.bench_loras import lora_table

    return lora_table()


def describe(settings: LoraSettings, loader: LoraLoader | None) -> dict[str, Any]:
    """The engine metadata's ``loras`` entry: what a request may name (no URIs, no paths)."""
    return {
        "slots": settings.slots if loader is not None else 0,
        "max_rank": settings.max_rank,
        "catalog": loader.catalog_names if loader is not None else [],
        "lora_dir": bool(settings.lora_dir),
        "urls": settings.allow_urls,
        "max_bytes": settings.max_bytes,
    }
