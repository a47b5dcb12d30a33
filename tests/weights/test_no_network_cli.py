"""Missing weights through the installed ``guides`` console script: no download unasked, and without a
network (or with ``HF_HUB_OFFLINE=1``) one line, exit 2, in under 2 s, not huggingface_hub's retries.

The "no network" hub is ``HF_ENDPOINT`` pointing at a loopback port nothing listens on (connections are
refused at once). The time limit is 2 s, or the script's own start-up (``guides --help``) plus 1 s on a
machine slow enough that start-up alone nears 2 s: either way far below the ~25 s of retries.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

GUIDES = Path(sys.executable).with_name("guides")
pytestmark = pytest.mark.skipif(not GUIDES.is_file(), reason="the guides console script is not installed")


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed when the socket is: nothing listens there afterwards


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("HF_", "GUIDES_")) and k not in ("TRANSFORMERS_OFFLINE", "DISABLE_TELEMETRY")}
    environment.update(HF_HOME=str(tmp_path / "hf_home"), HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}",
                       HF_HUB_DISABLE_PROGRESS_BARS="1")
    return environment


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((32, 48, 3), 128, np.uint8)).save(path)
    return path


def _run(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.perf_counter()
    result = subprocess.run([str(GUIDES), *args], capture_output=True, text=True, env=env, timeout=120)
    return result, time.perf_counter() - start


def _limit(env: dict[str, str]) -> float:
    _, startup = _run(["--help"], env)
    return max(2.0, startup + 1.0)


@pytest.mark.parametrize("offline", [False, True], ids=["no-network", "HF_HUB_OFFLINE"])
@pytest.mark.parametrize("args", [
    ["models", "download", "depth"],
    ["models", "path", "depth", "--download"],
    ["depth", "{photo}", "--download"],
    ["depth", "{photo}"],
], ids=["models-download", "models-path", "depth--download", "depth"])
def test_missing_weights_fail_at_once_with_one_line(env, photo, args, offline):
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    limit = _limit(env)
    result, elapsed = _run([a.format(photo=photo) for a in args], env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    assert "ZoeD_M12_N.pt" in lines[0] and "`guides models download depth`" in lines[0] and "--download" in lines[0]
    assert "Traceback" not in result.stderr and "Retrying" not in result.stderr
    assert elapsed < limit, (elapsed, limit, result.stderr)
    if args[0] == "depth" and "--download" not in args:
        assert "downloading was not asked for" in lines[0]  # the CLI never downloads unasked
    elif not offline:
        assert "cannot serve it" in lines[0] and "Connection refused" in lines[0]
    else:
        assert "HF_HUB_OFFLINE" in lines[0]
    assert not (photo.parent / "photo.depth.png").exists()
