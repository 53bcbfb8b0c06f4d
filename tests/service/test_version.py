"""The version: pyproject.toml is its one source, and the API reports it."""

from __future__ import annotations

import tomllib
from pathlib import Path

from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_openapi_reports_the_project_version(client: TestClient) -> None:
    assert client.get("/openapi.json").json()["info"]["version"] == project_version()
