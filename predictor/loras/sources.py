"""Where request LoRAs come from, and the loader that turns a request's ``loras`` into checked,
prepared LoRAs (see docs/loras.md).

A request's ``loras`` (at most ``MAX_LORAS`` ``{path, scale}``) are applied on top of the
resident Upscaler LoRA for that request only. ``path`` is, in this order:

1. a name in the deployment's catalog (``--lora-catalog``: JSON or YAML, name → URI);
2. ``hf://owner/repo[@revision]/path/file.safetensors``, through ``huggingface_hub`` into its cache;
3. an ``http(s)://`` URL, only with ``--allow-lora-urls`` (catalog URLs are always allowed), with
   the image fetcher's address guards;
4. a file under ``--lora-dir`` (relative to it, or an absolute path inside it; a path that
   resolves outside it, through ``..`` or a link, is refused).

Downloads are kept on disk by content hash (``--lora-cache-dir``). Everything a request names is
resolved, read, converted and checked against the slots before the model is touched, so a
refused LoRA leaves the pipeline exactly as it was.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from predictor import metrics
from predictor.engines.base import LoraRequest, ProgressFn
from predictor.engines.options import LoraSettings
from predictor.errors import (
    InputError,
    download_error,
    file_too_large,
    lora_load_error,
    lora_loc,
    url_not_allowed,
)
from predictor.loras.formats import parse_lora
from predictor.loras.prepare import (
    SUFFIX,
    HostCache,
    PreparedLora,
    SlotLayout,
    check_and_convert,
    check_suffix,
    read_safetensors,
    sha256_file,
    some_names,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger("predictor.loras")


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_HF = re.compile(
    r"^hf://(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+)(?:@(?P<revision>[\w.-]+))?/(?P<file>.+)$"
)
#: a cancelled or timed-out job is noticed this often while a LoRA downloads
HEARTBEAT_S = 5.0


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
            raise FileNotFoundError(f"loras.lora_dir {str(self.lora_dir)!r} is not a directory")
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
                    + (f" ({some_names(self.catalog, 6)})." if self.catalog else "."),
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
                known = f" (its names: {some_names(self.catalog, 6)})" if self.catalog else ""
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

        from predictor.fetch import pinned_request, send_checked

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
                    response = await send_checked(client, request, what, stream=True)
                    try:
                        if response.is_redirect and "location" in response.headers:
                            url = urljoin(url, response.headers["location"])
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
