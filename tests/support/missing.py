"""What a test does when a program it needs is not installed: skip, or fail where required.

RNNLAB_REQUIRE_SERVERS=1 (Redis, PostgreSQL) and RNNLAB_REQUIRE_BROWSER=1 (Chromium and its
driver) turn the skip into a failure; .ci/run sets both, so CI never passes by skipping.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(what: str, *, required_by: str) -> NoReturn:
    """Skip the test for want of `what`, or fail it when the setting `required_by` is 1."""
    message = f"needs {what} (scripts/test installs it when it runs as root)"
    if os.environ.get(required_by) == "1":
        pytest.fail(f"{message}; {required_by}=1 forbids skipping")
    pytest.skip(message)


def missing_server(what: str) -> NoReturn:
    missing(what, required_by="RNNLAB_REQUIRE_SERVERS")


def missing_browser(what: str) -> NoReturn:
    missing(what, required_by="RNNLAB_REQUIRE_BROWSER")
