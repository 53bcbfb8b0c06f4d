"""docker-compose.yml, checked without a Docker engine: the roles, health checks and order."""

from __future__ import annotations

from pathlib import Path

import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_api_workers_redis_postgres_in_order() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
    for name, service in services.items():
        if name != "migrate":
            assert "healthcheck" in service, name
    # One image for both roles; the API and the workers wait for a migrated database.
    assert services["api"]["image"] == services["worker"]["image"] == services["migrate"]["image"]
    for role in ("api", "worker"):
        deps = services[role]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "ports" not in services["worker"]  # scalable: --scale worker=4
    assert set(compose["volumes"]) == {"rnnlab-data", "rnnlab-postgres", "rnnlab-redis"}
    # The environment is settings this version reads (no typo silently ignored).
    env = services["api"]["environment"]
    assert env["RNNLAB_QUEUE"] == "celery" and env["RNNLAB_WORKERS"] == "0"
    fields = {f"RNNLAB_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())
    devices = gpu["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
