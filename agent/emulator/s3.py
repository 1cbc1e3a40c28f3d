"""The few S3 objects the emulated account reads: job documents (`documentSource`), stream files
(MQTT-based file delivery), package artifacts. Objects are put by a test (`put`) or are files
below a directory (`jobs-agent sim serve --s3-dir DIR`: `s3://BUCKET/KEY` is `DIR/BUCKET/KEY`).

Stream files are read a block at a time and may be megabytes, so a file is never read whole to
answer one request: `stat` gives its size and ETag (the MD5 of its content, as S3 gives for a
single-part upload), computed once per file version (path, size, modification time, inode).
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    etag: str


class ObjectStore:
    """In-memory objects first, then files below `root` (never outside it)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self._objects: dict[tuple[str, str], bytes] = {}
        self._etags: dict[tuple[str, int, int, int], str] = {}
        self._lock = threading.Lock()

    def put(self, bucket: str, key: str, data: bytes) -> None:
        with self._lock:
            self._objects[(bucket, key)] = bytes(data)

    def _path(self, bucket: str, key: str) -> Path | None:
        if self.root is None:
            return None
        root = self.root.resolve()
        path = (root / bucket / key).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path

    def get(self, bucket: str, key: str) -> bytes | None:
        with self._lock:
            data = self._objects.get((bucket, key))
        if data is not None:
            return data
        path = self._path(bucket, key)
        return None if path is None else path.read_bytes()

    def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        with self._lock:
            data = self._objects.get((bucket, key))
        if data is not None:
            return ObjectInfo(len(data), hashlib.md5(data, usedforsecurity=False).hexdigest())
        path = self._path(bucket, key)
        if path is None:
            return None
        st = path.stat()
        version = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            etag = self._etags.get(version)
        if etag is None:
            digest = hashlib.md5(usedforsecurity=False)
            with path.open("rb") as file:
                for chunk in iter(lambda: file.read(1 << 20), b""):
                    digest.update(chunk)
            etag = digest.hexdigest()
            with self._lock:
                self._etags[version] = etag
        return ObjectInfo(st.st_size, etag)

    def read(self, bucket: str, key: str, offset: int, length: int) -> bytes | None:
        """`length` bytes from `offset` (fewer at the end of the object)."""
        with self._lock:
            data = self._objects.get((bucket, key))
        if data is not None:
            return data[offset : offset + length]
        path = self._path(bucket, key)
        if path is None:
            return None
        with path.open("rb") as file:
            file.seek(offset, os.SEEK_SET)
            return file.read(length)
