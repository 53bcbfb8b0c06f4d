"""Runs trained end to end by real worker processes: results, concurrency, cancel, errors, stop.

Runs meant to be interrupted are held at their epoch boundaries from epoch 2 on until the
test releases them (`hold_runs`): no test counts on a run taking a while.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load as load_safetensors
from sqlalchemy import select

from models import build_model, predict
from service.app import create_app
from service.queue.workers import Worker
from service.settings import Settings
from service.tables import Run
from tests.support.app import db_row, hold_runs, make_settings, release, submit, wait_for
from tests.support.processes import START_TIMEOUT

INTERRUPTIBLE_EPOCHS = 40  # held from epoch 2 on (`hold_runs`) until the test releases it


def get_run(client: TestClient, run_id: str) -> dict[str, Any]:
    r = client.get(f"/runs/{run_id}")
    assert r.status_code == 200, r.text
    return r.json()


def get_losses(client: TestClient, run_id: str) -> dict[str, Any]:
    r = client.get(f"/runs/{run_id}/losses")
    assert r.status_code == 200, r.text
    return r.json()


def wait_status(
    client: TestClient, run_id: str, status: str, timeout: float = START_TIMEOUT
) -> dict[str, Any]:
    return wait_for(
        lambda: get_run(client, run_id), lambda v: v["status"] == status, timeout, interval=0.2
    )


def wait_epochs(client: TestClient, run_id: str, k: int) -> dict[str, Any]:
    return wait_for(
        lambda: get_run(client, run_id),
        lambda v: v["status"] == "running" and v["epochs_completed"] >= k,
        START_TIMEOUT,
    )


def when(stamp: str) -> datetime:
    t = datetime.fromisoformat(stamp)
    assert t.utcoffset() is not None and t.utcoffset().total_seconds() == 0, stamp
    return t


def worker_ids(client: TestClient, run_ids: list[str]) -> dict[str, str | None]:
    with client.app.state.db.reading() as session:  # type: ignore[attr-defined]
        rows = session.execute(select(Run.id, Run.worker_id).where(Run.id.in_(run_ids))).all()
    return dict(rows)  # type: ignore[arg-type]


def data_dir(client: TestClient) -> Path:
    return client.app.state.settings.data_dir  # type: ignore[attr-defined,no-any-return]


def cancel_quietly(client: TestClient, run_id: str) -> None:
    """Cleanup: end a run that may still be going (409 when it already ended is fine)."""
    client.post(f"/runs/{run_id}/cancel")


@pytest.fixture(scope="module")
def pool_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app with two real worker processes, shared by this module's pool tests.

    Spawning workers costs seconds (each imports torch), so they start once; every test
    leaves both idle again (its runs ended or cancelled).
    """
    settings = make_settings(tmp_path_factory.mktemp("pool"), workers=2)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.subprocess
def test_run_trains_end_to_end_in_a_worker_process(pool_client: TestClient) -> None:
    client = pool_client
    epochs = 5
    run_id = submit(client, model="lstm", epochs=epochs, hidden_size=3, device="auto")

    run = wait_status(client, run_id, "succeeded")

    assert run["epochs_completed"] == epochs
    assert run["attempt"] == 1
    assert run["error"] is None
    assert run["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    created, started, finished = (when(run[k]) for k in ("created_at", "started_at", "finished_at"))
    assert created <= started <= finished

    losses = get_losses(client, run_id)
    assert losses["epochs"] == list(range(1, epochs + 1))
    assert len(losses["train_loss"]) == len(losses["valid_loss"]) == epochs
    assert all(math.isfinite(x) and x >= 0 for x in losses["train_loss"] + losses["valid_loss"])
    metrics = run["metrics"]
    for name in ("train_loss", "valid_loss", "test_mse", "baseline_mse", "marker_mse"):
        assert metrics[name] is not None and math.isfinite(metrics[name]), (name, metrics)
    # The run's headline losses are its last epoch's.
    assert metrics["train_loss"] == losses["train_loss"][-1]
    assert metrics["valid_loss"] == losses["valid_loss"][-1]

    r = client.get(f"/runs/{run_id}/checkpoint")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    tensors = load_safetensors(r.content)
    reference = build_model("lstm", n_hidden=3).state_dict()
    assert set(tensors) == set(reference)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        k: tuple(v.shape) for k, v in reference.items()
    }

    sequences = [[[0.5, 1.0], [0.2, 0.0], [-0.3, 1.0], [0.9, -1.0]], [[0.1, 1.0]]]
    r = client.post("/predict", json={"run_id": run_id, "sequences": sequences})
    assert r.status_code == 200, r.text
    outputs = r.json()["outputs"]
    assert [len(o) for o in outputs] == [4, 1]
    # The served outputs are the downloaded weights' outputs.
    model = build_model("lstm", n_hidden=3)
    model.load_state_dict(tensors)
    expected = predict(model, [torch.tensor(s).numpy() for s in sequences])
    for got, want in zip(outputs, expected, strict=True):
        assert got == pytest.approx(want[:, 0].tolist(), rel=1e-5, abs=1e-6)


