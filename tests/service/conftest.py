"""Service fixtures: a real app on a real SQLite file in a temporary directory; a browser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.db import Database
from service.settings import Settings
from tests.support import browser as chrome
from tests.support.app import make_settings
from tests.support.missing import missing_browser


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def db(client: TestClient) -> Database:
    return client.app.state.db  # type: ignore[attr-defined]


@pytest.fixture
def chromium() -> str:
    """Debian's chromium binary (skip without it, fail under RNNLAB_REQUIRE_BROWSER=1)."""
    if chrome.CHROMIUM is None:
        missing_browser("Debian's chromium")
    return chrome.CHROMIUM


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Any]:
    """A selenium driver of headless, offline Chromium (needs chromium-driver too)."""
    if chrome.CHROMEDRIVER is None:
        missing_browser("Debian's chromium-driver")
    with chrome.webdriver(tmp_path / "chrome") as driver:
        yield driver
