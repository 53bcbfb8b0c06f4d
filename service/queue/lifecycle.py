"""The run lifecycle: the only code that writes a run's row. Enqueue, cancel, delete; claim,
heartbeat, per-epoch losses, final states; re-queueing and reaping.

The database row is the truth. A claim is one conditional UPDATE that also increments
`attempt`; every later write is conditioned on (id, attempt, status running), so a worker
that lost its claim (re-queued as stale, or cancelled) cannot write anything.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from service.db import Database, execute_dml
from service.runs.config import config_from_json, initial_members
from service.tables import ENDED, Checkpoint, EpochLoss, Run, RunStatus, utcnow

log = logging.getLogger("rnnlab.lifecycle")


# --- the API's writes: a new run, cancel, delete --------------------------------------------


def enqueue(
    session: Session,
    *,
    config: dict[str, Any],
    model: str,
    members: list[dict[str, Any]],
    sweep_id: str | None = None,
) -> Run:
    """Store a new run as queued, in the caller's write transaction."""
    run = Run(
        id=uuid.uuid4().hex,
        status=RunStatus.queued,
        model=model,
        config=config,
        created_at=utcnow(),
        epochs_completed=0,
        attempt=0,
        requeues=0,
        cancel_requested=False,
        members=members,
        sweep_id=sweep_id,
    )
    session.add(run)
    session.flush()
    return run


def cancel_where(session: Session, *where: Any) -> tuple[int, int]:
    """Cancel the runs matching `where`: queued ones now, running ones at their next epoch
    (the flag their worker reads). Returns (cancelled now, flagged)."""
    queued = execute_dml(
        session,
        update(Run)
        .where(*where, Run.status == RunStatus.queued)
        .values(status=RunStatus.cancelled, finished_at=utcnow(), cancel_requested=True),
    ).rowcount
    running = execute_dml(
        session,
        update(Run).where(*where, Run.status == RunStatus.running).values(cancel_requested=True),
    ).rowcount
    return queued, running


def delete_ended(session: Session, run_id: str) -> int:
    """Delete a run that has ended, with its losses and checkpoint; how many runs went (0 or 1)."""
    session.execute(delete(EpochLoss).where(EpochLoss.run_id == run_id))
    session.execute(delete(Checkpoint).where(Checkpoint.run_id == run_id))
    return execute_dml(
        session, delete(Run).where(Run.id == run_id, Run.status.in_([s.value for s in ENDED]))
    ).rowcount


def mark_dispatched(db: Database, run_ids: list[str]) -> None:
    """Record that these queued runs' ids went to the broker (the Celery queue)."""
    with db.writing() as session:
        session.execute(
            update(Run)
            .where(Run.id.in_(run_ids), Run.status == RunStatus.queued)
            .values(dispatched_at=utcnow())
        )


# --- a worker's writes ----------------------------------------------------------------------


class LostClaim(Exception):
    """This worker no longer owns the run (re-queued elsewhere, or ended)."""


@dataclass(frozen=True)
class Claim:
    run_id: str
    attempt: int
    worker_id: str
    config: dict[str, Any]


def _owned(claim: Claim) -> Any:
    return (
        (Run.id == claim.run_id)
        & (Run.attempt == claim.attempt)
        & (Run.status == RunStatus.running)
    )


def _update_owned(session: Session, claim: Claim, **values: Any) -> None:
    if execute_dml(session, update(Run).where(_owned(claim)).values(**values)).rowcount != 1:
        raise LostClaim(f"run {claim.run_id} attempt {claim.attempt} is no longer ours")


