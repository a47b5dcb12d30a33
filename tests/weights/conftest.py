"""Fixtures for the weights tests: an isolated hub cache and a loopback HTTP server standing in for the hub.

The server answers what huggingface_hub 2.x asks for (read from its source):
* ``HEAD/GET /{owner}/{name}/resolve/{revision}/{path}``: file bytes with ``X-Repo-Commit`` (the revision
  asked for when it is a commit, as the hub answers for a pinned download, else ``COMMIT``), ``ETag``
  (the sha256, as the hub sends for LFS files) and ``Content-Length``; 404 with ``X-Error-Code:
  EntryNotFound`` for an unknown file;
* ``GET /api/models/{owner}/{name}/revision/{revision}``: ``{"id", "sha", "siblings"}`` (snapshot_download);
* ``GET /api/models/{owner}/{name}/tree/{revision}``: the file listing.
It listens on 127.0.0.1 only, serves only the files a test registers, and stops with the test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _commit_for(revision: str) -> str:
    """The commit the loopback hub reports: a commit asked for is itself, a branch is ``COMMIT``."""
    return revision if re.fullmatch(r"[0-9a-f]{40}", revision) else COMMIT


@dataclass
class FakeHub:
    """Files served by the loopback hub and the requests it received."""

    url: str = ""
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def add(self, repo: str, path: str, data: bytes) -> None:
        self.files[(repo, path)] = data

    def downloads(self) -> list[str]:
        """Paths of the GET requests for file contents."""
        return [path for method, path in self.requests if method == "GET" and "/resolve/" in path]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str], head_only: bool) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head_only:
                self.wfile.write(body)

        def _json(self, payload: object) -> None:
            self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"}, False)

        def _not_found(self, head_only: bool) -> None:
            self._send(404, b"not found", {"X-Error-Code": "EntryNotFound", "X-Error-Message": "not found"}, head_only)

        def _serve(self, head_only: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append(("HEAD" if head_only else "GET", path))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                repo = f"{parts[2]}/{parts[3]}"
                names = sorted(p for (r, p) in hub.files if r == repo)
                if not names:
                    return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, head_only)
                if parts[4] == "revision":
                    return self._json({"id": repo, "sha": _commit_for(parts[5]),
                                       "siblings": [{"rfilename": n} for n in names]})
                return self._json(
                    [
                        {"type": "file", "path": n, "size": len(hub.files[(repo, n)]),
                         "oid": hashlib.sha1(hub.files[(repo, n)]).hexdigest()}
                        for n in names
                    ]
                )
            if len(parts) >= 5 and parts[2] == "resolve":
                repo, filename = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
                data = hub.files.get((repo, filename))
                if data is None:
                    return self._not_found(head_only)
                headers = {
                    "X-Repo-Commit": _commit_for(parts[3]),
                    "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                    "Content-Type": "application/octet-stream",
                }
                return self._send(200, data, headers, head_only)
            return self._not_found(head_only)

        def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
            self._serve(head_only=True)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(head_only=False)

    return Handler


@contextlib.contextmanager
def serving(hub: FakeHub) -> Iterator[FakeHub]:
    """Serve ``hub`` on 127.0.0.1 (a free port, ``hub.url``) until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, isolated_env: Path):
    """A running loopback hub; HF_ENDPOINT points at it; HF_HOME is a fresh folder; online mode."""
    with serving(FakeHub()) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        # huggingface_hub fixes its offline mode when first imported (possibly under isolated_env's offline)
        import huggingface_hub.constants

        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield hub


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every weights test gets its own hub cache, no models folder, offline, and a dead endpoint."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("GUIDES_MODELS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return home


def replace_declared_checkpoint(monkeypatch: pytest.MonkeyPatch, name: str, **changes):  # type: ignore[no-untyped-def]
    """Change the facts of checkpoint ``name`` for one test (sizes and digests of test files differ from the
    real ones): the catalog is derived from the annotators' declarations, so the declaration is replaced in
    every registered annotator class that declares it; returns the catalog entry as it now reads."""
    from guides.registry import REGISTRY, loadable_classes
    from guides.weights import catalog

    catalog.get_checkpoint(name)  # an unknown name fails here, listing the known ones
    for cls in loadable_classes(REGISTRY):
        if any(checkpoint.name == name for checkpoint in cls.checkpoints):
            replaced = tuple(dataclasses.replace(c, **changes) if c.name == name else c for c in cls.checkpoints)
            monkeypatch.setattr(cls, "checkpoints", replaced)
    return catalog.get_checkpoint(name)


@pytest.fixture
def use_entry(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """``use_entry(name, **changes)``: ``replace_declared_checkpoint`` for this test."""

    def use(name: str, **changes):  # type: ignore[no-untyped-def]
        return replace_declared_checkpoint(monkeypatch, name, **changes)

    return use
