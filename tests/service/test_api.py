"""Every endpoint and its error cases, against the real app and a real SQLite file."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load as load_safetensors

import models
from service.db import Database
from tests.support.app import make_settings, problem, run_body, train_now


def error_locs(body: dict) -> list[list]:
    return [e["loc"] for e in body["errors"]]


# --- POST /runs ---------------------------------------------------------------------------


def test_create_run_defaults_and_location(client: TestClient) -> None:
    resp = client.post("/runs", json={"model": "elman"})
    assert resp.status_code == 202
    run = resp.json()
    assert resp.headers["location"] == f"/runs/{run['id']}"
    assert run["status"] == "queued"
    assert run["attempt"] == 0 and run["epochs_completed"] == 0
    cfg = run["config"]
    assert cfg["model"] == "elman"
    assert cfg["hidden_size"] == 2 and cfg["epochs"] == 300 and cfg["batch_size"] == 3
    assert cfg["learning_rate"] == 0.03 and cfg["device"] == "auto"
    assert cfg["population"] == 4 and cfg["lr_schedule"] == "constant"
    assert cfg["clip_grad_norm"] == 0
    assert cfg["data"] == {"n_sequences": 9, "seq_len": 3000, "marker_probs": [0.25, 0.25, 0.5]}
    # The server picked a seed and recorded it.
    assert isinstance(cfg["seed"], int) and cfg["seed"] >= 0
    assert run["created_at"].endswith("Z") or run["created_at"].endswith("+00:00")
    assert run["started_at"] is None and run["finished_at"] is None
    assert run["metrics"] == {
        "train_loss": None,
        "valid_loss": None,
        "test_mse": None,
        "baseline_mse": None,
        "marker_mse": None,
        "marker_baseline_mse": None,
        "error_ratio": None,
        "marker_error_ratio": None,
        "verdict": None,
    }


def test_create_run_keeps_given_seed_and_config(client: TestClient) -> None:
    body = run_body(hidden_size=4, learning_rate=0.05, batch_size=2, device="cpu", seed=123)
    run = client.post("/runs", json=body).json()
    assert run["config"]["seed"] == 123
    assert run["config"]["hidden_size"] == 4
    assert run["config"]["learning_rate"] == 0.05
    assert run["config"]["data"]["seq_len"] == 40


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["body", "model"]),
        ({"model": "gru"}, ["body", "model"]),
        ({"model": "lstm", "hidden_size": 0}, ["body", "hidden_size"]),
        ({"model": "lstm", "hidden_size": "2"}, ["body", "hidden_size"]),
        ({"model": "lstm", "epochs": -1}, ["body", "epochs"]),
        ({"model": "lstm", "epochs": 1.5}, ["body", "epochs"]),
        ({"model": "lstm", "learning_rate": 0}, ["body", "learning_rate"]),
        ({"model": "lstm", "learning_rate": "NaN"}, ["body", "learning_rate"]),
        ({"model": "lstm", "batch_size": 0}, ["body", "batch_size"]),
        ({"model": "lstm", "seed": -3}, ["body", "seed"]),
        ({"model": "lstm", "device": "tpu"}, ["body", "device"]),
        ({"model": "lstm", "colour": "red"}, ["body", "colour"]),
        ({"model": "lstm", "data": {"seq_len": 0}}, ["body", "data", "seq_len"]),
        ({"model": "lstm", "data": {"n_sequences": 0}}, ["body", "data", "n_sequences"]),
        ({"model": "lstm", "data": {"extra": 1}}, ["body", "data", "extra"]),
        ({"model": "lstm", "data": {"marker_probs": [0.5, 0.5]}}, ["body", "data", "marker_probs"]),
        (
            {"model": "lstm", "data": {"marker_probs": [0.5, 0.6, 0.1]}},
            ["body", "data", "marker_probs"],
        ),
        (
            {"model": "lstm", "data": {"marker_probs": [-0.5, 1.0, 0.5]}},
            ["body", "data", "marker_probs"],
        ),
        ({"model": "lstm", "epochs": 10**9}, ["body", "epochs"]),
        ({"model": "lstm", "data": {"n_sequences": 10_000, "seq_len": 10_000}}, ["body", "data"]),
        (
            {"model": "lstm", "hidden_size": 256, "batch_size": 9, "data": {"seq_len": 100_000}},
            ["body", "batch_size"],
        ),
    ],
)
def test_create_run_rejects_bad_input(client: TestClient, body: dict, loc: list) -> None:
    body_resp = problem(client.post("/runs", json=body), 422)
    assert any(found[: len(loc)] == loc for found in error_locs(body_resp)), body_resp
    assert client.get("/runs").json()["items"] == []  # nothing was stored


def test_create_run_rejects_nan_token_and_bad_json(client: TestClient) -> None:
    raw = '{"model": "lstm", "learning_rate": NaN}'
    body = problem(
        client.post("/runs", content=raw, headers={"content-type": "application/json"}), 422
    )
    assert ["body", "learning_rate"] in error_locs(body)
    broken = client.post("/runs", content="{not json", headers={"content-type": "application/json"})
    problem(broken, 422)


# --- GET /runs, /runs/{id} ----------------------------------------------------------------


def test_read_run_and_404(client: TestClient) -> None:
    run = client.post("/runs", json=run_body()).json()
    assert client.get(f"/runs/{run['id']}").json() == run
    body = problem(client.get("/runs/does-not-exist"), 404)
    assert "does-not-exist" in body["detail"]


def test_list_runs_newest_first_filters_and_cursor(client: TestClient) -> None:
    ids = [client.post("/runs", json=run_body(model=m)).json()["id"] for m in ["lstm", "elman"] * 3]
    first = client.get("/runs", params={"limit": 4}).json()
    assert [r["id"] for r in first["items"]] == ids[::-1][:4]
    second = client.get("/runs", params={"limit": 4, "cursor": first["next_cursor"]}).json()
    assert [r["id"] for r in second["items"]] == ids[::-1][4:]
    assert second["next_cursor"] is None
    elman = client.get("/runs", params={"model": "elman"}).json()["items"]
    assert [r["id"] for r in elman] == ids[1::2][::-1]
    client.post(f"/runs/{ids[0]}/cancel")
    cancelled = client.get("/runs", params={"status": "cancelled"}).json()["items"]
    assert [r["id"] for r in cancelled] == [ids[0]]
    assert client.get("/runs", params={"status": "queued"}).json()["items"][-1]["id"] == ids[1]


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 101}, {"status": "done"}, {"model": "gru"}, {"cursor": "@@@"}],
)
def test_list_runs_rejects_bad_query(client: TestClient, params: dict) -> None:
    body = problem(client.get("/runs", params=params), 422)
    assert error_locs(body)[0][0] == "query"


# --- training through a worker, losses, checkpoint, predict --------------------------------


def test_run_trains_and_serves_losses_checkpoint_and_predictions(client: TestClient) -> None:
    run = client.post("/runs", json=run_body(model="lstm", epochs=4)).json()
    problem(client.get(f"/runs/{run['id']}/checkpoint"), 409)
    problem(client.post("/predict", json={"run_id": run["id"], "sequences": [[[0, 1]]]}), 409)
    assert client.get(f"/runs/{run['id']}/losses").json() == {
        "run_id": run["id"],
        "epochs": [],
        "train_loss": [],
        "valid_loss": [],
    }
    train_now(client)

    done = client.get(f"/runs/{run['id']}").json()
    assert done["status"] == "succeeded", done
    assert done["epochs_completed"] == 4 and done["attempt"] == 1 and done["device"] == "cpu"
    assert done["started_at"] <= done["finished_at"]
    losses = client.get(f"/runs/{run['id']}/losses").json()
    assert losses["epochs"] == [1, 2, 3, 4]
    assert all(math.isfinite(v) for v in losses["train_loss"] + losses["valid_loss"])
    m = done["metrics"]
    assert m["train_loss"] == losses["train_loss"][-1]
    assert m["valid_loss"] == losses["valid_loss"][-1]

    # The run is rebuilt exactly from its config: the same training in-process agrees.
    cfg = models.TrainConfig(
        model="lstm", epochs=4, seed=7, n_sequences=3, seq_len=40, device="cpu", population=2
    )
    ref = models.fit(cfg)
    assert losses["train_loss"] == pytest.approx(ref.history.train_loss, rel=1e-6)
    assert m["test_mse"] == pytest.approx(ref.metrics.test_mse, rel=1e-6)
    assert m["baseline_mse"] == pytest.approx(ref.metrics.baseline_mse, rel=1e-12)

    resp = client.get(f"/runs/{run['id']}/checkpoint")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/octet-stream"
    tensors = load_safetensors(resp.content)
    assert sorted(tensors) == sorted(ref.model.state_dict())
    for name, value in ref.model.state_dict().items():
        torch.testing.assert_close(tensors[name], value, rtol=1e-5, atol=1e-6)

    # Ragged sequences: each output equals models.predict on the same weights.
    model = models.build_model("lstm")
    model.load_state_dict(tensors)
    rng = np.random.default_rng(0)
    seqs = [models.adding_sequence(n, rng)[0] for n in (1, 17, 5, 60)]
    resp = client.post(
        "/predict", json={"run_id": run["id"], "sequences": [s.tolist() for s in seqs]}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["run_id"] == run["id"]
    expected = models.predict(model, seqs)
    assert [len(o) for o in body["outputs"]] == [1, 17, 5, 60]
    for got, want in zip(body["outputs"], expected, strict=True):
        np.testing.assert_allclose(got, want[:, 0], rtol=1e-6, atol=1e-7)


def test_predict_caches_loaded_models(client: TestClient) -> None:
    run = client.post("/runs", json=run_body(model="elman", epochs=1)).json()
    train_now(client)
    cache = client.app.state.model_cache
    for _ in range(3):
        resp = client.post("/predict", json={"run_id": run["id"], "sequences": [[[0.5, 1]]]})
        assert resp.status_code == 200
    assert cache.loads == 1


@pytest.mark.parametrize(
    ("raw", "loc_prefix"),
    [
        ('{"run_id": "R", "sequences": [[[0.5, NaN]]]}', ["body", "sequences", 0, 0, 1]),
        ('{"run_id": "R", "sequences": [[[Infinity, 1]]]}', ["body", "sequences", 0, 0, 0]),
        ('{"run_id": "R", "sequences": [[[-Infinity, 1]]]}', ["body", "sequences", 0, 0, 0]),
        ('{"run_id": "R", "sequences": [[["NaN", 1]]]}', ["body", "sequences", 0, 0, 0]),
        ('{"run_id": "R", "sequences": [[["Infinity", 1]]]}', ["body", "sequences", 0, 0, 0]),
        ('{"run_id": "R", "sequences": [[[1e999, 1]]]}', ["body", "sequences", 0, 0, 0]),
        ('{"run_id": "R", "sequences": [[[0.5]]]}', ["body", "sequences", 0, 0]),
        ('{"run_id": "R", "sequences": [[[0.5, 1, 2]]]}', ["body", "sequences", 0, 0]),
        ('{"run_id": "R", "sequences": [[[true, 1]]]}', ["body", "sequences", 0, 0, 0]),
        ('{"run_id": "R", "sequences": []}', ["body", "sequences"]),
        ('{"run_id": "R", "sequences": [[]]}', ["body", "sequences", 0]),
        ('{"run_id": "R", "sequences": [[[0.5, 1]], []]}', ["body", "sequences", 1]),
        ('{"run_id": "R"}', ["body", "sequences"]),
        ('{"sequences": [[[0.5, 1]]]}', ["body", "run_id"]),
    ],
)
def test_predict_rejects_bad_sequences(client: TestClient, raw: str, loc_prefix: list) -> None:
    resp = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    body = problem(resp, 422)
    assert any(loc[: len(loc_prefix)] == loc_prefix for loc in error_locs(body)), body


def test_predict_unknown_run_and_step_limit(tmp_path) -> None:
    settings = make_settings(tmp_path, max_predict_steps=10)
    with TestClient(create_app_for(settings)) as client:
        problem(client.post("/predict", json={"run_id": "nope", "sequences": [[[0.1, 1]]]}), 404)
        run = client.post("/runs", json=run_body(epochs=1)).json()
        train_now(client)
        ok = client.post("/predict", json={"run_id": run["id"], "sequences": [[[0.1, 1]] * 10]})
        assert ok.status_code == 200
        too_long = {"run_id": run["id"], "sequences": [[[0.1, 1]] * 6, [[0.2, 0]] * 5]}
        body = problem(client.post("/predict", json=too_long), 422)
        assert "10" in body["detail"]


def test_body_size_limit(tmp_path) -> None:
    settings = make_settings(tmp_path, max_body_bytes=2048)
    with TestClient(create_app_for(settings)) as client:
        seq = [[0.123456789, 1.0]] * 200
        body = problem(client.post("/predict", json={"run_id": "x", "sequences": [seq]}), 413)
        assert "2048" in body["detail"]
        assert client.get("/healthz").status_code == 200


def create_app_for(settings):
    from service.app import create_app

    return create_app(settings)


# --- cancel ---------------------------------------------------------------------------------


def test_cancel_queued_run_and_conflicts(client: TestClient) -> None:
    run = client.post("/runs", json=run_body()).json()
    resp = client.post(f"/runs/{run['id']}/cancel")
    assert resp.status_code == 202
    cancelled = resp.json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    body = problem(client.post(f"/runs/{run['id']}/cancel"), 409)
    assert "cancelled" in body["detail"]
    problem(client.post("/runs/unknown/cancel"), 404)
    # A cancelled run is never picked up by a worker.
    train_now(client)
    assert client.get(f"/runs/{run['id']}").json()["status"] == "cancelled"


def test_cancel_after_success_is_409(client: TestClient) -> None:
    run = client.post("/runs", json=run_body(epochs=1)).json()
    train_now(client)
    problem(client.post(f"/runs/{run['id']}/cancel"), 409)


# --- scalar RNN, health, docs -------------------------------------------------------------


def test_scalar_rnn_matches_notebook(client: TestClient) -> None:
    body = {"x": [9, 4, -2], "w_i": 0.5, "w_h": -1, "w_o": -0.7, "h_bias": -1, "y_bias": 0}
    out = client.post("/scalar-rnn", json=body).json()
    assert len(out["h"]) == len(out["y"]) == 3
    assert out["h"][2] == pytest.approx(-0.7072252802268861, abs=1e-12)
    assert out["y"][2] == pytest.approx(0.4950576961588203, abs=1e-12)


@pytest.mark.parametrize(
    "raw",
    [
        '{"x": [], "w_i": 0.5, "w_h": -1, "w_o": -0.7, "h_bias": -1, "y_bias": 0}',
        '{"x": [NaN], "w_i": 0.5, "w_h": -1, "w_o": -0.7, "h_bias": -1, "y_bias": 0}',
        '{"x": [1], "w_i": Infinity, "w_h": -1, "w_o": -0.7, "h_bias": -1, "y_bias": 0}',
        '{"x": [1], "w_i": 0.5, "w_h": -1, "w_o": -0.7, "h_bias": -1}',
    ],
)
def test_scalar_rnn_rejects_bad_input(client: TestClient, raw: str) -> None:
    resp = client.post("/scalar-rnn", content=raw, headers={"content-type": "application/json"})
    problem(resp, 422)


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["migration"]["current"] == checks["migration"]["head"] is not None


def test_readiness_fails_when_database_behind_head(client: TestClient, db: Database) -> None:
    from service import db as database

    database.downgrade(db.engine, "base")
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"


def test_unknown_route_is_problem_json(client: TestClient) -> None:
    problem(client.get("/nothing-here"), 404)
    problem(client.delete("/runs"), 405)


def test_docs_served_offline_with_examples(client: TestClient) -> None:
    html = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in html
    assert "cdn" not in html.lower()
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path, method in [("/runs", "post"), ("/predict", "post"), ("/scalar-rnn", "post")]:
        op = paths[path][method]
        schema_ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = spec["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
        assert schema.get("examples"), f"{path} has no request example"
        assert "422" in op["responses"]
        assert "application/problem+json" in op["responses"]["422"]["content"]
    assert {"404", "409"} <= set(paths["/runs/{run_id}/checkpoint"]["get"]["responses"])
    assert {"404", "409", "422"} <= set(paths["/predict"]["post"]["responses"])
    assert "Problem" in spec["components"]["schemas"]


def test_openapi_examples_are_valid_requests(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()["components"]["schemas"]
    run = client.post("/runs", json=spec["RunCreate"]["examples"][0])
    assert run.status_code == 202
    scalar = client.post("/scalar-rnn", json=spec["ScalarRNNRequest"]["examples"][0])
    assert scalar.status_code == 200
    example = dict(spec["PredictRequest"]["examples"][0])
    trained = client.post("/runs", json=run_body(epochs=1)).json()
    client.post(f"/runs/{run.json()['id']}/cancel")
    train_now(client)
    example["run_id"] = trained["id"]
    assert client.post("/predict", json=example).status_code == 200


def test_errors_never_leak_stack_traces(client: TestClient, monkeypatch) -> None:
    import service.runs.store

    def boom(**_kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(service.runs.store, "read_losses", boom)
    body = problem(client.get("/runs/x/losses"), 500)
    assert "secret" not in json.dumps(body) and "Traceback" not in json.dumps(body)


def test_checkpoint_is_plain_safetensors(client: TestClient) -> None:
    run = client.post("/runs", json=run_body(model="elman", epochs=1)).json()
    train_now(client)
    data = client.get(f"/runs/{run['id']}/checkpoint").content
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(io.BytesIO(data[8 : 8 + header_len]).read())
    assert header["__metadata__"]["model"] == "elman"
    assert {k for k in header if k != "__metadata__"} == {
        "l1.weight",
        "l1.bias",
        "hr.weight",
        "hr.bias",
        "l2.weight",
        "l2.bias",
    }
