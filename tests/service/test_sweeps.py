"""POST /sweeps: one run per grid combination, summed up per configuration over seeds."""

from __future__ import annotations

import statistics
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from tests.support.app import make_settings, problem, train_now

BASE = {"epochs": 3, "population": 1, "data": {"n_sequences": 3, "seq_len": 40}}


def nothing_stored(client: TestClient) -> None:
    assert client.get("/sweeps").json()["items"] == []
    assert client.get("/runs").json()["items"] == []


def test_a_sweep_queues_every_combination_and_sums_them_up(client: TestClient) -> None:
    grid = {"model": ["elman", "lstm"], "data.seq_len": [30, 40], "seed": [1, 2]}
    base = {"epochs": 3, "population": 1, "data": {"n_sequences": 3}}
    r = client.post("/sweeps", json={"base": base, "grid": grid})
    assert r.status_code == 202, r.text
    sweep = r.json()
    assert r.headers["location"] == f"/sweeps/{sweep['id']}"
    assert sweep["n_runs"] == 8 and sweep["status"] == "queued"
    assert sweep["counts"]["queued"] == 8
    combos = {(s["values"]["model"], s["values"]["data.seq_len"], s["values"]["seed"])
              for s in sweep["runs"]}  # fmt: skip
    assert combos == {(m, n, s) for m in ("elman", "lstm") for n in (30, 40) for s in (1, 2)}
    # Its runs are ordinary runs, with the base and their combination's values.
    listed = client.get("/runs", params={"sweep": sweep["id"]}).json()["items"]
    assert {r["id"] for r in listed} == {s["id"] for s in sweep["runs"]}
    for run in listed:
        assert run["sweep_id"] == sweep["id"] and run["status"] == "queued"
        assert run["config"]["epochs"] == 3 and run["config"]["data"]["n_sequences"] == 3
    assert client.get("/runs", params={"sweep": "other"}).json()["items"] == []

    train_now(client)
    done = client.get(f"/sweeps/{sweep['id']}").json()
    assert done["status"] == "ended" and done["counts"]["succeeded"] == 8
    runs = {r["id"]: client.get(f"/runs/{r['id']}").json() for r in done["runs"]}
    assert len(done["table"]) == 4  # model × seq_len; the seeds are the spread
    for row in done["table"]:
        mine = [
            r["metrics"]["error_ratio"]
            for r in runs.values()
            if r["model"] == row["values"]["model"]
            and r["config"]["data"]["seq_len"] == row["values"]["data.seq_len"]
        ]
        assert row["runs"] == row["succeeded"] == 2 and "seed" not in row["values"]
        assert row["median_error_ratio"] == statistics.median(mine)
        assert (row["min_error_ratio"], row["max_error_ratio"]) == (min(mine), max(mine))
    medians = [row["median_error_ratio"] for row in done["table"]]
    assert medians == sorted(medians)  # best first
    assert done["best"] == {
        "values": done["table"][0]["values"],
        "median_error_ratio": medians[0],
    }
    problem(client.post(f"/sweeps/{sweep['id']}/cancel"), 409)  # all ended


def test_bad_sweeps_are_refused_whole(client: TestClient) -> None:
    cases = [
        ({"grid": {"colour": ["red"], "model": ["lstm"]}}, ["body", "grid", "colour"]),
        ({"grid": {"data.colour": ["red"], "model": ["lstm"]}}, ["body", "grid", "data.colour"]),
        ({"base": {"model": "lstm"}, "grid": {"model": ["elman"]}}, ["body", "grid", "model"]),
        ({"base": {"model": "lstm", "data": {"seq_len": 9}}, "grid": {"data.seq_len": [8]}},
         ["body", "grid", "data.seq_len"]),
        ({"base": {"model": "lstm"}, "grid": {"hidden_size": [2, 0]}},
         ["body", "grid", "hidden_size"]),
        ({"base": {"model": "lstm", "colour": 1}, "grid": {"seed": [1]}},
         ["body", "base", "colour"]),
        ({"base": BASE, "grid": {"seed": [1, 2]}}, ["body", "base", "model"]),
        ({"base": {"model": "lstm"}, "grid": {"epochs": [1, 10**9]}}, ["body", "grid", "epochs"]),
        ({"base": {"model": "lstm"}, "grid": {}}, ["body", "grid"]),
        ({"base": {"model": "lstm"}, "grid": {"seed": []}}, ["body", "grid", "seed"]),
    ]  # fmt: skip
    for body, loc in cases:
        errors = problem(client.post("/sweeps", json=body), 422)["errors"]
        assert any(e["loc"][: len(loc)] == loc for e in errors), (body, errors)
    types = [
        problem(client.post("/sweeps", json=body), 422)["errors"][0]["type"]
        for body in (
            {"base": {"model": "lstm"}, "grid": {"model": ["elman"]}},
            {"base": BASE, "grid": {"seed": [1, 2]}},
        )
    ]
    assert types == ["sweep_field_twice", "sweep_model_missing"]
    nothing_stored(client)


