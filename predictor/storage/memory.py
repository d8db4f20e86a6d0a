"""In-process output store: bounded by total bytes and by time to live."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from predictor.storage.base import StoredFile, files_url, new_file_name


class MemoryOutputStore:
    """In-process store bounded by total bytes and time to live."""

    def __init__(self, max_bytes: int, ttl_s: float, clock=time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._files: OrderedDict[str, StoredFile] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def put(self, data: bytes, content_type: str, extension: str) -> str:
        if len(data) > self.max_bytes:
            raise ValueError(f"output of {len(data)} bytes exceeds the store's {self.max_bytes}")
        name = new_file_name(extension)
        with self._lock:
            self._expire()
            while self._bytes + len(data) > self.max_bytes:
                _, evicted = self._files.popitem(last=False)
                self._bytes -= len(evicted.data)
            self._files[name] = StoredFile(data, content_type, self._clock() + self.ttl_s)
            self._bytes += len(data)
        return name

    def get(self, file_name: str) -> StoredFile | None:
        with self._lock:
            self._expire()
            return self._files.get(file_name)

    def url(self, file_name: str, base_url: str) -> str:
        return files_url(file_name, base_url)

    def _expire(self) -> None:
        now = self._clock()
        while self._files:
            name, oldest = next(iter(self._files.items()))
            if oldest.expires_at > now:
                break
            del self._files[name]
            self._bytes -= len(oldest.data)
