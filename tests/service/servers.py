"""Real Redis and PostgreSQL servers for the scale-out tests, on loopback, in throwaway dirs.

Debian's `redis-server` and `postgresql` (scripts/test installs them as root). Each server
gets a free port and a data directory under pytest's tmp dir, owned by the test run, and is
stopped at the end of the session: never the system's instances. Where a server cannot be
had the tests skip saying what is missing, unless RNNLAB_REQUIRE_SERVERS=1 (.ci/run sets it),
where they fail.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing(what: str) -> None:
    message = f"needs {what} (scripts/test installs it when it runs as root)"
    if os.environ.get("RNNLAB_REQUIRE_SERVERS") == "1":
        pytest.fail(message + "; RNNLAB_REQUIRE_SERVERS=1 forbids skipping")
    pytest.skip(message)


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"{what} did not listen on {port}")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        missing("Debian's redis-server")
    port, data = free_port(), tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(data), "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_port(port, proc, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _pg_tool(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], str]]:
    """A PostgreSQL server; calling the fixture's value creates a fresh database, its URL."""
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        missing("Debian's postgresql (initdb, pg_ctl)")
    try:
        import psycopg
    except ImportError:
        missing("psycopg (pip install -e .[dev])")
    root = os.geteuid() == 0
    if root and shutil.which("runuser") is None:
        missing("runuser, to run PostgreSQL as the postgres user")
    # Not under pytest's tmp dir: that is private to root, and PostgreSQL runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="rnnlab-pg-"))
    data = base / "data"
    prefix = ["runuser", "-u", "postgres", "--"] if root else []
    if root:
        shutil.chown(base, "postgres")
        os.chmod(base, 0o700)
    port = free_port()
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-U", "rnnlab", "--auth=trust", "-E", "UTF8"],
        check=True, capture_output=True,
    )  # fmt: skip
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start"],
        check=True, capture_output=True,
    )  # fmt: skip
    admin = f"postgresql://rnnlab@127.0.0.1:{port}/postgres"

    def new_database() -> str:
        name = "t" + uuid.uuid4().hex[:12]
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://rnnlab@127.0.0.1:{port}/{name}"

    try:
        yield new_database
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)
