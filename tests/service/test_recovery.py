"""Crashes and stops: killed workers, killed servers, orphaned workers, SIGTERM.

Every process a test starts is killed in a finally block (servers run in their own process
group, so os.killpg reaches their workers too), whatever the test's outcome.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.queue.workers import HOST
from service.settings import Settings
from tests.support.app import db_row, hold_runs, make_settings, release, run_body, wait_for
from tests.support.processes import START_TIMEOUT, live_group_members, serve, wait_group_gone

pytestmark = pytest.mark.subprocess

# Runs that a test interrupts are held at their epoch boundaries from epoch 2 on
# (`hold_runs`) until the test releases them: interrupted mid-training whatever the
# kernels' speed, then finished in a moment.
INTERRUPTIBLE_EPOCHS = 40
ENDED = ("succeeded", "failed", "cancelled")


def wait_training(get: Any) -> dict[str, Any]:
    """Wait until the run is running and has committed two epochs (so it is mid-training)."""
    return wait_for(
        get, lambda v: v["status"] == "running" and v["epochs_completed"] >= 2, START_TIMEOUT
    )


def worker_pid(worker_id: str) -> int:
    host, pid, _token = worker_id.split("/")
    assert host == HOST
    return int(pid)


# --- a worker process killed under the pool ----------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """This module's `client` runs one real worker process."""
    return make_settings(tmp_path, workers=1)


def test_killed_worker_run_is_requeued_and_succeeds(client: TestClient, settings: Settings) -> None:
    hold_runs(settings.data_dir)
    r = client.post("/runs", json=run_body(epochs=INTERRUPTIBLE_EPOCHS))
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]

    def run() -> dict[str, Any]:
        return client.get(f"/runs/{run_id}").json()

    wait_training(run)
    pid = worker_pid(db_row(settings.data_dir, run_id)["worker_id"])
    assert pid in {p.pid for p in mp.active_children()}  # one of our pool's workers
    os.kill(pid, signal.SIGKILL)
    release(settings.data_dir)

    final = wait_for(run, lambda v: v["status"] in ENDED, START_TIMEOUT, interval=0.2)
    assert final["status"] == "succeeded", final["error"]
    assert final["attempt"] == 2
    assert final["epochs_completed"] == INTERRUPTIBLE_EPOCHS
    losses = client.get(f"/runs/{run_id}/losses").json()
    assert losses["epochs"] == list(range(1, INTERRUPTIBLE_EPOCHS + 1))
    row = db_row(settings.data_dir, run_id)
    assert row["requeues"] == 1  # counted toward RNNLAB_MAX_REQUEUES
    assert worker_pid(row["worker_id"]) != pid  # a restarted worker finished it
    # The pool is whole again.
    ready = wait_for(lambda: client.get("/readyz").json(), lambda v: v["status"] == "ok", 30)
    assert ready["checks"]["workers"] == {"alive": 1, "configured": 1}


# --- `rnnlab serve` as a separate process -------------------------------------------------


def test_server_killed_with_its_workers_then_restarted(tmp_path: Path) -> None:
    hold_runs(tmp_path)
    with serve(tmp_path, log=tmp_path / "server1.log") as first:
        running = first.submit(epochs=INTERRUPTIBLE_EPOCHS, seed=1)
        queued = first.submit(epochs=50, seed=2)
        wait_training(lambda: first.run(running))
        assert first.run(queued)["status"] == "queued"  # one worker: it waits its turn
        os.killpg(first.proc.pid, signal.SIGKILL)  # the server and its workers, at once
        first.proc.wait(30)
        wait_group_gone(first.proc.pid, 30)

    assert db_row(tmp_path, running)["status"] == "running"  # nobody was left to say otherwise
    assert db_row(tmp_path, queued)["status"] == "queued"
    release(tmp_path)

    with serve(tmp_path, log=tmp_path / "server2.log") as second:
        for run_id in (running, queued):
            run = wait_for(
                lambda run_id=run_id: second.run(run_id),
                lambda v: v["status"] in ENDED,
                START_TIMEOUT,
                interval=0.2,
            )
            assert run["status"] == "succeeded", (run, second.output())
            assert run["epochs_completed"] == run["config"]["epochs"]
            epochs = second.http.get(f"/runs/{run_id}/losses").json()["epochs"]
            assert epochs == list(range(1, run["config"]["epochs"] + 1))
        assert second.run(running)["attempt"] == 2
        assert second.run(queued)["attempt"] == 1
    assert db_row(tmp_path, running)["requeues"] == 1


def test_orphaned_workers_stop_on_their_own(tmp_path: Path) -> None:
    hold_runs(tmp_path)
    with serve(tmp_path, log=tmp_path / "server.log") as server:
        run_id = server.submit(epochs=INTERRUPTIBLE_EPOCHS)
        wait_training(lambda: server.run(run_id))
        pgid = server.proc.pid
        worker = worker_pid(db_row(tmp_path, run_id)["worker_id"])
        assert worker in live_group_members(pgid)

        server.proc.kill()  # the API process alone: its workers are orphaned
        server.proc.wait(30)
        # Each orphan notices its parent is gone at its next epoch, hands its run back and
        # exits; nothing of the server's (workers, resource tracker) is left running.
        wait_group_gone(pgid, 30)

    row = db_row(tmp_path, run_id)
    assert row["status"] == "queued"
    assert row["worker_id"] is None
    assert row["error"] is None
    assert row["requeues"] == 0  # handed back, not lost
    assert row["epochs_completed"] >= 2


def test_sigterm_stops_the_server_gracefully(tmp_path: Path) -> None:
    hold_runs(tmp_path)
    with serve(tmp_path, log=tmp_path / "server1.log") as first:
        run_id = first.submit(epochs=INTERRUPTIBLE_EPOCHS)
        wait_training(lambda: first.run(run_id))
        first.proc.terminate()
        try:
            returncode = first.proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rnnlab serve ignored SIGTERM for 30 s:\n{first.output()}")
        output = first.output()
        # uvicorn re-raises the signal once its shutdown is complete, so the process ends
        # "killed by SIGTERM" (shell status 143) rather than 0; the log tells it finished.
        assert returncode in (0, -signal.SIGTERM), output
        assert "Application shutdown complete" in output
        assert "Traceback" not in output
        wait_group_gone(first.proc.pid, 30)  # its workers exited with it

    row = db_row(tmp_path, run_id)
    assert row["status"] == "queued"
    assert row["error"] is None
    assert row["requeues"] == 0
    assert 2 <= row["epochs_completed"] < INTERRUPTIBLE_EPOCHS

    release(tmp_path)
    with serve(tmp_path, log=tmp_path / "server2.log") as second:
        run = wait_for(
            lambda: second.run(run_id),
            lambda v: v["status"] in ENDED,
            START_TIMEOUT,
            interval=0.2,
        )
        assert run["status"] == "succeeded", (run, second.output())
        assert run["attempt"] == 2
        epochs = second.http.get(f"/runs/{run_id}/losses").json()["epochs"]
        assert epochs == list(range(1, INTERRUPTIBLE_EPOCHS + 1))
