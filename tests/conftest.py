"""Fixtures for every test directory: throwaway Redis and PostgreSQL servers (tests/support)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.missing import missing_server
from tests.support.servers import Unavailable, postgres_server, redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A redis-server of this session, on loopback; its URL."""
    try:
        with redis_server() as url:
            yield url
    except Unavailable as e:
        missing_server(str(e))


@pytest.fixture(scope="session")
def postgres() -> Iterator[Callable[[], str]]:
    """A PostgreSQL server of this session; calling the value creates a fresh database and
    returns its URL."""
    try:
        with postgres_server() as new_database:
            yield new_database
    except Unavailable as e:
        missing_server(str(e))
