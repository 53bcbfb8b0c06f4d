"""alembic: upgrade from empty, downgrade to base, upgrade again; ORM tables match revisions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from service import db as database
from service.tables import Base
from tests.support.app import make_settings

TABLES = {"runs", "epoch_losses", "checkpoints", "sweeps"}


def user_tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade(tmp_path: Path) -> None:
    db = database.Database(make_settings(tmp_path))
    try:
        assert user_tables(db.engine) == set()
        database.upgrade(db.engine)
        assert user_tables(db.engine) == TABLES
        assert database.current_revision(db.engine) == database.head_revision()
        database.downgrade(db.engine, "base")
        assert user_tables(db.engine) == set()
        assert database.current_revision(db.engine) is None
        database.upgrade(db.engine)
        assert user_tables(db.engine) == TABLES
    finally:
        db.dispose()


def test_orm_tables_match_migrations(tmp_path: Path) -> None:
    db = database.Database(make_settings(tmp_path))
    try:
        database.upgrade(db.engine)
        with db.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == []
    finally:
        db.dispose()


def test_sqlite_is_set_up_for_several_processes(tmp_path: Path) -> None:
    db = database.Database(make_settings(tmp_path))
    try:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    finally:
        db.dispose()


@pytest.mark.subprocess
def test_cli_migrate(tmp_path: Path) -> None:
    env = {"RNNLAB_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert f"database at {database.head_revision()}" in out.stdout
    assert (tmp_path / "rnnlab.db").exists()
    down = subprocess.run(
        [sys.executable, "-m", "service.cli", "migrate", "base"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "database at None" in down.stdout
