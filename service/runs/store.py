"""Runs as the API sees them: create, read, list, cancel, losses, checkpoint."""

from __future__ import annotations

import base64
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, text, update
from sqlalchemy.orm import Session

from models.population import member_seed
from models.training import Member, TrainConfig
from service import limits
from service.db import execute_dml
from service.problems import ProblemError, conflict, invalid, not_found
from service.schemas import Losses, MemberRead, RunConfig, RunCreate, RunMetrics, RunRead
from service.settings import Settings
from service.tables import ENDED, Checkpoint, EpochLoss, Run, RunStatus, utcnow

MAX_LIST_LIMIT = 100


DATA_FIELDS = ("n_sequences", "seq_len", "marker_probs")  # nested under "data" in the API


def config_to_json(cfg: TrainConfig) -> dict[str, Any]:
    """The stored (and returned) form of a config: the API's nested shape."""
    flat = cfg.to_dict()
    return {
        **{k: v for k, v in flat.items() if k not in DATA_FIELDS},
        "data": {k: flat[k] for k in DATA_FIELDS},
    }


# Fields added after runs were first stored, with the values those runs were trained with.
LEGACY_FIELDS: dict[str, Any] = {
    "population": 1,
    "clip_grad_norm": 0.0,
    "lr_schedule": "constant",
    "restore_best": False,
}


