"""Access control: API keys (header, cookie for safe requests), open paths, CORS, the warning."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.security import KeyChecker, is_loopback, is_open, warn_if_open
from tests.support.app import make_settings, run_body, train_now
from tests.support.processes import CLI, clean_env, serve

KEYS = "alpha-key-1,beta-key-2"


@pytest.fixture
def locked(tmp_path: Path):
    settings = make_settings(tmp_path, api_keys=KEYS, api_key="gamma-key-3")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def unauthorised(r, *, invalid: bool) -> str:
    """The 401 `r`, checked; its message (problem+json's detail; under /v2 the Open Inference
    Protocol's {"error": ...})."""
    assert r.status_code == 401, r.text
    v2 = r.request.url.path.startswith("/v2")
    kind = "application/json" if v2 else "application/problem+json"
    assert r.headers["content-type"].startswith(kind)
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    assert ('error="invalid_token"' in challenge) is invalid
    return r.json()["error" if v2 else "detail"]


def test_every_data_route_needs_a_key(locked: TestClient) -> None:
    spec = locked.get("/openapi.json").json()
    for path, item in spec["paths"].items():
        if is_open(path):
            continue
        for method in item:
            url = path.replace("{run_id}", "abc").replace("{fmt}", "svg")
            url = url.replace("{version}", "1")
            message = unauthorised(locked.request(method.upper(), url), invalid=False)
            assert "Authorization: Bearer" in message
    unauthorised(locked.get("/metrics"), invalid=False)
    unauthorised(locked.get("/runs", headers=bearer("wrong")), invalid=True)
    unauthorised(locked.get("/runs", headers={"Authorization": "Basic YWxwaGE6"}), invalid=True)
    unauthorised(locked.get("/runs", headers={"Authorization": "Bearer "}), invalid=True)
    # A key that is a prefix or an extension of a real one is wrong too.
    unauthorised(locked.get("/runs", headers=bearer("alpha-key-")), invalid=True)
    unauthorised(locked.get("/runs", headers=bearer("alpha-key-11")), invalid=True)
    # Nothing was stored by the refused POSTs.
    assert locked.get("/runs", headers=bearer("alpha-key-1")).json()["items"] == []


def test_each_configured_key_works_end_to_end(locked: TestClient) -> None:
    for key in ("alpha-key-1", "beta-key-2", "gamma-key-3"):
        r = locked.post("/runs", json=run_body(), headers=bearer(key))
        assert r.status_code == 202, r.text
    run_id = r.json()["id"]
    train_now(locked)
    h = bearer("beta-key-2")
    assert locked.get(f"/runs/{run_id}", headers=h).json()["status"] == "succeeded"
    assert len(locked.get(f"/runs/{run_id}/losses", headers=h).json()["epochs"]) == 3
    body = {"run_id": run_id, "sequences": [[[0.5, 1], [0.2, 1]]]}
    assert len(locked.post("/predict", json=body, headers=h).json()["outputs"][0]) == 2
    events = locked.get(f"/runs/{run_id}/events", headers=h)
    assert events.status_code == 200 and "event: epoch" in events.text


def test_open_paths_stay_open(locked: TestClient) -> None:
    assert locked.get("/healthz").status_code == 200
    assert locked.get("/readyz").status_code == 200
    assert locked.get("/openapi.json").status_code == 200
    docs = locked.get("/docs")
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
    assert locked.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    # The dashboard's page shell holds no data (like the docs); its data needs the key.
    assert locked.get("/").status_code == 200
    assert locked.get("/static/dashboard.js").status_code == 200


def test_a_cookie_authorises_safe_requests_only(locked: TestClient) -> None:
    """EventSource and <img> cannot send headers; a cookie must never start or delete runs."""
    run_id = locked.post("/runs", json=run_body(), headers=bearer("alpha-key-1")).json()["id"]
    locked.cookies.set("rnnlab_key", "alpha-key-1")
    try:
        assert locked.get(f"/runs/{run_id}").status_code == 200
        unauthorised(locked.post("/runs", json=run_body()), invalid=False)
        unauthorised(locked.post(f"/runs/{run_id}/cancel"), invalid=False)
        unauthorised(locked.delete(f"/runs/{run_id}"), invalid=False)
        locked.cookies.set("rnnlab_key", "not-a-key")
        unauthorised(locked.get(f"/runs/{run_id}"), invalid=True)
    finally:
        locked.cookies.clear()


def test_the_schema_asks_for_the_key_exactly_where_it_is_needed(
    locked: TestClient, client: TestClient
) -> None:
    spec = locked.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    for path, item in spec["paths"].items():
        for op in item.values():
            if is_open(path):
                assert "security" not in op and "401" not in op["responses"]
            else:
                assert op["security"] == [{"bearerAuth": []}], path
                assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
    assert {"/healthz", "/readyz", "/runs", "/predict"} <= set(spec["paths"])
    # An open server (no keys) does not pretend to check any.
    open_spec = client.get("/openapi.json").json()
    assert "securitySchemes" not in open_spec.get("components", {})
    assert all(
        "security" not in op and "401" not in op["responses"]
        for item in open_spec["paths"].values()
        for op in item.values()
    )


def test_key_comparison_is_exact() -> None:
    checker = KeyChecker(["k1", "a much longer key"])
    assert checker.accepts(b"k1") and checker.accepts(b"a much longer key")
    assert not checker.accepts(b"k") and not checker.accepts(b"k12")
    assert not checker.accepts(b"") and not KeyChecker([])


def test_cors_is_off_by_default_and_follows_the_setting(tmp_path: Path, client: TestClient) -> None:
    preflight = {
        "Origin": "https://lab.example.org",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    r = client.options("/runs", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in client.get("/runs", headers=preflight).headers
    settings = make_settings(
        tmp_path / "cors", cors_origins="https://lab.example.org", api_keys="k"
    )
    with TestClient(create_app(settings)) as c:
        r = c.options("/runs", headers=preflight)  # a preflight carries no key
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://lab.example.org"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        got = c.get("/runs", headers={"Origin": "https://lab.example.org", **bearer("k")})
        assert got.headers["access-control-allow-origin"] == "https://lab.example.org"
        # A refusal is readable by the page too.
        refused = c.get("/runs", headers={"Origin": "https://lab.example.org"})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == "https://lab.example.org"
        other = c.options("/runs", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        # A browser client of the Open Inference Protocol sends and reads the binary header.
        binary = {
            **preflight,
            "Access-Control-Request-Headers": "authorization, inference-header-content-length",
        }
        r = c.options(f"/v2/models/{'0' * 32}/infer", headers=binary)
        assert r.status_code == 200
        allowed = r.headers["access-control-allow-headers"].lower()
        assert "inference-header-content-length" in allowed
        answer = c.get("/v2/health/live", headers={"Origin": "https://lab.example.org"})
        exposed = answer.headers["access-control-expose-headers"].lower()
        assert "inference-header-content-length" in exposed


def test_an_open_server_beyond_loopback_warns(caplog: pytest.LogCaptureFixture) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    with caplog.at_level(logging.WARNING, logger="rnnlab.api"):
        assert not warn_if_open("127.0.0.1", [])
        assert not warn_if_open("0.0.0.0", ["k"])
        assert warn_if_open("0.0.0.0", [])
    assert [r.message for r in caplog.records if "without API keys" in r.message]


@pytest.mark.subprocess
def test_runs_watch_sends_the_key(tmp_path: Path) -> None:
    with serve(tmp_path / "data", RNNLAB_API_KEYS="watch-key") as server:
        url = server.url
        body = run_body(epochs=5)
        run_id = httpx.post(f"{url}/runs", json=body, headers=bearer("watch-key")).json()["id"]
        env = clean_env()

        def watch(*extra: str, **more_env: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [*CLI, "runs", "watch", run_id, "--server", url, *extra],
                capture_output=True, text=True, timeout=120, env={**env, **more_env},
            )  # fmt: skip

        refused = watch()
        assert refused.returncode == 2 and "401" in refused.stderr
        done = watch("--api-key", "watch-key")
        assert done.returncode == 0, done.stderr
        assert f"run {run_id}: succeeded after 5 epochs" in done.stdout
        assert watch(RNNLAB_API_KEY="watch-key").returncode == 0