def claim(db: Database, *, worker_id: str, run_id: str | None = None) -> Claim | None:
    """Take the oldest queued run (or `run_id` if it is queued); None when there is none."""
    with db.writing() as session:
        if run_id is None:
            run_id = session.scalar(
                select(Run.id)
                .where(Run.status == RunStatus.queued)
                .order_by(Run.created_at, Run.id)
                .limit(1)
                # PostgreSQL: concurrent claimers skip each other's candidate instead of
                # queueing behind its row lock (SQLite has one writer anyway: no clause).
                .with_for_update(skip_locked=True)
            )
            if run_id is None:
                return None
        now = utcnow()
        taken = execute_dml(
            session,
            update(Run)
            .where(Run.id == run_id, Run.status == RunStatus.queued)
            .values(
                status=RunStatus.running,
                attempt=Run.attempt + 1,
                worker_id=worker_id,
                started_at=now,
                heartbeat_at=now,
                epochs_completed=0,
                train_loss=None,
                valid_loss=None,
            ),
        ).rowcount
        if taken != 1:
            return None
        # A re-queued run restarts from epoch 1: its history must hold each epoch once.
        session.execute(delete(EpochLoss).where(EpochLoss.run_id == run_id))
        attempt, config = session.execute(
            select(Run.attempt, Run.config).where(Run.id == run_id)
        ).one()
        members = initial_members(config_from_json(config))
        session.execute(update(Run).where(Run.id == run_id).values(members=members))
    return Claim(run_id=run_id, attempt=attempt, worker_id=worker_id, config=config)


def heartbeat(db: Database, c: Claim) -> None:
    with db.writing() as session:
        _update_owned(session, c, heartbeat_at=utcnow())


def set_device(db: Database, c: Claim, device: str, train_path: str | None = None) -> None:
    """Record where the claimed run trains: its device and its training path."""
    with db.writing() as session:
        _update_owned(session, c, device=device, train_path=train_path, heartbeat_at=utcnow())


@dataclass(frozen=True)
class EpochRow:
    """One epoch as stored: its losses (the best member's), whose they are, the population."""

    epoch: int
    train_loss: float
    valid_loss: float
    member: int | None = None
    members: list[dict[str, Any]] | None = None


def record_epochs(db: Database, c: Claim, rows: list[EpochRow]) -> bool:
    """Store consecutive epochs in one transaction; return whether a cancel was requested.

    The run row takes the last epoch's figures (and population state); each epoch gets its
    own `epoch_losses` row. Conditioned on the claim like every write: a worker that lost
    its claim stores nothing.
    """
    last = rows[-1]
    values: dict[str, Any] = {"members": last.members} if last.members is not None else {}
    with db.writing() as session:
        _update_owned(
            session,
            c,
            epochs_completed=last.epoch,
            train_loss=last.train_loss,
            valid_loss=last.valid_loss,
            heartbeat_at=utcnow(),
            **values,
        )
        session.execute(
            insert(EpochLoss),
            [
                {
                    "run_id": c.run_id,
                    "epoch": r.epoch,
                    "train_loss": r.train_loss,
                    "valid_loss": r.valid_loss,
                    "member": r.member,
                }
                for r in rows
            ],
        )
        return bool(session.scalar(select(Run.cancel_requested).where(Run.id == c.run_id)))


def record_epoch(db: Database, c: Claim, epoch: int, train_loss: float, valid_loss: float) -> bool:
    """Store one epoch's losses; return whether a cancel was requested."""
    return record_epochs(db, c, [EpochRow(epoch, train_loss, valid_loss)])


def cancel_requested(db: Database, c: Claim) -> bool:
    with db.reading() as session:
        return bool(session.scalar(select(Run.cancel_requested).where(Run.id == c.run_id)))


def finish_succeeded(
    db: Database,
    c: Claim,
    *,
    metrics: dict[str, float | str | None],
    checkpoint: bytes,
    members: list[dict[str, Any]] | None = None,
) -> None:
    """Weights, test metrics, the members (which one was kept) and the final status, at once."""
    values: dict[str, Any] = {"members": members} if members is not None else {}
    with db.writing() as session:
        _update_owned(
            session,
            c,
            **values,
            status=RunStatus.succeeded,
            finished_at=utcnow(),
            heartbeat_at=None,
            error=None,
            **metrics,
        )
        session.merge(Checkpoint(run_id=c.run_id, data=checkpoint, created_at=utcnow()))


def finish_cancelled(db: Database, c: Claim) -> None:
    with db.writing() as session:
        _update_owned(
            session, c, status=RunStatus.cancelled, finished_at=utcnow(), heartbeat_at=None
        )


