"""Several processes claiming and writing: each run once, each epoch once (SQLite, PostgreSQL)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service import db as database
from service.queue import lifecycle
from service.runs import store as runs
from service.schemas import RunCreate
from service.tables import EpochLoss, Run, RunStatus
from tests.support.app import make_settings

pytestmark = pytest.mark.subprocess

N_PROCS = 4
N_RUNS = 24
EPOCHS = 15


def _hammer(data_dir: str, database_url: str, index: int, out: mp.Queue) -> None:
    """Claim runs and write every epoch in its own transaction, as a worker does."""
    settings = make_settings(Path(data_dir), database_url=database_url)
    db = database.Database(settings)
    done = 0
    try:
        while (claim := lifecycle.claim(db, worker_id=f"test/{index}/x")) is not None:
            for epoch in range(1, EPOCHS + 1):
                lifecycle.record_epoch(db, claim, epoch, 1.0 / epoch, 2.0 / epoch)
                with db.reading() as session:  # a reader between writes, like the API
                    session.scalar(select(func.count()).select_from(EpochLoss))
            lifecycle.finish_succeeded(
                db,
                claim,
                metrics={"test_mse": 0.1, "baseline_mse": 0.3, "marker_mse": 0.2},
                checkpoint=b"x",
            )
            done += 1
        out.put(("ok", done))
    except Exception as e:  # reported to the parent: the test fails with the message
        out.put(("error", f"{type(e).__name__}: {e}"))
    finally:
        db.dispose()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.servers)]
)
def test_concurrent_claims_and_epoch_writes(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    # PostgreSQL: the claim's SKIP LOCKED and row locks instead of SQLite's one writer.
    url = request.getfixturevalue("postgres")() if backend == "postgresql" else ""
    settings = make_settings(tmp_path, database_url=url)
    db = database.Database(settings)
    database.upgrade(db.engine)
    with db.writing() as session:
        for _ in range(N_RUNS):
            runs.create_run(session=session, spec=RunCreate(model="lstm"), settings=settings)

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_hammer, args=(str(tmp_path), settings.database_url, i, out))
        for i in range(N_PROCS)
    ]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=180) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert [r[0] for r in results] == ["ok"] * N_PROCS, results
    # Every run was claimed exactly once and has each epoch exactly once.
    assert sum(r[1] for r in results) == N_RUNS
    with db.reading() as session:
        statuses = session.scalars(select(Run.status)).all()
        attempts = session.scalars(select(Run.attempt)).all()
        n_losses = session.scalar(select(func.count()).select_from(EpochLoss))
    assert statuses == [RunStatus.succeeded] * N_RUNS
    assert attempts == [1] * N_RUNS
    assert n_losses == N_RUNS * EPOCHS
    db.dispose()
