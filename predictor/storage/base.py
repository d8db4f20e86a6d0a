"""Where ``sync_mode: false`` outputs live until the client downloads them: the protocol.

Three implementations: in process (:mod:`.memory`, the default: size-bounded, oldest evicted
first, and time-bounded), Redis (:mod:`.redis`) and S3-compatible object storage (:mod:`.s3`),
so that with many replicas any of them, or the bucket itself, serves a result.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StoredFile:
    data: bytes
    content_type: str
    expires_at: float


class OutputStore(Protocol):
    def put(self, data: bytes, content_type: str, extension: str) -> str:
        """Keep ``data``; return its file name (``<id>.<extension>``). May block (run off-loop)."""

    def get(self, file_name: str) -> StoredFile | None:
        """The file, or None when unknown or expired (served at ``/files/<name>``)."""

    def url(self, file_name: str, base_url: str) -> str:
        """Where a client downloads ``file_name``; ``base_url`` is this server's."""


def new_file_name(extension: str) -> str:
    """An unguessable name: 128 random bits, URL-safe."""
    return f"{secrets.token_urlsafe(16)}.{extension}"


def files_url(file_name: str, base_url: str) -> str:
    return f"{base_url.rstrip('/')}/files/{file_name}"