def finish_failed(db: Database, c: Claim, error: str) -> None:
    with db.writing() as session:
        _update_owned(
            session,
            c,
            status=RunStatus.failed,
            finished_at=utcnow(),
            heartbeat_at=None,
            error=error[:4000],
        )


def requeue(db: Database, c: Claim) -> None:
    """Hand a run back to the queue (a shutdown, not a failure: `requeues` is unchanged)."""
    with db.writing() as session:
        _update_owned(
            session, c, status=RunStatus.queued, worker_id=None, heartbeat_at=None,
            dispatched_at=None,
        )  # fmt: skip


def _lose(session: Session, rows: list[Any], *, reason: str, max_requeues: int) -> dict[str, str]:
    """Re-queue runs whose worker is gone, or fail them once they were re-queued too often."""
    now = utcnow()
    outcome: dict[str, str] = {}
    for run_id, attempt, requeues, cancel in rows:
        where = (Run.id == run_id) & (Run.attempt == attempt) & (Run.status == RunStatus.running)
        if cancel:
            values: dict[str, Any] = {"status": RunStatus.cancelled, "finished_at": now}
        elif requeues >= max_requeues:
            values = {
                "status": RunStatus.failed,
                "finished_at": now,
                "error": f"{reason}, and the run was already re-queued {requeues} times "
                f"(limit {max_requeues})",
            }
        else:
            # dispatched_at None: on the Celery queue the recovery loop sends its id again.
            values = {"status": RunStatus.queued, "requeues": requeues + 1, "dispatched_at": None}
        values.update(worker_id=None, heartbeat_at=None)
        if execute_dml(session, update(Run).where(where).values(**values)).rowcount:
            outcome[run_id] = values["status"].value
            log.warning("run %s: %s; now %s", run_id, reason, outcome[run_id])
    return outcome


_LOSE_COLUMNS = (Run.id, Run.attempt, Run.requeues, Run.cancel_requested)


def lose_worker_runs(db: Database, worker_id: str, *, max_requeues: int) -> dict[str, str]:
    """Re-queue (or fail) the running runs of a worker known to be dead."""
    with db.writing() as session:
        rows = session.execute(
            select(*_LOSE_COLUMNS).where(
                Run.status == RunStatus.running, Run.worker_id == worker_id
            )
        ).all()
        return _lose(
            session, list(rows), reason=f"worker {worker_id} died", max_requeues=max_requeues
        )


def reap_stale(
    db: Database,
    *,
    timeout_s: float,
    max_requeues: int,
    is_dead: Any = None,
) -> dict[str, str]:
    """Re-queue running runs whose heartbeat is older than `timeout_s`; fail those past the limit.

    `is_dead(worker_id)` may say early that a worker is certainly gone (a local process that no
    longer exists); its runs are then lost at once instead of after the timeout.
    Returns {run_id: new status}. A lost run whose cancel was requested ends cancelled.
    """
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    with db.writing() as session:
        stale = session.execute(
            select(*_LOSE_COLUMNS).where(Run.status == RunStatus.running, Run.heartbeat_at < cutoff)
        ).all()
        outcome = _lose(
            session,
            list(stale),
            reason=f"worker lost: no heartbeat for {timeout_s:g} s",
            max_requeues=max_requeues,
        )
        if is_dead is not None:
            running = session.execute(
                select(*_LOSE_COLUMNS, Run.worker_id).where(Run.status == RunStatus.running)
            ).all()
            dead = [r[:4] for r in running if r[4] and is_dead(r[4])]
            outcome.update(
                _lose(session, dead, reason="its worker process is gone", max_requeues=max_requeues)
            )
    return outcome


def requeue_stopped(db: Database, worker_prefix: str) -> None:
    """Hand back the running runs of worker processes the server itself stopped (killed after
    the shutdown grace): queued again, not counted as a loss."""
    with db.writing() as session:
        session.execute(
            update(Run)
            .where(Run.status == RunStatus.running, Run.worker_id.startswith(worker_prefix))
            .values(status=RunStatus.queued, worker_id=None, heartbeat_at=None)
        )
