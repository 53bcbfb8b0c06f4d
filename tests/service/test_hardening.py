"""Issue 9's first pieces: 405 with a full Allow, DELETE /runs/{id}, the queue bound."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.app import create_app
from service.queue import lifecycle
from service.tables import Checkpoint, EpochLoss
from tests.support.app import make_settings, problem, run_body, train_now


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
    train_now(client)
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


# --- a schema that tells the truth ----------------------------------------------------------


def test_the_schema_publishes_this_servers_limits(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, max_epochs=500, max_hidden_size=8, max_batch_size=16, max_n_sequences=40,
        max_seq_len=3000, max_predict_sequences=5, max_predict_steps=1000,
        max_train_activations=100_000,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        comps = client.get("/openapi.json").json()["components"]["schemas"]
        run, data = comps["RunCreate"]["properties"], comps["DataSpec"]["properties"]
        assert run["epochs"]["maximum"] == 500
        assert run["hidden_size"]["maximum"] == 8
        assert run["batch_size"]["maximum"] == 16
        assert data["n_sequences"]["maximum"] == 40 and data["seq_len"]["maximum"] == 3000
        assert run["population"]["maximum"] == 64
        assert "combined_limit_exceeded" in comps["RunCreate"]["description"]
        seqs = comps["PredictRequest"]["properties"]["sequences"]
        assert seqs["maxItems"] == 5 and seqs["items"]["maxItems"] == 1000
        assert comps["ScalarRNNRequest"]["properties"]["x"]["maxItems"] == 1000
        # Each published bound is the one enforced: one past it is a 422 naming the field.
        for body, loc in [
            (run_body(epochs=501), ["body", "epochs"]),
            (run_body(hidden_size=9), ["body", "hidden_size"]),
            (run_body(data={"n_sequences": 41, "seq_len": 10}), ["body", "data", "n_sequences"]),
        ]:
            errors = problem(client.post("/runs", json=body), 422)["errors"]
            assert [(e["loc"], e["type"]) for e in errors] == [(loc, "limit_exceeded")]
        assert client.post("/runs", json=run_body(epochs=500, hidden_size=8)).status_code == 202
        # A bound across fields: within each field's maximum, over the product.
        big = run_body(data={"n_sequences": 40, "seq_len": 3000}, batch_size=16, hidden_size=8)
        errors = problem(client.post("/runs", json=big), 422)["errors"]
        assert [e["type"] for e in errors] == ["combined_limit_exceeded"]
        assert "× population" in errors[0]["msg"]
        x = {"x": [0.5] * 1001, "w_i": 1, "w_h": 1, "w_o": 1, "h_bias": 0, "y_bias": 0}
        assert problem(client.post("/scalar-rnn", json=x), 422)["errors"][0]["loc"] == [
            "body",
            "x",
        ]


def test_limits_below_the_defaults_are_refused_at_startup(tmp_path: Path) -> None:
    """A default run must be accepted, or the schema's defaults would break its maxima."""
    with pytest.raises(ValueError, match=r"RNNLAB_MAX_SEQ_LEN=900 \(needs 3000\)"):
        make_settings(tmp_path, max_seq_len=900)
    with pytest.raises(ValueError, match=r"RNNLAB_MAX_TRAIN_ACTIVATIONS=500 \(needs 72000\)"):
        make_settings(tmp_path, max_train_activations=500)


def test_bodies_that_are_not_json_get_one_documented_answer(client: TestClient) -> None:
    ops = client.get("/openapi.json").json()["paths"]
    for path in ("/runs", "/predict", "/scalar-rnn"):
        assert "not JSON" in ops[path]["post"]["responses"]["422"]["description"]
        for data, headers, kind in [
            (b"\xff\xfe\x00{", {"content-type": "application/json"}, "json_invalid"),
            (b'{"model": ', {"content-type": "application/json"}, "json_invalid"),
            (b'{"model": "lstm"}', {"content-type": "text/plain"}, "content_type"),
            (b'{"model": "lstm"}', {}, "content_type"),
        ]:
            body = problem(client.post(path, content=data, headers=headers), 422)
            assert [(e["loc"], e["type"]) for e in body["errors"]] == [(["body"], kind)], body
    body = problem(client.post("/runs", content=b"[1,"), 422)
    assert "Content-Type: application/json" in body["detail"]


