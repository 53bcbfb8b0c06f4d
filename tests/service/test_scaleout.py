"""Scale-out against real servers: PostgreSQL for every process, Celery workers through Redis.

The API runs with RNNLAB_QUEUE=celery on PostgreSQL; two `rnnlab worker` processes take the
runs through Redis. Servers come from the `redis_url` and `postgres` fixtures (skipped where they
cannot be had, failed under RNNLAB_REQUIRE_SERVERS=1, as in CI).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from service import db as database
from service.settings import Settings
from service.tables import Base
from tests.support.app import HOLD_FILE, hold_runs, make_settings, release, run_body
from tests.support.processes import CLI, clean_env, kill_group
from tests.support.servers import free_port

pytestmark = pytest.mark.servers

TINY = {"model": "lstm", "epochs": 5, "population": 2, "data": {"n_sequences": 3, "seq_len": 40}}
# What a worker logs for a delivery of a run that is no longer queued (Celery's task result).
NOTHING_TO_DO = "nothing to do"
# Runs the test interrupts: held at an epoch boundary (`hold_runs`) until it acts.
INTERRUPTIBLE = {**TINY, "epochs": 40}


def test_migrations_up_down_up_on_postgresql(postgres: Callable[[], str], tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=postgres())
    db = database.Database(settings)
    try:
        database.upgrade(db.engine)
        assert database.current_revision(db.engine) == database.head_revision()
        assert {"runs", "epoch_losses", "checkpoints", "sweeps"} <= set(
            inspect(db.engine).get_table_names()
        )
        database.downgrade(db.engine, "base")
        assert database.current_revision(db.engine) is None
        assert "runs" not in inspect(db.engine).get_table_names()
        database.upgrade(db.engine)
        with db.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
    finally:
        db.dispose()


class Cluster:
    def __init__(self, url: str, env: dict[str, str], tmp: Path) -> None:
        self.url, self.env, self.tmp = url, env, tmp
        self.http = httpx.Client(base_url=url, timeout=30)
        self.workers: list[subprocess.Popen] = []

    def start_worker(self) -> subprocess.Popen:
        with (self.tmp / f"worker{len(self.workers)}.log").open("ab") as log:
            proc = subprocess.Popen(
                [*CLI, "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.workers.append(proc)
        return proc

    def post(self, body: dict) -> str:
        r = self.http.post("/runs", json=body)
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def run(self, run_id: str) -> dict:
        return self.http.get(f"/runs/{run_id}").raise_for_status().json()

    def wait(self, run_id: str, pred: Callable[[dict], bool], timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if pred(run):
                return run
            if time.monotonic() > deadline:
                pytest.fail(f"run {run_id} stuck at {run}\n{self.logs()}")
            time.sleep(0.1)

    def wait_logged(self, text: str, count: int, timeout: float = 180) -> None:
        """Wait until the workers' logs hold `text` `count` times."""
        deadline = time.monotonic() + timeout
        while sum(p.read_text().count(text) for p in self.tmp.glob("worker*.log")) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} not logged {count} times\n{self.logs()}")
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.tmp.glob("*.log")))


