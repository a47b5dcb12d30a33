"""The sha256 of checkpoint files, computed once per file version.

A checkpoint is gigabytes: hashing it for every dataset card or ``generate`` sidecar would cost seconds
each time. ``file_sha256`` remembers each digest under the file's resolved path, size and ``mtime_ns``, so a
file rewritten in place (new size or modification time) is hashed again and an unchanged one is not.

The cache is a small bounded ``DigestCache`` instance owned by this module and guarded by a lock (safe from
the batch engine's threads); nothing else mutates it. Importing this module does not import torch.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

_CHUNK = 1 << 22  # 4 MiB reads


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


class DigestCache:
    """A thread-safe, bounded (least recently used first out) map of file version -> sha256 hex digest.

    The key is ``(resolved path, size, mtime_ns)``, read with one ``stat`` before hashing and checked again
    after: a file that changed while it was being hashed is hashed again rather than cached wrongly.
    """

    def __init__(self, max_entries: int = 64) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, int, int], str] = OrderedDict()
        self._lock = threading.Lock()
        self.computed = 0
        """How many files were actually hashed (not answered from the cache): for tests and reports."""

    @staticmethod
    def _key(path: Path) -> tuple[str, int, int]:
        stat = path.stat()
        return (str(path), stat.st_size, stat.st_mtime_ns)

    def sha256(self, path: str | os.PathLike[str]) -> str:
        """The hex sha256 of the file at ``path`` (OSError if it cannot be read)."""
        resolved = Path(path).resolve()
        for _ in range(3):
            key = self._key(resolved)
            with self._lock:
                known = self._entries.get(key)
                if known is not None:
                    self._entries.move_to_end(key)
                    return known
            digest = _hash_file(resolved)  # outside the lock: other files can be answered meanwhile
            with self._lock:
                self.computed += 1
            if self._key(resolved) == key:
                with self._lock:
                    self._entries[key] = digest
                    self._entries.move_to_end(key)
                    while len(self._entries) > self.max_entries:
                        self._entries.popitem(last=False)
                return digest
        return digest  # the file keeps changing: give the last digest without caching it

    def clear(self) -> None:
        """Forget every digest."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


_CACHE = DigestCache()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, cached by (resolved path, size, mtime_ns) for the life of the process."""
    return _CACHE.sha256(path)


def digest_cache() -> DigestCache:
    """The module's cache (to inspect it in tests, or ``clear()`` it)."""
    return _CACHE
