"""The epoch writer: epochs stored off the training thread, each once, soon, cancel seen."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from service import db as database
from service.queue import lifecycle
from service.queue.execution import _EpochWriter
from service.queue.lifecycle import Claim, EpochRow
from service.runs import store as runs
from service.schemas import RunCreate
from service.tables import EpochLoss, Run, RunStatus
from tests.support.app import make_settings


@pytest.fixture
def claimed(tmp_path: Path) -> Iterator[tuple[database.Database, Claim]]:
    settings = make_settings(tmp_path)
    db = database.Database(settings)
    database.upgrade(db.engine)
    with db.writing() as session:
        spec = RunCreate.model_validate({"model": "lstm", "epochs": 1000, "seed": 1})
        runs.create_run(session=session, spec=spec, settings=settings)
    claim = lifecycle.claim(db, worker_id="test/1/x")
    assert claim is not None
    try:
        yield db, claim
    finally:
        db.dispose()


def stored(db: database.Database, run_id: str) -> list[tuple[int, float]]:
    with db.reading() as session:
        rows = session.execute(
            select(EpochLoss.epoch, EpochLoss.train_loss)
            .where(EpochLoss.run_id == run_id)
            .order_by(EpochLoss.epoch)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def row(epoch: int) -> EpochRow:
    return EpochRow(epoch=epoch, train_loss=1.0 / epoch, valid_loss=2.0 / epoch, member=0)


def wait_until(cond, timeout: float) -> float:
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.005)
    return time.monotonic() - start


def test_epochs_are_visible_within_a_second_and_each_stored_once(claimed) -> None:
    db, claim = claimed
    with _EpochWriter(db, claim) as writer:
        for epoch in range(1, 6):
            writer.put(row(epoch))
            elapsed = wait_until(lambda e=epoch: len(stored(db, claim.run_id)) == e, 1.0)
            assert elapsed < 1.0
        with db.reading() as session:
            run = session.get(Run, claim.run_id)
            assert run.epochs_completed == 5 and run.train_loss == 0.2
    assert stored(db, claim.run_id) == [(e, 1.0 / e) for e in range(1, 6)]


def test_fast_epochs_share_transactions(claimed, monkeypatch: pytest.MonkeyPatch) -> None:
    db, claim = claimed
    batches: list[int] = []
    real = lifecycle.record_epochs

    def counting(db_, c, rows):
        batches.append(len(rows))
        return real(db_, c, rows)

    monkeypatch.setattr(lifecycle, "record_epochs", counting)
    with _EpochWriter(db, claim, coalesce_s=0.05) as writer:
        for epoch in range(1, 201):
            writer.put(row(epoch))
            time.sleep(0.001)
    assert stored(db, claim.run_id) == [(e, 1.0 / e) for e in range(1, 201)]
    assert sum(batches) == 200
    assert len(batches) < 50  # ~1 ms epochs, 50 ms coalescing: many epochs a transaction


def test_a_failed_write_is_retried_and_nothing_is_stored_twice(
    claimed, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, claim = claimed
    real = lifecycle.record_epochs
    calls = {"n": 0}

    def flaky(db_, c, rows):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real(db_, c, rows)

    monkeypatch.setattr(lifecycle, "record_epochs", flaky)
    with _EpochWriter(db, claim, coalesce_s=0.0) as writer:
        for epoch in range(1, 11):
            writer.put(row(epoch))
            time.sleep(0.01)
    assert calls["n"] >= 3
    assert stored(db, claim.run_id) == [(e, 1.0 / e) for e in range(1, 11)]


def test_cancel_is_seen_within_a_second(claimed) -> None:
    db, claim = claimed
    with _EpochWriter(db, claim) as writer:
        writer.put(row(1))
        wait_until(lambda: len(stored(db, claim.run_id)) == 1, 1.0)
        assert writer.cancel is False
        with db.writing() as session:
            session.execute(update(Run).where(Run.id == claim.run_id).values(cancel_requested=True))
        writer.put(row(2))
        assert wait_until(lambda: writer.cancel, 1.0) < 1.0


def test_a_lost_claim_stops_the_writer_and_stores_nothing_more(claimed) -> None:
    db, claim = claimed
    with db.writing() as session:  # the reaper gave the run back to the queue
        session.execute(update(Run).where(Run.id == claim.run_id).values(status=RunStatus.queued))
    with _EpochWriter(db, claim) as writer:
        writer.put(row(1))
        wait_until(lambda: writer.lost, 1.0)
    assert stored(db, claim.run_id) == []


def test_catch_up_holds_the_trainer_while_the_database_lags(
    claimed, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, claim = claimed
    real = lifecycle.record_epochs
    gate = threading.Event()

    def slow(db_, c, rows):
        gate.wait(5)
        return real(db_, c, rows)

    monkeypatch.setattr(lifecycle, "record_epochs", slow)
    with _EpochWriter(db, claim, max_lag_s=0.2) as writer:
        writer.put(row(1))
        writer.catch_up()  # not behind yet: returns at once
        time.sleep(0.3)
        threading.Timer(0.3, gate.set).start()
        start = time.monotonic()
        writer.catch_up()  # 0.3 s behind: waits for the write
        assert time.monotonic() - start >= 0.2
        assert stored(db, claim.run_id) == [(1, 1.0)]
