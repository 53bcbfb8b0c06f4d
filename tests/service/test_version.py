"""The version: pyproject.toml is its one source, the API reports it, the changelog has it."""

from __future__ import annotations

import tomllib
from pathlib import Path

from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_openapi_reports_the_project_version(settings: Settings) -> None:
    # The schema alone: no lifespan, so no workers or warm-up threads start.
    assert create_app(settings).openapi()["info"]["version"] == project_version()


def test_the_version_has_a_changelog_entry() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog
    assert f"## [{project_version()}] - " in changelog
