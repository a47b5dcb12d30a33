"""guides.weights.digest: a file's sha256, computed once per (resolved path, size, mtime_ns)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from guides.weights.digest import DigestCache, digest_cache, file_sha256


def _write(path: Path, data: bytes, mtime_ns: int | None = None) -> Path:
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_digest_is_the_files_sha256_and_is_computed_once(tmp_path):
    path = _write(tmp_path / "weights.pth", os.urandom(5000))
    cache = DigestCache()
    assert cache.sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert cache.sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert cache.computed == 1


def test_the_same_file_by_another_path_shares_the_entry(tmp_path, monkeypatch):
    path = _write(tmp_path / "weights.pth", b"abc" * 100)
    link = tmp_path / "link.pth"
    link.symlink_to(path)
    cache = DigestCache()
    monkeypatch.chdir(tmp_path)
    digests = {cache.sha256(path), cache.sha256(link), cache.sha256("weights.pth")}
    assert digests == {hashlib.sha256(b"abc" * 100).hexdigest()} and cache.computed == 1 and len(cache) == 1


def test_a_rewritten_file_is_hashed_again(tmp_path):
    path = _write(tmp_path / "weights.pth", b"a" * 64, mtime_ns=1_000_000_000_000_000_000)
    cache = DigestCache()
    first = cache.sha256(path)
    _write(path, b"b" * 64, mtime_ns=1_000_000_000_000_000_001)  # same size, new mtime
    second = cache.sha256(path)
    assert first == hashlib.sha256(b"a" * 64).hexdigest() and second == hashlib.sha256(b"b" * 64).hexdigest()
    _write(path, b"c" * 65, mtime_ns=1_000_000_000_000_000_001)  # same mtime, new size
    assert cache.sha256(path) == hashlib.sha256(b"c" * 65).hexdigest() and cache.computed == 3


def test_the_cache_is_bounded_least_recently_used_first_out(tmp_path):
    files = [_write(tmp_path / f"f{i}.bin", bytes([i]) * 10) for i in range(3)]
    cache = DigestCache(max_entries=2)
    cache.sha256(files[0])
    cache.sha256(files[1])
    cache.sha256(files[0])  # f0 is now the most recent
    cache.sha256(files[2])  # evicts f1
    assert len(cache) == 2 and cache.computed == 3
    cache.sha256(files[0])
    assert cache.computed == 3
    cache.sha256(files[1])
    assert cache.computed == 4
    with pytest.raises(ValueError):
        DigestCache(max_entries=0)


def test_concurrent_callers_all_get_the_right_digest(tmp_path):
    files = [_write(tmp_path / f"f{i}.bin", os.urandom(200_000 + i)) for i in range(4)]
    expected = {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    cache = DigestCache(max_entries=3)  # smaller than the files: evictions race with lookups
    results: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(offset: int) -> None:
        try:
            for round_ in range(20):
                f = files[(offset + round_) % len(files)]
                digest = cache.sha256(f)
                with lock:
                    results.append((str(f), digest))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and len(results) == 160
    assert all(digest == expected[name] for name, digest in results)
    assert len(cache) <= 3


def test_module_function_uses_the_modules_cache(tmp_path):
    path = _write(tmp_path / "w.bin", b"module cache")
    before = digest_cache().computed
    assert file_sha256(path) == file_sha256(str(path)) == hashlib.sha256(b"module cache").hexdigest()
    assert digest_cache().computed == before + 1


def test_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        file_sha256(tmp_path / "nope.pth")