@pytest.mark.subprocess
def test_two_workers_train_runs_at_the_same_time(pool_client: TestClient) -> None:
    client = pool_client
    epochs = 300
    models = ["elman", "lstm", "lstm", "elman"]
    hold_runs(data_dir(client))  # until both workers have one
    ids = [submit(client, model=m, epochs=epochs, seed=i) for i, m in enumerate(models)]
    try:
        most_running = 0

        def progress() -> dict[str, Any]:
            nonlocal most_running
            running = client.get("/runs", params={"status": "running", "limit": 100}).json()
            most_running = max(most_running, len(running["items"]))
            if most_running == 2:
                release(data_dir(client))
            return {i: get_run(client, i)["status"] for i in ids}

        statuses = wait_for(
            progress,
            lambda v: all(s in ("succeeded", "failed") for s in v.values()),
            timeout=120,
            interval=0.2,
        )
        assert statuses == dict.fromkeys(ids, "succeeded")
    finally:
        release(data_dir(client))
        for i in ids:
            cancel_quietly(client, i)

    assert most_running == 2  # never more runs at once than workers, and both busy
    runs = [get_run(client, i) for i in ids]
    for run, model in zip(runs, models, strict=True):
        assert run["model"] == model
        assert run["attempt"] == 1
        assert run["epochs_completed"] == epochs
        assert get_losses(client, run["id"])["epochs"] == list(range(1, epochs + 1))
    # Both workers took runs, and at least two runs' training intervals overlap.
    assert len(set(worker_ids(client, ids).values())) == 2
    spans = [(when(r["started_at"]), when(r["finished_at"])) for r in runs]
    overlapping = [
        (i, j)
        for i, a in enumerate(spans)
        for j, b in enumerate(spans)
        if i < j and a[0] < b[1] and b[0] < a[1]
    ]
    assert overlapping, spans


def test_cancel_queued_run(client: TestClient, settings: Settings) -> None:
    # No workers here (RNNLAB_WORKERS=0): the run stays queued until cancelled.
    run_id = submit(client)

    r = client.post(f"/runs/{run_id}/cancel")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "cancelled"
    assert body["finished_at"] is not None
    assert body["started_at"] is None
    assert body["epochs_completed"] == 0
    assert get_run(client, run_id)["status"] == "cancelled"

    r = client.post(f"/runs/{run_id}/cancel")
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["status"] == 409
    assert "cancelled" in problem["detail"]

    # A worker finds nothing to do: the cancelled run is never trained.
    worker = Worker(settings)
    try:
        assert worker.run_once() is None
    finally:
        worker.db.dispose()
    assert get_run(client, run_id)["attempt"] == 0


@pytest.mark.subprocess
def test_cancel_running_run(pool_client: TestClient) -> None:
    client = pool_client
    hold_runs(data_dir(client))  # the cancel finds it running
    run_id = submit(client, epochs=INTERRUPTIBLE_EPOCHS)
    try:
        wait_epochs(client, run_id, 2)

        r = client.post(f"/runs/{run_id}/cancel")
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "running"  # it stops at the end of its epoch

        run = wait_status(client, run_id, "cancelled", timeout=30)
    finally:
        release(data_dir(client))
        cancel_quietly(client, run_id)

    assert 2 <= run["epochs_completed"] < INTERRUPTIBLE_EPOCHS
    assert run["finished_at"] is not None
    assert run["error"] is None
    assert run["attempt"] == 1
    assert get_losses(client, run_id)["epochs"] == list(range(1, run["epochs_completed"] + 1))

    r = client.post("/predict", json={"run_id": run_id, "sequences": [[[0.5, 1.0]]]})
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    r = client.get(f"/runs/{run_id}/checkpoint")
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    assert client.post(f"/runs/{run_id}/cancel").status_code == 409


