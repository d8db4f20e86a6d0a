"""Which URIs a deployment may name, and where each one ends up in the predictor pod.

Two kinds, because two different programs fetch them:
- storage URIs (the model, the upscaler and distillation LoRAs) are downloaded by KServe's storage
  initializer before the predictor starts, so they must be schemes it knows, in the form it
  parses (``hf://owner/repo[:revision]`` names a whole repository);
- catalog LoRAs (``spec.loras``) are fetched by the predictor at request time, so they must be
  what the predictor fetches: one ``.safetensors`` file on the Hugging Face Hub or over http(s).
The schema cannot say this well, so these rules live here and produce messages that name the field.
"""

from __future__ import annotations

import posixpath
import re
from urllib.parse import urlsplit

STORAGE_SCHEMES = ("hf", "s3", "gs", "http", "https", "pvc")
CATALOG_SCHEMES = ("hf", "http", "https")
_STORAGE_EXPECTED = "hf://, s3://, gs://, http(s):// or pvc://"
_CATALOG_EXPECTED = "hf://owner/repo/file.safetensors or http(s)://"
_DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def scheme_of(uri: str) -> str | None:
    """The URI's scheme, or None for a plain (relative) path."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", uri)
    return match.group(1).lower() if match else None


def storage_uri_errors(uri: str, path: str) -> list[str]:
    """Problems with a URI the storage initializer must download."""
    scheme = scheme_of(uri)
    if scheme not in STORAGE_SCHEMES:
        shown = scheme if scheme is not None else uri
        return [f"{path}: unsupported scheme {shown!r}; expected {_STORAGE_EXPECTED}"]
    rest = uri.split("://", 1)[1]
    if scheme == "hf":
        parts = rest.split("/")
        if len(parts) != 2 or not all(part.split(":", 1)[0] for part in parts):
            return [f"{path}: {uri!r} is not hf://owner/repo[:revision] (it names a repository)"]
    elif scheme in ("s3", "gs"):
        if not rest.split("/", 1)[0]:
            return [f"{path}: {uri!r} names no bucket"]
    elif scheme == "pvc":
        claim = rest.split("/", 1)[0]
        if not _DNS_1123_LABEL.match(claim):
            return [f"{path}: {uri!r} names no valid claim (pvc://claim[/path])"]
    elif not urlsplit(uri).hostname:
        return [f"{path}: {uri!r} has no host"]
    return []


def model_relative_path_errors(value: str, path: str) -> list[str]:
    """Problems with a LoRA given as a file inside the model directory."""
    if value.startswith("/"):
        return [f"{path}: {value!r} must be relative to the model directory"]
    if ".." in value.split("/") or posixpath.normpath(value).startswith(".."):
        return [f"{path}: {value!r} must stay inside the model directory (no '..')"]
    if not value.endswith(".safetensors"):
        return [f"{path}: {value!r} must name a .safetensors file"]
    return []


def lora_source_errors(value: str, path: str) -> list[str]:
    """An upscaler or distillation LoRA: a storage URI, or a file inside the model directory."""
    if scheme_of(value) is None and "://" not in value:
        return model_relative_path_errors(value, path)
    return storage_uri_errors(value, path)


def catalog_uri_errors(uri: str, path: str) -> list[str]:
    """Problems with a catalog LoRA the predictor fetches at request time."""
    scheme = scheme_of(uri)
    if scheme not in CATALOG_SCHEMES:
        shown = scheme if scheme is not None else uri
        return [f"{path}: unsupported scheme {shown!r}; expected {_CATALOG_EXPECTED}"]
    if scheme == "hf":
        parts = uri.split("://", 1)[1].split("/")
        if len(parts) < 3 or not all(parts) or not parts[-1].endswith(".safetensors"):
            return [f"{path}: {uri!r} is not hf://owner/repo/path/file.safetensors"]
    elif not urlsplit(uri).hostname:
        return [f"{path}: {uri!r} has no host"]
    return []
