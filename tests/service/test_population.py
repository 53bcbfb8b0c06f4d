"""Population runs through the API: /members, /losses, the kept member's checkpoint, limits."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load as load_safetensors

from models import TrainConfig, build_model, make_splits, member_seed, train
from service.app import create_app
from service.tables import Run
from tests.support.app import PROBLEM, make_settings, run_body, submit, train_now


def test_population_run_members_losses_and_checkpoint(client: TestClient) -> None:
    body = {"epochs": 8, "population": 4, "seed": 21, "learning_rate": 0.05}
    run_id = submit(client, **body)
    queued = client.get(f"/runs/{run_id}/members").json()
    assert queued == [
        {
            "index": i,
            "seed": member_seed(21, i),
            "epochs": 0,
            "train_loss": None,
            "valid_loss": None,
            "kept": False,
            "diverged": False,
            "best_epoch": None,
            "best_valid_loss": None,
        }
        for i in range(4)
    ]
    train_now(client)
    run = client.get(f"/runs/{run_id}").json()
    assert run["status"] == "succeeded", run["error"]
    assert run["config"]["population"] == 4
    members = client.get(f"/runs/{run_id}/members").json()
    assert [m["index"] for m in members] == [0, 1, 2, 3]
    kept = [m for m in members if m["kept"]]
    assert len(kept) == 1
    kept = kept[0]
    # 4 → 2 after epoch 8·1/3 = 2, → 1 after epoch 5; the kept one trains all 8.
    assert sorted(m["epochs"] for m in members) == [2, 2, 5, 8] and kept["epochs"] == 8
    losses = client.get(f"/runs/{run_id}/losses").json()
    assert losses["epochs"] == list(range(1, 9))
    # The curve ends with the kept member's last losses, as does the run's summary.
    assert losses["train_loss"][-1] == kept["train_loss"] == run["metrics"]["train_loss"]
    assert losses["valid_loss"][-1] == kept["valid_loss"] == run["metrics"]["valid_loss"]
    # Every stopped member's last validation loss was no better than a survivor's then.
    for m in members:
        assert m["valid_loss"] is not None and m["train_loss"] is not None
        assert 1 <= m["best_epoch"] <= m["epochs"] and m["best_valid_loss"] <= m["valid_loss"]
    stopped_at_2 = [m for m in members if m["epochs"] == 2]
    assert all(losses["valid_loss"][1] <= m["valid_loss"] for m in stopped_at_2)

    # The checkpoint holds exactly the kept member: that member trained alone ends the same.
    data = client.get(f"/runs/{run_id}/checkpoint").content
    stored = load_safetensors(data)
    cfg = TrainConfig.from_dict(
        {
            **{k: v for k, v in run["config"].items() if k != "data"},
            **run["config"]["data"],
            "population": 1,
        }
    )
    alone = build_model("lstm", seed=member_seed(21, kept["index"]))
    train(alone, make_splits(cfg.seed, cfg.n_sequences, cfg.seq_len, cfg.marker_probs), cfg)
    for name, p in alone.state_dict().items():
        torch.testing.assert_close(stored[name], p, rtol=1e-5, atol=1e-6, msg=name)

    # The evaluation: ratios and the verdict agree with the stored MSEs.
    m = run["metrics"]
    assert m["error_ratio"] == pytest.approx(m["test_mse"] / m["baseline_mse"], rel=1e-12)
    assert m["marker_error_ratio"] == pytest.approx(
        m["marker_mse"] / m["marker_baseline_mse"], rel=1e-12
    )
    expected = (
        "learned"
        if m["error_ratio"] <= 0.05
        else "partly"
        if m["error_ratio"] <= 0.5
        else "not learned"
    )
    assert m["verdict"] == expected


def test_population_runs_are_reproducible_bit_for_bit(client: TestClient) -> None:
    body = {"epochs": 5, "population": 3, "seed": 4}
    first, second = submit(client, **body), submit(client, **body)
    train_now(client)
    a, b = (client.get(f"/runs/{r}").json() for r in (first, second))
    assert a["status"] == b["status"] == "succeeded"
    assert a["metrics"] == b["metrics"]
    assert (
        client.get(f"/runs/{first}/members").json() == client.get(f"/runs/{second}/members").json()
    )
    la, lb = (client.get(f"/runs/{r}/losses").json() for r in (first, second))
    assert la["train_loss"] == lb["train_loss"] and la["valid_loss"] == lb["valid_loss"]
    wa, wb = (
        load_safetensors(client.get(f"/runs/{r}/checkpoint").content) for r in (first, second)
    )
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("population", [0, 65, -1])
def test_population_out_of_range_is_422(client: TestClient, population: int) -> None:
    r = client.post("/runs", json=run_body(population=population))
    assert r.status_code == 422
    assert r.headers["content-type"].startswith(PROBLEM)
    (err,) = r.json()["errors"]
    assert err["loc"] == ["body", "population"]
    assert ("64" in err["msg"]) if population > 1 else ("1" in err["msg"])


def test_activation_limit_counts_the_members(tmp_path) -> None:
    # min(batch 3, 3 sequences) × 3000 steps × hidden 2 = 18 000 per member.
    settings = make_settings(tmp_path, max_train_activations=80_000)
    data = {"n_sequences": 3, "seq_len": 3000}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.post("/runs", json=run_body(population=4, data=data)).status_code == 202
        r = client.post("/runs", json=run_body(population=5, data=data))
        assert r.status_code == 422
        (err,) = r.json()["errors"]
        assert err["loc"] == ["body", "batch_size"]
        assert "population" in err["msg"] and "80000" in err["msg"]


def test_members_of_an_unknown_run_is_404(client: TestClient) -> None:
    r = client.get("/runs/nope/members")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith(PROBLEM)


def test_legacy_run_rows_read_as_population_one(client: TestClient) -> None:
    # Rows stored before populations existed have no population fields in their config.
    run_id = submit(client)
    db = client.app.state.db
    with db.writing() as session:
        run = session.get(Run, run_id)
        cfg = {
            k: v
            for k, v in run.config.items()
            if k not in ("population", "clip_grad_norm", "lr_schedule")
        }
        run.config = cfg
        run.members = None
    got = client.get(f"/runs/{run_id}").json()["config"]
    assert got["population"] == 1 and got["lr_schedule"] == "constant"
    assert got["clip_grad_norm"] == 0.0
    assert client.get(f"/runs/{run_id}/members").json() == []
    train_now(client)
    run = client.get(f"/runs/{run_id}").json()
    assert run["status"] == "succeeded", run["error"]
    members = client.get(f"/runs/{run_id}/members").json()
    assert len(members) == 1 and members[0]["kept"] and members[0]["seed"] == member_seed(7, 0)


def test_schema_states_the_verdict_and_shows_it_in_the_example(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    verdict = schema["RunMetrics"]["properties"]["verdict"]
    assert "'learned' at most 0.05" in verdict["description"]
    assert "'partly' at most 0.5" in verdict["description"]
    example = schema["RunRead"]["examples"][0]
    m = example["metrics"]
    assert m["verdict"] == "learned"
    assert m["error_ratio"] == pytest.approx(m["test_mse"] / m["baseline_mse"])
    assert m["marker_error_ratio"] == pytest.approx(m["marker_mse"] / m["marker_baseline_mse"])
    assert example["config"]["population"] == TrainConfig().population
    # The request example is the default config: it posts as is and shows today's defaults.
    (body,) = schema["RunCreate"]["examples"]
    assert body["learning_rate"] == TrainConfig().learning_rate
    assert client.post("/runs", json=body).status_code == 202
    create = schema["RunCreate"]["properties"]["population"]
    assert create["minimum"] == 1 and create["maximum"] == 64
