"""/docs in a real headless browser: Swagger UI renders every route with no network access."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.browser import offline_flags
from tests.support.processes import serve

pytestmark = [pytest.mark.browser, pytest.mark.subprocess]


def test_swagger_ui_renders_offline(tmp_path: Path, chromium: str) -> None:
    with serve(tmp_path / "data", RNNLAB_WORKERS="0") as server:
        dom = subprocess.run(
            [
                chromium,
                "--headless",
                *offline_flags(tmp_path / "chrome"),
                "--virtual-time-budget=15000",
                "--dump-dom",
                f"{server.url}/docs",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    # What Swagger UI's scripts rendered, not the HTML the server sent.
    assert 'class="swagger-ui' in dom
    assert "rnnlab" in dom
    for route in ("/runs", "/runs/{run_id}/losses", "/predict", "/scalar-rnn", "/readyz"):
        assert f'data-path="{route}"' in dom, route
    assert "Failed to load API definition" not in dom
