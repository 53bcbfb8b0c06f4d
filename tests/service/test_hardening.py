"""Issue 9's first pieces: 405 with a full Allow, DELETE /runs/{id}, the queue bound."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service import lifecycle
from service.app import create_app
from service.tables import Checkpoint, EpochLoss
from service.workers import Worker
from tests.service.conftest import make_settings, run_body

PROBLEM = "application/problem+json"


def problem(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    return r.json()


def test_405_lists_every_method_of_the_path(client: TestClient) -> None:
    r = client.options("/runs")
    problem(r, 405)
    assert r.headers["allow"] == "GET, POST"
    r = client.put("/runs/abc")
    problem(r, 405)
    assert r.headers["allow"] == "DELETE, GET"
    assert client.get("/predict").headers["allow"] == "POST"
    assert client.post("/runs/abc/losses").headers["allow"] == "GET"


def test_delete_an_ended_run_and_everything_that_reads_it(client: TestClient) -> None:
    run_id = client.post("/runs", json=run_body()).json()["id"]
    Worker(client.app.state.settings, db=client.app.state.db).work(burst=True)
    body = {"run_id": run_id, "sequences": [[[0.5, 1], [0.2, 1]]]}
    assert client.post("/predict", json=body).status_code == 200  # now cached
    assert client.get(f"/runs/{run_id}/plots/losses.svg").status_code == 200  # cached too
    r = client.delete(f"/runs/{run_id}")
    assert r.status_code == 204 and r.content == b""
    for path in ("", "/losses", "/members", "/checkpoint", "/plots/losses.svg", "/events"):
        problem(client.get(f"/runs/{run_id}{path}"), 404)
    problem(client.post("/predict", json=body), 404)
    problem(client.get("/compare", params={"runs": run_id}), 404)
    assert run_id not in [r["id"] for r in client.get("/runs").json()["items"]]
    assert run_id not in client.app.state.model_cache._models
    problem(client.delete(f"/runs/{run_id}"), 404)
    with client.app.state.db.reading() as session:
        for table in (EpochLoss, Checkpoint):
            n = session.scalar(
                select(func.count()).select_from(table).where(table.run_id == run_id)
            )
            assert n == 0, table


def test_a_queued_or_running_run_cannot_be_deleted(client: TestClient) -> None:
    queued = client.post("/runs", json=run_body()).json()["id"]
    body = problem(client.delete(f"/runs/{queued}"), 409)
    assert "cancel it first" in body["detail"]
    claim = lifecycle.claim(client.app.state.db, worker_id="test/1/x")
    assert claim is not None and claim.run_id == queued
    problem(client.delete(f"/runs/{queued}"), 409)  # running now
    assert client.get(f"/runs/{queued}").status_code == 200
    problem(client.delete("/runs/nope"), 404)


def test_the_queue_bound_refuses_before_storing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_queued=2, queue_retry_after_s=7)
    with TestClient(create_app(settings)) as client:
        first = client.post("/runs", json=run_body()).json()["id"]
        assert client.post("/runs", json=run_body()).status_code == 202
        r = client.post("/runs", json=run_body())
        body = problem(r, 429)
        assert r.headers["retry-after"] == "7"
        assert "2 runs are already queued" in body["detail"]
        assert len(client.get("/runs").json()["items"]) == 2  # nothing stored
        client.post(f"/runs/{first}/cancel")  # one leaves the queue: room again
        assert client.post("/runs", json=run_body()).status_code == 202
        spec = client.get("/openapi.json").json()["paths"]["/runs"]["post"]["responses"]
        assert "Retry-After" in spec["429"]["headers"]


def test_operation_ids_are_short_verbs(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ids = {
        (method.upper(), path): op["operationId"]
        for path, item in spec["paths"].items()
        for method, op in item.items()
    }
    assert len(set(ids.values())) == len(ids)  # unique
    assert ids[("POST", "/runs")] == "create_run"
    assert ids[("GET", "/runs")] == "list_runs"
    assert ids[("GET", "/runs/{run_id}/losses")] == "read_losses"
    assert ids[("POST", "/predict")] == "predict"
    assert ids[("DELETE", "/runs/{run_id}")] == "delete_run"
    assert all(len(i) <= 24 and i.replace("_", "").isalpha() for i in ids.values()), ids