@pytest.fixture
def cluster(postgres: Callable[[], str], redis_url: str, tmp_path: Path) -> Iterator[Cluster]:
    port = free_port()
    env = clean_env(
        RNNLAB_QUEUE="celery",
        RNNLAB_DATABASE_URL=postgres(),
        RNNLAB_BROKER_URL=redis_url,
        RNNLAB_DATA_DIR=str(tmp_path / "data"),
        RNNLAB_HOLD_FILE=str(tmp_path / HOLD_FILE),  # hold_runs(tmp_path)
        RNNLAB_HEARTBEAT_INTERVAL_S="0.2",
        RNNLAB_HEARTBEAT_TIMEOUT_S="3",
        RNNLAB_REAP_INTERVAL_S="0.5",
        RNNLAB_THREADS_PER_WORKER="1",
        RNNLAB_LOG_LEVEL="info",
    )
    with (tmp_path / "api.log").open("ab") as log:
        api = subprocess.Popen(
            [*CLI, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    c = Cluster(f"http://127.0.0.1:{port}", env, tmp_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if c.http.get("/readyz").status_code == 200:
                    break
            assert api.poll() is None and time.monotonic() < deadline, c.logs()
            time.sleep(0.2)
        c.start_worker()
        c.start_worker()
        yield c
    finally:
        for proc in [*c.workers, api]:
            kill_group(proc)
        c.http.close()


def epochs_of(c: Cluster, run_id: str) -> list[int]:
    return c.http.get(f"/runs/{run_id}/losses").json()["epochs"]


@pytest.mark.subprocess
def test_celery_workers_train_recover_and_run_each_run_once(cluster: Cluster) -> None:
    from service.queue.celery import TASK, celery_app

    c = cluster
    # Six runs, predictions from the checkpoints stored in PostgreSQL.
    ids = [c.post({**TINY, "seed": s}) for s in range(6)]
    for run_id in ids:
        run = c.wait(run_id, lambda r: r["status"] in ("succeeded", "failed"))
        assert run["status"] == "succeeded" and run["attempt"] == 1, run
        assert epochs_of(c, run_id) == [1, 2, 3, 4, 5]
        body = {"run_id": run_id, "sequences": [[[0.5, 1], [0.1, 0], [-0.3, 1]]]}
        assert len(c.http.post("/predict", json=body).json()["outputs"][0]) == 3

    # A task delivered twice runs once: send a succeeded run's id again, and a queued one's twice.
    app = celery_app(Settings(broker_url=c.env["RNNLAB_BROKER_URL"]))
    app.send_task(TASK, args=[ids[0]])
    queued = c.post({**TINY, "seed": 99})
    app.send_task(TASK, args=[queued])
    app.send_task(TASK, args=[queued])
    run = c.wait(queued, lambda r: r["status"] == "succeeded")
    # The three stale deliveries (ids[0] once, `queued` twice besides the one that trained it)
    # are each taken and found not queued.
    c.wait_logged(NOTHING_TO_DO, 3)
    assert c.run(queued)["attempt"] == 1 and epochs_of(c, queued) == [1, 2, 3, 4, 5]
    assert c.run(ids[0])["attempt"] == 1

    # A worker SIGKILLed mid-run (held at epoch 5): the recovery loop re-queues and re-sends; it
    # succeeds once, on the other worker.
    hold_runs(c.tmp, after=5)
    long_id = c.post({**INTERRUPTIBLE, "seed": 1})
    c.wait(long_id, lambda r: r["status"] == "running" and r["epochs_completed"] >= 5)
    pids = {p.pid for p in c.workers if p.poll() is None}
    victim = _worker_running(c, long_id, pids)
    os.killpg(victim, signal.SIGKILL)
    release(c.tmp)
    run = c.wait(long_id, lambda r: r["status"] in ("succeeded", "failed"), timeout=300)
    assert run["status"] == "succeeded" and run["attempt"] == 2, run
    assert epochs_of(c, long_id) == list(range(1, INTERRUPTIBLE["epochs"] + 1))
    c.start_worker()  # back to two

    # Cancel across processes, while the run is held at epoch 2.
    hold_runs(c.tmp)
    doomed = c.post({**INTERRUPTIBLE, "seed": 2})
    c.wait(doomed, lambda r: r["status"] == "running" and r["epochs_completed"] >= 2)
    assert c.http.post(f"/runs/{doomed}/cancel").status_code == 202
    run = c.wait(doomed, lambda r: r["status"] != "running")
    release(c.tmp)
    assert run["status"] == "cancelled" and run["epochs_completed"] == 2, run

    # A sweep of 8 runs on the two workers.
    grid = {"model": ["elman", "lstm"], "seed": [1, 2, 3, 4]}
    base = {k: v for k, v in TINY.items() if k != "model"}
    sweep = c.http.post("/sweeps", json={"base": base, "grid": grid}).json()
    deadline = time.monotonic() + 240
    while (s := c.http.get(f"/sweeps/{sweep['id']}").json())["status"] != "ended":
        assert time.monotonic() < deadline, (s["counts"], c.logs())
        time.sleep(0.2)
    assert s["counts"]["succeeded"] == 8 and len(s["table"]) == 2


def _worker_running(c: Cluster, run_id: str, pids: set[int]) -> int:
    """The pid of the worker process that trains `run_id` (worker ids are host/pid/nonce)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(c.env["RNNLAB_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            worker_id = conn.execute(
                text("SELECT worker_id FROM runs WHERE id = :id"), {"id": run_id}
            ).scalar_one()
    finally:
        engine.dispose()
    pid = int(worker_id.split("/")[1])
    assert pid in pids, (worker_id, pids)
    return pid


def test_a_run_whose_send_failed_is_sent_again(tmp_path: Path, redis_url: str) -> None:
    """The broker is down when the run is stored: 202 all the same; the recovery loop sends it."""
    import redis
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.queue import celery as dispatch
    from service.tables import Run

    dead = make_settings(tmp_path, queue="celery", broker_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(dead)) as client:
        r = client.post("/runs", json=run_body())
        assert r.status_code == 202, r.text
        db = client.app.state.db
        with db.reading() as session:
            assert session.get(Run, r.json()["id"]).dispatched_at is None
        live = make_settings(tmp_path, queue="celery", broker_url=redis_url)
        assert dispatch.send_pending(db, live) == 1
        with db.reading() as session:
            assert session.get(Run, r.json()["id"]).dispatched_at is not None
        assert dispatch.send_pending(db, live) == 0  # sent once
        queued = redis.Redis.from_url(redis_url).lrange(dispatch.QUEUE, 0, -1)
        assert any(r.json()["id"].encode() in message for message in queued)
