"""Throwaway Redis and PostgreSQL servers on loopback (Debian's packages): a free port, a fresh
data directory owned by the caller, stopped on exit. Never the system's instances. As root,
PostgreSQL runs as the `postgres` user the package creates.

Tests get them through the `redis_url` and `postgres` fixtures (tests/conftest.py);
benchmarks/sweep.py starts them itself, so this module needs nothing but the standard library
and psycopg (no pytest).
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
from contextlib import contextmanager
from pathlib import Path


class Unavailable(RuntimeError):
    """The server's programs are not installed here (the message says which)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen | None, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port}")


@contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server on a free loopback port, no persistence; yields its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise Unavailable("Debian's redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="rnnlab-redis-") as data:
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", data, "--daemonize", "no"],
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


@contextmanager
def postgres_server() -> Iterator[Callable[[], str]]:
    """A PostgreSQL server on a free loopback port; yields a function that creates a fresh
    database and returns its SQLAlchemy URL."""
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise Unavailable("Debian's postgresql (initdb, pg_ctl)")
    try:
        import psycopg
    except ImportError as e:
        raise Unavailable("psycopg (pip install -e .)") from e
    root = os.geteuid() == 0
    if root and shutil.which("runuser") is None:
        raise Unavailable("runuser, to run PostgreSQL as the postgres user")
    prefix = ["runuser", "-u", "postgres", "--"] if root else []
    base = Path(tempfile.mkdtemp(prefix="rnnlab-pg-"))  # /tmp: reachable for postgres
    data, port = base / "data", free_port()
    try:
        if root:
            shutil.chown(base, "postgres")
        subprocess.run(
            [*prefix, initdb, "-D", str(data), "-U", "rnnlab", "--auth=trust", "-E", "UTF8"],
            check=True, capture_output=True,
        )  # fmt: skip
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(base / "log"), "-w",
             "start"],
            check=True, capture_output=True,
        )  # fmt: skip
        admin = f"postgresql://rnnlab@127.0.0.1:{port}/postgres"

        def new_database() -> str:
            name = "t" + uuid.uuid4().hex[:12]
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            return f"postgresql+psycopg://rnnlab@127.0.0.1:{port}/{name}"

        yield new_database
    finally:
        if data.exists():
            subprocess.run(
                [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
            )
        shutil.rmtree(base, ignore_errors=True)
