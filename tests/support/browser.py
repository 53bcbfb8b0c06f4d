"""Debian's headless Chromium and its driver, able to reach loopback and nothing else.

The `chromium` and `browser` fixtures (tests/service/conftest.py) skip without them, or fail
under RNNLAB_REQUIRE_BROWSER=1 (as in CI). Screenshots also go to $RNNLAB_SCREENSHOT_DIR when
it is set, to look at them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def offline_flags(profile: Path) -> list[str]:
    """Chromium flags for a headless browser that can reach loopback and nothing else."""
    return [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        # Only loopback is reachable, as on an offline machine.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ]


@contextlib.contextmanager
def webdriver(profile: Path) -> Iterator[Any]:
    """A selenium driver of headless Chromium (CHROMIUM, CHROMEDRIVER), quit at exit."""
    from selenium import webdriver as wd
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options = wd.ChromeOptions()
    options.binary_location = CHROMIUM
    flags = ["--headless=new", "--disable-dev-shm-usage", "--window-size=1400,2200"]
    for arg in flags + offline_flags(profile):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = wd.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: Any, tmp_path: Path, name: str) -> Path:
    """A screenshot in the test's directory (and in $RNNLAB_SCREENSHOT_DIR when set)."""
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    keep = os.environ.get("RNNLAB_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path
