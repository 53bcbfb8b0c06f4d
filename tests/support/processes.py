"""`rnnlab` as a user starts it: a separate process (`serve`, `CLI`), and its process group.

Every process a test starts is killed when the test ends, whatever its outcome: `serve` runs
the server in its own process group, so one os.killpg reaches its workers too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.app import HOLD_FILE, run_body, wait_for
from tests.support.servers import free_port

CLI = [sys.executable, "-m", "service.cli"]
START_TIMEOUT = 90.0  # a server or worker imports torch first: seconds on a busy 2-core machine
SERVER_ENV = {
    "RNNLAB_WORKERS": "1",
    "RNNLAB_THREADS_PER_WORKER": "1",
    "RNNLAB_HEARTBEAT_INTERVAL_S": "0.5",
    "RNNLAB_HEARTBEAT_TIMEOUT_S": "3",
    "RNNLAB_REAP_INTERVAL_S": "0.5",
    "RNNLAB_POLL_INTERVAL_S": "0.05",
    "RNNLAB_SHUTDOWN_GRACE_S": "20",
    "RNNLAB_LOG_LEVEL": "info",
}


def clean_env(**env_vars: str) -> dict[str, str]:
    """This process's environment without any RNNLAB_* setting, plus `env_vars`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")}
    env.update(env_vars)
    return env


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    http: httpx.Client
    log: Path

    @property
    def url(self) -> str:
        return str(self.http.base_url).rstrip("/")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def submit(self, **overrides: Any) -> str:
        """POST /runs with `run_body(**overrides)`; the new run's id."""
        r = self.http.post("/runs", json=run_body(**overrides))
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def run(self, run_id: str) -> dict[str, Any]:
        r = self.http.get(f"/runs/{run_id}")
        assert r.status_code == 200, r.text
        return r.json()


def live_group_members(pgid: int) -> list[int]:
    """Pids of the processes in process group `pgid` that have not exited (zombies excluded:
    an orphan's zombie lingers where PID 1 does not reap, but it runs nothing)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


def wait_group_gone(pgid: int, timeout: float) -> None:
    wait_for(lambda: {"alive": live_group_members(pgid)}, lambda v: not v["alive"], timeout)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the process group `proc` leads, if anything of it is left, and reap `proc`.

    Only while the group is certainly ours: its leader not yet reaped, or members left (a
    process group id in use is never handed out again as a new pid).
    """
    if proc.poll() is None or live_group_members(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


@contextlib.contextmanager
def serve(data_dir: Path, *, log: Path | None = None, **env_vars: str) -> Iterator[Server]:
    """`rnnlab serve` on a free loopback port, with one local worker on `data_dir` (SERVER_ENV,
    then `env_vars`), its runs held while `hold_runs(data_dir)` says so; yields once /readyz
    says ok. The server and its workers are killed at exit; its output is in `log` (default
    <data_dir>/serve.log)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = log or data_dir / "serve.log"
    port = free_port()
    env = clean_env(**SERVER_ENV)
    env.update(RNNLAB_DATA_DIR=str(data_dir), RNNLAB_HOLD_FILE=str(data_dir / HOLD_FILE))
    env.update(env_vars)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            server = Server(proc, http, log)
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"rnnlab serve exited with {proc.returncode}:\n{server.output()}")
                with contextlib.suppress(httpx.TransportError, ValueError):
                    if http.get("/readyz").json().get("status") == "ok":
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"rnnlab serve was not ready in time:\n{server.output()}")
                time.sleep(0.05)
            yield server
    finally:
        kill_group(proc)  # the server, its workers, multiprocessing's resource tracker
