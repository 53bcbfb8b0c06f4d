"""The `rnnlab worker` command: a worker alone against the same database as the API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.support.app import make_settings, run_body

pytestmark = pytest.mark.subprocess


def test_standalone_worker_drains_the_queue(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, workers=0)  # the API alone: nothing trains in it
    with TestClient(create_app(settings)) as client:
        ids = [client.post("/runs", json=run_body(model=m)).json()["id"] for m in ("elman", "lstm")]
        assert client.get("/readyz").json()["checks"]["workers"]["local"] == 0
        env = {
            **os.environ,
            "RNNLAB_DATA_DIR": str(tmp_path),
            "RNNLAB_THREADS_PER_WORKER": "1",
            "RNNLAB_POLL_INTERVAL_S": "0.05",
        }
        done = subprocess.run(
            [sys.executable, "-m", "service.cli", "worker", "--burst"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        for run_id in ids:
            run = client.get(f"/runs/{run_id}").json()
            assert run["status"] == "succeeded", run
            assert run["epochs_completed"] == 3
            assert client.get(f"/runs/{run_id}/losses").json()["epochs"] == [1, 2, 3]


def test_cli_rejects_unknown_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "fly"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "invalid choice" in done.stderr
