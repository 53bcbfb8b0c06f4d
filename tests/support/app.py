"""The app in this process: test settings, request bodies, stored rows, waiting, problems."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.queue.workers import Worker
from service.settings import Settings

PROBLEM = "application/problem+json"
HOLD_FILE = "hold"  # RNNLAB_HOLD_FILE's name in a test's data directory
HELD_FILE = HOLD_FILE + ".held"  # written by a worker while it holds a run (execution.hold)


def hold_runs(data_dir: Path, after: int = 2) -> Path:
    """Workers of `data_dir` (`make_settings`, `serve`, or RNNLAB_HOLD_FILE pointing here) hold
    their runs at every epoch boundary once `after` epochs are reported, until the returned
    file is removed (`release`), the worker stops or the run is cancelled: a test interrupts a
    run mid-training there however fast the kernels are (Settings.hold_file). `held_at` says
    when one is held."""
    (data_dir / HELD_FILE).unlink(missing_ok=True)
    path = data_dir / HOLD_FILE
    path.write_text(str(after))
    return path


def held_at(data_dir: Path) -> int | None:
    """The epoch at which a run of `data_dir` is held (`hold_runs`); None before one is."""
    try:
        text = (data_dir / HELD_FILE).read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None  # None too while it is being written


def release(data_dir: Path) -> None:
    """Let held runs go on (`hold_runs`)."""
    (data_dir / HOLD_FILE).unlink(missing_ok=True)
    (data_dir / HELD_FILE).unlink(missing_ok=True)


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: fast heartbeats and polling, no local workers unless asked; runs
    held while `hold_runs` says so."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "hold_file": data_dir / HOLD_FILE,
        "workers": 0,
        "heartbeat_interval_s": 0.2,
        "heartbeat_timeout_s": 3.0,
        "reap_interval_s": 0.5,
        "poll_interval_s": 0.05,
        "shutdown_grace_s": 20.0,
        "threads_per_worker": 1,
    }
    values.update(overrides)
    return Settings(**values)


def run_body(**overrides: Any) -> dict[str, Any]:
    """A POST /runs body small enough to train in a fraction of a second.

    Two members: every lifecycle test (cancel, re-queue, kill, restart) runs a population.
    """
    body: dict[str, Any] = {
        "model": "lstm",
        "epochs": 3,
        "seed": 7,
        "population": 2,
        "data": {"n_sequences": 3, "seq_len": 40},
    }
    body.update(overrides)
    return body


def submit(client: TestClient, **overrides: Any) -> str:
    """POST /runs with `run_body(**overrides)`; the new run's id."""
    r = client.post("/runs", json=run_body(**overrides))
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    return r.json()["id"]


def train_now(client: TestClient) -> None:
    """Execute every queued run in this process (a real worker, no subprocess)."""
    Worker(client.app.state.settings, db=client.app.state.db).work(burst=True)


def db_row(data_dir: Path, run_id: str) -> dict[str, Any]:
    """The run's row as stored, read with plain sqlite3 (no app needed)."""
    with contextlib.closing(sqlite3.connect(data_dir / "rnnlab.db", timeout=30)) as con:
        con.row_factory = sqlite3.Row
        row = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    assert row is not None, run_id
    return dict(row)


def problem(r: Any, status: int) -> dict[str, Any]:
    """The RFC 9457 answer `r`, checked to be one with this status; its body."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"] == "about:blank"
    return body


def wait_for(
    get: Callable[[], Any],
    done: Callable[[Any], bool],
    timeout: float = 60.0,
    interval: float = 0.05,
) -> Any:
    """Poll `get()` until `done(value)`; fail the test with the last value on timeout.

    The timeout only bounds a wait for something that must happen: it is generous, for a
    loaded machine, never a guess at how long something takes.
    """
    deadline = time.monotonic() + timeout
    value = get()
    while not done(value):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s; last value: {value}")
        time.sleep(interval)
        value = get()
    return value
