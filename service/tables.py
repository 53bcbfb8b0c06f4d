"""Database tables (SQLAlchemy 2 ORM). alembic/ holds the revisions that create them."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


ENDED = (RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC; always gives back timezone-aware UTC datetimes (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[RunStatus] = mapped_column(
        Enum(
            RunStatus,
            name="run_status",
            native_enum=False,
            length=16,
            values_callable=lambda e: [m.value for m in e],
        ),
        default=RunStatus.queued,
    )
    model: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    epochs_completed: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # +1 at every claim
    requeues: Mapped[int] = mapped_column(Integer, default=0)  # re-queues after a lost worker
    worker_id: Mapped[str | None] = mapped_column(String(128))
    device: Mapped[str | None] = mapped_column(String(32))
    train_path: Mapped[str | None] = mapped_column(String(16))  # models.paths: fused, torch
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    train_loss: Mapped[float | None] = mapped_column(Float)
    valid_loss: Mapped[float | None] = mapped_column(Float)
    test_mse: Mapped[float | None] = mapped_column(Float)
    baseline_mse: Mapped[float | None] = mapped_column(Float)
    marker_mse: Mapped[float | None] = mapped_column(Float)
    marker_baseline_mse: Mapped[float | None] = mapped_column(Float)
    error_ratio: Mapped[float | None] = mapped_column(Float)
    marker_error_ratio: Mapped[float | None] = mapped_column(Float)
    verdict: Mapped[str | None] = mapped_column(String(16))
    # The population's members (models.Member as dicts), rewritten with every epoch.
    members: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # Celery queue: when its id was last sent to the broker (None: to be sent by the recovery loop).
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sweep_id: Mapped[str | None] = mapped_column(
        ForeignKey("sweeps.id", ondelete="SET NULL", name="fk_runs_sweep_id")
    )

    __table_args__ = (
        Index("ix_runs_status_created_at", "status", "created_at"),
        Index("ix_runs_created_at_id", "created_at", "id"),
        Index("ix_runs_sweep_id", "sweep_id"),
    )


class Sweep(Base):
    """A grid of run configs created in one request; its runs are ordinary runs."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    base: Mapped[dict[str, Any]] = mapped_column(JSON)  # the POST's base, as given
    grid: Mapped[dict[str, list[Any]]] = mapped_column(JSON)  # key → values, in order
    n_runs: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_sweeps_created_at_id", "created_at", "id"),)


class EpochLoss(Base):
    __tablename__ = "epoch_losses"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_loss: Mapped[float] = mapped_column(Float)
    valid_loss: Mapped[float] = mapped_column(Float)
    member: Mapped[int | None] = mapped_column(Integer)  # whose losses these are (the best)


class Checkpoint(Base):
    """A succeeded run's weights as safetensors bytes (tiny for these networks)."""

    __tablename__ = "checkpoints"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
