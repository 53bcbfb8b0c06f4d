"""Runs as the API sees them: create, read, list, cancel, losses, checkpoint."""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from service import limits, pagination
from service.problems import ProblemError, conflict, not_found
from service.queue import lifecycle
from service.runs.config import LEGACY_FIELDS, config_to_json, initial_members, resolve_config
from service.schemas import Losses, MemberRead, RunConfig, RunCreate, RunMetrics, RunRead
from service.settings import Settings
from service.tables import ENDED, Checkpoint, EpochLoss, Run, RunStatus


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
    run = lifecycle.enqueue(
        session, config=config_to_json(cfg), model=cfg.model, members=initial_members(cfg),
        sweep_id=sweep_id,
    )  # fmt: skip
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
    return pagination.page(session, query, Run, limit=limit, cursor=cursor)


def cancel_run(*, session: Session, run_id: str) -> Run:
    """Cancel a queued run now, or flag a running one to stop after its current epoch."""
    run = get_run_or_404(session=session, run_id=run_id)
    done = any(lifecycle.cancel_where(session, Run.id == run_id))
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
    gone = lifecycle.delete_ended(session, run_id)
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
