"""Real Redis and PostgreSQL servers for the scale-out tests (benchmarks/servers.py).

Where a server cannot be had the tests skip saying what is missing, unless
RNNLAB_REQUIRE_SERVERS=1 (.ci/run sets it), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from benchmarks.servers import Unavailable, free_port, postgres_server, redis_server

__all__ = ["free_port", "postgres", "redis_url"]


def missing(what: str) -> None:
    message = f"needs {what} (scripts/test installs it when it runs as root)"
    if os.environ.get("RNNLAB_REQUIRE_SERVERS") == "1":
        pytest.fail(message + "; RNNLAB_REQUIRE_SERVERS=1 forbids skipping")
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    try:
        with redis_server() as url:
            yield url
    except Unavailable as e:
        missing(str(e))


@pytest.fixture(scope="session")
def postgres() -> Iterator[Callable[[], str]]:
    """Calling the fixture's value creates a fresh database and returns its URL."""
    try:
        with postgres_server() as new_database:
            yield new_database
    except Unavailable as e:
        missing(str(e))