def config_from_json(d: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from the API's nested shape; ValueError names a field that is wrong."""
    flat = {**LEGACY_FIELDS, **{k: v for k, v in d.items() if k != "data"}, **d["data"]}
    return TrainConfig.from_dict(flat)


def initial_members(cfg: TrainConfig) -> list[dict[str, Any]]:
    """The members of a run that has not trained yet: their indices and seeds."""
    return [Member(index=i, seed=member_seed(cfg.seed, i)).to_dict() for i in range(cfg.population)]


def resolve_config(spec: RunCreate) -> TrainConfig:
    """The run's full training config; the server picks a seed when none was given."""
    d = spec.model_dump()
    if d["seed"] is None:
        d["seed"] = secrets.randbelow(2**31)
    try:
        return config_from_json(d)
    except ValueError as e:
        field = str(e).split(" ", 1)[0]
        loc = ["body", "data", field] if field in DATA_FIELDS else ["body", field]
        # Each probability's bounds are in the schema; their sum is a rule it states in words.
        kind = "marker_probs_sum" if "must sum to 1" in str(e) else "value_error"
        raise invalid([{"loc": loc, "msg": str(e), "type": kind}]) from e


def lock_queue(session: Session) -> None:
    """Serialise queue-bound checks within write transactions. SQLite already has one writer
    (BEGIN IMMEDIATE); PostgreSQL takes a transaction-scoped advisory lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7460118)"))


def queued_count(session: Session) -> int:
    return (
        session.scalar(select(func.count()).select_from(Run).where(Run.status == RunStatus.queued))
        or 0
    )


def _check_queue(session: Session, settings: Settings) -> None:
    """429 with Retry-After when RNNLAB_MAX_QUEUED runs are already waiting."""
    lock_queue(session)
    limits.check_queue_room(queued_count(session), 1, settings)


def create_run(
    *,
    session: Session,
    spec: RunCreate,
    settings: Settings,
    sweep_id: str | None = None,
    check_queue: bool = True,
) -> Run:
    """Validate a run against the limits and the queue bound, store it as queued."""
    limits.check_run(spec, settings)
    cfg = resolve_config(spec)
    if check_queue:  # in the write transaction: the count cannot race
        _check_queue(session, settings)
    run = Run(
        id=uuid.uuid4().hex,
        status=RunStatus.queued,
        model=cfg.model,
        config=config_to_json(cfg),
        created_at=utcnow(),
        epochs_completed=0,
        attempt=0,
        requeues=0,
        cancel_requested=False,
        members=initial_members(cfg),
        sweep_id=sweep_id,
    )
    session.add(run)
    session.flush()
    return run


def get_run_or_404(*, session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise not_found("run", run_id)
    return run


def to_read(run: Run) -> RunRead:
    return RunRead(
        id=run.id,
        status=run.status,
        model=run.model,  # type: ignore[arg-type]
        config=RunConfig.model_validate({**LEGACY_FIELDS, **run.config}),
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        epochs_completed=run.epochs_completed,
        attempt=run.attempt,
        device=run.device,
        train_path=run.train_path,
        error=run.error,
        sweep_id=run.sweep_id,
        metrics=RunMetrics(
            train_loss=run.train_loss,
            valid_loss=run.valid_loss,
            test_mse=run.test_mse,
            baseline_mse=run.baseline_mse,
            marker_mse=run.marker_mse,
            marker_baseline_mse=run.marker_baseline_mse,
            error_ratio=run.error_ratio,
            marker_error_ratio=run.marker_error_ratio,
            verdict=run.verdict,  # type: ignore[arg-type]
        ),
    )


# A cursor is a keyset position: the created_at (µs since the epoch, 8 bytes) and id (16 bytes)
# of the last run on a page, base64url without padding. Any string of this pattern is a
# position, so it is never refused: an unknown one gives the runs older than it (maybe none).
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{32}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_US = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)


def encode_cursor(created_at: datetime, ident: str) -> str:
    """The cursor of a row (a run or a sweep): its keyset position."""
    us = (created_at - _EPOCH) // timedelta(microseconds=1)
    raw = us.to_bytes(8, "big") + bytes.fromhex(ident)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    raw = base64.urlsafe_b64decode(cursor)  # 32 characters (the pattern): exactly 24 bytes
    us = min(int.from_bytes(raw[:8], "big"), _MAX_US)
    return _EPOCH + timedelta(microseconds=us), raw[8:].hex()


def list_runs(
    *,
    session: Session,
    status: RunStatus | None = None,
    model: str | None = None,
    sweep: str | None = None,
    limit: int = 20,
    cursor: str | None = None,
) -> tuple[list[Run], str | None]:
    """Runs newest first, filtered, one page at a time (keyset pagination)."""
    query = select(Run)
    if sweep is not None:
        query = query.where(Run.sweep_id == sweep)
    if status is not None:
        query = query.where(Run.status == status)
    if model is not None:
        query = query.where(Run.model == model)
    if cursor:
        created, run_id = decode_cursor(cursor)
        query = query.where(
            or_(Run.created_at < created, and_(Run.created_at == created, Run.id < run_id))
        )
    rows = list(
        session.scalars(query.order_by(Run.created_at.desc(), Run.id.desc()).limit(limit + 1))
    )
    last = rows[limit - 1] if len(rows) > limit else None
    next_cursor = encode_cursor(last.created_at, last.id) if last else None
    return rows[:limit], next_cursor


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


def cancel_run(*, session: Session, run_id: str) -> Run:
    """Cancel a queued run now, or flag a running one to stop after its current epoch."""
    run = get_run_or_404(session=session, run_id=run_id)
    done = any(cancel_where(session, Run.id == run_id))
    session.refresh(run)
    if not done:
        raise conflict(f"run {run_id!r} has already ended ({run.status.value}); nothing to cancel")
    return run


def epoch_losses(
    session: Session, run_id: str, after_epoch: int = 0
) -> list[tuple[int, float, float]]:
    """A run's (epoch, training loss, validation loss) rows after `after_epoch`, in order:
    the one query behind /losses, the plots and the event stream."""
    rows = session.execute(
        select(EpochLoss.epoch, EpochLoss.train_loss, EpochLoss.valid_loss)
        .where(EpochLoss.run_id == run_id, EpochLoss.epoch > after_epoch)
        .order_by(EpochLoss.epoch)
    ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def read_losses(*, session: Session, run_id: str) -> Losses:
    get_run_or_404(session=session, run_id=run_id)
    rows = epoch_losses(session, run_id)
    return Losses(
        run_id=run_id,
        epochs=[r[0] for r in rows],
        train_loss=[r[1] for r in rows],
        valid_loss=[r[2] for r in rows],
    )


def delete_run(*, session: Session, run_id: str) -> None:
    """Delete an ended run with its losses and checkpoint; 409 while it is queued or running."""
    run = get_run_or_404(session=session, run_id=run_id)
    if run.status not in ENDED:
        raise conflict(
            f"run {run_id!r} is {run.status.value}; cancel it first, then delete it when it ends"
        )
    session.execute(delete(EpochLoss).where(EpochLoss.run_id == run_id))
    session.execute(delete(Checkpoint).where(Checkpoint.run_id == run_id))
    gone = execute_dml(
        session, delete(Run).where(Run.id == run_id, Run.status.in_([s.value for s in ENDED]))
    ).rowcount
    if gone != 1:  # (the status cannot change under BEGIN IMMEDIATE; kept as a guard)
        raise conflict(f"run {run_id!r} changed while being deleted; try again")


def read_members(*, session: Session, run_id: str) -> list[MemberRead]:
    """The run's population, one entry per member (empty until a worker starts it)."""
    run = get_run_or_404(session=session, run_id=run_id)
    return [MemberRead.model_validate(m) for m in run.members or []]


def require_succeeded(run: Run) -> None:
    if run.status != RunStatus.succeeded:
        state = "has ended" if run.status in ENDED else "has not finished"
        raise ProblemError(
            409,
            f"run {run.id!r} {state} ({run.status.value}); only a succeeded run has weights",
        )


def read_checkpoint(*, session: Session, run_id: str) -> bytes:
    run = get_run_or_404(session=session, run_id=run_id)
    require_succeeded(run)
    data = session.scalar(select(Checkpoint.data).where(Checkpoint.run_id == run_id))
    if data is None:  # succeeded always stores one, in the same transaction
        raise conflict(f"run {run_id!r} has no stored checkpoint")
    return data