def work_burst(settings: Settings) -> str:
    """Run one in-process worker until the queue is empty; return its worker id."""
    worker = Worker(settings)
    thread = threading.Thread(target=worker.work, kwargs={"burst": True}, daemon=True)
    thread.start()
    thread.join(120)
    try:
        assert not thread.is_alive(), "the worker did not empty the queue in time"
    finally:
        worker.stop()
        thread.join(30)
        worker.db.dispose()
    return worker.worker_id


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_training_error_fails_the_run_and_the_worker_goes_on(
    client: TestClient, settings: Settings
) -> None:
    bad = submit(client, device="cuda")
    good = submit(client, epochs=3)

    worker_id = work_burst(settings)

    run = get_run(client, bad)
    assert run["status"] == "failed"
    assert "CUDA" in run["error"]
    assert run["finished_at"] is not None
    assert run["epochs_completed"] == 0
    assert get_losses(client, bad)["epochs"] == []
    r = client.get(f"/runs/{bad}/checkpoint")
    assert r.status_code == 409
    assert "failed" in r.json()["detail"]

    run = get_run(client, good)
    assert run["status"] == "succeeded"
    assert run["epochs_completed"] == 3
    assert worker_ids(client, [bad, good]) == {bad: worker_id, good: worker_id}


def test_diverging_runs(client: TestClient, settings: Settings) -> None:
    # Adam's steps are about learning_rate in size: at 1e6 the weights grow huge but every
    # loss stays finite, so the run succeeds (badly); at 1e20 the loss overflows and the
    # trainer stops it with a 'diverged' error instead of storing infinities.
    huge = submit(client, learning_rate=1e6, epochs=3)
    overflowing = submit(client, learning_rate=1e20, epochs=3)

    work_burst(settings)

    run = get_run(client, huge)
    assert run["status"] == "succeeded", run["error"]
    losses = get_losses(client, huge)
    assert losses["epochs"] == [1, 2, 3]
    assert all(math.isfinite(x) for x in losses["train_loss"] + losses["valid_loss"])
    numbers = [v for k, v in run["metrics"].items() if k != "verdict" and v is not None]
    assert all(math.isfinite(v) for v in numbers)
    assert run["metrics"]["test_mse"] > run["metrics"]["baseline_mse"]  # it learned nothing
    assert run["metrics"]["error_ratio"] > 1 and run["metrics"]["verdict"] == "not learned"

    run = get_run(client, overflowing)
    assert run["status"] == "failed"
    assert "diverged" in run["error"]
    assert "learning_rate" in run["error"]
    assert run["epochs_completed"] == 0  # the diverging epoch is not recorded
    assert get_losses(client, overflowing)["epochs"] == []
    assert run["metrics"]["train_loss"] is None


@pytest.mark.subprocess
def test_graceful_shutdown_requeues_and_a_new_app_finishes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, workers=1)
    hold_runs(tmp_path)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        run_id = submit(client, epochs=INTERRUPTIBLE_EPOCHS)
        wait_epochs(client, run_id, 2)
    # Leaving the block ran the lifespan's shutdown: the worker stopped at an epoch boundary.

    row = db_row(tmp_path, run_id)
    assert row["status"] == "queued"
    assert row["error"] is None
    assert row["finished_at"] is None
    assert row["worker_id"] is None
    assert row["requeues"] == 0  # a shutdown is not a lost worker
    assert 2 <= row["epochs_completed"] < INTERRUPTIBLE_EPOCHS

    release(tmp_path)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        try:
            run = wait_status(client, run_id, "succeeded")
        finally:
            cancel_quietly(client, run_id)
        assert run["attempt"] == 2
        assert run["epochs_completed"] == INTERRUPTIBLE_EPOCHS
        losses = get_losses(client, run_id)
        assert losses["epochs"] == list(range(1, INTERRUPTIBLE_EPOCHS + 1))


@pytest.mark.parametrize("path", ["fused", "torch"])
def test_a_run_trains_on_the_path_the_settings_force_and_says_so(tmp_path: Path, path: str) -> None:
    settings = make_settings(tmp_path, train_path=path)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        run_id = submit(client, model="elman", epochs=4)
        assert get_run(client, run_id)["train_path"] is None  # not decided before a worker
        work_burst(settings)
        run = get_run(client, run_id)
    assert run["status"] == "succeeded", run["error"]
    assert run["train_path"] == path
    assert run["epochs_completed"] == 4
    assert run["metrics"]["verdict"] is not None


def test_a_run_takes_the_chosen_path_by_default(client: TestClient, settings: Settings) -> None:
    # The notebook's shape: the fused kernels, far ahead of torch's layers at 2 units.
    run_id = submit(client, epochs=2, data={"n_sequences": 3, "seq_len": 300})
    work_burst(settings)
    run = get_run(client, run_id)
    assert run["status"] == "succeeded", run["error"]
    assert run["train_path"] == "fused"
