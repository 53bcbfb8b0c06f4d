"""alembic environment: the engine comes from the caller or from rnnlab's settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from service.db import WRITE_OPTION, make_engine
from service.settings import Settings
from service.tables import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Servers and workers starting together: one upgrades, the others wait and then find
        # the schema at head (PostgreSQL's DDL is transactional; the lock ends with it).
        connection.execute(text("SELECT pg_advisory_xact_lock(7460117)"))
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite can only ALTER through table copies
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    owned = engine is None
    if owned:
        engine = make_engine(Settings())
    try:
        # The write option makes SQLite take its write lock first, so two processes
        # upgrading at once run one after the other instead of racing.
        with engine.connect().execution_options(**{WRITE_OPTION: True}) as connection:
            _run(connection)
            connection.commit()
    finally:
        if owned:
            engine.dispose()


if context.is_offline_mode():
    raise SystemExit("rnnlab's migrations run online only: use `rnnlab migrate`")
run_migrations_online()