def test_sweep_size_and_the_queue_bound(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_sweep_runs=4, max_queued=5)
    with TestClient(create_app(settings)) as client:
        big = {"base": {**BASE, "model": "lstm"}, "grid": {"seed": [1, 2, 3, 4, 5]}}
        error = problem(client.post("/sweeps", json=big), 422)["errors"][0]
        assert error["type"] == "combined_limit_exceeded" and "at most 4" in error["msg"]
        ok = {"base": {**BASE, "model": "lstm"}, "grid": {"seed": [1, 2, 3]}}
        assert client.post("/sweeps", json=ok).status_code == 202
        r = client.post("/sweeps", json=ok)  # 3 queued + 3 > 5
        problem(r, 429)
        assert r.headers["retry-after"] == "30"
        assert len(client.get("/runs").json()["items"]) == 3  # nothing of the second stored
        assert len(client.get("/sweeps").json()["items"]) == 1


def test_cancel_list_and_unknown_sweeps(client: TestClient) -> None:
    ids = []
    for seeds in ([1, 2], [3]):
        body = {"base": {**BASE, "model": "elman"}, "grid": {"seed": seeds}}
        ids.append(client.post("/sweeps", json=body).json()["id"])
    first = client.get("/sweeps", params={"limit": 1}).json()
    assert [s["id"] for s in first["items"]] == [ids[1]]
    rest = client.get("/sweeps", params={"cursor": first["next_cursor"]}).json()
    assert [s["id"] for s in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    cancelled = client.post(f"/sweeps/{ids[0]}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json()["counts"]["cancelled"] == 2 and cancelled.json()["status"] == "ended"
    assert client.get(f"/sweeps/{ids[1]}").json()["counts"]["queued"] == 1  # untouched
    problem(client.post(f"/sweeps/{ids[0]}/cancel"), 409)
    problem(client.get("/sweeps/nope"), 404)
    problem(client.post("/sweeps/nope/cancel"), 404)
    # Deleting one of its runs leaves the sweep with the others.
    run_id = cancelled.json()["runs"][0]["id"]
    assert client.delete(f"/runs/{run_id}").status_code == 204
    after = client.get(f"/sweeps/{ids[0]}").json()
    assert [r["id"] for r in after["runs"]] == [cancelled.json()["runs"][1]["id"]]


def test_sweep_fields_take_exactly_what_post_runs_takes() -> None:
    """The grid's items and the base's fields have RunCreate's schema, bounds included."""
    from service.schemas import RunCreate, SweepCreate

    def bare(schema: dict) -> dict:
        if "anyOf" in schema:  # seed: int | None
            schema = next(s for s in schema["anyOf"] if s.get("type") != "null")
        return {k: v for k, v in schema.items() if k not in ("default", "description", "title")}

    run = RunCreate.model_json_schema()
    sweep = SweepCreate.model_json_schema()["$defs"]
    grid, base = sweep["SweepGrid"]["properties"], sweep["SweepBase"]["properties"]
    for name, prop in run["properties"].items():
        if name == "data":
            continue
        assert bare(grid[name]["items"]) == bare(prop), name
        assert bare(base[name]) == bare(prop), name
    for name, prop in run["$defs"]["DataSpec"]["properties"].items():
        assert bare(grid[f"data.{name}"]["items"]) == bare(prop), name
        assert bare(sweep["SweepData"]["properties"][name]) == bare(prop), name