def test_cursors_are_opaque_positions_and_never_refused(client: TestClient) -> None:
    ids = [client.post("/runs", json=run_body()).json()["id"] for _ in range(3)]
    pattern = next(
        p
        for p in client.get("/openapi.json").json()["paths"]["/runs"]["get"]["parameters"]
        if p["name"] == "cursor"
    )["schema"]["anyOf"][0]["pattern"]
    first = client.get("/runs", params={"limit": 2}).json()
    assert re.fullmatch(pattern, first["next_cursor"])
    rest = client.get("/runs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [r["id"] for r in first["items"] + rest["items"]] == ids[::-1]
    # Any string of the pattern is a position: the oldest possible one has nothing after it,
    # the newest possible one everything.
    assert client.get("/runs", params={"cursor": "A" * 32}).json()["items"] == []
    newest = client.get("/runs", params={"cursor": "_" * 32}).json()["items"]
    assert [r["id"] for r in newest] == ids[::-1]
    for bad in ("@@@", "A" * 31, "A" * 33):
        errors = problem(client.get("/runs", params={"cursor": bad}), 422)["errors"]
        assert errors[0]["loc"] == ["query", "cursor"]


@pytest.mark.parametrize("path", ["fused", "torch"])
def test_non_finite_outputs_are_a_422_not_a_null(
    client: TestClient, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each prediction path, whichever this machine's calibration would pick.
    monkeypatch.setattr("models.chooser.predict_path", lambda **shape: path)
    run_id = client.post("/runs", json=run_body(model="elman")).json()["id"]
    train_now(client)
    # Inputs must be float32 numbers (published in the schema)...
    body = {"run_id": run_id, "sequences": [[[0.5, 1], [1e39, 0]]]}
    error = problem(client.post("/predict", json=body), 422)["errors"][0]
    assert error["loc"] == ["body", "sequences", 0, 1, 0] and error["type"] == "less_than_equal"
    # ... and a model whose outputs are not finite for some input answers 422, saying where.
    # (Here its read-out weights are made huge: where both hidden units saturate at +1, the
    # read-out sums two products of 3e38, over float32's range in any order, fused
    # multiply-adds included, and on either prediction path; a small input stays finite.)
    body = {"run_id": run_id, "sequences": [[[0.5, 1]], [[0.5, 1], [3e38, 3e38]]]}
    assert client.post("/predict", json=body).status_code == 200  # loaded, cached
    model = client.app.state.model_cache.get(client.app.state.db, run_id)
    with torch.no_grad():
        model.l1.weight.fill_(0.1)  # tanh(0.15) at (0.5, 1); tanh(6e37) = 1 at (3e38, 3e38)
        model.l1.bias.fill_(0)
        model.hr.weight.fill_(0)
        model.hr.bias.fill_(0)
        model.l2.weight.fill_(3e38)
        model.l2.bias.fill_(0)
    error = problem(client.post("/predict", json=body), 422)["errors"][0]
    assert error["loc"] == ["body", "sequences", 1, 1] and error["type"] == "non_finite_output"
    big = {"x": [1e308], "w_i": 1e308, "w_h": 0, "w_o": 1e308, "h_bias": 1e308, "y_bias": 0}
    error = problem(client.post("/scalar-rnn", json=big), 422)["errors"][0]
    assert error["type"] == "non_finite_output" and error["msg"].startswith("y[0]")


def test_seeds_stay_within_what_json_clients_carry_exactly(client: TestClient) -> None:
    seed = client.get("/openapi.json").json()["components"]["schemas"]["RunCreate"]
    assert seed["properties"]["seed"]["anyOf"][0]["maximum"] == 2**53 - 1
    assert client.post("/runs", json=run_body(seed=2**53 - 1)).status_code == 202
    problem(client.post("/runs", json=run_body(seed=2**53)), 422)
    picked = client.post("/runs", json=run_body(seed=None)).json()["config"]["seed"]
    assert 0 <= picked < 2**31


def test_integers_are_json_schema_integers(client: TestClient) -> None:
    """3.0 is an integer to JSON Schema (and to any client that wrote it); "3" and true not."""
    r = client.post("/runs", json=run_body(epochs=3.0, seed=77572.0))
    assert r.status_code == 202, r.text
    assert (r.json()["config"]["epochs"], r.json()["config"]["seed"]) == (3, 77572)
    for bad in ("3", True, 3.5):
        errors = problem(client.post("/runs", json=run_body(epochs=bad)), 422)["errors"]
        assert errors[0]["loc"] == ["body", "epochs"]
