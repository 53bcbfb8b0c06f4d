"""/docs in a real headless browser: Swagger UI renders every route with no network access."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import make_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (scripts/test installs it when run as root)"
)


def offline_flags(profile: Path) -> list[str]:
    """Chromium flags for a headless browser that can reach loopback and nothing else."""
    return [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        # Only loopback is reachable, as on an offline machine.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_swagger_ui_renders_offline(tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(tmp_path)
    env = {
        **os.environ,
        "RNNLAB_DATA_DIR": str(settings.data_dir),
        "RNNLAB_WORKERS": "0",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        dom = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                *offline_flags(tmp_path / "chrome"),
                "--virtual-time-budget=15000",
                "--dump-dom",
                f"http://127.0.0.1:{port}/docs",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    finally:
        server.terminate()
        server.wait(30)
    # What Swagger UI's scripts rendered, not the HTML the server sent.
    assert 'class="swagger-ui' in dom
    assert "rnnlab" in dom
    for route in ("/runs", "/runs/{run_id}/losses", "/predict", "/scalar-rnn", "/readyz"):
        assert f'data-path="{route}"' in dom, route
    assert "Failed to load API definition" not in dom
